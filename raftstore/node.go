package raftstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
)

// Sentinel errors callers branch on.
var (
	// ErrUnavailable means the cluster could not commit the request before the caller's
	// deadline: no quorum, or no leader could be reached. Nothing is known to be applied; a
	// retry with the same command id is safe.
	ErrUnavailable = errors.New("raftstore: cluster unavailable")
	// ErrNoLeader means no leader was known when the request gave up. It wraps ErrUnavailable.
	ErrNoLeader = fmt.Errorf("%w: no leader", ErrUnavailable)
	// ErrNotLeader means a leader-only operation (VerifyLeader, Barrier) ran on a node that
	// does not lead.
	ErrNotLeader = errors.New("raftstore: this node is not the leader")
	// ErrShutdown means the node was shut down.
	ErrShutdown = errors.New("raftstore: node is shut down")
	// ErrBadResult means the state machine answered a command with something other than
	// []byte, which breaks the FSM contract.
	ErrBadResult = errors.New("raftstore: state machine result is not []byte")
)

// ALPN protocol names negotiated on the cluster port.
const (
	// ALPNRaft selects the Raft stream layer.
	ALPNRaft = "meshca-raft"
	// ALPNGRPC selects the internal gRPC service.
	ALPNGRPC = "h2"
)

// logCacheEntries is how many of the newest log entries a node keeps in memory (a few
// AppendEntries' worth at the default MaxAppendEntries).
const logCacheEntries = 2048

// Peer is a member of the initial Raft configuration.
type Peer struct {
	// ID is the node id, the last segment of its SPIFFE ID.
	ID string
	// Address is the cluster address (host:port) the node is reached at.
	Address string
}

// NodeConfig configures a Node. Start from DefaultNodeConfig and set the identity, storage,
// network and TLS fields; NewNode calls Validate.
type NodeConfig struct {
	// ID is this node's id: the last segment of its SPIFFE ID
	// spiffe://<TrustDomain>/meshca/server/<ID>, and its Raft server id.
	ID string
	// DataDir holds the write-ahead log (DataDir/wal) and snapshots (DataDir/snapshots).
	DataDir string
	// BindAddr is the cluster listen address (host:port) for Raft and the internal gRPC
	// service. Ignored when Listener is set.
	BindAddr string
	// Listener, when set, is an already bound TCP listener used instead of BindAddr. The node
	// takes ownership and closes it on Shutdown.
	Listener net.Listener
	// AdvertiseAddr is the address other nodes dial; empty means the listener's address.
	AdvertiseAddr string

	// TrustDomain is the cluster's SPIFFE trust domain, e.g. "mesh.example".
	TrustDomain string
	// SVID gives this node's certificate and key (an *x509svid.SVID works as a static source).
	SVID x509svid.Source
	// Bundle gives the cluster CA roots (an *x509bundle.Bundle works as a static source).
	Bundle x509bundle.Source

	// Bootstrap makes this node form a new cluster from InitialPeers when its data dir holds
	// no Raft state yet. A node that joins later leaves it false and is added with Join.
	Bootstrap bool
	// InitialPeers is the first configuration when bootstrapping; it must include this node.
	// Empty means a single-node cluster of this node.
	InitialPeers []Peer

	// HeartbeatTimeout is how long a follower goes without leader contact before it starts
	// an election.
	HeartbeatTimeout time.Duration
	// ElectionTimeout is how long a candidate waits for votes before it retries.
	ElectionTimeout time.Duration
	// LeaderLeaseTimeout is how long a leader goes without quorum contact before it steps down.
	LeaderLeaseTimeout time.Duration
	// CommitTimeout bounds how long the leader waits before sending an AppendEntries with
	// no new entries, which also bounds the latency of committing on followers.
	CommitTimeout time.Duration
	// TransportTimeout is the I/O deadline on Raft connections.
	TransportTimeout time.Duration
	// HandshakeTimeout bounds the TLS handshake on the cluster port.
	HandshakeTimeout time.Duration
	// MaxAppendEntries is the most entries sent in one AppendEntries, written in one fsync'd
	// batch, and handed to the FSM in one ApplyBatch. Larger values batch more under load.
	MaxAppendEntries int
	// SnapshotInterval is how often Raft checks whether to take a snapshot.
	SnapshotInterval time.Duration
	// SnapshotThreshold is how many new log entries trigger a snapshot.
	SnapshotThreshold uint64
	// TrailingLogs is how many entries are kept in the log after a snapshot, so a slightly
	// lagging follower catches up from the log instead of a snapshot.
	TrailingLogs uint64
	// SnapshotRetain is how many snapshots are kept on disk.
	SnapshotRetain int

	// Registerer receives the node's metrics; nil means they are not registered.
	Registerer prometheus.Registerer
	// Logger receives the node's logs and Raft's; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultNodeConfig returns the tuned defaults: on loopback a lost leader is replaced within
// about 2 s (a follower notices after 0.5–1 s without heartbeats, an election takes 0.5–1 s).
func DefaultNodeConfig() NodeConfig {
	return NodeConfig{
		HeartbeatTimeout:   500 * time.Millisecond,
		ElectionTimeout:    500 * time.Millisecond,
		LeaderLeaseTimeout: 250 * time.Millisecond,
		CommitTimeout:      20 * time.Millisecond,
		TransportTimeout:   5 * time.Second,
		HandshakeTimeout:   5 * time.Second,
		MaxAppendEntries:   512,
		SnapshotInterval:   30 * time.Second,
		SnapshotThreshold:  16384,
		TrailingLogs:       10240,
		SnapshotRetain:     2,
	}
}

// Validate checks the configuration; errors name the field and the rule.
func (c *NodeConfig) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if err := validNodeID(c.ID); err != nil {
		add("ID: %w", err)
	}
	if c.DataDir == "" {
		add("DataDir: must be set")
	}
	if c.Listener == nil {
		if _, _, err := net.SplitHostPort(c.BindAddr); err != nil {
			add("BindAddr: must be host:port when Listener is nil: %w", err)
		}
	}
	if c.AdvertiseAddr != "" {
		if err := validAdvertiseAddr(c.AdvertiseAddr); err != nil {
			add("AdvertiseAddr: %w", err)
		}
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		add("TrustDomain: must be a SPIFFE trust domain name: %w", err)
	}
	if c.SVID == nil {
		add("SVID: must be set (the node certificate)")
	}
	if c.Bundle == nil {
		add("Bundle: must be set (the cluster CA roots)")
	}
	if c.Bootstrap && len(c.InitialPeers) > 0 {
		self := false
		seen := map[string]bool{}
		for i, p := range c.InitialPeers {
			if err := validNodeID(p.ID); err != nil {
				add("InitialPeers[%d].ID: %w", i, err)
			}
			if err := validAdvertiseAddr(p.Address); err != nil {
				add("InitialPeers[%d].Address: %w", i, err)
			}
			if seen[p.ID] {
				add("InitialPeers[%d].ID: %q appears twice", i, p.ID)
			}
			seen[p.ID] = true
			self = self || p.ID == c.ID
		}
		if !self {
			add("InitialPeers: must include this node (ID %q)", c.ID)
		}
	}
	if !c.Bootstrap && len(c.InitialPeers) > 0 {
		add("InitialPeers: only used with Bootstrap; a joining node is added with Join")
	}
	if c.HeartbeatTimeout < 5*time.Millisecond {
		add("HeartbeatTimeout: must be at least 5ms, got %s", c.HeartbeatTimeout)
	}
	if c.ElectionTimeout < c.HeartbeatTimeout {
		add("ElectionTimeout: must be at least HeartbeatTimeout (%s), got %s", c.HeartbeatTimeout, c.ElectionTimeout)
	}
	if c.LeaderLeaseTimeout < 5*time.Millisecond || c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		add("LeaderLeaseTimeout: must be between 5ms and HeartbeatTimeout (%s), got %s", c.HeartbeatTimeout, c.LeaderLeaseTimeout)
	}
	if c.CommitTimeout < time.Millisecond {
		add("CommitTimeout: must be at least 1ms, got %s", c.CommitTimeout)
	}
	if c.TransportTimeout <= 0 {
		add("TransportTimeout: must be positive, got %s", c.TransportTimeout)
	}
	if c.HandshakeTimeout <= 0 {
		add("HandshakeTimeout: must be positive, got %s", c.HandshakeTimeout)
	}
	if c.MaxAppendEntries < 1 || c.MaxAppendEntries > 1024 {
		add("MaxAppendEntries: must be between 1 and 1024, got %d", c.MaxAppendEntries)
	}
	if c.SnapshotInterval < 5*time.Millisecond {
		add("SnapshotInterval: must be at least 5ms, got %s", c.SnapshotInterval)
	}
	if c.SnapshotThreshold < 1 {
		add("SnapshotThreshold: must be at least 1")
	}
	if c.SnapshotRetain < 1 {
		add("SnapshotRetain: must be at least 1, got %d", c.SnapshotRetain)
	}
	if len(errs) > 0 {
		return fmt.Errorf("raftstore: node config: %w", errors.Join(errs...))
	}
	return nil
}

func validNodeID(id string) error {
	if id == "" {
		return errors.New("must be set")
	}
	// The id is a SPIFFE path segment: reuse go-spiffe's rules for it.
	if err := spiffeid.ValidatePathSegment(id); err != nil {
		return fmt.Errorf("must be a valid SPIFFE path segment: %w", err)
	}
	return nil
}

func validAdvertiseAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("must be host:port: %w", err)
	}
	if host == "" || port == "" || port == "0" {
		return fmt.Errorf("must name a host and a non-zero port, got %q", addr)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return fmt.Errorf("must not be the unspecified address, got %q", addr)
	}
	return nil
}

// Node is one member of the Raft group: durable log, mutual-TLS transport, the internal gRPC
// service, forwarding to the leader and membership changes.
type Node struct {
	cfg         NodeConfig
	logger      *slog.Logger
	trustDomain spiffeid.TrustDomain
	advertise   string

	raft      atomic.Pointer[raft.Raft]
	logStore  *wal.WAL
	metaStore *metadb.BoltMetaDB
	transport *raft.NetworkTransport
	mux       *mux
	grpc      *grpc.Server
	peers     *peerVerifier
	clients   *clientPool
	metrics   *nodeMetrics

	observerCh chan raft.Observation
	observer   *raft.Observer

	leaderMu    sync.Mutex
	epoch       context.Context // cancelled at every leader change
	epochCancel context.CancelFunc
	watchers    map[chan LeaderInfo]struct{}
	failing     map[raft.ServerID]time.Time // leader's view: peers whose heartbeats fail, since

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
	// waitersMu orders starting a tracked goroutine against Shutdown's wg.Wait.
	waitersMu sync.RWMutex
	stopped   bool
}

// NewNode opens the data dir, binds the cluster port and starts Raft with fsm. fsm's Apply
// (and ApplyBatch, when it implements raft.BatchingFSM) must answer commands with []byte.
func NewNode(cfg NodeConfig, fsm raft.FSM) (_ *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if fsm == nil {
		return nil, errors.New("raftstore: NewNode: fsm must not be nil")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("node", cfg.ID)
	hlog := newHCLogger(logger, "raft")

	n := &Node{
		cfg:        cfg,
		logger:     logger,
		observerCh: make(chan raft.Observation, 64),
		watchers:   map[chan LeaderInfo]struct{}{},
		failing:    map[raft.ServerID]time.Time{},
		stop:       make(chan struct{}),
	}
	n.trustDomain = spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	if err := n.checkOwnSVID(); err != nil {
		return nil, err
	}
	n.epoch, n.epochCancel = context.WithCancel(context.Background())
	n.metrics, err = newNodeMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}

	closers := []func(){n.metrics.unregister}
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()

	walDir := filepath.Join(cfg.DataDir, "wal")
	if err := os.MkdirAll(walDir, 0o700); err != nil {
		return nil, fmt.Errorf("raftstore: DataDir %q: %w", cfg.DataDir, err)
	}
	ln := cfg.Listener
	if ln == nil {
		ln, err = net.Listen("tcp", cfg.BindAddr)
		if err != nil {
			return nil, fmt.Errorf("raftstore: BindAddr %q: %w", cfg.BindAddr, err)
		}
	}
	closers = append(closers, func() { ln.Close() })
	n.advertise = cfg.AdvertiseAddr
	if n.advertise == "" {
		n.advertise = ln.Addr().String()
		if err := validAdvertiseAddr(n.advertise); err != nil {
			return nil, fmt.Errorf("raftstore: AdvertiseAddr: empty and the listener address cannot be dialled: %w", err)
		}
	}

	for _, p := range cfg.InitialPeers {
		if cfg.Bootstrap && p.ID == cfg.ID && p.Address != n.advertise {
			return nil, fmt.Errorf("raftstore: InitialPeers: this node (%q) is listed at %s but advertises %s", p.ID, p.Address, n.advertise)
		}
	}

	n.peers = &peerVerifier{
		trustDomain: n.trustDomain,
		bundle:      cfg.Bundle,
		members:     n.members,
		refused:     n.metrics.refused,
		logger:      logger,
	}
	n.mux = newMux(ln, n.serverTLSConfig(), cfg.HandshakeTimeout, n.metrics.refused, logger)
	closers = append(closers, func() { n.mux.Close() })
	stream := &streamLayer{Listener: n.mux.raftListener(), advertise: n.advertise, tlsConfig: n.clientTLSConfig(ALPNRaft)}
	n.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 3,
		Timeout: cfg.TransportTimeout,
		Logger:  hlog.Named("transport"),
	})
	closers = append(closers, func() { n.transport.Close() })

	// raft-wal's Close leaves the metadata store it opened itself open (and its file
	// locked), so the node owns the metadata store and closes it after the log.
	n.metaStore = &metadb.BoltMetaDB{}
	closers = append(closers, func() { n.metaStore.Close() })
	n.logStore, err = wal.Open(walDir,
		wal.WithLogger(hlog.Named("wal")),
		wal.WithMetaStore(n.metaStore),
		wal.WithSegmentFiler(newSegmentFiler(walDir)))
	if err != nil {
		return nil, fmt.Errorf("raftstore: open log in %q: %w", cfg.DataDir, err)
	}
	closers = append(closers, func() { n.logStore.Close() })
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, cfg.SnapshotRetain, hlog.Named("snapshots"))
	if err != nil {
		return nil, fmt.Errorf("raftstore: open snapshots in %q: %w", cfg.DataDir, err)
	}

	rc := n.raftConfig(hlog)
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("raftstore: raft config: %w", err)
	}
	if cfg.Bootstrap {
		has, err := raft.HasExistingState(n.logStore, n.logStore, snaps)
		if err != nil {
			return nil, fmt.Errorf("raftstore: read existing state: %w", err)
		}
		if !has {
			if err := raft.BootstrapCluster(rc, n.logStore, n.logStore, snaps, n.transport, n.initialConfiguration()); err != nil {
				return nil, fmt.Errorf("raftstore: bootstrap: %w", err)
			}
		}
	}

	// Recent entries are kept in memory: the leader reads each entry back to replicate it, and
	// from the cache that costs no read from the segment files.
	logs, err := raft.NewLogCache(logCacheEntries, n.logStore)
	if err != nil {
		return nil, fmt.Errorf("raftstore: log cache: %w", err)
	}
	r, err := raft.NewRaft(rc, fsm, logs, n.logStore, snaps, n.transport)
	if err != nil {
		return nil, fmt.Errorf("raftstore: start raft: %w", err)
	}
	n.raft.Store(r)
	n.observer = raft.NewObserver(n.observerCh, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.LeaderObservation, raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation:
			return true
		}
		return false
	})
	r.RegisterObserver(n.observer)

	n.grpc = newInternalServer(n)
	n.clients = newClientPool(n.clientTLSConfig(ALPNGRPC), func(k int) { n.metrics.forwardBatch.Observe(float64(k)) })

	// Connections are routed only now that the Raft configuration is loaded, so the peer
	// check of an early connection already sees the members stored on disk.
	n.wg.Add(3)
	go func() { defer n.wg.Done(); n.mux.Serve() }()
	go func() { defer n.wg.Done(); _ = n.grpc.Serve(n.mux.grpcListener()) }()
	go func() { defer n.wg.Done(); n.observe() }()
	n.logger.Info("raft node started", "advertise", n.advertise, "bootstrap", cfg.Bootstrap)
	return n, nil
}

// checkOwnSVID makes sure the node certificate names this node: peers would refuse it anyway,
// but the operator learns why at start instead of from every peer's refusal log.
func (n *Node) checkOwnSVID() error {
	svid, err := n.cfg.SVID.GetX509SVID()
	if err != nil {
		return fmt.Errorf("raftstore: SVID: %w", err)
	}
	want, err := spiffeid.FromSegments(n.trustDomain, "meshca", "server", n.cfg.ID)
	if err != nil {
		return fmt.Errorf("raftstore: ID %q: %w", n.cfg.ID, err)
	}
	if len(svid.Certificates) == 0 {
		return errors.New("raftstore: SVID: no certificate")
	}
	got, err := x509svid.IDFromCert(svid.Certificates[0])
	if err != nil {
		return fmt.Errorf("raftstore: SVID: certificate must carry one SPIFFE ID: %w", err)
	}
	if got != want {
		return fmt.Errorf("raftstore: SVID: certificate carries %s, want %s (the ID and trust domain of this node)", got, want)
	}
	return nil
}

func (n *Node) raftConfig(hlog hclog.Logger) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.ID)
	rc.HeartbeatTimeout = n.cfg.HeartbeatTimeout
	rc.ElectionTimeout = n.cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = n.cfg.LeaderLeaseTimeout
	rc.CommitTimeout = n.cfg.CommitTimeout
	rc.MaxAppendEntries = n.cfg.MaxAppendEntries
	// A buffered apply channel lets concurrent proposals queue up while the leader is
	// writing the previous batch; the leader then drains them into one fsync'd batch.
	rc.BatchApplyCh = true
	rc.SnapshotInterval = n.cfg.SnapshotInterval
	rc.SnapshotThreshold = n.cfg.SnapshotThreshold
	rc.TrailingLogs = n.cfg.TrailingLogs
	rc.Logger = hlog
	return rc
}

func (n *Node) initialConfiguration() raft.Configuration {
	peers := n.cfg.InitialPeers
	if len(peers) == 0 {
		peers = []Peer{{ID: n.cfg.ID, Address: n.advertise}}
	}
	var c raft.Configuration
	for _, p := range peers {
		c.Servers = append(c.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Address)})
	}
	return c
}

// members returns the server ids of the latest Raft configuration (committed or not). Before
// Raft runs, or while the configuration is empty, it reports an empty set.
func (n *Node) members() map[string]bool {
	r := n.raft.Load()
	if r == nil {
		return nil
	}
	f := r.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	servers := f.Configuration().Servers
	out := make(map[string]bool, len(servers))
	for _, s := range servers {
		out[string(s.ID)] = true
	}
	return out
}

// ID returns this node's id.
func (n *Node) ID() string { return n.cfg.ID }

// Addr returns the cluster address other nodes dial.
func (n *Node) Addr() string { return n.advertise }

// Raft returns the underlying hashicorp/raft instance, for reads of its state.
func (n *Node) Raft() *raft.Raft { return n.raft.Load() }

// Leader returns the id and address of the current leader, empty when none is known.
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.Load().LeaderWithID()
	return string(i), string(a)
}

// IsLeader reports whether this node is the leader.
func (n *Node) IsLeader() bool { return n.raft.Load().State() == raft.Leader }

// LeaderInfo describes the leader as seen by this node after a change.
type LeaderInfo struct {
	// ID and Address of the leader, empty when there is none.
	ID, Address string
	// Self is true when this node leads.
	Self bool
}

// WatchLeader returns a channel that receives the current leader at once and then every
// change, until ctx ends (then it is closed). A slow reader misses intermediate changes but
// always gets the latest one.
func (n *Node) WatchLeader(ctx context.Context) <-chan LeaderInfo {
	ch := make(chan LeaderInfo, 1)
	id, addr := n.Leader()
	ch <- LeaderInfo{ID: id, Address: addr, Self: id == n.cfg.ID}
	n.leaderMu.Lock()
	n.watchers[ch] = struct{}{}
	n.leaderMu.Unlock()
	context.AfterFunc(ctx, func() {
		n.leaderMu.Lock()
		defer n.leaderMu.Unlock()
		if _, ok := n.watchers[ch]; ok {
			delete(n.watchers, ch)
			close(ch)
		}
	})
	return ch
}

// leaderEpoch returns a context that is cancelled at the next leader change.
func (n *Node) leaderEpoch() context.Context {
	n.leaderMu.Lock()
	defer n.leaderMu.Unlock()
	return n.epoch
}

func (n *Node) observe() {
	for {
		select {
		case <-n.stop:
			return
		case o := <-n.observerCh:
			switch d := o.Data.(type) {
			case raft.LeaderObservation:
				n.leaderChanged(LeaderInfo{ID: string(d.LeaderID), Address: string(d.LeaderAddr), Self: string(d.LeaderID) == n.cfg.ID})
			case raft.FailedHeartbeatObservation:
				n.leaderMu.Lock()
				if _, ok := n.failing[d.PeerID]; !ok {
					n.failing[d.PeerID] = d.LastContact
				}
				n.leaderMu.Unlock()
			case raft.ResumedHeartbeatObservation:
				n.leaderMu.Lock()
				delete(n.failing, d.PeerID)
				n.leaderMu.Unlock()
			}
		}
	}
}

func (n *Node) leaderChanged(info LeaderInfo) {
	n.logger.Info("leader changed", "leader_id", info.ID, "leader_addr", info.Address, "self", info.Self)
	if info.Self {
		n.metrics.leader.Set(1)
	} else {
		n.metrics.leader.Set(0)
	}
	n.leaderMu.Lock()
	defer n.leaderMu.Unlock()
	n.epochCancel()
	n.epoch, n.epochCancel = context.WithCancel(context.Background())
	n.failing = map[raft.ServerID]time.Time{}
	for ch := range n.watchers {
		select { // keep only the latest
		case <-ch:
		default:
		}
		ch <- info
	}
}

// VerifyLeader confirms with a quorum that this node still leads; a read served after it
// returns nil is linearizable with the commits before it. It fails with ErrNotLeader on a
// follower or a deposed leader.
func (n *Node) VerifyLeader(ctx context.Context) error {
	return n.waitFuture(ctx, "verify leader", n.raft.Load().VerifyLeader())
}

// Barrier waits until every entry committed before it is applied to the local FSM; with
// VerifyLeader it makes a local read linearizable. Leader only.
func (n *Node) Barrier(ctx context.Context) error {
	return n.waitFuture(ctx, "barrier", n.raft.Load().Barrier(timeoutOf(ctx, n.cfg.TransportTimeout)))
}

func (n *Node) waitFuture(ctx context.Context, op string, f raft.Future) error {
	err, finished := n.await(ctx, f.Error)
	if !finished {
		return fmt.Errorf("raftstore: %s: %w: %w", op, ErrUnavailable, err)
	}
	return n.raftError(op, err)
}

// await runs wait (a raft future's Error, which raft always resolves, at the latest when it
// shuts down) on a goroutine the node tracks, and returns its error, or ctx's error with
// finished false if ctx ends first. After Shutdown it returns raft.ErrRaftShutdown.
func (n *Node) await(ctx context.Context, wait func() error) (err error, finished bool) {
	n.waitersMu.RLock()
	if n.stopped {
		n.waitersMu.RUnlock()
		return raft.ErrRaftShutdown, true
	}
	errCh := make(chan error, 1)
	n.wg.Add(1)
	n.waitersMu.RUnlock()
	go func() {
		defer n.wg.Done()
		errCh <- wait()
	}()
	select {
	case err := <-errCh:
		return err, true
	case <-ctx.Done():
		return ctx.Err(), false
	}
}

// raftError maps hashicorp/raft errors onto our sentinels.
func (n *Node) raftError(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost):
		return fmt.Errorf("raftstore: %s: %w: %w", op, ErrNotLeader, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("raftstore: %s: %w", op, ErrShutdown)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("raftstore: %s: %w: %w", op, ErrUnavailable, err)
	}
	return fmt.Errorf("raftstore: %s: %w", op, err)
}

// timeoutOf returns the time left before ctx's deadline, or def without one.
func timeoutOf(ctx context.Context, def time.Duration) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d), time.Millisecond)
	}
	return def
}

// SnapshotInfo describes a snapshot taken on request.
type SnapshotInfo struct {
	ID    string
	Index uint64
	Term  uint64
	Size  int64
}

// Snapshot takes a snapshot now (as an operator would before an upgrade) and compacts the
// log behind it.
func (n *Node) Snapshot() (SnapshotInfo, error) {
	f := n.raft.Load().Snapshot()
	if err := f.Error(); err != nil {
		return SnapshotInfo{}, n.raftError("snapshot", err)
	}
	meta, rc, err := f.Open()
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("raftstore: snapshot: open: %w", err)
	}
	rc.Close()
	return SnapshotInfo{ID: meta.ID, Index: meta.Index, Term: meta.Term, Size: meta.Size}, nil
}

// WriteSnapshot takes a snapshot now and streams the state machine's snapshot bytes to w:
// the backup an operator keeps (`meshctl cluster snapshot`). Restore reads it back.
func (n *Node) WriteSnapshot(w io.Writer) (SnapshotInfo, error) {
	f := n.raft.Load().Snapshot()
	if err := f.Error(); err != nil {
		return SnapshotInfo{}, n.raftError("snapshot", err)
	}
	meta, rc, err := f.Open()
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("raftstore: snapshot: open: %w", err)
	}
	defer rc.Close()
	if _, err := io.Copy(w, rc); err != nil {
		return SnapshotInfo{}, fmt.Errorf("raftstore: snapshot: write: %w", err)
	}
	return SnapshotInfo{ID: meta.ID, Index: meta.Index, Term: meta.Term, Size: meta.Size}, nil
}

// Restore replaces the replicated state with a snapshot written by WriteSnapshot (size is its
// length in bytes). It runs on the leader, which installs it and then brings every follower
// to it; as in hashicorp/raft, it is for disaster recovery, not normal operation. On a
// follower it fails with ErrNotLeader.
func (n *Node) Restore(ctx context.Context, r io.Reader, size int64) error {
	if size <= 0 {
		return fmt.Errorf("raftstore: restore: size: must be positive, got %d", size)
	}
	rf := n.raft.Load()
	if rf.State() != raft.Leader {
		return fmt.Errorf("raftstore: restore: %w", ErrNotLeader)
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Size: size}
	err, finished := n.await(ctx, func() error { return rf.Restore(meta, r, timeoutOf(ctx, defaultProposeTimeout)) })
	if !finished {
		return fmt.Errorf("raftstore: restore: %w: outcome unknown: %w", ErrUnavailable, err)
	}
	return n.raftError("restore", err)
}

// Shutdown stops Raft, the internal service and the cluster port, and closes the log.
// Committed entries are already on disk; calling it again is harmless.
func (n *Node) Shutdown() error {
	var errs []error
	n.stopOnce.Do(func() {
		r := n.raft.Load()
		r.DeregisterObserver(n.observer)
		if err := r.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("raft: %w", err))
		}
		close(n.stop)
		n.grpc.Stop()
		n.clients.Close()
		if err := n.transport.Close(); err != nil {
			errs = append(errs, fmt.Errorf("transport: %w", err))
		}
		n.mux.Close()
		n.waitersMu.Lock()
		n.stopped = true
		n.waitersMu.Unlock()
		n.wg.Wait()
		if err := n.logStore.Close(); err != nil {
			errs = append(errs, fmt.Errorf("log: %w", err))
		}
		if err := n.metaStore.Close(); err != nil {
			errs = append(errs, fmt.Errorf("log metadata: %w", err))
		}
		n.leaderMu.Lock()
		n.epochCancel()
		for ch := range n.watchers {
			delete(n.watchers, ch)
			close(ch)
		}
		n.leaderMu.Unlock()
		n.metrics.unregister()
		n.logger.Info("raft node stopped")
	})
	if len(errs) > 0 {
		return fmt.Errorf("raftstore: shutdown: %w", errors.Join(errs...))
	}
	return nil
}

func (n *Node) isShutdown() bool {
	select {
	case <-n.stop:
		return true
	default:
		return false
	}
}
