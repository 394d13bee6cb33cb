package sds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	xdslog "github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	sotwserver "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// SDSConfig configures an SDSServer.
type SDSConfig struct {
	// Source is where secrets come from (required).
	Source Source
	// Resolver tells which identity a caller is (required).
	Resolver IdentityResolver
	// Logger receives NACKs and refused callers; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the meshca_sds_* metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// MaxResourceNames bounds the resource names one request may ask for (or subscribe to, on
	// a delta stream); a request naming more is refused with ResourceExhausted.
	// DefaultMaxResourceNames when zero.
	MaxResourceNames int
}

// DefaultMaxResourceNames is SDSConfig.MaxResourceNames when it is zero: far more secrets than
// one proxy uses, far fewer than a hostile client could name in one message.
const DefaultMaxResourceNames = 1024

// ErrConfig is returned by NewSDSServer and NewWorkloadAPI for a config they cannot run with.
var ErrConfig = errors.New("invalid config")

// Validate reports the first field that is missing.
func (c SDSConfig) Validate() error {
	if c.Source == nil {
		return fmt.Errorf("sds config: Source: must be set: %w", ErrConfig)
	}
	if c.Resolver == nil {
		return fmt.Errorf("sds config: Resolver: must be set: %w", ErrConfig)
	}
	if c.MaxResourceNames < 0 {
		return fmt.Errorf("sds config: MaxResourceNames: %d is negative: %w", c.MaxResourceNames, ErrConfig)
	}
	return nil
}

// SDSServer serves envoy.service.secret.v3.SecretDiscoveryService (StreamSecrets, DeltaSecrets,
// FetchSecrets) with go-control-plane's server and SnapshotCache. Each caller is resolved to an
// identity from its connection; that identity, not the node.id the client sends, selects the
// snapshot it is served from. Register it on a grpc.Server and keep Run running: Run pushes
// every change of the Source to the open streams.
type SDSServer struct {
	src      Source
	resolver IdentityResolver
	log      *slog.Logger
	cache    *holdCache
	xds      serverv3.Server
	ctx      context.Context
	stop     context.CancelFunc
	maxNames int

	streamsOpen prometheus.Gauge
	pushes      prometheus.Counter
	nacks       prometheus.Counter

	mu      sync.Mutex
	tracked map[spiffeid.ID]string     // identity → version of the snapshot set
	nodes   map[spiffeid.ID]*core.Node // one read-only node per identity, shared by its streams
}

var _ secretservice.SecretDiscoveryServiceServer = (*SDSServer)(nil)

// NewSDSServer validates cfg and builds the server. Its streams end when Close is called.
func NewSDSServer(cfg SDSConfig) (*SDSServer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	s := &SDSServer{
		src:      cfg.Source,
		resolver: cfg.Resolver,
		log:      logger,
		tracked:  make(map[spiffeid.ID]string),
		nodes:    make(map[spiffeid.ID]*core.Node),
		maxNames: cfg.MaxResourceNames,
		streamsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshca_sds_streams_open", Help: "SDS streams (state of the world and delta) open now.",
		}),
		pushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshca_sds_pushes_total", Help: "SDS responses sent on streams.",
		}),
		nacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshca_sds_nacks_total", Help: "SDS requests that rejected a response (error_detail set).",
		}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.streamsOpen, s.pushes, s.nacks} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("sds config: Registerer: %w", err)
			}
		}
	}
	if s.maxNames == 0 {
		s.maxNames = DefaultMaxResourceNames
	}
	xl := slogAdapter(logger)
	s.cache = newHoldCache(cache.NewSnapshotCache(false, cache.IDHash{}, xl))
	s.ctx, s.stop = context.WithCancel(context.Background())
	s.xds = serverv3.NewServer(s.ctx, s.cache, s.callbacks(), sotwserver.WithLogger(xl))
	return s, nil
}

// Register adds the SecretDiscoveryService to g.
func (s *SDSServer) Register(g grpc.ServiceRegistrar) {
	secretservice.RegisterSecretDiscoveryServiceServer(g, s)
}

// Close ends every open stream. The gRPC server is the caller's to stop.
func (s *SDSServer) Close() { s.stop() }

// Run pushes every change of the Source to the open streams until ctx ends.
func (s *SDSServer) Run(ctx context.Context) error {
	for {
		changed := s.src.Changed()
		s.mu.Lock()
		for id := range s.tracked {
			if err := s.refreshLocked(ctx, id); err != nil {
				s.log.Error("sds: building secrets", "identity", id.String(), "error", err)
			}
		}
		s.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		case <-s.ctx.Done():
			return nil
		}
	}
}

// track makes sure id has a snapshot, kept up to date by Run, and returns the node its
// requests are rewritten to.
func (s *SDSServer) track(ctx context.Context, id spiffeid.ID) (*core.Node, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.nodes[id]; ok {
		return n, nil
	}
	s.tracked[id] = ""
	if err := s.refreshLocked(ctx, id); err != nil {
		delete(s.tracked, id)
		return nil, err
	}
	n := &core.Node{Id: id.String()}
	s.nodes[id] = n
	return n, nil
}

func (s *SDSServer) refreshLocked(ctx context.Context, id spiffeid.ID) error {
	v := s.src.View(id)
	if s.tracked[id] == v.Version {
		return nil
	}
	secrets, err := secretsFor(v)
	if err != nil {
		return err
	}
	snap, err := cache.NewSnapshot(v.Version, map[resource.Type][]types.Resource{resource.SecretType: resourcesOf(secrets)})
	if err != nil {
		return fmt.Errorf("snapshot of %q: %w", id, err)
	}
	if err := s.cache.SetSnapshot(ctx, id.String(), snap); err != nil {
		return err
	}
	s.tracked[id] = v.Version
	return nil
}

// caller resolves and tracks the identity of a call, or answers PermissionDenied.
func (s *SDSServer) caller(ctx context.Context) (*core.Node, error) {
	id, err := s.resolver.Resolve(ctx)
	if err != nil {
		s.log.Warn("sds: caller refused", "error", err)
		return nil, status.Errorf(codes.PermissionDenied, "sds: %v", err)
	}
	node, err := s.track(ctx, id)
	if err != nil {
		s.log.Error("sds: building secrets", "identity", id.String(), "error", err)
		return nil, status.Errorf(codes.Internal, "sds: secrets of %q: %v", id, err)
	}
	return node, nil
}

// StreamSecrets implements SecretDiscoveryServiceServer (state of the world).
func (s *SDSServer) StreamSecrets(st secretservice.SecretDiscoveryService_StreamSecretsServer) error {
	node, err := s.caller(st.Context())
	if err != nil {
		return err
	}
	return s.xds.StreamSecrets(&sotwStream{SecretDiscoveryService_StreamSecretsServer: st, node: node})
}

// DeltaSecrets implements SecretDiscoveryServiceServer (incremental).
func (s *SDSServer) DeltaSecrets(st secretservice.SecretDiscoveryService_DeltaSecretsServer) error {
	node, err := s.caller(st.Context())
	if err != nil {
		return err
	}
	return s.xds.DeltaSecrets(&deltaStream{SecretDiscoveryService_DeltaSecretsServer: st, node: node})
}

// FetchSecrets implements SecretDiscoveryServiceServer (unary). It waits, within the call's
// deadline, for the names asked for to exist.
func (s *SDSServer) FetchSecrets(ctx context.Context, req *discovery.DiscoveryRequest) (*discovery.DiscoveryResponse, error) {
	node, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "request: must not be empty")
	}
	if err := s.checkNames(len(req.GetResourceNames())); err != nil {
		return nil, err
	}
	req.Node = node
	return s.xds.FetchSecrets(ctx, req)
}

// checkNames refuses a request that names more resources than MaxResourceNames.
func (s *SDSServer) checkNames(n int) error {
	if n > s.maxNames {
		return status.Errorf(codes.ResourceExhausted, "resource_names: %d names, more than the %d one request may ask for", n, s.maxNames)
	}
	return nil
}

// sotwStream replaces the node of every request with the one the connection proved.
type sotwStream struct {
	secretservice.SecretDiscoveryService_StreamSecretsServer
	node *core.Node
}

func (st *sotwStream) Recv() (*discovery.DiscoveryRequest, error) {
	req, err := st.SecretDiscoveryService_StreamSecretsServer.Recv()
	if err != nil {
		return nil, err
	}
	req.Node = st.node
	return req, nil
}

// deltaStream replaces the node of every request with the one the connection proved, and drops
// initial_resource_versions so that a reconnecting client gets every name again.
type deltaStream struct {
	secretservice.SecretDiscoveryService_DeltaSecretsServer
	node *core.Node
}

func (st *deltaStream) Recv() (*discovery.DeltaDiscoveryRequest, error) {
	req, err := st.SecretDiscoveryService_DeltaSecretsServer.Recv()
	if err != nil {
		return nil, err
	}
	req.Node = st.node
	req.InitialResourceVersions = nil
	return req, nil
}

func (s *SDSServer) callbacks() serverv3.Callbacks {
	open := func(context.Context, int64, string) error { s.streamsOpen.Inc(); return nil }
	closed := func(int64, *core.Node) { s.streamsOpen.Dec() }
	return serverv3.CallbackFuncs{
		StreamOpenFunc:        open,
		StreamClosedFunc:      closed,
		DeltaStreamOpenFunc:   open,
		DeltaStreamClosedFunc: closed,
		StreamRequestFunc: func(id int64, req *discovery.DiscoveryRequest) error {
			if err := s.checkNames(len(req.GetResourceNames())); err != nil {
				return err
			}
			if d := req.GetErrorDetail(); d != nil {
				s.nack(id, req.GetNode().GetId(), req.GetVersionInfo(), req.GetResponseNonce(), req.GetResourceNames(), d.GetMessage())
			}
			return nil
		},
		StreamDeltaRequestFunc: func(id int64, req *discovery.DeltaDiscoveryRequest) error {
			if err := s.checkNames(len(req.GetResourceNamesSubscribe())); err != nil {
				return err
			}
			if d := req.GetErrorDetail(); d != nil {
				s.nack(id, req.GetNode().GetId(), "", req.GetResponseNonce(), req.GetResourceNamesSubscribe(), d.GetMessage())
			}
			return nil
		},
		StreamResponseFunc: func(context.Context, int64, *discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {
			s.pushes.Inc()
		},
		StreamDeltaResponseFunc: func(int64, *discovery.DeltaDiscoveryRequest, *discovery.DeltaDiscoveryResponse) {
			s.pushes.Inc()
		},
	}
}

func (s *SDSServer) nack(stream int64, identity, version, nonce string, names []string, msg string) {
	s.nacks.Inc()
	s.log.Warn("sds: client rejected a response (NACK)",
		"stream", stream, "identity", identity, "version_info", version, "response_nonce", nonce,
		"names", names, "error", msg)
}

// slogAdapter sends go-control-plane's own logging to slog: its info lines (one per watch) at
// debug level, warnings and errors as such.
func slogAdapter(l *slog.Logger) xdslog.Logger {
	at := func(level slog.Level) func(string, ...any) {
		return func(format string, args ...any) {
			if l.Enabled(context.Background(), level) {
				l.Log(context.Background(), level, "go-control-plane: "+fmt.Sprintf(format, args...))
			}
		}
	}
	return xdslog.LoggerFuncs{
		DebugFunc: at(slog.LevelDebug),
		InfoFunc:  at(slog.LevelDebug),
		WarnFunc:  at(slog.LevelWarn),
		ErrorFunc: at(slog.LevelError),
	}
}
