package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/sds"
)

// Options are what the process gives the agent besides its config.
type Options struct {
	// Clock is the agent's time; the real clock when nil.
	Clock Clock
	// Logger receives the agent's logs; slog.Default() when nil.
	Logger *slog.Logger
	// Registry receives the agent's metrics (meshca_agent_*, meshca_sds_*) and is served on the
	// admin socket's /metrics; when nil, a new registry that also holds the Go runtime and
	// process collectors.
	Registry *prometheus.Registry
	// Hostname is recorded with the instance at the CA; os.Hostname() when empty.
	Hostname string
}

// Agent is a node agent: it keeps the certificates of the workload identities of one host and
// the cluster's trust bundles, and serves them over SDS, the SPIFFE Workload API and files.
type Agent struct {
	cfg      *Config
	td       spiffeid.TrustDomain
	clock    Clock
	log      *slog.Logger
	registry *prometheus.Registry
	hostname string
	keyType  signer.KeyType
	sched    schedule

	store      *sds.Store
	state      *stateDir
	nodeAuth   *nodeAuth
	client     *caClient
	identities []*identityLoop
	metrics    *metrics
	sds        *sds.SDSServer
	workload   *sds.WorkloadAPI
	callers    *sds.CallerTable

	// issuer is the cluster's last issuer notice, from the bundle stream.
	issuer *issuerWatch
	// streamed is set once the bundle stream delivered: from then on it alone sets bundles.
	streamed atomic.Bool
	bundleMu sync.Mutex // serializes read-compare-set of bundles
}

// Run builds an agent from cfg and runs it until ctx ends.
func Run(ctx context.Context, cfg *Config, opts Options) error {
	a, err := New(cfg, opts)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// New checks cfg, loads the trust bundle and the state dir, and builds the agent. Nothing is
// served and nothing is asked of the CA before Run.
func New(cfg *Config, opts Options) (*Agent, error) {
	if cfg == nil {
		return nil, fmt.Errorf("%w: config: must not be nil", ErrConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, clock: opts.Clock, log: opts.Logger, registry: opts.Registry, hostname: opts.Hostname}
	if a.clock == nil {
		a.clock = realClock{}
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	if a.registry == nil {
		a.registry = prometheus.NewRegistry()
		a.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	if a.hostname == "" {
		a.hostname, _ = os.Hostname()
	}
	a.td = spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	a.keyType, _ = signer.ParseKeyType(cfg.KeyType)
	a.sched = schedule{
		fraction:      cfg.Refresh.Fraction,
		jitter:        *cfg.Refresh.Jitter,
		reissueJitter: cfg.Refresh.ReissueJitter.D(),
		backoff:       backoff{initial: cfg.Refresh.BackoffInitial.D(), max: cfg.Refresh.BackoffMax.D()},
	}
	a.store = sds.NewStore()
	a.issuer = newIssuerWatch()

	raw, err := os.ReadFile(cfg.TrustBundle)
	if err != nil {
		return nil, fmt.Errorf("%w: trust_bundle: %w", ErrConfig, err)
	}
	bundle, err := ca.ParseBundlePEM(a.td, raw)
	if err != nil {
		return nil, fmt.Errorf("%w: trust_bundle %s: %w", ErrConfig, cfg.TrustBundle, err)
	}
	if err := a.store.SetBundle(bundle); err != nil {
		return nil, fmt.Errorf("%w: trust_bundle %s: %w", ErrConfig, cfg.TrustBundle, err)
	}

	if a.state, err = openStateDir(cfg.StateDir); err != nil {
		return nil, err
	}
	a.nodeAuth = &nodeAuth{td: a.td, prefix: cfg.ServerIDPrefix, bundles: a.bundleSource(), clock: a.clock}
	a.client = &caClient{servers: cfg.Servers, auth: a.nodeAuth, timeout: cfg.Refresh.RPCTimeout.D(), log: a.log}
	if a.metrics, err = newMetrics(a); err != nil {
		return nil, err
	}
	a.callers = &sds.CallerTable{BySocket: map[string]spiffeid.ID{}, ByUID: map[uint32]spiffeid.ID{}, ByGID: map[uint32]spiffeid.ID{}}
	for _, ic := range cfg.Identities {
		l, err := newIdentityLoop(a, ic)
		if err != nil {
			return nil, err
		}
		a.identities = append(a.identities, l)
		if ic.Socket != "" {
			a.callers.BySocket[filepath.Clean(ic.Socket)] = l.id
		}
		for _, u := range ic.UIDs {
			a.callers.ByUID[u] = l.id
		}
		for _, g := range ic.GIDs {
			a.callers.ByGID[g] = l.id
		}
	}
	a.sds, err = sds.NewSDSServer(sds.SDSConfig{Source: a.store, Resolver: a.callers, Logger: a.log, Registerer: a.registry})
	if err != nil {
		return nil, err
	}
	a.workload, err = sds.NewWorkloadAPI(sds.WorkloadAPIConfig{Source: a.store, Resolver: a.callers, Logger: a.log})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// Inventory lists what the agent serves now.
func (a *Agent) Inventory() sds.Inventory { return a.store.Inventory() }

// Run serves SDS, the Workload API, files and the admin socket, keeps every identity's
// certificate and streams the trust bundles, until ctx ends. Then it stops serving, removes its
// sockets and returns. It returns an error when a socket cannot be served.
func (a *Agent) Run(ctx context.Context) error {
	g := grpc.NewServer(grpc.Creds(sds.PeerCredentials()))
	a.sds.Register(g)
	a.workload.Register(g)

	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}
	listen := func(path string, mode os.FileMode) error {
		l, err := listenUnix(path, mode)
		if err != nil {
			closeAll()
			return err
		}
		listeners = append(listeners, l)
		return nil
	}
	// The shared sockets let every local user connect: the caller table decides what each gets.
	if p := a.cfg.SDSSocket; p != "" {
		if err := listen(p, 0o666); err != nil {
			return fmt.Errorf("sds_socket: %w", err)
		}
	}
	if p := a.cfg.WorkloadAPISocket; p != "" && p != a.cfg.SDSSocket {
		if err := listen(p, 0o666); err != nil {
			return fmt.Errorf("workload_api_socket: %w", err)
		}
	}
	for i, ic := range a.cfg.Identities {
		if ic.Socket == "" {
			continue
		}
		mode, _ := strconv.ParseUint(ic.SocketMode, 8, 32)
		if err := listen(ic.Socket, os.FileMode(mode)); err != nil {
			return fmt.Errorf("identities[%d].socket: %w", i, err)
		}
	}
	grpcListeners := len(listeners)
	var admin *http.Server
	if p := a.cfg.AdminSocket; p != "" {
		if err := listen(p, 0o600); err != nil {
			return fmt.Errorf("admin_socket: %w", err)
		}
		admin = &http.Server{Handler: a.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
	}

	eg, ctx := errgroup.WithContext(ctx)
	for _, l := range listeners[:grpcListeners] {
		eg.Go(func() error {
			if err := g.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return fmt.Errorf("serving %s: %w", l.Addr(), err)
			}
			return nil
		})
	}
	if admin != nil {
		l := listeners[grpcListeners]
		eg.Go(func() error {
			if err := admin.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("admin socket: %w", err)
			}
			return nil
		})
	}
	eg.Go(func() error { return a.sds.Run(ctx) })
	for _, l := range a.identities {
		eg.Go(func() error { return l.run(ctx) })
		if a.cfg.FilesDir != "" {
			w := &sds.FileWriter{Source: a.store, ID: l.id, Dir: filepath.Join(a.cfg.FilesDir, l.cfg.Name), Logger: a.log}
			eg.Go(func() error { return w.Run(ctx) })
		}
	}
	eg.Go(func() error { return newBundleStream(a).run(ctx) })
	eg.Go(func() error {
		<-ctx.Done()
		// Streams are long-lived: end them, then let in-flight calls finish, within a bound.
		a.sds.Close()
		stopped := make(chan struct{})
		go func() { g.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			g.Stop()
			<-stopped
		}
		if admin != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = admin.Shutdown(sctx)
			cancel()
		}
		return nil
	})
	a.log.Info("agent: running", "identities", len(a.identities), "servers", a.cfg.Servers,
		"sds_socket", a.cfg.SDSSocket, "workload_api_socket", a.cfg.WorkloadAPISocket, "admin_socket", a.cfg.AdminSocket)
	err := eg.Wait()
	for _, l := range listeners {
		if ua, ok := l.Addr().(*net.UnixAddr); ok {
			_ = os.Remove(ua.Name)
		}
	}
	return err
}

// listenUnix listens on a Unix socket at path with mode, replacing a stale socket left by an
// earlier run (never any other kind of file).
func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// net.Listen removes the file on Close; the agent removes it itself after serving.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(path, mode); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("chmod %o: %w", mode, err)
	}
	return l, nil
}

// bundleSource is the store's current trust bundles, as a go-spiffe bundle source.
func (a *Agent) bundleSource() x509bundle.Source { return storeBundles{a.store, a.td} }

type storeBundles struct {
	store *sds.Store
	td    spiffeid.TrustDomain
}

func (s storeBundles) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	// Any identity of the own trust domain sees every bundle.
	return s.store.View(s.td.ID()).Bundles.GetX509BundleForTrustDomain(td)
}

// heldBundles are every bundle the store holds now.
func (a *Agent) heldBundles() []*x509bundle.Bundle {
	return a.store.View(a.td.ID()).AllBundles()
}

// setBundle stores b unless the store holds the same bundle already (which would push a new
// version to every stream for nothing). It reports whether anything changed.
func (a *Agent) setBundle(b *x509bundle.Bundle) (bool, error) {
	a.bundleMu.Lock()
	defer a.bundleMu.Unlock()
	if held, err := a.bundleSource().GetX509BundleForTrustDomain(b.TrustDomain()); err == nil && held.Equal(b) {
		return false, nil
	}
	if err := a.store.SetBundle(b); err != nil {
		return false, err
	}
	return true, nil
}

// bundleFromIdentityResponse takes the bundle a Register or Refresh answer carried, until the
// bundle stream delivers: then the stream alone is the source, so an answer that was in flight
// during a change cannot undo it.
func (a *Agent) bundleFromIdentityResponse(b *x509bundle.Bundle) {
	if a.streamed.Load() {
		return
	}
	if _, err := a.setBundle(b); err != nil {
		a.log.Error("agent: bundle from the CA's answer", "error", err)
	}
}
