//go:build cgo

package ca_test

import (
	"crypto/x509"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/internal/testenv"
)

// hsmKeys makes a fresh SoftHSM2 token and generates one key per label on it. The keys are
// closed when the test ends, so the next test's token is seen by a freshly loaded module.
func hsmKeys(t testing.TB, kt signer.KeyType, labels ...string) []*signer.PKCS11 {
	t.Helper()
	tok := testenv.NewSoftHSMToken(t, "meshca-ca")
	var keys []*signer.PKCS11
	for _, label := range labels {
		cfg := signer.DefaultPKCS11Config()
		cfg.ModulePath = tok.ModulePath
		cfg.TokenLabel = tok.Label
		cfg.KeyLabel = label
		cfg.PINFile = tok.PINFile
		cfg.KeyType = kt
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
		k, err := signer.GeneratePKCS11(cfg)
		if err != nil {
			t.Fatalf("generate %s key %q on SoftHSM2: %v", kt, label, err)
		}
		t.Cleanup(func() { _ = k.Close() })
		keys = append(keys, k)
	}
	return keys
}

// The CA keys live on a SoftHSM2 token; openssl judges what they sign.
func TestOpenSSLSoftHSMSigner(t *testing.T) {
	for _, kt := range []signer.KeyType{signer.ECDSAP256, signer.RSA2048} {
		t.Run(string(kt)+" root and intermediate on the token", func(t *testing.T) {
			keys := hsmKeys(t, kt, "root", "intermediate")
			iss, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: testTD, RootKey: keys[0], IntermediateKey: keys[1], Now: t0})
			if err != nil {
				t.Fatal(err)
			}
			if iss.Certificate().SignatureAlgorithm != signer.SignatureAlgorithmFor(kt) {
				t.Errorf("intermediate signed with %v", iss.Certificate().SignatureAlgorithm)
			}
			checkWithOpenSSL(t, newAuthority(t, iss))
		})
	}
}

// A plug-in intermediate whose key is on the token: only the certificates are on disk.
func TestLoadCACertsWithSoftHSMKey(t *testing.T) {
	keys := hsmKeys(t, signer.ECDSAP256, "plug-in", "other")
	rootKey := softKey(t, signer.ECDSAP256, "hsm-root")
	root := makeCA(t, "root", rootKey, nil)
	caCert := makeCA(t, "ca", keys[0], root, pathLen(0)) // the root signs the token key's public half
	dir := writeCACerts(t, caCert, nil, []*x509.Certificate{caCert.cert, root.cert}, []*x509.Certificate{root.cert})

	iss, err := ca.LoadCACerts(dir, keys[0], t0)
	if err != nil {
		t.Fatalf("cacerts with the key on the token refused: %v", err)
	}
	a := newAuthority(t, iss)
	got, err := a.IssueWorkload(workloadCSR(t, workloadKey(t)), workloadRequest(31))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(parseChain(t, got.Chain), a.Bundle(), x509svid.WithTime(t0)); err != nil {
		t.Errorf("certificate signed on the token does not verify: %v", err)
	}

	_, err = ca.LoadCACerts(dir, keys[1], t0)
	if !errors.Is(err, ca.ErrKeyMismatch) {
		t.Errorf("another token key: %v, want ErrKeyMismatch", err)
	}
	if _, err := ca.LoadCACerts(filepath.Join(dir, "missing"), keys[0], t0); !errors.Is(err, ca.ErrCAFile) {
		t.Errorf("missing folder: %v, want ErrCAFile", err)
	}
}
