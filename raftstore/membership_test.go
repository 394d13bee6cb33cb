package raftstore

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// addNode starts one more node (not bootstrapped) in the cluster's harness and returns its
// index.
func (c *testCluster) addNode(id string) int {
	c.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.t.Fatal(err)
	}
	c.ids = append(c.ids, id)
	c.addrs = append(c.addrs, ln.Addr().String())
	c.dirs = append(c.dirs, filepath.Join(c.t.TempDir(), id))
	c.nodes = append(c.nodes, nil)
	c.fsms = append(c.fsms, nil)
	c.regs = append(c.regs, (*prometheus.Registry)(nil))
	i := len(c.nodes) - 1
	c.start(i, func(cfg *NodeConfig) { cfg.Listener = ln })
	return i
}

func servers(st Status) map[string]PeerStatus {
	out := map[string]PeerStatus{}
	for _, p := range st.Peers {
		out[p.ID] = p
	}
	return out
}

func TestJoinThroughAFollowerAddsAVoterThatCatchesUp(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	propose(t, c.nodes[leader], "before-join", "x")
	n4 := c.addNode("n4")

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	follower := c.follower(leader)
	if err := c.nodes[follower].Join(ctx, "n4", c.addrs[n4]); err != nil {
		t.Fatalf("Join via follower: %v", err)
	}
	p, ok := servers(c.nodes[leader].Status())["n4"]
	if !ok || p.Suffrage != "Voter" || p.Address != c.addrs[n4] {
		t.Fatalf("leader's configuration has n4 = %+v (present %v), want a voter at %s", p, ok, c.addrs[n4])
	}
	// The new node catches up, and accepts proposals (it forwards them).
	propose(t, c.nodes[n4], "from-n4", "y")
	c.waitConverged()
	for _, id := range []string{"before-join", "from-n4"} {
		if !c.fsms[n4].Has(id) {
			t.Errorf("n4 misses %s", id)
		}
	}
	// Joining again with the same address changes nothing and succeeds.
	if err := c.nodes[leader].Join(ctx, "n4", c.addrs[n4]); err != nil {
		t.Fatalf("repeated Join: %v", err)
	}
	if got := len(c.nodes[leader].Status().Peers); got != 4 {
		t.Fatalf("configuration has %d servers, want 4", got)
	}
}

func TestARemovedNodeIsNoLongerAMemberAndItsConnectionsAreRefused(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	n4 := c.addNode("n4")
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := c.nodes[leader].Join(ctx, "n4", c.addrs[n4]); err != nil {
		t.Fatal(err)
	}
	c.waitConverged()
	if err := c.nodes[c.follower(leader)].Remove(ctx, "n4"); err != nil {
		t.Fatalf("Remove via follower: %v", err)
	}
	if _, ok := servers(c.nodes[leader].Status())["n4"]; ok {
		t.Fatal("n4 still in the leader's configuration after Remove")
	}
	// n4 was a member a moment ago; its certificate is now refused as not_member.
	removed, err := c.ca.IssueNode("n4", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	before := refused(c.regs[leader], RefusedNotMember)
	if conn, err := handshake(t, c.addrs[leader], dialerTLS(removed, ALPNRaft)); err == nil {
		conn.Close()
		t.Fatal("the removed node's certificate was accepted")
	}
	if got := refused(c.regs[leader], RefusedNotMember); got != before+1 {
		t.Fatalf("not_member refusals = %v, want %v", got, before+1)
	}
	// The cluster keeps committing without it.
	propose(t, c.nodes[leader], "after-remove", "z")

	err = c.nodes[leader].Remove(ctx, "n9")
	if !errors.Is(err, ErrUnknownServer) {
		t.Fatalf("Remove of an unknown server: %v, want ErrUnknownServer", err)
	}
}

func TestTransferLeadershipMovesTheLeaderAndWatchersSeeIt(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	target := c.follower(leader)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	watch := c.nodes[target].WatchLeader(ctx)
	if first := <-watch; first.ID != c.ids[leader] || first.Self {
		t.Fatalf("first watched leader = %+v, want %s (not self)", first, c.ids[leader])
	}

	if err := c.nodes[leader].TransferLeadership(ctx, c.ids[target]); err != nil {
		t.Fatalf("TransferLeadership to %s: %v", c.ids[target], err)
	}
	for info := range watch {
		if info.ID == c.ids[target] {
			if !info.Self {
				t.Fatalf("new leader %+v not marked self on %s", info, c.ids[target])
			}
			break
		}
	}
	if got := c.waitLeader(); got != target {
		t.Fatalf("leader is %s, want %s", c.ids[got], c.ids[target])
	}

	// Without a target, from a follower: forwarded, and some other node leads.
	from := c.follower(target)
	if err := c.nodes[from].TransferLeadership(ctx, ""); err != nil {
		t.Fatalf("TransferLeadership via follower: %v", err)
	}
	waitFor(t, "another node than "+c.ids[target]+" to lead", func() bool {
		id, _ := c.nodes[from].Leader()
		return id != "" && id != c.ids[target]
	})
	c.waitLeader()
	if err := c.nodes[from].TransferLeadership(ctx, "n9"); !errors.Is(err, ErrUnknownServer) {
		t.Fatalf("transfer to an unknown server: %v, want ErrUnknownServer", err)
	}
}

func TestStatusReportsTermIndexesPeersAndReplication(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	propose(t, c.nodes[leader], "s", "x")
	c.waitConverged()

	st := c.nodes[leader].Status()
	if st.State != "Leader" || st.LeaderID != c.ids[leader] || st.LeaderAddress != c.addrs[leader] {
		t.Fatalf("leader status = %+v", st)
	}
	if st.Term == 0 || st.LastIndex == 0 || st.CommitIndex < st.AppliedIndex || st.AppliedIndex == 0 {
		t.Fatalf("leader indexes: term %d last %d commit %d applied %d", st.Term, st.LastIndex, st.CommitIndex, st.AppliedIndex)
	}
	if len(st.Peers) != 3 {
		t.Fatalf("peers = %+v, want 3", st.Peers)
	}
	for _, p := range st.Peers {
		switch {
		case p.ID == c.ids[leader]:
			if !p.Self || !p.Leader || p.Replication != nil {
				t.Errorf("leader's own entry = %+v", p)
			}
		default:
			if p.Self || p.Leader || p.Replication == nil || !p.Replication.Healthy {
				t.Errorf("follower entry on the leader = %+v, want healthy replication", p)
			}
		}
	}

	fst := c.nodes[c.follower(leader)].Status()
	if fst.State != "Follower" || fst.LeaderID != c.ids[leader] || fst.LastContact.IsZero() {
		t.Fatalf("follower status = %+v", fst)
	}
	for _, p := range fst.Peers {
		if p.Replication != nil {
			t.Errorf("a follower reports replication state for %s", p.ID)
		}
	}
}

func TestReplicationToAStoppedFollowerIsReportedUnhealthy(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	down := c.follower(leader)
	c.stop(down)
	waitFor(t, "the leader to report the stopped follower unhealthy", func() bool {
		p := servers(c.nodes[leader].Status())[c.ids[down]]
		return p.Replication != nil && !p.Replication.Healthy
	})
}

func TestLinearizableReadHelpersRunOnTheLeaderOnly(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	propose(t, c.nodes[leader], "r", "x")
	if err := c.nodes[leader].VerifyLeader(ctx); err != nil {
		t.Fatalf("VerifyLeader on the leader: %v", err)
	}
	if err := c.nodes[leader].Barrier(ctx); err != nil {
		t.Fatalf("Barrier on the leader: %v", err)
	}
	if !c.fsms[leader].Has("r") {
		t.Fatal("after Barrier the leader's FSM misses a committed command")
	}
	follower := c.follower(leader)
	if err := c.nodes[follower].VerifyLeader(ctx); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("VerifyLeader on a follower: %v, want ErrNotLeader", err)
	}
	if err := c.nodes[follower].Barrier(ctx); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Barrier on a follower: %v, want ErrNotLeader", err)
	}
}
