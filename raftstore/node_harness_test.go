package raftstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshca/meshca/raftstore/internal/kvfsm"
	"github.com/meshca/meshca/raftstore/internal/testpki"
)

const testTrustDomain = "mesh.example"

// waitTimeout bounds every poll in these tests; on 2 shared cores under -race an election
// can take several seconds, so it is generous. Nothing asserts on how long a wait took.
const waitTimeout = 30 * time.Second

// testCluster runs nodes in this process over the real TLS transport on 127.0.0.1, each with
// its own data dir, registry and kvfsm.
type testCluster struct {
	t     testing.TB
	ca    *testpki.CA
	ids   []string
	addrs []string
	dirs  []string
	nodes []*Node
	fsms  []*kvfsm.FSM
	regs  []*prometheus.Registry
	tune  func(*NodeConfig)
	// newFSM, when set, gives node i a state machine other than kvfsm (fsms[i] is then nil).
	newFSM func(i int) raft.FSM
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("MESHCA_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newTestCluster starts size nodes that bootstrap together and waits for a leader.
func newTestCluster(t testing.TB, size int, tune func(*NodeConfig)) *testCluster {
	t.Helper()
	return newTestClusterWith(t, size, tune, nil)
}

// newTestClusterWith is newTestCluster with a state machine factory (nil: kvfsm).
func newTestClusterWith(t testing.TB, size int, tune func(*NodeConfig), newFSM func(i int) raft.FSM) *testCluster {
	t.Helper()
	ca, err := testpki.NewCA(testTrustDomain, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c := &testCluster{t: t, ca: ca, tune: tune, newFSM: newFSM}
	lns := make([]net.Listener, size)
	var peers []Peer
	for i := range size {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns[i] = ln
		id := fmt.Sprintf("n%d", i+1)
		c.ids = append(c.ids, id)
		c.addrs = append(c.addrs, ln.Addr().String())
		c.dirs = append(c.dirs, filepath.Join(t.TempDir(), id))
		peers = append(peers, Peer{ID: id, Address: ln.Addr().String()})
	}
	c.nodes = make([]*Node, size)
	c.fsms = make([]*kvfsm.FSM, size)
	c.regs = make([]*prometheus.Registry, size)
	for i := range size {
		c.start(i, func(cfg *NodeConfig) {
			cfg.Listener = lns[i]
			cfg.Bootstrap = true
			cfg.InitialPeers = peers
		})
	}
	t.Cleanup(c.shutdownAll)
	c.waitLeader()
	return c
}

// config returns node i's configuration with the test tuning applied.
func (c *testCluster) config(i int) NodeConfig {
	svid, err := c.ca.IssueNode(c.ids[i], time.Now())
	if err != nil {
		c.t.Fatal(err)
	}
	cfg := DefaultNodeConfig()
	cfg.ID = c.ids[i]
	cfg.DataDir = c.dirs[i]
	cfg.BindAddr = c.addrs[i]
	cfg.TrustDomain = testTrustDomain
	cfg.SVID = svid
	cfg.Bundle = c.ca.Bundle()
	cfg.Logger = testLogger(c.t).With("test_node", c.ids[i])
	// Under -race on a shared 2-core machine the loopback defaults flap; these tests check
	// behaviour, not failover speed (the process-level test measures that).
	cfg.HeartbeatTimeout = time.Second
	cfg.ElectionTimeout = time.Second
	cfg.LeaderLeaseTimeout = 500 * time.Millisecond
	if c.tune != nil {
		c.tune(&cfg)
	}
	return cfg
}

// start (re)starts node i from its data dir with a fresh FSM and registry.
func (c *testCluster) start(i int, edit func(*NodeConfig)) {
	c.t.Helper()
	cfg := c.config(i)
	c.regs[i] = prometheus.NewRegistry()
	cfg.Registerer = c.regs[i]
	if edit != nil {
		edit(&cfg)
	}
	var fsm raft.FSM
	if c.newFSM != nil {
		fsm = c.newFSM(i)
	} else {
		c.fsms[i] = kvfsm.New()
		fsm = c.fsms[i]
	}
	n, err := NewNode(cfg, fsm)
	if err != nil {
		c.t.Fatalf("start %s: %v", c.ids[i], err)
	}
	c.nodes[i] = n
}

func (c *testCluster) stop(i int) {
	c.t.Helper()
	if c.nodes[i] == nil {
		return
	}
	if err := c.nodes[i].Shutdown(); err != nil {
		c.t.Errorf("shutdown %s: %v", c.ids[i], err)
	}
	c.nodes[i] = nil
}

func (c *testCluster) shutdownAll() {
	for i := range c.nodes {
		c.stop(i)
	}
}

// waitLeader waits until every running node agrees on one running leader and returns it.
func (c *testCluster) waitLeader() int {
	c.t.Helper()
	leader := -1
	waitFor(c.t, "the running nodes to agree on a leader", func() bool {
		leader = -1
		var seen string
		for i, n := range c.nodes {
			if n == nil {
				continue
			}
			id, _ := n.Leader()
			if id == "" || (seen != "" && id != seen) {
				return false
			}
			seen = id
			if n.IsLeader() {
				leader = i
			}
		}
		return leader >= 0 && c.nodes[leader] != nil && c.ids[leader] == seen
	})
	return leader
}

// follower returns a running node that is not the leader.
func (c *testCluster) follower(leader int) int {
	for i, n := range c.nodes {
		if n != nil && i != leader {
			return i
		}
	}
	c.t.Fatal("no running follower")
	return -1
}

// waitApplied waits until every running node's FSM holds the same state as want's.
func (c *testCluster) waitConverged() []byte {
	c.t.Helper()
	var hash []byte
	waitFor(c.t, "every running node to reach the same state", func() bool {
		hash = nil
		var lastIndex uint64
		for _, n := range c.nodes {
			if n != nil && n.IsLeader() {
				lastIndex = n.Raft().LastIndex()
			}
		}
		for i, n := range c.nodes {
			if n == nil {
				continue
			}
			if n.Raft().AppliedIndex() < lastIndex {
				return false
			}
			h := c.fsms[i].StateHash()
			if hash != nil && !bytes.Equal(h, hash) {
				return false
			}
			hash = h
		}
		return true
	})
	return hash
}

// waitFor polls cond until it holds or waitTimeout passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", waitTimeout, what)
		}
		time.Sleep(10 * time.Millisecond) // poll interval of a bounded wait, not a wait for an event
	}
}

func propose(t testing.TB, n *Node, id, payload string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	res, err := n.Propose(ctx, kvfsm.Command(id, []byte(payload)))
	if err != nil {
		t.Fatalf("propose %s on %s: %v", id, n.ID(), err)
	}
	return res
}

func newCAForTest() (*testpki.CA, error) { return testpki.NewCA(testTrustDomain, time.Now()) }
