package policy_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/policy"
)

// t0 is the fixed "now" of every test: time is injected, never read.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	testTD       = "mesh.example"
	testDomain   = "sports"
	testService  = "api"
	testSuffix   = "k8s.mesh.example"
	testInstance = "pod-1.ns.cluster-a"
	testSPIFFE   = "spiffe://mesh.example/ns/sports/sa/api"
	testSvcDNS   = "api.sports.k8s.mesh.example"
	testInstDNS  = "pod-1.ns.cluster-a.instanceid.athenz.k8s.mesh.example"
)

// Keys are expensive to make (RSA especially), so each kind is made once per test binary.
var (
	keyOnce sync.Once
	keys    map[string]crypto.Signer
)

func testKey(t testing.TB, kind string) crypto.Signer {
	t.Helper()
	keyOnce.Do(func() {
		keys = map[string]crypto.Signer{}
		must := func(k crypto.Signer, err error) crypto.Signer {
			if err != nil {
				panic(err)
			}
			return k
		}
		keys["p256"] = must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
		keys["p256-b"] = must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
		keys["p384"] = must(ecdsa.GenerateKey(elliptic.P384(), rand.Reader))
		keys["p224"] = must(ecdsa.GenerateKey(elliptic.P224(), rand.Reader))
		keys["p521"] = must(ecdsa.GenerateKey(elliptic.P521(), rand.Reader))
		keys["rsa2048"] = must(rsa.GenerateKey(rand.Reader, 2048))
		keys["rsa1024"] = must(rsa.GenerateKey(rand.Reader, 1024))
		_, ed, err := ed25519.GenerateKey(rand.Reader)
		keys["ed25519"] = must(ed, err)
		keys["ca"] = must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	})
	k, ok := keys[kind]
	if !ok {
		t.Fatalf("no test key %q", kind)
	}
	return k
}

// testIssuer is a CA certificate valid from t0-1h to t0+365 days.
func testIssuer(t testing.TB) *x509.Certificate {
	t.Helper()
	return issuerValid(t, t0.Add(-time.Hour), t0.Add(365*24*time.Hour))
}

func issuerValid(t testing.TB, notBefore, notAfter time.Time) *x509.Certificate {
	t.Helper()
	key := testKey(t, "ca")
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA", Organization: []string{"meshca"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func goodRequest() policy.WorkloadRequest {
	return policy.WorkloadRequest{
		TrustDomain:       testTD,
		Domain:            testDomain,
		Service:           testService,
		ProviderDNSSuffix: testSuffix,
		InstanceID:        testInstance,
		Now:               t0,
		Serial:            big.NewInt(0x1234567890),
	}
}

// goodCSRTemplate asks for exactly the names of goodRequest.
func goodCSRTemplate() *x509.CertificateRequest {
	u, _ := url.Parse(testSPIFFE)
	return &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: testDomain + "." + testService},
		DNSNames: []string{testSvcDNS, testInstDNS},
		URIs:     []*url.URL{u},
	}
}

func makeCSRDER(t testing.TB, tmpl *x509.CertificateRequest, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("create CSR: %v", err)
	}
	return der
}

func parseCSR(t testing.TB, der []byte) *x509.CertificateRequest {
	t.Helper()
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatalf("parse CSR: %v", err)
	}
	return csr
}

func makeCSR(t testing.TB, tmpl *x509.CertificateRequest, key crypto.Signer) *x509.CertificateRequest {
	t.Helper()
	return parseCSR(t, makeCSRDER(t, tmpl, key))
}

func readPEMCSR(t testing.TB, path string) *x509.CertificateRequest {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	return parseCSR(t, block.Bytes)
}

// csrWithSPKI re-encodes a CSR with another SubjectPublicKeyInfo and a signature made by key
// over the new content: for keys crypto/x509 refuses to sign for (an RSA modulus too large to
// generate in a test). The signature cannot verify with the substituted key.
func csrWithSPKI(t testing.TB, der []byte, spki []byte, key crypto.Signer) []byte {
	t.Helper()
	csr := parseCSR(t, der)
	var info struct {
		Version    int
		Subject    asn1.RawValue
		SPKI       asn1.RawValue
		Attributes asn1.RawValue
	}
	if _, err := asn1.Unmarshal(csr.RawTBSCertificateRequest, &info); err != nil {
		t.Fatal(err)
	}
	info.SPKI = asn1.RawValue{FullBytes: spki}
	tbs, err := asn1.Marshal(info)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(tbs)
	sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	out, err := asn1.Marshal(struct {
		TBS asn1.RawValue
		Alg pkix.AlgorithmIdentifier
		Sig asn1.BitString
	}{
		TBS: asn1.RawValue{FullBytes: tbs},
		Alg: pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}, Parameters: asn1.NullRawValue},
		Sig: asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustPolicy(t testing.TB) *policy.Policy {
	t.Helper()
	p, err := policy.New(policy.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// workloadInvariants are the properties every accepted workload template has, whatever the
// input: the fuzz target checks them on arbitrary CSRs.
func workloadInvariants(t testing.TB, tmpl *x509.Certificate, csr *x509.CertificateRequest, req policy.WorkloadRequest, issuer *x509.Certificate, cfg policy.Config) {
	t.Helper()
	names, err := req.Names()
	if err != nil {
		t.Fatalf("accepted a request whose names are invalid: %v", err)
	}
	if tmpl.IsCA || !tmpl.BasicConstraintsValid {
		t.Errorf("template IsCA=%v BasicConstraintsValid=%v, want a CA:FALSE leaf", tmpl.IsCA, tmpl.BasicConstraintsValid)
	}
	if tmpl.MaxPathLen > 0 || len(tmpl.PermittedDNSDomains)+len(tmpl.ExcludedDNSDomains)+len(tmpl.PermittedURIDomains) > 0 || len(tmpl.ExtraExtensions) > 0 {
		t.Errorf("template carries CA or extra extensions")
	}
	if tmpl.Subject.CommonName != names.CommonName || len(tmpl.Subject.Names)+len(tmpl.Subject.ExtraNames) > 0 {
		t.Errorf("subject = %+v, want CN %q only", tmpl.Subject, names.CommonName)
	}
	if len(tmpl.DNSNames) != 2 || tmpl.DNSNames[0] != names.ServiceDNS || tmpl.DNSNames[1] != names.InstanceDNS {
		t.Errorf("DNS SANs = %q, want [%q %q]", tmpl.DNSNames, names.ServiceDNS, names.InstanceDNS)
	}
	if len(tmpl.URIs) != 1 || tmpl.URIs[0].String() != names.SPIFFEID.String() {
		t.Errorf("URI SANs = %v, want [%s]", tmpl.URIs, names.SPIFFEID)
	}
	if len(tmpl.EmailAddresses)+len(tmpl.IPAddresses) > 0 {
		t.Errorf("template has email or IP SANs")
	}
	for _, e := range tmpl.ExtKeyUsage {
		if e != x509.ExtKeyUsageClientAuth && (e != x509.ExtKeyUsageServerAuth || !req.ServerAuthAllowed) {
			t.Errorf("ExtKeyUsage %v was not granted", e)
		}
	}
	if len(tmpl.ExtKeyUsage) == 0 || len(tmpl.UnknownExtKeyUsage) > 0 {
		t.Errorf("ExtKeyUsage = %v, unknown %v", tmpl.ExtKeyUsage, tmpl.UnknownExtKeyUsage)
	}
	if tmpl.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
		t.Errorf("leaf key usage %b includes certSign or cRLSign", tmpl.KeyUsage)
	}
	if tmpl.SerialNumber.Sign() <= 0 || tmpl.SerialNumber.Cmp(req.Serial) != 0 {
		t.Errorf("serial %v, want the caller's positive %v", tmpl.SerialNumber, req.Serial)
	}
	if tmpl.NotBefore.After(req.Now) || tmpl.NotBefore.Before(issuer.NotBefore) || req.Now.Sub(tmpl.NotBefore) > cfg.Backdate+time.Second {
		t.Errorf("NotBefore %s not in [max(now-backdate, issuer.NotBefore), now]", tmpl.NotBefore)
	}
	if tmpl.NotAfter.After(issuer.NotAfter) || !tmpl.NotAfter.After(tmpl.NotBefore) || tmpl.NotAfter.Sub(req.Now) > cfg.MaxTTL {
		t.Errorf("NotAfter %s beyond the issuer %s or the maximum TTL", tmpl.NotAfter, issuer.NotAfter)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Errorf("accepted a CSR whose signature does not verify: %v", err)
	}
}
