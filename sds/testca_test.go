package sds

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// testCA is a root and an intermediate for one trust domain, issuing SVIDs shaped like meshca's
// (leaf + intermediate chain, URI SAN, clientAuth and serverAuth).
type testCA struct {
	td       spiffeid.TrustDomain
	root     *x509.Certificate
	inter    *x509.Certificate
	interKey *ecdsa.PrivateKey
}

var testNow = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func mustCert(t testing.TB, tmpl, parent *x509.Certificate, pub, priv any) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newTestCA(t testing.TB, td string) *testCA {
	t.Helper()
	rootKey := newKey(t)
	rootTmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: td + " root"},
		NotBefore:             testNow.Add(-time.Hour),
		NotAfter:              testNow.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: td}},
	}
	root := mustCert(t, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	interKey := newKey(t)
	inter := mustCert(t, &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: td + " intermediate"},
		NotBefore:             testNow.Add(-time.Hour),
		NotAfter:              testNow.Add(365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: td}},
	}, root, interKey.Public(), rootKey)
	return &testCA{td: spiffeid.RequireTrustDomainFromString(td), root: root, inter: inter, interKey: interKey}
}

func (ca *testCA) bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.root})
}

// issue returns a fresh SVID (new key, new serial) for id, with the DNS SANs given.
func (ca *testCA) issue(t testing.TB, id spiffeid.ID, dns ...string) *x509svid.SVID {
	t.Helper()
	key := newKey(t)
	u := id.URL()
	leaf := mustCert(t, &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: id.Path()},
		NotBefore:    testNow.Add(-time.Minute),
		NotAfter:     testNow.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		URIs:         []*url.URL{u},
		DNSNames:     dns,
	}, ca.inter, key.Public(), ca.interKey)
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf, ca.inter}, PrivateKey: key}
}
