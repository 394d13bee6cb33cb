package controlplane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
)

// nodeBackdate is how far before now a node certificate starts, for peers with skewed clocks.
const nodeBackdate = time.Minute

// NodeSPIFFEID is the SPIFFE ID of a CA node: spiffe://<trust-domain>/meshca/server/<node-id>.
// The Raft cluster port admits exactly these identities, and providers see it as the client
// of their confirm endpoint.
func NodeSPIFFEID(td spiffeid.TrustDomain, nodeID string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "meshca", "server", nodeID)
}

// nodeSVID is this node's own certificate, signed locally with the CA key every node holds:
// the x509svid.Source the cluster port, the gRPC and HTTPS listeners and the provider client
// present. It is short-lived and renewed at half its life, or at once when the signing issuer
// changes.
type nodeSVID struct {
	id    spiffeid.ID
	name  string // the node id, the certificate's CN
	dns   []string
	ips   []net.IP
	ttl   time.Duration
	mu    sync.RWMutex
	cur   *x509svid.SVID
	by    string // the issuer id that signed cur
	renew time.Time
}

// newNodeSVID derives the certificate's names from the listen hosts and the configured extra
// names. An unspecified listen host (all interfaces) adds localhost, the loopback addresses
// and the host name.
func newNodeSVID(id spiffeid.ID, cfg *Config) *nodeSVID {
	n := &nodeSVID{id: id, name: cfg.NodeID, ttl: cfg.CA.NodeCertTTL.D()}
	add := func(h string) {
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(n.ips, ip.Equal) {
				n.ips = append(n.ips, ip)
			}
			return
		}
		if h != "" && !slices.Contains(n.dns, h) {
			n.dns = append(n.dns, h)
		}
	}
	for _, a := range []string{cfg.Listen.GRPC, cfg.Listen.HTTP, cfg.Listen.ClusterAdvertise} {
		host, _, _ := net.SplitHostPort(a)
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			add("localhost")
			add("127.0.0.1")
			add("::1")
			if hn, err := os.Hostname(); err == nil {
				add(hn)
			}
			continue
		}
		add(host)
	}
	for _, s := range cfg.Listen.ServerNames {
		add(s)
	}
	return n
}

// GetX509SVID implements x509svid.Source.
func (n *nodeSVID) GetX509SVID() (*x509svid.SVID, error) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.cur == nil {
		return nil, errors.New("node certificate not issued yet")
	}
	return n.cur, nil
}

// due reports whether the certificate must be renewed at now (half its life has passed) or
// because issuerID now signs, and when the next renewal is due otherwise.
func (n *nodeSVID) due(issuerID string, now time.Time) (bool, time.Time) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.cur == nil || n.by != issuerID || !now.Before(n.renew) {
		return true, now
	}
	return false, n.renew
}

// issue signs a new certificate with iss (whose record id is issuerID) at now and makes it
// current.
func (n *nodeSVID) issue(iss *ca.Issuer, issuerID string, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("node certificate: key: %w", err)
	}
	serial, err := ca.NewSerial(nil)
	if err != nil {
		return fmt.Errorf("node certificate: %w", err)
	}
	uri, err := url.Parse(n.id.String())
	if err != nil {
		return fmt.Errorf("node certificate: %w", err)
	}
	notBefore := now.Add(-nodeBackdate).Truncate(time.Second)
	notAfter := now.Add(n.ttl).Truncate(time.Second)
	if notAfter.After(iss.Certificate().NotAfter) {
		notAfter = iss.Certificate().NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: n.name, Organization: []string{"meshca server"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{uri},
		DNSNames:              n.dns,
		IPAddresses:           n.ips,
		SignatureAlgorithm:    iss.Signer().SignatureAlgorithm(),
	}
	der, err := signer.CreateCertificate(rand.Reader, tmpl, iss.Certificate(), key.Public(), iss.Signer())
	if err != nil {
		return fmt.Errorf("node certificate: signing: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("node certificate: %w", err)
	}
	svid := &x509svid.SVID{ID: n.id, Certificates: append([]*x509.Certificate{leaf}, iss.Chain()...), PrivateKey: key}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cur, n.by = svid, issuerID
	n.renew = notBefore.Add(notAfter.Sub(notBefore) / 2)
	return nil
}
