package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Caller is a client authenticated by its certificate: the chain verifies to the trust bundle
// in force, the leaf is within its validity period and its serial is not revoked.
type Caller struct {
	// ID is the leaf's SPIFFE ID.
	ID spiffeid.ID
	// Leaf is the client certificate; Chain is what the client presented, leaf first.
	Leaf  *x509.Certificate
	Chain []*x509.Certificate
	// Serial is the leaf's serial number as the replicated state writes it (lowercase hex).
	Serial string
	// Addr is the client's IP address, without the port.
	Addr string
}

// Authenticate authenticates the caller of a gRPC call by its client certificate. The TLS
// layer of the gRPC port asks for a certificate but does not require one (Register needs
// none), so every call that needs one calls this: no certificate, or one that does not chain
// to the trust bundle, is ErrUnauthenticated; an expired one ErrClientCertExpired; a revoked
// one ErrClientCertRevoked. Map the error with StatusOf.
func (s *Server) Authenticate(ctx context.Context) (*Caller, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, refuse(ErrUnauthenticated, "client certificate", "the call carries no peer information")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, refuse(ErrUnauthenticated, "client certificate", "the call did not come over TLS")
	}
	return s.AuthenticateCerts(info.State.PeerCertificates, p.Addr.String())
}

// AuthenticateTLS authenticates the client of an HTTPS request (r.TLS, r.RemoteAddr) as
// Authenticate does for gRPC.
func (s *Server) AuthenticateTLS(cs *tls.ConnectionState, remoteAddr string) (*Caller, error) {
	if cs == nil {
		return nil, refuse(ErrUnauthenticated, "client certificate", "the request did not come over TLS")
	}
	return s.AuthenticateCerts(cs.PeerCertificates, remoteAddr)
}

// AuthenticateCerts authenticates a presented certificate chain (leaf first) at the server's
// clock against the trust bundle and the replicated revocations.
func (s *Server) AuthenticateCerts(certs []*x509.Certificate, remoteAddr string) (*Caller, error) {
	if len(certs) == 0 {
		return nil, refuse(ErrUnauthenticated, "client certificate", "none presented; this call needs the certificate the CA issued you")
	}
	leaf := certs[0]
	serial := leaf.SerialNumber.Text(16)
	now := s.now()
	id, _, err := x509svid.Verify(certs, bundleSource{s}, x509svid.WithTime(now))
	if err != nil {
		if now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
			// Tell an expired certificate of ours from a stranger's: verify it inside its
			// own validity period.
			if _, _, err2 := x509svid.Verify(certs, bundleSource{s}, x509svid.WithTime(leaf.NotAfter.Add(-time.Second))); err2 == nil {
				return nil, refuse(ErrClientCertExpired, "client certificate",
					"serial %s is valid from %s to %s, not at %s; an expired certificate cannot refresh, register again",
					serial, leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
			}
		}
		return nil, refuse(ErrUnauthenticated, "client certificate", "serial %s does not verify to the trust bundle of %s: %v", serial, s.td.Name(), err)
	}
	if s.fsm.State().IsRevoked(serial) {
		return nil, refuse(ErrClientCertRevoked, "client certificate", "serial %s is revoked", serial)
	}
	return &Caller{ID: id, Leaf: leaf, Chain: certs, Serial: serial, Addr: hostOf(remoteAddr)}, nil
}

// hostOf strips the port from an address.
func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// sdsResolver tells the SDS server who an agent is: the SPIFFE ID of its verified client
// certificate. Any workload this CA issued to may read the trust bundles.
type sdsResolver struct{ s *Server }

// Resolve implements sds.IdentityResolver.
func (r sdsResolver) Resolve(ctx context.Context) (spiffeid.ID, error) {
	c, err := r.s.Authenticate(ctx)
	if err != nil {
		return spiffeid.ID{}, err
	}
	return c.ID, nil
}

// listenGRPC listens for the gRPC port without TCP keepalive on the connections it accepts:
// the gRPC keepalive (a ping after 2 idle minutes, 20 s for its ack, and TCP_USER_TIMEOUT)
// already finds dead peers, and every refresh's new connection would otherwise pay four
// setsockopt calls to configure probes it never sends.
func listenGRPC(field, addr string) (net.Listener, error) {
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return ln, nil
}

// staticWindow is the HTTP/2 flow-control window of the gRPC port's streams and connections:
// the protocol's initial 64 KiB.
const staticWindow = 1<<16 - 1

// newGRPCServer builds the gRPC server of listen.grpc: TLS with the node certificate, a client
// certificate asked for but verified per call, bounded messages, keepalive enforcement, one
// error mapping for every method, and a bound on the streams a caller holds.
func (s *Server) newGRPCServer() *grpc.Server {
	tlsCfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: tlsconfig.GetCertificate(s.svid),
		ClientAuth:     tls.RequestClientCert,
		// No client of this port resumes a session (an agent refreshes on a new connection
		// with its new certificate, and every call checks the chain anyway), so the ticket
		// TLS 1.3 would encrypt and send after each handshake is never used.
		SessionTicketsDisabled: true,
	}
	return grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		// tls.Conn buffers the records it decrypts; a second 32 KiB read buffer per
		// connection was a fifth of the bytes a refresh allocated.
		grpc.ReadBufferSize(0),
		// Every window starts at the HTTP/2 default and stays there: the requests are small,
		// and dynamic windows cost a BDP ping and its ack on every new connection.
		grpc.StaticStreamWindowSize(staticWindow),
		grpc.StaticConnWindowSize(staticWindow),
		grpc.MaxRecvMsgSize(s.cfg.Limits.MaxMessageBytes),
		grpc.MaxConcurrentStreams(1024),
		grpc.ConnectionTimeout(10*time.Second),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 2 * time.Minute, Timeout: 20 * time.Second}),
		grpc.ChainUnaryInterceptor(s.unaryErrors),
		grpc.ChainStreamInterceptor(s.streamErrors, s.streamLimit),
	)
}

// unaryErrors maps every error a unary method returns through StatusOf.
func (s *Server) unaryErrors(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	if err != nil {
		return nil, s.toStatus(info.FullMethod, err)
	}
	return resp, nil
}

// streamErrors maps every error a streaming method returns through StatusOf.
func (s *Server) streamErrors(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := h(srv, ss); err != nil {
		return s.toStatus(info.FullMethod, err)
	}
	return nil
}

// toStatus maps an error and logs the ones that are not a client's refusal.
func (s *Server) toStatus(method string, err error) error {
	st := StatusOf(err)
	if st.Code() == codes.Internal || st.Code() == codes.Unknown {
		s.log.Error("call failed", "method", method, "error", err)
	}
	return st.Err()
}

// streamLimit bounds how many streams one caller (its certificate's SPIFFE ID, or its address
// without one) holds open at once.
func (s *Server) streamLimit(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	key := "addr:"
	if c, err := s.Authenticate(ss.Context()); err == nil {
		key = c.ID.String()
	} else if p, ok := peer.FromContext(ss.Context()); ok {
		key += hostOf(p.Addr.String())
	}
	if !s.streams.acquire(key) {
		return status.Errorf(codes.ResourceExhausted, "limits.max_streams_per_caller: %s already holds %d open streams", key, s.streams.max)
	}
	defer s.streams.release(key)
	return h(srv, ss)
}

// streamCounter counts open streams per caller.
type streamCounter struct {
	max  int
	mu   sync.Mutex
	open map[string]int
}

func newStreamCounter(max int) *streamCounter {
	return &streamCounter{max: max, open: map[string]int{}}
}

func (c *streamCounter) acquire(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.open[key] >= c.max {
		return false
	}
	c.open[key]++
	return true
}

func (c *streamCounter) release(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.open[key]--; c.open[key] <= 0 {
		delete(c.open, key)
	}
}
