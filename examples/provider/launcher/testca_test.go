package launcher

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
)

// testCA is a meshca CA (a root and an intermediate, as ca.NewSelfSigned makes them) that
// issues the provider's certificate with the same policy the cluster uses, and CA-node client
// certificates like a meshca-server node's.
type testCA struct {
	t    testing.TB
	td   spiffeid.TrustDomain
	iss  *ca.Issuer
	auth *ca.Authority
}

func newTestCA(t testing.TB, td string) *testCA {
	t.Helper()
	root, err := signer.GenerateSoftware(signer.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := signer.GenerateSoftware(signer.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	trust := spiffeid.RequireTrustDomainFromString(td)
	iss, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: trust, RootKey: root, IntermediateKey: inter, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	auth, err := ca.New(ca.Config{TrustDomain: trust, Issuer: iss})
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{t: t, td: trust, iss: iss, auth: auth}
}

func (c *testCA) bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(c.td, c.iss.Roots())
}

// writeBundle writes the roots as PEM into dir/bundle.pem.
func (c *testCA) writeBundle(dir string) string {
	c.t.Helper()
	var ders [][]byte
	for _, r := range c.iss.Roots() {
		ders = append(ders, r.Raw)
	}
	p := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(p, ca.EncodeCertificatesPEM(ders...), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// workload issues identity <domain>.<service> a serverAuth certificate through the CA policy,
// as the cluster would, and returns it as an SVID.
func (c *testCA) workload(domain, service, instance string) *x509svid.SVID {
	c.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		c.t.Fatal(err)
	}
	req := policy.WorkloadRequest{
		TrustDomain: c.td.Name(), Domain: domain, Service: service, ProviderDNSSuffix: "meshca.test", InstanceID: instance,
		Purposes: []policy.Purpose{policy.ClientAuth, policy.ServerAuth}, ServerAuthAllowed: true,
		TTL: time.Hour, Now: time.Now(),
	}
	names, err := req.Names()
	if err != nil {
		c.t.Fatal(err)
	}
	if req.Serial, err = ca.NewSerial(nil); err != nil {
		c.t.Fatal(err)
	}
	uri, _ := url.Parse(names.SPIFFEID.String())
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: names.CommonName}, URIs: []*url.URL{uri}, DNSNames: []string{names.ServiceDNS, names.InstanceDNS},
	}, key)
	if err != nil {
		c.t.Fatal(err)
	}
	issued, err := c.auth.IssueWorkload(csr, req)
	if err != nil {
		c.t.Fatal(err)
	}
	return c.svid(issued.Chain, key)
}

// node mints a CA node's client certificate, spiffe://<td>/meshca/server/<id>.
func (c *testCA) node(id string) *x509svid.SVID {
	c.t.Helper()
	return c.mint(spiffeid.RequireFromPath(c.td, CANodePathPrefix+id))
}

// mint signs a client and server certificate for any SPIFFE ID with the issuer's key.
func (c *testCA) mint(id spiffeid.ID) *x509svid.SVID {
	c.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		c.t.Fatal(err)
	}
	serial, err := ca.NewSerial(nil)
	if err != nil {
		c.t.Fatal(err)
	}
	uri, _ := url.Parse(id.String())
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		URIs:        []*url.URL{uri}, BasicConstraintsValid: true,
	}
	der, err := signer.CreateCertificate(rand.Reader, tmpl, c.iss.Certificate(), key.Public(), c.iss.Signer())
	if err != nil {
		c.t.Fatal(err)
	}
	chain := [][]byte{der}
	for _, ch := range c.iss.Chain() {
		chain = append(chain, ch.Raw)
	}
	return c.svid(chain, key)
}

func (c *testCA) svid(chain [][]byte, key crypto.Signer) *x509svid.SVID {
	c.t.Helper()
	var certs []*x509.Certificate
	for _, der := range chain {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			c.t.Fatal(err)
		}
		certs = append(certs, cert)
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		c.t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}
}

// writeSVID writes an SVID's chain and key (PKCS#8) into dir/cert.pem and dir/key.pem, each
// replaced atomically (the key first), as an agent or meshctl dev would renew them.
func writeSVID(t testing.TB, dir string, s *x509svid.SVID) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for _, f := range []struct {
		path string
		data []byte
	}{{keyFile, keyPEM}, {certFile, certPEM}} {
		tmp := f.path + ".tmp"
		if err := os.WriteFile(tmp, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f.path); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// pemKey encodes a private key as PKCS#8 PEM.
func pemKey(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}
