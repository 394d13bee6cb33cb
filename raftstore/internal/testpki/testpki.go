// Package testpki issues the certificates the raftstore tests need: a cluster CA and node
// certificates carrying SPIFFE IDs, plus the malformed ones a peer check must refuse. It exists
// for tests and the test binary only, which is why it lives under internal/.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CA is a self-signed certificate authority for one trust domain.
type CA struct {
	TrustDomain spiffeid.TrustDomain
	Cert        *x509.Certificate
	Key         crypto.Signer
}

// NewCA creates a self-signed root for the trust domain td, valid from now-1h for a day.
func NewCA(td string, now time.Time) (*CA, error) {
	trustDomain, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", td, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "test cluster CA " + td},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{trustDomain.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("ca certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca certificate: %w", err)
	}
	return &CA{TrustDomain: trustDomain, Cert: cert, Key: key}, nil
}

// Bundle returns the CA as an X.509 bundle of its trust domain.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.TrustDomain, []*x509.Certificate{ca.Cert})
}

// ServerID returns the SPIFFE ID of the CA node nodeID in this trust domain.
func (ca *CA) ServerID(nodeID string) string {
	return "spiffe://" + ca.TrustDomain.Name() + "/meshca/server/" + nodeID
}

// IssueNode issues a node certificate carrying ServerID(nodeID).
func (ca *CA) IssueNode(nodeID string, now time.Time) (*x509svid.SVID, error) {
	return ca.Issue(now, ca.ServerID(nodeID))
}

// Issue issues a leaf certificate with the given URI SANs (any number, any scheme) and returns
// it with its key as an SVID-shaped value. It does not check that the URIs make a valid SVID:
// tests use it to build certificates a peer check must refuse.
func (ca *CA) Issue(now time.Time, uris ...string) (*x509svid.SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("leaf key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "test node"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(12 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, raw := range uris {
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("uri %q: %w", raw, err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("leaf certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("leaf certificate: %w", err)
	}
	svid := &x509svid.SVID{Certificates: []*x509.Certificate{cert}, PrivateKey: key}
	if len(cert.URIs) == 1 {
		if id, err := x509svid.IDFromCert(cert); err == nil {
			svid.ID = id
		}
	}
	return svid, nil
}

// WriteNodeFiles writes node.crt, node.key and ca.crt for nodeID into dir, the layout the
// raftnode test binary reads.
func (ca *CA) WriteNodeFiles(dir, nodeID string, now time.Time) error {
	svid, err := ca.IssueNode(nodeID, now)
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		return fmt.Errorf("marshal node certificate: %w", err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("certs dir: %w", err)
	}
	for name, data := range map[string][]byte{"node.crt": certPEM, "node.key": keyPEM, "ca.crt": caPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

func randomSerial() *big.Int {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		panic(fmt.Sprintf("testpki: read random serial: %v", err))
	}
	return serial
}
