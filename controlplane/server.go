package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/controlplane/confirm"
	"github.com/meshca/meshca/raftstore"
	"github.com/meshca/meshca/sds"
)

// Options are what a Server takes besides its configuration file.
type Options struct {
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock every decision reads; nil means time.Now.
	Now func() time.Time
}

// Server is one meshca-server node: the replicated state (a Raft node, its state machine and
// the typed Store), the CA built from the replicated CA record, the gRPC port (identity API,
// bundle SDS and whatever flows are wired in) and the HTTPS port (metrics, health, CRL,
// SPIFFE bundle endpoint). New builds it and binds its ports; Run serves until its context
// ends, then stops gracefully.
type Server struct {
	cfg *Config
	log *slog.Logger
	now func() time.Time
	td  spiffeid.TrustDomain
	id  spiffeid.ID

	signers *signerOpener
	local   *localCA
	policy  policy.Config
	view    atomic.Pointer[caView]
	svid    *nodeSVID

	fsm   *raftstore.FSM
	node  *raftstore.Node
	store *raftstore.Store

	reg     *prometheus.Registry
	metrics *metrics

	grpc    *grpc.Server
	grpcLn  net.Listener
	httpLn  net.Listener
	http    *http.Server
	mux     *http.ServeMux
	bundles *sds.Store
	sds     *sds.SDSServer
	// bundleSeen is what the bundle store holds, trust domain → digest; only the state
	// watcher touches it once Run starts.
	bundleSeen map[string]string
	// viewFailed is the CA record key whose Authority failed to build, logged once.
	viewFailed string

	confirmClient *confirm.Client
	serviceToken  ServiceTokenRegister
	confirmersMu  sync.RWMutex
	confirmers    map[string]Confirmer

	perIdentity *keyedLimiter
	perSource   *keyedLimiter
	streams     *streamCounter
	crl         crlCache

	runOnce sync.Once
	closers []func()
	onStop  []func()
}

// A flow is an optional part of the server (an admin API, a built-in provider, an extend API)
// that New wires in once the core is built: it may register gRPC services on GRPCServer,
// mount handlers on HTTPMux and set confirmers with SetConfirmer. A file of this package that
// adds a flow appends its function to flows with one line.
type flow func(s *Server) error

// flows are the optional parts this build wires in, in order.
var flows = []flow{adminFlow, registerTokenFlow, serviceKeyFlow, extendFlow, rotationFlow, federationFlow}

// Run starts a meshca-server node from cfg and serves until ctx ends, then stops gracefully.
func Run(ctx context.Context, cfg *Config) error {
	s, err := New(cfg, Options{})
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// New builds a node from cfg: it loads (or at first start generates) the CA material, signs
// the node certificate, binds the cluster, gRPC and HTTPS ports and starts the Raft node.
// Call Run to serve; a Server that is never Run must still be stopped by running it with a
// cancelled context.
func New(cfg *Config, opts Options) (_ *Server, err error) {
	if cfg == nil {
		return nil, fmt.Errorf("%w: nil config", ErrConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: opts.Logger, now: opts.Now, confirmers: map[string]Confirmer{}}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	s.td = spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	if s.id, err = NodeSPIFFEID(s.td, cfg.NodeID); err != nil {
		return nil, fmt.Errorf("node_id: %w", err)
	}
	s.policy = policy.DefaultConfig()
	s.policy.DefaultTTL = cfg.CA.WorkloadTTL.D()
	s.policy.MaxTTL = cfg.CA.MaxWorkloadTTL.D()

	kek, err := loadKEK(cfg)
	if err != nil {
		return nil, err
	}
	openToken := tokenOpener(cfg, s.log)
	s.signers = newSignerOpener(kek, openToken)
	s.closers = append(s.closers, s.signers.Close)
	now := s.now()
	s.local, err = loadLocalCA(cfg, kek, func(label string) (signer.Signer, error) {
		return openOrGenerateToken(cfg, label, s.log)
	}, now)
	if err != nil {
		return nil, err
	}
	s.signers.add(s.local.issuer.Signer())
	s.svid = newNodeSVID(s.id, cfg)
	if err := s.svid.issue(s.local.issuer, s.local.record.GetId(), now); err != nil {
		return nil, err
	}

	if s.grpcLn, err = listenGRPC("listen.grpc", cfg.Listen.GRPC); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, func() { s.grpcLn.Close() })
	if s.httpLn, err = listen("listen.http", cfg.Listen.HTTP); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, func() { s.httpLn.Close() })
	clusterLn, err := listen("listen.cluster", cfg.Listen.Cluster)
	if err != nil {
		return nil, err
	}

	s.reg = prometheus.NewRegistry()
	if s.metrics, err = newMetrics(s.reg); err != nil {
		clusterLn.Close()
		return nil, err
	}
	fcfg := raftstore.DefaultFSMConfig()
	fcfg.Logger = s.log
	if s.fsm, err = raftstore.NewFSM(fcfg); err != nil {
		clusterLn.Close()
		return nil, err
	}
	ncfg := s.nodeConfig(clusterLn)
	if s.node, err = raftstore.NewNode(ncfg, s.fsm); err != nil {
		return nil, fmt.Errorf("raft: %w", err)
	}
	s.closers = append(s.closers, func() {
		if err := s.node.Shutdown(); err != nil {
			s.log.Error("raft shutdown", "error", err)
		}
	})
	s.store = raftstore.NewStore(s.node, s.fsm)
	s.syncCA(s.fsm.State())

	s.bundles = sds.NewStore()
	s.bundleSeen = map[string]string{}
	s.syncBundles(s.fsm.State())
	if s.sds, err = sds.NewSDSServer(sds.SDSConfig{
		Source:   s.bundles,
		Resolver: sdsResolver{s},
		Logger:   s.log,
		// A request naming more is refused with ResourceExhausted instead of held.
		MaxResourceNames: cfg.Limits.MaxSDSResourceNames,
		// The agents' streams are counted here; the agent exports its own SDS metrics.
		Registerer: s.reg,
	}); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.sds.Close)
	s.confirmClient = confirm.NewClient(s.svid, bundleSource{s}, cfg.Limits.ProviderTimeout.D())
	s.closers = append(s.closers, s.confirmClient.CloseIdleConnections)
	s.perIdentity = newKeyedLimiter(cfg.Limits.IssuePerIdentityPerMinute)
	s.perSource = newKeyedLimiter(cfg.Limits.IssuePerSourcePerMinute)
	s.streams = newStreamCounter(cfg.Limits.MaxStreamsPerCaller)

	s.grpc = s.newGRPCServer()
	meshcav1.RegisterIdentityServer(s.grpc, &identityService{s: s})
	s.sds.Register(s.grpc)
	s.mux = http.NewServeMux()
	if err := s.mountHTTP(); err != nil {
		return nil, err
	}
	s.http = s.newHTTPServer()
	for _, f := range flows {
		if err := f(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// nodeConfig is the Raft node's configuration from the server's.
func (s *Server) nodeConfig(ln net.Listener) raftstore.NodeConfig {
	cfg := s.cfg
	n := raftstore.DefaultNodeConfig()
	n.ID = cfg.NodeID
	n.DataDir = cfg.DataDir
	n.Listener = ln
	if _, port, _ := net.SplitHostPort(cfg.Listen.ClusterAdvertise); port != "0" {
		n.AdvertiseAddr = cfg.Listen.ClusterAdvertise
	}
	n.TrustDomain = cfg.TrustDomain
	n.SVID = s.svid
	n.Bundle = bundleSource{s}
	n.Bootstrap = cfg.Raft.Bootstrap
	for _, p := range cfg.Raft.Peers {
		addr := p.Address
		if _, port, _ := net.SplitHostPort(addr); p.ID == cfg.NodeID && port == "0" {
			// This node on port 0: the port it was given.
			addr = ln.Addr().String()
		}
		n.InitialPeers = append(n.InitialPeers, raftstore.Peer{ID: p.ID, Address: addr})
	}
	if d := cfg.Raft.HeartbeatTimeout.D(); d > 0 {
		n.HeartbeatTimeout = d
		n.LeaderLeaseTimeout = min(n.LeaderLeaseTimeout, d)
	}
	if d := cfg.Raft.ElectionTimeout.D(); d > 0 {
		n.ElectionTimeout = d
	}
	n.Registerer = s.reg
	n.Logger = s.log
	return n
}

func listen(field, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return ln, nil
}

// loadKEK reads the key-encryption key the config names, if any.
func loadKEK(cfg *Config) (signer.KEK, error) {
	switch {
	case cfg.CA.KEKFile != "":
		k, err := signer.KEKFromFile(cfg.CA.KEKFile)
		if err != nil {
			return signer.KEK{}, fmt.Errorf("ca.kek_file: %w", err)
		}
		return k, nil
	case cfg.CA.KEKEnv != "":
		k, err := signer.KEKFromEnv(cfg.CA.KEKEnv)
		if err != nil {
			return signer.KEK{}, fmt.Errorf("ca.kek_env: %w", err)
		}
		return k, nil
	}
	return signer.KEK{}, nil
}

// pkcs11Config is the signer configuration of the key labelled label on the node's token.
func pkcs11Config(cfg *Config, label string, log *slog.Logger) signer.PKCS11Config {
	p := signer.DefaultPKCS11Config()
	p.ModulePath = cfg.CA.PKCS11.Module
	p.TokenLabel = cfg.CA.PKCS11.TokenLabel
	p.KeyLabel = label
	p.PINFile = cfg.CA.PKCS11.PINFile
	p.PINEnv = cfg.CA.PKCS11.PINEnv
	p.Logger = log
	return p
}

// tokenOpener opens keys by label on the node's token, or is nil without one.
func tokenOpener(cfg *Config, log *slog.Logger) func(string) (signer.Signer, error) {
	if cfg.CA.Mode != CAModePKCS11 {
		return nil
	}
	return func(label string) (signer.Signer, error) {
		return signer.OpenPKCS11(pkcs11Config(cfg, label, log))
	}
}

// openOrGenerateToken opens the configured key on the token, generating it at first start.
func openOrGenerateToken(cfg *Config, label string, log *slog.Logger) (signer.Signer, error) {
	p := pkcs11Config(cfg, label, log)
	kt, err := signer.ParseKeyType(cfg.CA.KeyType)
	if err != nil {
		return nil, err
	}
	p.KeyType = kt
	return signer.OpenOrGeneratePKCS11(p)
}

// close releases what New built, in reverse order.
func (s *Server) close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}

// Run serves the gRPC and HTTPS ports, keeps the CA and the bundles in step with the
// replicated state, renews the node certificate and, while this node leads, bootstraps the
// cluster's CA record and seeded providers. When ctx ends it stops gracefully: in-flight calls
// finish (bounded), streams end, the Raft node shuts down. Run may be called once.
func (s *Server) Run(ctx context.Context) error {
	err := errors.New("controlplane: Run called twice")
	s.runOnce.Do(func() { err = s.run(ctx) })
	return err
}

func (s *Server) run(ctx context.Context) error {
	defer s.close()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := s.grpc.Serve(s.grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("listen.grpc: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := s.http.ServeTLS(s.httpLn, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("listen.http: %w", err)
		}
		return nil
	})
	g.Go(func() error { return s.sds.Run(gctx) })
	g.Go(func() error { s.watchState(gctx); return nil })
	g.Go(func() error { s.renewNodeCert(gctx); return nil })
	g.Go(func() error { s.leaderDuties(gctx); return nil })
	g.Go(func() error { s.pruneLoop(gctx, s.cfg.Prune.Interval.D(), s.cfg.Prune.Grace.D()); return nil })
	g.Go(func() error { s.profileOnSignal(gctx); return nil })
	g.Go(func() error {
		<-gctx.Done()
		s.stopServing()
		return nil
	})
	s.log.Info("meshca-server started", "node", s.cfg.NodeID, "grpc", s.GRPCAddr(), "http", s.HTTPAddr(), "cluster", s.node.Addr())
	err := g.Wait()
	s.log.Info("meshca-server stopping", "node", s.cfg.NodeID)
	return err
}

// gracePeriod bounds how long a stopping server waits for in-flight calls.
const gracePeriod = 10 * time.Second

// OnStop registers f to run when the server stops, before the gRPC server drains: a flow
// ends its own streams (WatchEvents) here. Call it before Run.
func (s *Server) OnStop(f func()) { s.onStop = append(s.onStop, f) }

// stopServing stops taking calls: open streams end, in-flight calls get gracePeriod.
func (s *Server) stopServing() {
	for _, f := range s.onStop {
		f()
	}
	s.sds.Close()
	ctx, cancel := context.WithTimeout(context.Background(), gracePeriod)
	defer cancel()
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	if err := s.http.Shutdown(ctx); err != nil {
		s.http.Close()
	}
	select {
	case <-done:
	case <-ctx.Done():
		s.grpc.Stop()
		<-done
	}
}

// Config is the server's configuration.
func (s *Server) Config() *Config { return s.cfg }

// Logger is the server's logger.
func (s *Server) Logger() *slog.Logger { return s.log }

// Now reads the server's clock.
func (s *Server) Now() time.Time { return s.now() }

// TrustDomain is the cluster's trust domain.
func (s *Server) TrustDomain() spiffeid.TrustDomain { return s.td }

// Store is the typed face of the replicated state.
func (s *Server) Store() *raftstore.Store { return s.store }

// Node is the Raft node.
func (s *Server) Node() *raftstore.Node { return s.node }

// Registry is the server's Prometheus registry, served on /metrics.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// GRPCServer is the gRPC server of listen.grpc. Register services on it before Run.
func (s *Server) GRPCServer() *grpc.Server { return s.grpc }

// HTTPMux is the mux of listen.http; mount handlers on it (the extend API lives under
// /v1/current-identity/). Request bodies are already limited to limits.max_message_bytes.
func (s *Server) HTTPMux() *http.ServeMux { return s.mux }

// GRPCAddr is the address the gRPC port is bound to.
func (s *Server) GRPCAddr() string { return s.grpcLn.Addr().String() }

// HTTPAddr is the address the HTTPS port is bound to.
func (s *Server) HTTPAddr() string { return s.httpLn.Addr().String() }

// ClusterAddr is the address other nodes dial for Raft.
func (s *Server) ClusterAddr() string { return s.node.Addr() }

// SystemAdmins are the principals the config makes system administrators: SPIFFE IDs or
// <domain>.<service> identities.
func (s *Server) SystemAdmins() []string { return append([]string(nil), s.cfg.Admins...) }

// Authority is the CA this node issues with, built from the replicated CA record, and the
// record of its active issuer. Before the record reaches this node it returns ErrNotReady.
func (s *Server) Authority() (*ca.Authority, *meshcav1.Issuer, error) {
	v := s.view.Load()
	if v == nil {
		return nil, nil, refuse(ErrNotReady, "ca", "the CA record has not reached node %s yet; retry shortly", s.cfg.NodeID)
	}
	return v.authority, v.issuer, nil
}

// Bundle is the trust bundle in force: the replicated CA record's roots once this node has
// it, the roots of its local CA material before.
func (s *Server) Bundle() *x509bundle.Bundle {
	if v := s.view.Load(); v != nil {
		return v.authority.Bundle()
	}
	return x509bundle.FromX509Authorities(s.td, s.local.issuer.Roots())
}

// Ready reports why the node cannot serve issuance yet (no leader known, CA record not
// replicated here), or nil.
func (s *Server) Ready() error {
	if id, _ := s.node.Leader(); id == "" {
		return refuse(ErrNotReady, "cluster", "no leader is known to node %s", s.cfg.NodeID)
	}
	if _, _, err := s.Authority(); err != nil {
		return err
	}
	return nil
}

// Apply commits a command through the replicated log (from a follower it is forwarded to the
// leader) and returns its result, timing it in meshca_raft_apply_seconds. An empty id gets a
// fresh one and a zero time the server's clock; a refused command returns its result and a
// *raftstore.CommandError wrapping the sentinel of its code.
func (s *Server) Apply(ctx context.Context, cmd *meshcav1.Command) (*meshcav1.CommandResult, error) {
	if cmd.GetId() == "" {
		cmd.Id = raftstore.NewCommandID()
	}
	if cmd.GetTime() == 0 {
		cmd.Time = s.now().UnixNano()
	}
	kind := "unknown"
	m := cmd.ProtoReflect()
	if fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("command")); fd != nil {
		kind = string(fd.Name())
	}
	start := time.Now()
	res, err := s.store.Apply(ctx, cmd)
	s.metrics.applySeconds.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	return res, err
}
