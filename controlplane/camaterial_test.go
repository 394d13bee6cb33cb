package controlplane

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
)

func testKEK(t *testing.T) signer.KEK {
	t.Helper()
	raw := make([]byte, signer.KEKSize)
	rand.Read(raw)
	k, err := signer.NewKEK(raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestSharedCADirGeneratesOnce pins down the self-signed bootstrap of nodes that share one
// ca.dir: however many start at once, one root is generated, and every node uses it.
func TestSharedCADirGeneratesOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	kek := testKEK(t)
	cfg := &Config{TrustDomain: testTD, CA: CAConfig{Mode: CAModeSelfSigned, Dir: dir, KeyType: "ecdsa-p384"}}
	var wg sync.WaitGroup
	got := make([]*localCA, 3)
	errs := make([]error, 3)
	for i := range got {
		wg.Go(func() { got[i], errs[i] = loadLocalCA(cfg, kek, nil, time.Now()) })
	}
	wg.Wait()
	for i := range got {
		if errs[i] != nil {
			t.Fatalf("node %d: %v", i, errs[i])
		}
		if !got[i].issuer.Certificate().Equal(got[0].issuer.Certificate()) || got[i].record.GetId() != got[0].record.GetId() {
			t.Fatalf("node %d generated its own root", i)
		}
	}
	if kt := got[0].issuer.Signer().KeyType(); kt != signer.ECDSAP384 {
		t.Fatalf("key type %s, want the configured ecdsa-p384", kt)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 3 { // the lock, the certificate and the sealed key
		t.Fatalf("ca.dir holds %v", names)
	}
	// The record carries the sealed key every node opens with its KEK.
	sealed := got[0].record.GetSigner().GetEncryptedKey()
	k, err := signer.ParseEncrypted(sealed, kek)
	if err != nil || k.KeyID() != got[0].record.GetSigner().GetKeyId() {
		t.Fatalf("sealed key in the record: %v", err)
	}
	if _, err := loadLocalCA(cfg, testKEK(t), nil, time.Now()); !errors.Is(err, signer.ErrWrongKEK) || !strings.Contains(err.Error(), SelfSignedKeyFile) {
		t.Fatalf("another KEK: %v, want ErrWrongKEK naming %s", err, SelfSignedKeyFile)
	}
}

// writeCACerts writes an Istio cacerts folder: a root and an intermediate that signs.
func writeCACerts(t *testing.T, dir string) (*ca.Issuer, *signer.Software) {
	t.Helper()
	rootKey, interKey := mustSoftware(t), mustSoftware(t)
	iss, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: spiffeid.RequireTrustDomainFromString(testTD), RootKey: rootKey, IntermediateKey: interKey, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(dir, 0o700)
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(ca.CACertFile, ca.EncodeCertificatesPEM(iss.Certificate().Raw))
	write(ca.RootCertFile, ca.EncodeCertificatesPEM(iss.Roots()[0].Raw))
	write(ca.CertChainFile, ca.EncodeCertificatesPEM(iss.Certificate().Raw, iss.Roots()[0].Raw))
	if err := signer.WritePlaintextFile(filepath.Join(dir, ca.CAKeyFile), interKey); err != nil {
		t.Fatal(err)
	}
	return iss, interKey
}

// TestCACertsMode runs a node on a plug-in intermediate: issued chains carry the intermediate,
// the bundle holds the root only.
func TestCACertsMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cacerts")
	iss, _ := writeCACerts(t, dir)
	main := listenProvider(t)
	ts := startServer(t, func(c *Config) {
		c.CA.Mode, c.CA.Dir = CAModeCACerts, dir
		c.Providers = []ProviderConfig{{Name: provMain, DNSSuffix: testSuffix, ConfirmEndpoint: main.url}}
	})
	auth, rec, err := ts.s.Authority()
	if err != nil {
		t.Fatal(err)
	}
	if !auth.Issuer().Certificate().Equal(iss.Certificate()) || len(rec.GetChain()) != 1 {
		t.Fatal("the node does not sign with the plug-in intermediate")
	}
	if b := ts.s.Bundle().X509Authorities(); len(b) != 1 || !b[0].Equal(iss.Roots()[0]) {
		t.Fatal("the bundle is not the cacerts root")
	}
	td := spiffeid.RequireTrustDomainFromString(testTD)
	id, _ := ServiceSPIFFEID(td, provMain)
	main.serve(t, serverSVID(t, iss, id), bundleSource{ts.s})
	ts.addService("sports", "api", provMain)
	w := newWorkload(t, "sports", "api", testSuffix, "pod-cacerts")
	resp, err := ts.client().Register(context.Background(), w.registerReq(t, provMain))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.ParseCertificatesPEM([]byte(resp.GetChain()))
	if err != nil || len(chain) != 1 || !chain[0].Equal(iss.Certificate()) {
		t.Fatalf("chain %v: %v, want the intermediate", chain, err)
	}
	verifyIssued(t, ts, resp, w)
}

// TestCACertsNeedsKEK pins down that a cacerts node cannot start without a KEK: the key is
// replicated sealed under it.
func TestCACertsNeedsKEK(t *testing.T) {
	c := &Config{NodeID: "n1", DataDir: "/d", TrustDomain: testTD,
		Listen: ListenConfig{GRPC: "127.0.0.1:1", Cluster: "127.0.0.1:2", HTTP: "127.0.0.1:3"},
		CA:     CAConfig{Mode: CAModeCACerts, Dir: "/c"}}
	c.setDefaults()
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "kek_file or kek_env is required in cacerts mode") {
		t.Fatalf("Validate: %v", err)
	}
}
