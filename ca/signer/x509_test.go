//go:build cgo

package signer

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"testing"
	"time"
)

func caTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Unix(1_700_000_000, 0),
		NotAfter:              time.Unix(1_700_000_000, 0).Add(365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
}

func TestCreateCertificateAndCRLWithATokenKeyVerify(t *testing.T) {
	cfg := tokenConfig(t, "", "")
	for _, kt := range []KeyType{ECDSAP256, RSA2048, Ed25519} {
		t.Run(string(kt), func(t *testing.T) {
			c := cfg
			c.KeyLabel, c.KeyType = "ca-"+string(kt), kt
			s := mustGenerate(t, c)
			tmpl := caTemplate("root " + string(kt))
			der, err := CreateCertificate(rand.Reader, tmpl, tmpl, s.Public(), s)
			if err != nil {
				t.Fatal(err)
			}
			root, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			if err := root.CheckSignatureFrom(root); err != nil {
				t.Fatalf("certificate signature: %v", err)
			}
			crl, err := CreateRevocationList(rand.Reader, &x509.RevocationList{
				Number: big.NewInt(1), ThisUpdate: tmpl.NotBefore, NextUpdate: tmpl.NotBefore.Add(time.Hour),
			}, root, s)
			if err != nil {
				t.Fatal(err)
			}
			parsed, err := x509.ParseRevocationList(crl)
			if err != nil {
				t.Fatal(err)
			}
			if err := parsed.CheckSignatureFrom(root); err != nil {
				t.Fatalf("CRL signature: %v", err)
			}
		})
	}
	// A software signer goes straight through.
	soft := testKeys()[ECDSAP256]
	tmpl := caTemplate("software root")
	if _, err := CreateCertificate(rand.Reader, tmpl, tmpl, soft.Public(), soft); err != nil {
		t.Fatal(err)
	}
}

// The helpers skip the signer's own check only because crypto/x509 makes it: if a Go
// release stopped doing so, this test fails.
func TestCreateCertificateRefusesABadTokenSignature(t *testing.T) {
	cfg := tokenConfig(t, "ca-root", ECDSAP256)
	s := mustGenerate(t, cfg)
	other := cfg
	other.KeyLabel = "another-key"
	o := mustGenerate(t, other)
	tmpl := caTemplate("root")
	good, err := CreateCertificate(rand.Reader, tmpl, tmpl, s.Public(), s)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(good)
	if err != nil {
		t.Fatal(err)
	}

	s.key.Store(o.key.Load()) // the token now signs with a key that is not s.Public()
	der, err := CreateCertificate(rand.Reader, tmpl, tmpl, s.Public(), s)
	if err == nil || der != nil || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("CreateCertificate = %d bytes, %v; want no certificate and a signature error", len(der), err)
	}
	crl, err := CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(2), ThisUpdate: tmpl.NotBefore, NextUpdate: tmpl.NotBefore.Add(time.Hour),
	}, root, s)
	if err == nil || crl != nil {
		t.Fatalf("CreateRevocationList = %d bytes, %v; want no CRL and an error", len(crl), err)
	}
}
