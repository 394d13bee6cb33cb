package raftstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// inmemCluster is hashicorp/raft with its in-memory transport and stores, running this
// package's FSM on every node. It is a Proposer: commands go to whichever node leads.
type inmemCluster struct {
	t     testing.TB
	mu    sync.Mutex
	rafts []*raft.Raft
	fsms  []*FSM
	trans []*raft.InmemTransport
}

const inmemWait = 30 * time.Second

func inmemRaftConfig(id string) *raft.Config {
	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(id)
	conf.HeartbeatTimeout = 200 * time.Millisecond
	conf.ElectionTimeout = 200 * time.Millisecond
	conf.LeaderLeaseTimeout = 100 * time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond
	conf.SnapshotThreshold = 1 << 30 // snapshots only when a test asks
	conf.TrailingLogs = 10
	conf.Logger = hclog.NewNullLogger()
	return conf
}

func newInmemCluster(t testing.TB, n int) *inmemCluster {
	t.Helper()
	c := &inmemCluster{t: t}
	var servers []raft.Server
	for i := 0; i < n; i++ {
		addr, tr := raft.NewInmemTransport(raft.ServerAddress(fmt.Sprintf("node-%d", i)))
		c.trans = append(c.trans, tr)
		servers = append(servers, raft.Server{ID: raft.ServerID(fmt.Sprintf("node-%d", i)), Address: addr})
	}
	c.connectAll()
	for i := 0; i < n; i++ {
		c.startNode(i)
	}
	if err := c.rafts[0].BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	t.Cleanup(func() {
		for _, r := range c.rafts {
			_ = r.Shutdown().Error()
		}
	})
	c.leader()
	return c
}

func (c *inmemCluster) connectAll() {
	for _, a := range c.trans {
		for _, b := range c.trans {
			if a != b {
				a.Connect(b.LocalAddr(), b)
			}
		}
	}
}

// startNode starts the Raft node of transport i with a fresh FSM and empty stores.
func (c *inmemCluster) startNode(i int) {
	c.t.Helper()
	f, err := NewFSM(DefaultFSMConfig())
	if err != nil {
		c.t.Fatal(err)
	}
	store := raft.NewInmemStore()
	r, err := raft.NewRaft(inmemRaftConfig(fmt.Sprintf("node-%d", i)), f, store, store, raft.NewInmemSnapshotStore(), c.trans[i])
	if err != nil {
		c.t.Fatalf("NewRaft: %v", err)
	}
	c.mu.Lock()
	c.rafts = append(c.rafts, r)
	c.fsms = append(c.fsms, f)
	c.mu.Unlock()
}

// pollUntil checks cond until it holds or the deadline passes; it never sleeps on a guess,
// it re-checks on a short tick.
func pollUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(inmemWait)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", inmemWait, what)
		}
		<-tick.C
	}
}

// leader returns the node that currently leads, waiting for an election if needed.
func (c *inmemCluster) leader() *raft.Raft {
	c.t.Helper()
	var l *raft.Raft
	pollUntil(c.t, "a leader", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, r := range c.rafts {
			if r.State() == raft.Leader {
				l = r
				return true
			}
		}
		return false
	})
	return l
}

// Propose applies a command on the leader and returns its result after commit and apply. When
// leadership moves mid-flight it retries with the same bytes: the command id makes the retry
// answer with the first result if the first attempt was committed after all.
func (c *inmemCluster) Propose(ctx context.Context, cmd []byte) ([]byte, error) {
	for {
		f := c.leader().Apply(cmd, 5*time.Second)
		err := f.Error()
		if err == nil {
			out, ok := f.Response().([]byte)
			if !ok {
				return nil, fmt.Errorf("FSM answered %T", f.Response())
			}
			return out, nil
		}
		if !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) && !errors.Is(err, raft.ErrEnqueueTimeout) {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
}

// converge waits until every node applied what the leader applied, and returns their hashes.
func (c *inmemCluster) converge() [][32]byte {
	c.t.Helper()
	l := c.leader()
	if err := l.Barrier(inmemWait).Error(); err != nil {
		c.t.Fatalf("barrier: %v", err)
	}
	want := l.AppliedIndex()
	pollUntil(c.t, "every node to apply the leader's log", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, r := range c.rafts {
			if r.AppliedIndex() < want {
				return false
			}
		}
		return true
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	var hashes [][32]byte
	for _, f := range c.fsms {
		hashes = append(hashes, f.StateHash())
	}
	return hashes
}

func expectSameHash(t testing.TB, hashes [][32]byte) {
	t.Helper()
	for i, h := range hashes {
		if h != hashes[0] {
			t.Fatalf("node %d state hash %x, node 0 has %x", i, h, hashes[0])
		}
	}
}

func TestPreconditionsHoldAfterReplication(t *testing.T) {
	c := newInmemCluster(t, 3)
	st := NewStore(c, c.fsms[0])
	fx := newFSMFixture(t) // only builds commands here
	ctx := context.Background()
	apply := func(body any) (*meshcav1.CommandResult, error) { return st.Apply(ctx, fx.cmd(body)) }
	must := func(body any) *meshcav1.CommandResult {
		t.Helper()
		res, err := apply(body)
		if err != nil {
			t.Fatalf("%T: %v", body, err)
		}
		return res
	}
	refuse := func(body any, want error) {
		t.Helper()
		if _, err := apply(body); !errors.Is(err, want) {
			t.Fatalf("%T: %v, want %v", body, err, want)
		}
	}

	must(&meshcav1.SetCACommand{Roots: [][]byte{fxRoot}, ActiveIssuer: fxIssuer(fxIssuerID, fxRoot, fxT0.Add(365*24*time.Hour))})
	refuse(&meshcav1.SetCACommand{Roots: [][]byte{fxRoot}, ActiveIssuer: fxIssuer("issuer-x", fxRoot, fxT0.Add(time.Hour))}, ErrAlreadyExists)
	must(&meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: fxDomain}})
	must(&meshcav1.PutServiceCommand{Service: &meshcav1.Service{Domain: fxDomain, Name: fxService, LaunchGrants: []string{"sys.auth.*"}}})
	must(&meshcav1.PutProviderCommand{Provider: &meshcav1.Provider{Name: fxProvider, DnsSuffix: "k8s.mesh.example", Enabled: true}})
	must(fx.register(fxInstance1, "a1", "k1"))
	refuse(fx.register("pod-2", "b1", "k1"), ErrKeyReused)
	must(fx.refresh(fxInstance1, "a1", "a2", "k2"))
	must(fx.refresh(fxInstance1, "a1", "a3", "k2")) // the one retry of the previous serial
	refuse(fx.refresh(fxInstance1, "a1", "a4", "k4"), ErrSerialMismatch)
	refuse(fx.refresh(fxInstance1, "a3", "a5", "k5"), ErrInstanceRevoked)
	refuse(fx.register(fxInstance1, "a6", "k6"), ErrInstanceRevoked)
	fx.issueTokenVia(t, must, "jti-1", "pod-3")
	reg := fx.register("pod-3", "c1", "k7")
	reg.TokenJti = "jti-1"
	must(reg)
	reg = fx.register("pod-3", "c2", "k8")
	reg.TokenJti = "jti-1"
	refuse(reg, ErrTokenUsed)
	must(&meshcav1.RemoveLaunchGrantCommand{Identity: "sports.api", Pattern: "sys.auth.*"})
	refuse(fx.register("pod-4", "d1", "k9"), ErrLaunchNotAuthorized)

	expectSameHash(t, c.converge())
	for i, f := range c.fsms {
		inst, err := f.State().Instance(fxProvider, fxDomain, fxService, fxInstance1)
		if err != nil || !inst.GetRevoked() || !f.State().IsRevoked("a3") {
			t.Fatalf("node %d: instance %v (%v): the mismatch's revocation is not replicated", i, inst, err)
		}
		if _, err := f.State().InstanceByID(fxProvider, "pod-4"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("node %d: refused register was applied", i)
		}
	}

	// A node that joins after a snapshot gets the state through InstallSnapshot (Persist on
	// the leader, Restore on the new node) and ends with the same hash.
	l := c.leader()
	if err := l.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	must(&meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: "after-snapshot"}})
	addr, tr := raft.NewInmemTransport("node-3")
	c.trans = append(c.trans, tr)
	c.connectAll()
	c.startNode(3)
	if err := c.leader().AddVoter("node-3", addr, 0, inmemWait).Error(); err != nil {
		t.Fatalf("add voter: %v", err)
	}
	hashes := c.converge()
	expectSameHash(t, hashes)
	if got := c.rafts[3].Stats()["last_snapshot_index"]; got == "0" {
		t.Fatal("the joined node did not receive a snapshot; the test proves nothing about Persist/Restore")
	}
	if _, err := c.fsms[3].State().Domain("after-snapshot"); err != nil {
		t.Fatalf("joined node misses the entry after the snapshot: %v", err)
	}
}

// issueTokenVia issues a register token through a cluster's must.
func (fx *fsmFixture) issueTokenVia(t *testing.T, must func(any) *meshcav1.CommandResult, jti, instanceID string) {
	t.Helper()
	must(&meshcav1.IssueTokenCommand{Token: &meshcav1.Token{
		Jti: jti, Domain: fxDomain, Service: fxService, InstanceId: instanceID, IssuedBy: "user.alice", Expires: fx.now.Add(time.Hour).UnixNano(),
	}})
}

func TestConcurrentRefreshesOfOneSerialExactlyOneWins(t *testing.T) {
	c := newInmemCluster(t, 3)
	st := NewStore(c, c.fsms[0])
	fx := newFSMFixture(t)
	ctx := context.Background()
	for _, body := range []any{
		&meshcav1.SetCACommand{Roots: [][]byte{fxRoot}, ActiveIssuer: fxIssuer(fxIssuerID, fxRoot, fxT0.Add(365*24*time.Hour))},
		&meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: fxDomain}},
		&meshcav1.PutServiceCommand{Service: &meshcav1.Service{Domain: fxDomain, Name: fxService, LaunchGrants: []string{fxProvider}}},
		&meshcav1.PutProviderCommand{Provider: &meshcav1.Provider{Name: fxProvider, DnsSuffix: "k8s.mesh.example", Enabled: true}},
		fx.register(fxInstance1, "a1", "k1"),
		fx.register("pod-2", "b1", "kb"),
	} {
		if _, err := st.Apply(ctx, fx.cmd(body)); err != nil {
			t.Fatalf("%T: %v", body, err)
		}
	}

	race := func(t *testing.T, instanceID, presented string, n int) (wins, mismatches, revoked int) {
		cmds := make([]*meshcav1.Command, n)
		for i := range cmds {
			// Every client presents the same serial and asks for its own new key.
			cmds[i] = fx.cmd(fx.refresh(instanceID, presented, fmt.Sprintf("%s%04x", presented, i+1), fmt.Sprintf("%s-key-%d", instanceID, i)))
		}
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range cmds {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, errs[i] = st.Apply(ctx, cmds[i])
			}()
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			switch {
			case err == nil:
				wins++
			case errors.Is(err, ErrSerialMismatch):
				mismatches++
			case errors.Is(err, ErrInstanceRevoked):
				revoked++
			default:
				t.Fatalf("client %d: %v", i, err)
			}
		}
		return wins, mismatches, revoked
	}

	t.Run("many clients with the same serial: exactly one wins and the instance ends revoked", func(t *testing.T) {
		wins, mismatches, revoked := race(t, fxInstance1, "a1", 16)
		if wins != 1 || mismatches != 15 || revoked != 0 {
			t.Fatalf("%d refreshes won, %d mismatched, %d found it revoked; want exactly 1 winner", wins, mismatches, revoked)
		}
		hashes := c.converge()
		expectSameHash(t, hashes)
		for i, f := range c.fsms {
			inst, _ := f.State().Instance(fxProvider, fxDomain, fxService, fxInstance1)
			if !inst.GetRevoked() {
				t.Fatalf("node %d: a mismatching serial was presented but the instance is not revoked", i)
			}
		}
	})
	t.Run("one client alone with the current serial wins and nothing is revoked", func(t *testing.T) {
		wins, mismatches, revoked := race(t, "pod-2", "b1", 1)
		if wins != 1 || mismatches+revoked != 0 {
			t.Fatalf("%d won, %d mismatched, %d revoked", wins, mismatches, revoked)
		}
		expectSameHash(t, c.converge())
		for i, f := range c.fsms {
			inst, _ := f.State().Instance(fxProvider, fxDomain, fxService, "pod-2")
			if inst.GetRevoked() || inst.GetPreviousSerial() != "b1" {
				t.Fatalf("node %d: instance %v", i, inst)
			}
		}
	})
}

var _ Proposer = (*inmemCluster)(nil)
