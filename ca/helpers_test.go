package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
)

// t0 is the fixed "now" of every test.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

var testTD = spiffeid.RequireTrustDomainFromString("mesh.example")

const (
	testSPIFFE  = "spiffe://mesh.example/ns/sports/sa/api"
	testSvcDNS  = "api.sports.k8s.mesh.example"
	testInstDNS = "pod-1.ns.cluster-a.instanceid.athenz.k8s.mesh.example"
)

// CA keys are made once per key type per test binary; RSA ones are slow to generate.
var (
	keyMu   sync.Mutex
	keyPool = map[string]*signer.Software{}
)

func softKey(t testing.TB, kt signer.KeyType, slot string) *signer.Software {
	t.Helper()
	keyMu.Lock()
	defer keyMu.Unlock()
	name := string(kt) + "/" + slot
	if k, ok := keyPool[name]; ok {
		return k
	}
	k, err := signer.GenerateSoftware(kt)
	if err != nil {
		t.Fatal(err)
	}
	keyPool[name] = k
	return k
}

// selfSigned makes a root (and an intermediate when withIntermediate) of one key type.
func selfSigned(t testing.TB, kt signer.KeyType, withIntermediate bool) *ca.Issuer {
	t.Helper()
	cfg := ca.SelfSignedConfig{TrustDomain: testTD, RootKey: softKey(t, kt, "root"), Now: t0}
	if withIntermediate {
		cfg.IntermediateKey = softKey(t, kt, "intermediate")
	}
	iss, err := ca.NewSelfSigned(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

func newAuthority(t testing.TB, iss *ca.Issuer) *ca.Authority {
	t.Helper()
	a, err := ca.New(ca.Config{TrustDomain: testTD, Issuer: iss})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func workloadKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// workloadCSR is a CSR naming exactly the identity of workloadRequest.
func workloadCSR(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	u, _ := url.Parse(testSPIFFE)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: "sports.api"},
		DNSNames: []string{testSvcDNS, testInstDNS},
		URIs:     []*url.URL{u},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func workloadRequest(serial int64) policy.WorkloadRequest {
	return policy.WorkloadRequest{
		TrustDomain:       testTD.Name(),
		Domain:            "sports",
		Service:           "api",
		ProviderDNSSuffix: "k8s.mesh.example",
		InstanceID:        "pod-1.ns.cluster-a",
		Now:               t0,
		Serial:            big.NewInt(serial),
	}
}

// testCA is a hand-made CA certificate for the plug-in tests, which need certificates that
// break one rule each.
type testCA struct {
	cert *x509.Certificate
	key  signer.Signer
}

type caOpt func(*x509.Certificate)

func notAfter(at time.Time) caOpt      { return func(c *x509.Certificate) { c.NotAfter = at } }
func notBefore(at time.Time) caOpt     { return func(c *x509.Certificate) { c.NotBefore = at } }
func keyUsage(ku x509.KeyUsage) caOpt  { return func(c *x509.Certificate) { c.KeyUsage = ku } }
func notCA() caOpt                     { return func(c *x509.Certificate) { c.IsCA = false } }
func ekus(e ...x509.ExtKeyUsage) caOpt { return func(c *x509.Certificate) { c.ExtKeyUsage = e } }
func pathLen(n int) caOpt {
	return func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = n, n == 0 }
}

var serialCounter struct {
	sync.Mutex
	n int64
}

func nextSerial() *big.Int {
	serialCounter.Lock()
	defer serialCounter.Unlock()
	serialCounter.n++
	return big.NewInt(serialCounter.n + 1000)
}

// makeCA signs a CA certificate named cn with key (under parent, or self-signed when parent
// is nil), valid t0-1h .. t0+2y unless opts say otherwise.
func makeCA(t testing.TB, cn string, key signer.Signer, parent *testCA, opts ...caOpt) *testCA {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"test PKI"}},
		NotBefore:             t0.Add(-time.Hour),
		NotAfter:              t0.Add(2 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, o := range opts {
		o(tmpl)
	}
	parentCert, parentKey := tmpl, crypto.Signer(key)
	if parent != nil {
		parentCert, parentKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: c, key: key}
}

func writePEMCerts(t testing.TB, path string, certs ...*x509.Certificate) {
	t.Helper()
	var ders [][]byte
	for _, c := range certs {
		ders = append(ders, c.Raw)
	}
	if err := os.WriteFile(path, ca.EncodeCertificatesPEM(ders...), 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeKey(t testing.TB, path string, key crypto.Signer) {
	t.Helper()
	if err := signer.WritePlaintextFile(path, key); err != nil {
		t.Fatal(err)
	}
}

// writeCACerts lays out an Istio cacerts folder.
func writeCACerts(t testing.TB, caCert *testCA, key crypto.Signer, chain []*x509.Certificate, roots []*x509.Certificate) string {
	t.Helper()
	dir := t.TempDir()
	writePEMCerts(t, filepath.Join(dir, ca.CACertFile), caCert.cert)
	if key != nil {
		writeKey(t, filepath.Join(dir, ca.CAKeyFile), key)
	}
	writePEMCerts(t, filepath.Join(dir, ca.CertChainFile), chain...)
	writePEMCerts(t, filepath.Join(dir, ca.RootCertFile), roots...)
	return dir
}
