package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// ErrNotCANode means a server's certificate verified against the bundle but does not name a CA
// node (spiffe://<trust-domain><server_id_prefix>...): the agent talks to nothing else.
var ErrNotCANode = errors.New("peer is not a CA node")

// nodeAuth verifies CA nodes' certificates: they chain to the current trust bundle at the
// agent's clock and their SPIFFE ID is a CA node's. It is what go-spiffe's tlsconfig does, with
// the injected clock.
type nodeAuth struct {
	td      spiffeid.TrustDomain
	prefix  string
	bundles x509bundle.Source
	clock   Clock
}

func (n *nodeAuth) verify(raw [][]byte, _ [][]*x509.Certificate) error {
	id, _, err := x509svid.ParseAndVerify(raw, n.bundles, x509svid.WithTime(n.clock.Now()))
	if err != nil {
		return fmt.Errorf("CA node certificate: %w", err)
	}
	if !id.MemberOf(n.td) || !strings.HasPrefix(id.Path(), n.prefix) {
		return fmt.Errorf("CA node certificate names %s, want spiffe://%s%s...: %w", id, n.td.Name(), n.prefix, ErrNotCANode)
	}
	return nil
}

// tlsConfig is the client side of a connection to a CA node. getCert, when set, presents a
// client certificate; it is called at every handshake.
func (n *nodeAuth) tlsConfig(getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The chain is verified by VerifyPeerCertificate against the SPIFFE bundle, as
		// go-spiffe's tlsconfig does; host names are not part of a SPIFFE identity.
		InsecureSkipVerify:    true, //nolint:gosec // verified in VerifyPeerCertificate
		VerifyPeerCertificate: n.verify,
		GetClientCertificate:  getCert,
	}
}

// tlsCertificate turns an SVID into the certificate crypto/tls presents.
func tlsCertificate(svid *x509svid.SVID) *tls.Certificate {
	c := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, x := range svid.Certificates {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// caClient calls the Identity API of the CA nodes. Every call dials a new connection: a refresh
// must be authenticated with the certificate it replaces, never with one an earlier connection
// was made with, and calls are rare (once per half lifetime). Nodes are tried in order from the
// one that answered last; an unreachable or failing node passes the call to the next.
type caClient struct {
	servers []string
	auth    *nodeAuth
	timeout time.Duration
	log     *slog.Logger

	mu        sync.Mutex
	preferred int
}

// failover reports whether an error from one node means the next node should be asked: the
// node is down, overloaded, has no leader, or broke. A node that decided the request (refused
// it, said it is malformed) answered for the cluster.
func failover(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.Internal, codes.Unknown:
		return true
	}
	return false
}

// call runs fn against the nodes in order until one answers. svid, when set, is the client
// certificate. It returns the answer and the node that gave it, or the last error.
func (c *caClient) call(ctx context.Context, svid *x509svid.SVID, what string, fn func(context.Context, meshcav1.IdentityClient) (*meshcav1.IdentityResponse, error)) (*meshcav1.IdentityResponse, string, error) {
	var getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	if svid != nil {
		cert := tlsCertificate(svid)
		getCert = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	creds := credentials.NewTLS(c.auth.tlsConfig(getCert))
	c.mu.Lock()
	start := c.preferred
	c.mu.Unlock()
	var last error
	for i := range c.servers {
		idx := (start + i) % len(c.servers)
		addr := c.servers[idx]
		resp, err := c.callNode(ctx, addr, creds, fn)
		if err == nil {
			c.mu.Lock()
			c.preferred = idx
			c.mu.Unlock()
			return resp, addr, nil
		}
		if ctx.Err() != nil {
			return nil, addr, ctx.Err()
		}
		last = fmt.Errorf("%s via %s: %w", what, addr, err)
		if !failover(err) {
			return nil, addr, last
		}
		c.log.Warn("agent: CA node failed, trying the next", "call", what, "node", addr, "error", err)
	}
	return nil, "", last
}

func (c *caClient) callNode(ctx context.Context, addr string, creds credentials.TransportCredentials, fn func(context.Context, meshcav1.IdentityClient) (*meshcav1.IdentityResponse, error)) (*meshcav1.IdentityResponse, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds),
		// One small call per connection: the HTTP/2 windows stay at their initial 64 KiB, so
		// no bandwidth-probing ping goes out (and is answered) after each answer, and
		// tls.Conn's own buffering is enough.
		grpc.WithStaticStreamWindowSize(1<<16-1), grpc.WithStaticConnWindowSize(1<<16-1),
		grpc.WithReadBufferSize(0))
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "dial: %v", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return fn(ctx, meshcav1.NewIdentityClient(conn))
}
