package demo

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Where a demo workload takes its TLS material from.
const (
	SourceSDS         = "sds"
	SourceWorkloadAPI = "workload-api"
)

// SourceConfig says where a demo workload takes its TLS material from.
type SourceConfig struct {
	// Kind is SourceSDS or SourceWorkloadAPI.
	Kind string
	// SDSSocket is the agent's SDS socket path (SourceSDS).
	SDSSocket string
	// WorkloadAPIAddr is the agent's Workload API address, "unix:///path" (SourceWorkloadAPI).
	WorkloadAPIAddr string
}

// open connects to the agent and waits, within ctx, for the first certificate.
func (c SourceConfig) open(ctx context.Context, log *slog.Logger, onSVID func(*x509svid.SVID)) (Source, error) {
	switch c.Kind {
	case SourceSDS:
		if c.SDSSocket == "" {
			return nil, errors.New("source sds: the SDS socket path is required")
		}
		return NewSDSSource(ctx, c.SDSSocket, log, onSVID)
	case SourceWorkloadAPI:
		if c.WorkloadAPIAddr == "" {
			return nil, errors.New("source workload-api: the Workload API address is required")
		}
		return NewWorkloadAPISource(ctx, c.WorkloadAPIAddr, onSVID)
	}
	return nil, fmt.Errorf("source %q: want %q or %q", c.Kind, SourceSDS, SourceWorkloadAPI)
}

// ServerConfig configures the demo server.
type ServerConfig struct {
	// Listen is the HTTPS address ("127.0.0.1:0" picks a port).
	Listen string
	// Source is where the TLS material comes from.
	Source SourceConfig
	// AllowedPeer, when set, is the only client SPIFFE ID served; otherwise any identity of
	// the server's own trust domain.
	AllowedPeer string
	// Logger receives rotations and failed handshakes; slog.Default() when nil.
	Logger *slog.Logger
}

// Server is the demo server: it answers GET /hello over mutual TLS with the client's SPIFFE ID.
type Server struct {
	log      *slog.Logger
	src      Source
	listener net.Listener
	http     *http.Server
	stats    counters
}

// NewServer connects to the agent, waits within ctx for the first certificate and listens.
func NewServer(ctx context.Context, cfg ServerConfig) (*Server, error) {
	s := &Server{log: cfg.Logger}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("workload", "demo-server")
	src, err := cfg.Source.open(ctx, s.log, s.stats.observe(s.log))
	if err != nil {
		return nil, err
	}
	own, err := src.GetX509SVID()
	if err != nil {
		src.Close()
		return nil, err
	}
	authorize := tlsconfig.AuthorizeMemberOf(own.ID.TrustDomain())
	if cfg.AllowedPeer != "" {
		id, err := spiffeid.FromString(cfg.AllowedPeer)
		if err != nil {
			src.Close()
			return nil, fmt.Errorf("allowed peer %q: %w", cfg.AllowedPeer, err)
		}
		authorize = tlsconfig.AuthorizeID(id)
	}
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		src.Close()
		return nil, err
	}
	s.src, s.listener = src, l
	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) {
		peer, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		s.stats.requests.Add(1)
		fmt.Fprintf(w, "hello %s\n", peer)
	})
	s.http = &http.Server{
		Handler:           mux,
		TLSConfig:         tlsconfig.MTLSServerConfig(src, src, authorize),
		ReadHeaderTimeout: 5 * time.Second,
		// net/http reports every failed handshake on ErrorLog: count and log each one.
		ErrorLog: log.New(&handshakeLog{log: s.log, stats: &s.stats}, "", 0),
	}
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.listener.Addr().String() }

// Stats are the server's counts now.
func (s *Server) Stats() Stats { return s.stats.snapshot() }

// Serve answers requests until ctx ends, then stops and disconnects from the agent.
func (s *Server) Serve(ctx context.Context) error {
	defer s.src.Close()
	errc := make(chan error, 1)
	go func() { errc <- s.http.ServeTLS(s.listener, "", "") }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.http.Shutdown(sctx)
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// handshakeLog receives net/http's error log lines.
type handshakeLog struct {
	log   *slog.Logger
	stats *counters
}

func (h *handshakeLog) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	if strings.Contains(line, "TLS handshake error") {
		h.stats.handshakeFailures.Add(1)
		h.log.Warn("demo: handshake failed", "error", line)
	} else {
		h.log.Warn("demo: http server", "error", line)
	}
	return len(p), nil
}

// ClientConfig configures the demo client.
type ClientConfig struct {
	// URL is the server's hello URL, e.g. https://127.0.0.1:8443/hello.
	URL string
	// ServerID is the SPIFFE ID the server must present.
	ServerID string
	// Interval is the pause between requests (none when zero).
	Interval time.Duration
	// Count stops the client after this many requests; 0 runs until the context ends.
	Count int
	// Source is where the TLS material comes from.
	Source SourceConfig
	// Logger receives rotations, failed handshakes and failed requests; slog.Default() when nil.
	Logger *slog.Logger
}

// Client is the demo client: it calls the server over mutual TLS, one new connection (and so
// one handshake) per request.
type Client struct {
	cfg   ClientConfig
	log   *slog.Logger
	src   Source
	id    spiffeid.ID
	http  *http.Client
	stats counters

	// Handshakes in flight finish before Close closes the source they read.
	mu       sync.Mutex
	closing  bool
	inFlight sync.WaitGroup
}

// errClosing refuses a new connection once Close was called.
var errClosing = errors.New("demo client: closing")

// startDial registers a handshake, unless the client is closing.
func (c *Client) startDial() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	c.inFlight.Add(1)
	return true
}

// NewClient connects to the agent and waits within ctx for the first certificate.
func NewClient(ctx context.Context, cfg ClientConfig) (*Client, error) {
	c := &Client{cfg: cfg, log: cfg.Logger}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.log = c.log.With("workload", "demo-client")
	serverID, err := spiffeid.FromString(cfg.ServerID)
	if err != nil {
		return nil, fmt.Errorf("server id %q: %w", cfg.ServerID, err)
	}
	src, err := cfg.Source.open(ctx, c.log, c.stats.observe(c.log))
	if err != nil {
		return nil, err
	}
	own, err := src.GetX509SVID()
	if err != nil {
		src.Close()
		return nil, err
	}
	c.src, c.id = src, own.ID
	tlsCfg := tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(serverID))
	c.http = &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				// net/http may go on dialing after the request gave up; a dial never
				// outlives the client.
				if !c.startDial() {
					return nil, errClosing
				}
				defer c.inFlight.Done()
				var d net.Dialer
				raw, err := d.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				conn := tls.Client(raw, tlsCfg)
				if err := conn.HandshakeContext(ctx); err != nil {
					raw.Close()
					c.stats.handshakeFailures.Add(1)
					c.log.Warn("demo: handshake failed", "server", addr, "error", err)
					return nil, err
				}
				return conn, nil
			},
		},
	}
	return c, nil
}

// Stats are the client's counts now.
func (c *Client) Stats() Stats { return c.stats.snapshot() }

// Close waits for handshakes in flight and disconnects from the agent.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	c.inFlight.Wait()
	c.http.CloseIdleConnections()
	return c.src.Close()
}

// Run calls the server until ctx ends or Count requests were made. It returns nil then; the
// counts say how it went.
func (c *Client) Run(ctx context.Context) error {
	for n := 0; c.cfg.Count == 0 || n < c.cfg.Count; n++ {
		if ctx.Err() != nil {
			return nil
		}
		c.call(ctx)
		if c.cfg.Interval > 0 {
			select {
			case <-time.After(c.cfg.Interval):
			case <-ctx.Done():
				return nil
			}
		}
	}
	return nil
}

// call makes one request and counts it.
func (c *Client) call(ctx context.Context) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.cfg.URL, nil)
	if err != nil {
		c.fail(err)
		return
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			c.fail(err)
		}
		return
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	want := "hello " + c.id.String() + "\n"
	switch {
	case err != nil:
		c.fail(err)
	case resp.StatusCode != http.StatusOK:
		c.fail(fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(body)))
	case string(body) != want:
		c.fail(fmt.Errorf("server answered %q, want %q", body, want))
	default:
		c.stats.requests.Add(1)
	}
}

func (c *Client) fail(err error) {
	c.stats.failures.Add(1)
	c.log.Warn("demo: request failed", "url", c.cfg.URL, "error", err)
}
