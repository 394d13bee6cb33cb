package raftstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/raftstore/internal/kvfsm"
)

func validConfig() NodeConfig {
	cfg := DefaultNodeConfig()
	cfg.ID = "n1"
	cfg.DataDir = "/var/lib/meshca"
	cfg.BindAddr = "127.0.0.1:7400"
	cfg.TrustDomain = "mesh.example"
	cfg.SVID = &x509svid.SVID{}
	cfg.Bundle = x509bundle.New(spiffeid.RequireTrustDomainFromString("mesh.example"))
	return cfg
}

func TestNodeConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*NodeConfig)
		wantErr string // a substring naming the field and the rule; empty means valid
	}{
		{"defaults with identity, storage and TLS are valid", func(*NodeConfig) {}, ""},
		{"id is required", func(c *NodeConfig) { c.ID = "" }, "ID: must be set"},
		{"id must be a SPIFFE path segment", func(c *NodeConfig) { c.ID = "a/b" }, "ID: must be a valid SPIFFE path segment"},
		{"data dir is required", func(c *NodeConfig) { c.DataDir = "" }, "DataDir: must be set"},
		{"bind address must be host:port", func(c *NodeConfig) { c.BindAddr = "7400" }, "BindAddr: must be host:port"},
		{"advertise address needs a non-zero port", func(c *NodeConfig) { c.AdvertiseAddr = "10.0.0.1:0" }, "AdvertiseAddr: must name a host and a non-zero port"},
		{"advertise address cannot be unspecified", func(c *NodeConfig) { c.AdvertiseAddr = "0.0.0.0:7400" }, "AdvertiseAddr: must not be the unspecified address"},
		{"trust domain must be valid", func(c *NodeConfig) { c.TrustDomain = "Mesh Example" }, "TrustDomain: must be a SPIFFE trust domain name"},
		{"node certificate is required", func(c *NodeConfig) { c.SVID = nil }, "SVID: must be set"},
		{"cluster roots are required", func(c *NodeConfig) { c.Bundle = nil }, "Bundle: must be set"},
		{"bootstrap peers must include this node", func(c *NodeConfig) {
			c.Bootstrap = true
			c.InitialPeers = []Peer{{ID: "n2", Address: "127.0.0.1:7401"}}
		}, "InitialPeers: must include this node"},
		{"bootstrap peer ids are unique", func(c *NodeConfig) {
			c.Bootstrap = true
			c.InitialPeers = []Peer{{ID: "n1", Address: "127.0.0.1:7400"}, {ID: "n1", Address: "127.0.0.1:7401"}}
		}, `InitialPeers[1].ID: "n1" appears twice`},
		{"initial peers without bootstrap are refused", func(c *NodeConfig) {
			c.InitialPeers = []Peer{{ID: "n1", Address: "127.0.0.1:7400"}}
		}, "InitialPeers: only used with Bootstrap"},
		{"election timeout is at least the heartbeat timeout", func(c *NodeConfig) { c.ElectionTimeout = c.HeartbeatTimeout / 2 }, "ElectionTimeout: must be at least HeartbeatTimeout"},
		{"leader lease is at most the heartbeat timeout", func(c *NodeConfig) { c.LeaderLeaseTimeout = 2 * c.HeartbeatTimeout }, "LeaderLeaseTimeout: must be between 5ms and HeartbeatTimeout"},
		{"max append entries is at most 1024", func(c *NodeConfig) { c.MaxAppendEntries = 2048 }, "MaxAppendEntries: must be between 1 and 1024"},
		{"snapshot retain is at least one", func(c *NodeConfig) { c.SnapshotRetain = 0 }, "SnapshotRetain: must be at least 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := validConfig()
			tt.edit(&cfg)
			err := cfg.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestDefaultTimeoutsReplaceALeaderWithinAboutTwoSeconds(t *testing.T) {
	cfg := DefaultNodeConfig()
	// A follower notices after at most 2×HeartbeatTimeout (raft randomizes within
	// [HeartbeatTimeout, 2×HeartbeatTimeout)) and the election takes at most 2×ElectionTimeout
	// in the common case of one round.
	worst := 2*cfg.HeartbeatTimeout + 2*cfg.ElectionTimeout
	if worst > 2*time.Second {
		t.Fatalf("default detection+election worst case %s, want <= 2s", worst)
	}
	if cfg.LeaderLeaseTimeout > cfg.HeartbeatTimeout {
		t.Fatalf("LeaderLeaseTimeout %s > HeartbeatTimeout %s", cfg.LeaderLeaseTimeout, cfg.HeartbeatTimeout)
	}
}

func TestProposeReturnsTheAppliedResultOnLeaderAndFollowers(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	follower := c.follower(leader)

	if got := propose(t, c.nodes[leader], "a", "x"); string(got) != "applied 1" {
		t.Fatalf("leader result = %q, want %q", got, "applied 1")
	}
	if got := propose(t, c.nodes[follower], "b", "y"); string(got) != "applied 2" {
		t.Fatalf("forwarded result = %q, want %q", got, "applied 2")
	}
	// A retried command (same id) answers with its first result and is not applied twice.
	if got := propose(t, c.nodes[follower], "a", "other"); string(got) != "applied 1" {
		t.Fatalf("retried command result = %q, want the first result %q", got, "applied 1")
	}
	c.waitConverged()
	for i, f := range c.fsms {
		if f.Len() != 2 {
			t.Errorf("%s holds %d commands, want 2", c.ids[i], f.Len())
		}
	}
}

func TestProposeOnAFollowerReturnsOnlyAfterItsOwnResultIsCommitted(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	follower := c.follower(c.waitLeader())
	propose(t, c.nodes[follower], "k", "v")
	// The leader applied it before answering (Propose returned its result), so the
	// command is committed: every node, including ones that were slow, ends up with it.
	c.waitConverged()
	for i, f := range c.fsms {
		if !f.Has("k") {
			t.Errorf("%s does not hold the acknowledged command", c.ids[i])
		}
	}
}

func TestConcurrentProposalsAreBatched(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	const clients, each = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := c.nodes[leader]
			if w%2 == 1 {
				n = c.nodes[c.follower(leader)]
			}
			for i := range each {
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				_, err := n.Propose(ctx, kvfsm.Command(fmt.Sprintf("w%d-%d", w, i), nil))
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	batches, entries, largest := c.fsms[leader].BatchStats()
	t.Logf("leader FSM: %d entries in %d ApplyBatch calls, largest %d", entries, batches, largest)
	if largest < 2 {
		t.Fatalf("largest ApplyBatch = %d with %d concurrent clients; concurrency did not turn into batching", largest, clients)
	}
	// Every proposal was acknowledged; on a loaded machine leadership may have moved during the
	// run, so the first leader may be a follower still applying the last entries.
	waitFor(t, "the first leader to hold every acknowledged command", func() bool {
		return c.fsms[leader].Len() == clients*each
	})
}

func TestARestartedClusterLosesNothingCommitted(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *NodeConfig) {
		// Snapshot part of the way through, so restart replays a snapshot and then the log.
		cfg.SnapshotThreshold = 20
		cfg.TrailingLogs = 5
		cfg.SnapshotInterval = 50 * time.Millisecond
	})
	leader := c.waitLeader()
	for i := range 60 {
		propose(t, c.nodes[(leader+i)%3], fmt.Sprintf("c%d", i), "p")
	}
	if _, err := c.nodes[leader].Snapshot(); err != nil {
		t.Fatalf("user snapshot: %v", err)
	}
	for i := 60; i < 80; i++ {
		propose(t, c.nodes[leader], fmt.Sprintf("c%d", i), "p")
	}
	before := c.waitConverged()
	c.shutdownAll()
	for i := range c.nodes {
		c.start(i, nil)
	}
	c.waitLeader()
	after := c.waitConverged()
	if !bytes.Equal(before, after) {
		t.Fatalf("state hash after restart %x, want %x", after, before)
	}
	for i, f := range c.fsms {
		if f.Len() != 80 {
			t.Errorf("%s holds %d commands after restart, want 80", c.ids[i], f.Len())
		}
	}
}

func TestAFollowerKeepsServingAfterTheLeaderStops(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	follower := c.follower(leader)
	propose(t, c.nodes[follower], "before", "x")
	c.stop(leader)
	// Propose retries until a new leader is elected; no waiting in the test.
	propose(t, c.nodes[follower], "after", "y")
	newLeader := c.waitLeader()
	if newLeader == leader {
		t.Fatalf("leader did not change")
	}
	c.waitConverged()
	for i, f := range c.fsms {
		if c.nodes[i] != nil && (!f.Has("before") || !f.Has("after")) {
			t.Errorf("%s misses an acknowledged command", c.ids[i])
		}
	}
}

func TestWithoutQuorumAWriteFailsUnavailableWithinItsTimeoutAndNothingIsApplied(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	propose(t, c.nodes[leader], "committed", "x")
	c.waitConverged()
	// Keep the leader alone: stopping both followers loses quorum; its lease runs out
	// and it steps down, so both the leader path and the no-leader path are exercised.
	survivor := leader
	for i := range c.nodes {
		if i != survivor {
			c.stop(i)
		}
	}
	applied := c.nodes[survivor].Raft().AppliedIndex()
	for _, id := range []string{"lost-1", "lost-2"} {
		const timeout = 3 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		start := time.Now()
		_, err := c.nodes[survivor].Propose(ctx, kvfsm.Command(id, nil))
		elapsed := time.Since(start)
		cancel()
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("propose %s without quorum: err = %v, want ErrUnavailable", id, err)
		}
		// Returning at all is the point; the bound only catches a call ignoring its context.
		if elapsed > timeout+5*time.Second {
			t.Fatalf("propose %s without quorum took %s, timeout was %s", id, elapsed, timeout)
		}
		t.Logf("%s: %v (after %s)", id, err, elapsed.Round(time.Millisecond))
	}
	if c.fsms[survivor].Has("lost-1") || c.fsms[survivor].Has("lost-2") {
		t.Fatal("a write without quorum was applied")
	}
	if got := c.nodes[survivor].Raft().AppliedIndex(); got != applied {
		t.Fatalf("applied index moved from %d to %d without quorum", applied, got)
	}
	if _, err := c.nodes[survivor].Propose(context.Background(), nil); err == nil {
		t.Fatal("empty command accepted")
	}
}

func TestNoLeaderIsReportedAsErrNoLeader(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	c.stop(leader)
	c.stop(c.follower(leader))
	survivor := c.follower(-1)
	waitFor(t, "the survivor to forget the leader", func() bool {
		id, _ := c.nodes[survivor].Leader()
		return id == ""
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := c.nodes[survivor].Propose(ctx, kvfsm.Command("x", nil))
	if !errors.Is(err, ErrNoLeader) || !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrNoLeader wrapping ErrUnavailable and the deadline", err)
	}
}

func TestShutdownIsIdempotentAndProposeAfterItFails(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	n := c.nodes[0]
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := n.Shutdown(); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	c.nodes[0] = nil
	_, err := n.Propose(context.Background(), kvfsm.Command("x", nil))
	if !errors.Is(err, ErrShutdown) {
		t.Fatalf("Propose after Shutdown: %v, want ErrShutdown", err)
	}
}

func TestNewNodeFailsWhenThePortIsTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := &testCluster{t: t, ids: []string{"n1"}, addrs: []string{ln.Addr().String()}, dirs: []string{t.TempDir()}}
	ca, err := newCAForTest()
	if err != nil {
		t.Fatal(err)
	}
	c.ca = ca
	cfg := c.config(0)
	if _, err := NewNode(cfg, kvfsm.New()); err == nil || !strings.Contains(err.Error(), "BindAddr") {
		t.Fatalf("NewNode on a taken port: %v, want a BindAddr error", err)
	}
}

func TestNewNodeRefusesACertificateThatNamesAnotherNode(t *testing.T) {
	ca, err := newCAForTest()
	if err != nil {
		t.Fatal(err)
	}
	c := &testCluster{t: t, ca: ca, ids: []string{"n1"}, addrs: []string{"127.0.0.1:0"}, dirs: []string{t.TempDir()}}
	for _, tt := range []struct {
		name string
		uris []string
		want string
	}{
		{"another node's id", []string{ca.ServerID("n2")}, "want spiffe://mesh.example/meshca/server/n1"},
		{"a workload id", []string{"spiffe://mesh.example/ns/sports/sa/api"}, "want spiffe://mesh.example/meshca/server/n1"},
		{"no SPIFFE id", nil, "must carry one SPIFFE ID"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			svid, err := ca.Issue(time.Now(), tt.uris...)
			if err != nil {
				t.Fatal(err)
			}
			cfg := c.config(0)
			cfg.SVID = svid
			if _, err := NewNode(cfg, kvfsm.New()); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewNode with %v: %v, want an error containing %q", tt.uris, err, tt.want)
			}
		})
	}
}

func TestASnapshotWrittenOutRestoresTheClusterToThatState(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	propose(t, c.nodes[leader], "kept", "x")
	var backup bytes.Buffer
	info, err := c.nodes[leader].WriteSnapshot(&backup)
	if err != nil {
		t.Fatalf("WriteSnapshot: %v", err)
	}
	if info.Index == 0 || info.Size != int64(backup.Len()) {
		t.Fatalf("snapshot info %+v for %d bytes", info, backup.Len())
	}
	propose(t, c.nodes[leader], "after-backup", "y")
	c.waitConverged()

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := c.nodes[c.follower(leader)].Restore(ctx, bytes.NewReader(backup.Bytes()), int64(backup.Len())); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Restore on a follower: %v, want ErrNotLeader", err)
	}
	if err := c.nodes[leader].Restore(ctx, bytes.NewReader(backup.Bytes()), int64(backup.Len())); err != nil {
		t.Fatalf("Restore on the leader: %v", err)
	}
	c.waitConverged()
	for i, f := range c.fsms {
		if !f.Has("kept") || f.Has("after-backup") {
			t.Errorf("%s after restore: kept=%v after-backup=%v, want the backup's state", c.ids[i], f.Has("kept"), f.Has("after-backup"))
		}
	}
}

func TestANodeRestartedInTheSameProcessRegistersItsMetricsAgain(t *testing.T) {
	ca, err := newCAForTest()
	if err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	c := &testCluster{t: t, ca: ca, ids: []string{"n1"}, addrs: []string{taken.Addr().String()}, dirs: []string{t.TempDir()}}
	reg := prometheus.NewRegistry()
	cfg := c.config(0)
	cfg.Registerer = reg
	cfg.Bootstrap = true
	if _, err := NewNode(cfg, kvfsm.New()); err == nil {
		t.Fatal("NewNode on a taken port succeeded")
	}
	cfg.BindAddr = "127.0.0.1:0"
	for round := range 2 {
		n, err := NewNode(cfg, kvfsm.New())
		if err != nil {
			t.Fatalf("round %d: NewNode with the same registry: %v", round, err)
		}
		if err := n.Shutdown(); err != nil {
			t.Fatal(err)
		}
	}
}
