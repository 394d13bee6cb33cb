package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"sync"
	"testing"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// TestRefreshAnswerDescribesItsCertificate pins down that the fields of an identity answer
// (serial, SPIFFE ID, not_after), which are taken from what was signed rather than parsed
// back, are those of the certificate it carries, for register and for refresh.
func TestRefreshAnswerDescribesItsCertificate(t *testing.T) {
	f := newIdentityFixture(t, nil)
	ctx := context.Background()
	w := newWorkload(t, "sports", "api", testSuffix, "pod-7.ns.cluster-a")
	resp, err := f.client().Register(ctx, w.registerReq(t, provMain))
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	check := func(what string, resp *meshcav1.IdentityResponse) {
		t.Helper()
		leaf := parseLeaf(t, resp)
		if resp.GetSerial() != serialOf(leaf) || resp.GetNotAfter() != leaf.NotAfter.Unix() ||
			len(leaf.URIs) != 1 || resp.GetSpiffeId() != leaf.URIs[0].String() {
			t.Errorf("%s: answer serial %s not_after %d spiffe_id %s; certificate %s %d %v",
				what, resp.GetSerial(), resp.GetNotAfter(), resp.GetSpiffeId(), serialOf(leaf), leaf.NotAfter.Unix(), leaf.URIs)
		}
	}
	check("register", resp)
	cert := w.tlsCert(t, resp)
	w.key = newKey(t)
	next, err := f.clientWith(cert).Refresh(ctx, &meshcav1.RefreshRequest{Csr: w.csr(t, nil)})
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	check("refresh", next)
}

// ticketCache records the sessions a server hands a client.
type ticketCache struct {
	mu  sync.Mutex
	put int
}

func (c *ticketCache) Get(string) (*tls.ClientSessionState, bool) { return nil, false }

func (c *ticketCache) Put(_ string, cs *tls.ClientSessionState) {
	if cs == nil {
		return
	}
	c.mu.Lock()
	c.put++
	c.mu.Unlock()
}

// TestGRPCPortSendsNoSessionTicket pins down that the gRPC port does not issue TLS session
// tickets: no client resumes there (each refresh presents a new certificate on a new
// connection), so a ticket per connection would be work thrown away.
func TestGRPCPortSendsNoSessionTicket(t *testing.T) {
	f := newIdentityFixture(t, nil)
	cache := &ticketCache{}
	conn, err := tls.Dial("tcp", f.s.GRPCAddr(), &tls.Config{
		RootCAs: f.bundlePool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2"}, ClientSessionCache: cache,
		// The node certificate names a SPIFFE ID, not a host: check its chain instead.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: f.bundlePool(), Intermediates: inter})
			return err
		},
	})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	// A TLS 1.3 ticket arrives after the handshake: read until the server has answered the
	// HTTP/2 preface with its SETTINGS, which it sends after any ticket.
	if _, err := conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 9)
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatalf("read the server's first frame: %v", err)
	}
	if buf[3] != 0x4 {
		t.Fatalf("first frame type %d, want SETTINGS (4)", buf[3])
	}
	cache.mu.Lock()
	defer cache.mu.Unlock()
	if cache.put != 0 {
		t.Errorf("the gRPC port sent %d session tickets, want none", cache.put)
	}
}
