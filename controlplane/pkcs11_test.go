//go:build cgo

package controlplane

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/internal/testenv"
)

// TestPKCS11Mode runs a node whose CA key lives on a SoftHSM2 token: the key is generated on
// the token at first start, the root certificate is written to ca.dir, the replicated record
// names the key by label, and workload certificates chain to that root.
func TestPKCS11Mode(t *testing.T) {
	tok := testenv.NewSoftHSMToken(t, "meshca-test")
	caDir := filepath.Join(t.TempDir(), "ca")
	main := listenProvider(t)
	ts := startServer(t, func(c *Config) {
		c.CA = CAConfig{Mode: CAModePKCS11, Dir: caDir, KeyType: "ecdsa-p256", PKCS11: PKCS11Config{
			Module: tok.ModulePath, TokenLabel: tok.Label, KeyLabel: "meshca-root", PINFile: tok.PINFile,
		}}
		c.Providers = []ProviderConfig{{Name: provMain, DNSSuffix: testSuffix, ConfirmEndpoint: main.url}}
	})
	auth, rec, err := ts.s.Authority()
	if err != nil {
		t.Fatal(err)
	}
	if rec.GetSigner().GetPkcs11Label() != "meshca-root" {
		t.Fatalf("signer ref %v, want the PKCS#11 label", rec.GetSigner())
	}
	if _, ok := auth.Issuer().Signer().(*signer.PKCS11); !ok {
		t.Fatalf("the authority signs with %T, not the token", auth.Issuer().Signer())
	}
	raw, err := os.ReadFile(filepath.Join(caDir, SelfSignedCertFile))
	if err != nil {
		t.Fatal(err)
	}
	root, err := ca.ParseCertificatesPEM(raw)
	if err != nil || !root[0].Equal(ts.s.Bundle().X509Authorities()[0]) {
		t.Fatalf("ca.dir root %v is not the bundle's", err)
	}
	// The test mints the provider's certificate with the token key, as the CA would.
	iss := auth.Issuer()
	id, _ := ServiceSPIFFEID(ts.s.TrustDomain(), provMain)
	main.serve(t, serverSVID(t, iss, id), bundleSource{ts.s})
	ts.addService("sports", "api", provMain)
	w := newWorkload(t, "sports", "api", testSuffix, "pod-hsm")
	resp, err := ts.client().Register(context.Background(), w.registerReq(t, provMain))
	if err != nil {
		t.Fatal(err)
	}
	verifyIssued(t, ts, resp, w)
}
