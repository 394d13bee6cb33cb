package raftstore

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/raftstore/internal/kvfsm"
	"github.com/meshca/meshca/raftstore/internal/testpki"
)

// dialerTLS is a client config presenting svid (nil: no certificate) with ALPN protos and
// no verification of the server: these tests look at what the server does.
func dialerTLS(svid *x509svid.SVID, protos ...string) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: protos}
	if svid != nil {
		cfg.GetClientCertificate = tlsconfig.GetClientCertificate(svid)
	}
	return cfg
}

// handshake dials addr and completes the TLS handshake. With TLS 1.3 a client learns that
// the server refused its certificate only on its first read, so it reads once.
func handshake(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	var b [1]byte
	_, err = conn.Read(b[:])
	conn.SetReadDeadline(time.Time{})
	var ne net.Error
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func refused(reg *prometheus.Registry, reason string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() != "meshca_raft_conn_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestTheClusterPortRefusesPeersThatFailTheCheckAndCountsThem(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.waitLeader()
	now := time.Now()
	otherCA, err := testpki.NewCA(testTrustDomain, now) // same trust domain, different key
	if err != nil {
		t.Fatal(err)
	}
	foreignCA, err := testpki.NewCA("other.example", now)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *testpki.CA, uris ...string) *x509svid.SVID {
		s, err := ca.Issue(now, uris...)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	tests := []struct {
		name   string
		svid   *x509svid.SVID
		reason string
	}{
		{"a valid server certificate of a node that is not a member is refused", issue(c.ca, c.ca.ServerID("n9")), RefusedNotMember},
		{"a certificate without a SPIFFE ID is refused", issue(c.ca), RefusedNotSPIFFE},
		{"a certificate with a non-SPIFFE URI is refused", issue(c.ca, "https://n2.mesh.example/"), RefusedNotSPIFFE},
		{"a certificate with two SPIFFE IDs is refused", issue(c.ca, c.ca.ServerID("n2"), c.ca.ServerID("n3")), RefusedNotSPIFFE},
		{"a member id in another trust domain is refused", issue(c.ca, "spiffe://other.example/meshca/server/n2"), RefusedWrongTrustDomain},
		{"a certificate from another trust domain's CA is refused", issue(foreignCA, foreignCA.ServerID("n2")), RefusedWrongTrustDomain},
		{"a workload identity is not a server", issue(c.ca, "spiffe://mesh.example/ns/sports/sa/api"), RefusedNotServer},
		{"a member id signed by a CA outside the bundle is refused", issue(otherCA, otherCA.ServerID("n2")), RefusedUntrusted},
		{"a client without a certificate is refused", nil, RefusedNoCertificate},
	}
	target := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, proto := range []string{ALPNRaft, ALPNGRPC} {
				before := refused(c.regs[target], tt.reason)
				handshakes := refused(c.regs[target], RefusedHandshake)
				conn, err := handshake(t, c.addrs[target], dialerTLS(tt.svid, proto))
				if err == nil {
					conn.Close()
					t.Fatalf("ALPN %s: handshake succeeded, want it refused (%s)", proto, tt.reason)
				}
				// The server counts before it sends the alert the client just read.
				if got := refused(c.regs[target], tt.reason); got != before+1 {
					t.Fatalf("ALPN %s: meshca_raft_conn_refused_total{reason=%q} = %v, want %v", proto, tt.reason, got, before+1)
				}
				if got := refused(c.regs[target], RefusedHandshake); got != handshakes {
					t.Fatalf("ALPN %s: the refusal was counted twice (also as %q)", proto, RefusedHandshake)
				}
			}
		})
	}
}

func TestALPNRoutesConnectionsToRaftAndToGRPC(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	member, err := c.ca.IssueNode("n2", time.Now())
	if err != nil {
		t.Fatal(err)
	}

	t.Run("meshca-raft reaches the raft transport", func(t *testing.T) {
		// A client-only raft transport speaking the real protocol with a member's
		// certificate: a stale AppendEntries is answered (and rejected) with the leader's
		// current term, which only the raft side of the port can do.
		stream := &streamLayer{Listener: newChanListener(advertisedAddr("127.0.0.1:1")), advertise: "127.0.0.1:1", tlsConfig: dialerTLS(member, ALPNRaft)}
		trans := raft.NewNetworkTransport(stream, 1, 5*time.Second, nil)
		defer trans.Close()
		var resp raft.AppendEntriesResponse
		req := raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("n2"), Addr: []byte("127.0.0.1:1")}, Term: 0}
		if err := trans.AppendEntries("n1", raft.ServerAddress(c.addrs[leader]), &req, &resp); err != nil {
			t.Fatalf("AppendEntries over meshca-raft: %v", err)
		}
		if resp.Success || resp.Term < 1 {
			t.Fatalf("response = %+v, want a rejection carrying the current term", resp)
		}
	})

	t.Run("h2 reaches the internal gRPC service", func(t *testing.T) {
		cc, err := grpc.NewClient("passthrough:///"+c.addrs[leader], grpc.WithTransportCredentials(credentials.NewTLS(dialerTLS(member, ALPNGRPC))))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		cmds := [][]byte{kvfsm.Command("via-grpc", nil), kvfsm.Command("via-grpc-2", nil), kvfsm.Command("via-grpc", nil)}
		resp, err := forwardOnce(ctx, cc, cmds)
		if err != nil {
			t.Fatalf("ForwardStream over h2: %v", err)
		}
		// In order, one result each; the repeated id answers with its first result.
		var got []string
		for _, r := range resp.GetResults() {
			if r.GetCode() != 0 {
				t.Fatalf("result %v, want OK", r)
			}
			got = append(got, string(r.GetResult()))
		}
		if want := []string{"applied 1", "applied 2", "applied 1"}; !slices.Equal(got, want) {
			t.Fatalf("results = %q, want %q", got, want)
		}
	})

	t.Run("a follower answers forwarded commands with FailedPrecondition", func(t *testing.T) {
		cc, err := grpc.NewClient("passthrough:///"+c.addrs[c.follower(leader)], grpc.WithTransportCredentials(credentials.NewTLS(dialerTLS(member, ALPNGRPC))))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		resp, err := forwardOnce(ctx, cc, [][]byte{kvfsm.Command("x", nil)})
		if err != nil {
			t.Fatalf("ForwardStream on a follower: %v", err)
		}
		if r := resp.GetResults(); len(r) != 1 || codes.Code(r[0].GetCode()) != codes.FailedPrecondition {
			t.Fatalf("ForwardStream on a follower answered %v, want FailedPrecondition", r)
		}
	})

	t.Run("a client that does not speak TLS is refused and counted", func(t *testing.T) {
		before := refused(c.regs[leader], RefusedHandshake)
		conn, err := net.Dial("tcp", c.addrs[leader])
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(waitTimeout))
		io.Copy(io.Discard, conn) // the server closes the connection
		waitFor(t, "the handshake refusal to be counted", func() bool {
			return refused(c.regs[leader], RefusedHandshake) == before+1
		})
	})

	t.Run("no ALPN is refused and counted", func(t *testing.T) {
		before := refused(c.regs[leader], RefusedNoALPN)
		conn, err := handshake(t, c.addrs[leader], dialerTLS(member))
		if err == nil {
			// The handshake itself completes; the mux closes the connection right after.
			conn.SetReadDeadline(time.Now().Add(waitTimeout))
			var b [1]byte
			if _, rerr := conn.Read(b[:]); rerr == nil {
				t.Fatal("a connection without ALPN stayed open")
			}
			conn.Close()
		}
		waitFor(t, "the no_alpn refusal to be counted", func() bool {
			return refused(c.regs[leader], RefusedNoALPN) == before+1
		})
	})
}

func TestANodeDiallingAPeerChecksThePeerToo(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	n := c.nodes[0]
	now := time.Now()
	rogue, err := c.ca.IssueNode("n9", now) // valid, but not a member
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: tlsconfig.GetCertificate(rogue),
		NextProtos:     []string{ALPNRaft},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = conn.(*tls.Conn).Handshake(); conn.Close() }()
		}
	}()
	before := refused(c.regs[0], RefusedNotMember)
	stream := &streamLayer{Listener: newChanListener(advertisedAddr(n.Addr())), advertise: n.Addr(), tlsConfig: n.clientTLSConfig(ALPNRaft)}
	if conn, err := stream.Dial(raft.ServerAddress(ln.Addr().String()), 5*time.Second); err == nil {
		conn.Close()
		t.Fatal("dialled a server that is not a member")
	}
	if got := refused(c.regs[0], RefusedNotMember); got != before+1 {
		t.Fatalf("not_member refusals = %v, want %v", got, before+1)
	}
}

func TestANodeWithAnEmptyConfigurationAcceptsAnyServerOfItsTrustDomain(t *testing.T) {
	ca, err := newCAForTest()
	if err != nil {
		t.Fatal(err)
	}
	c := &testCluster{t: t, ca: ca, ids: []string{"fresh"}, addrs: []string{"127.0.0.1:0"}, dirs: []string{filepath.Join(t.TempDir(), "fresh")}}
	c.nodes, c.fsms, c.regs = make([]*Node, 1), make([]*kvfsm.FSM, 1), make([]*prometheus.Registry, 1)
	c.start(0, nil) // no bootstrap: waits to be joined
	t.Cleanup(c.shutdownAll)
	addr := c.nodes[0].Addr()

	anyServer, err := ca.IssueNode("n42", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := handshake(t, addr, dialerTLS(anyServer, ALPNRaft))
	if err != nil {
		t.Fatalf("a server of the trust domain was refused by a node with an empty configuration: %v", err)
	}
	conn.Close()

	workload, err := ca.Issue(time.Now(), "spiffe://mesh.example/ns/sports/sa/api")
	if err != nil {
		t.Fatal(err)
	}
	if conn, err := handshake(t, addr, dialerTLS(workload, ALPNRaft)); err == nil {
		conn.Close()
		t.Fatal("a workload certificate was accepted by a node with an empty configuration")
	}
	if got := testutil.ToFloat64(c.nodes[0].metrics.refused.WithLabelValues(RefusedNotServer)); got != 1 {
		t.Fatalf("not_server refusals = %v, want 1", got)
	}
}

// forwardOnce sends one request on a new ForwardStream over cc and returns its answer.
func forwardOnce(ctx context.Context, cc *grpc.ClientConn, cmds [][]byte) (*meshcav1.ForwardResponse, error) {
	s, err := meshcav1.NewInternalClient(cc).ForwardStream(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Send(&meshcav1.ForwardRequest{Commands: cmds}); err != nil {
		return nil, err
	}
	return s.Recv()
}
