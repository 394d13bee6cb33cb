package raftstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// ErrUnknownServer means a membership change named a server that is not in the configuration.
var ErrUnknownServer = errors.New("raftstore: server is not in the raft configuration")

// Join adds the node id, reached at addr, to the cluster as a voter. On a follower the
// request is forwarded to the leader. It returns once the configuration change is committed.
// Joining a node that is already a voter at the same address changes nothing.
func (n *Node) Join(ctx context.Context, id, addr string) error {
	if err := validNodeID(id); err != nil {
		return fmt.Errorf("raftstore: join: id: %w", err)
	}
	if err := validAdvertiseAddr(addr); err != nil {
		return fmt.Errorf("raftstore: join: address: %w", err)
	}
	_, err := n.leaderCall(ctx, "join",
		func(ctx context.Context) error { return n.addVoterLocal(ctx, id, addr) },
		func(ctx context.Context, _ string, c meshcav1.InternalClient) error {
			_, err := c.AddVoter(ctx, &meshcav1.AddVoterRequest{Id: id, Address: addr})
			return err
		})
	return err
}

// Remove removes the node id from the cluster. On a follower the request is forwarded to the
// leader. Removing the leader itself makes it step down once the change is committed. A
// server that is not in the configuration fails with ErrUnknownServer, except on a retry
// (after a leader change hid the first attempt's outcome), where its absence means done.
func (n *Node) Remove(ctx context.Context, id string) error {
	if err := validNodeID(id); err != nil {
		return fmt.Errorf("raftstore: remove: id: %w", err)
	}
	attempts := 0
	goneOnRetry := func(err error) error {
		attempts++
		if attempts > 1 && errors.Is(err, ErrUnknownServer) {
			return nil
		}
		return err
	}
	_, err := n.leaderCall(ctx, "remove",
		func(ctx context.Context) error { return goneOnRetry(n.removeLocal(ctx, id)) },
		func(ctx context.Context, _ string, c meshcav1.InternalClient) error {
			_, err := c.RemoveServer(ctx, &meshcav1.RemoveServerRequest{Id: id})
			if status.Code(err) == codes.NotFound {
				err = fmt.Errorf("%w: %s", ErrUnknownServer, status.Convert(err).Message())
			}
			return goneOnRetry(err)
		})
	return err
}

// TransferLeadership hands leadership to the voter to, or to the most up-to-date follower when
// to is empty. On a follower the request is forwarded to the leader. Once the leader differs
// from the one at the call, the transfer is done: a retry never transfers a second time.
func (n *Node) TransferLeadership(ctx context.Context, to string) error {
	if to != "" {
		if err := validNodeID(to); err != nil {
			return fmt.Errorf("raftstore: transfer leadership: to: %w", err)
		}
	}
	from, _ := n.Leader()
	moved := func() bool {
		id, _ := n.Leader()
		return from != "" && id != "" && id != from
	}
	_, err := n.leaderCall(ctx, "transfer leadership",
		func(ctx context.Context) error {
			if moved() {
				return nil
			}
			return n.transferLocal(ctx, to)
		},
		func(ctx context.Context, _ string, c meshcav1.InternalClient) error {
			if moved() {
				return nil
			}
			_, err := c.TransferLeadership(ctx, &meshcav1.TransferLeadershipRequest{Id: to})
			return err
		})
	return err
}

// membershipError turns a raft error of a configuration change into a retry or a final error.
func membershipError(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %w", errRetry, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("raftstore: %s: %w", op, ErrShutdown)
	}
	return fmt.Errorf("raftstore: %s: %w", op, err)
}

func (n *Node) addVoterLocal(ctx context.Context, id, addr string) error {
	f := n.raft.Load().AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeoutOf(ctx, defaultProposeTimeout))
	return n.awaitMembership(ctx, "join", f)
}

func (n *Node) removeLocal(ctx context.Context, id string) error {
	if !slices.ContainsFunc(n.configuration(), func(s raft.Server) bool { return string(s.ID) == id }) {
		return fmt.Errorf("raftstore: remove %q: %w", id, ErrUnknownServer)
	}
	f := n.raft.Load().RemoveServer(raft.ServerID(id), 0, timeoutOf(ctx, defaultProposeTimeout))
	return n.awaitMembership(ctx, "remove", f)
}

func (n *Node) transferLocal(ctx context.Context, to string) error {
	r := n.raft.Load()
	if to == "" {
		return n.awaitMembership(ctx, "transfer leadership", r.LeadershipTransfer())
	}
	i := slices.IndexFunc(n.configuration(), func(s raft.Server) bool { return string(s.ID) == to })
	if i < 0 {
		return fmt.Errorf("raftstore: transfer leadership to %q: %w", to, ErrUnknownServer)
	}
	s := n.configuration()[i]
	return n.awaitMembership(ctx, "transfer leadership", r.LeadershipTransferToServer(s.ID, s.Address))
}

func (n *Node) awaitMembership(ctx context.Context, op string, f raft.Future) error {
	err, finished := n.await(ctx, f.Error)
	if !finished {
		return fmt.Errorf("%w: outcome unknown: %w", errRetry, err)
	}
	return membershipError(op, err)
}

func (n *Node) configuration() []raft.Server {
	f := n.raft.Load().GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	return f.Configuration().Servers
}

// AddVoter serves Join on the leader.
func (s *internalServer) AddVoter(ctx context.Context, req *meshcav1.AddVoterRequest) (*meshcav1.AddVoterResponse, error) {
	if err := validNodeID(req.GetId()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "id: %v", err)
	}
	if err := validAdvertiseAddr(req.GetAddress()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "address: %v", err)
	}
	if err := s.requireLeader(); err != nil {
		return nil, err
	}
	if err := s.node.addVoterLocal(ctx, req.GetId(), req.GetAddress()); err != nil {
		return nil, grpcError(err)
	}
	return &meshcav1.AddVoterResponse{}, nil
}

// RemoveServer serves Remove on the leader.
func (s *internalServer) RemoveServer(ctx context.Context, req *meshcav1.RemoveServerRequest) (*meshcav1.RemoveServerResponse, error) {
	if err := validNodeID(req.GetId()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "id: %v", err)
	}
	if err := s.requireLeader(); err != nil {
		return nil, err
	}
	if err := s.node.removeLocal(ctx, req.GetId()); err != nil {
		if errors.Is(err, ErrUnknownServer) {
			return nil, status.Error(codes.NotFound, err.Error())
		}
		return nil, grpcError(err)
	}
	return &meshcav1.RemoveServerResponse{}, nil
}

// TransferLeadership serves TransferLeadership on the leader.
func (s *internalServer) TransferLeadership(ctx context.Context, req *meshcav1.TransferLeadershipRequest) (*meshcav1.TransferLeadershipResponse, error) {
	if err := s.requireLeader(); err != nil {
		return nil, err
	}
	if err := s.node.transferLocal(ctx, req.GetId()); err != nil {
		if errors.Is(err, ErrUnknownServer) {
			return nil, status.Error(codes.NotFound, err.Error())
		}
		return nil, grpcError(err)
	}
	return &meshcav1.TransferLeadershipResponse{}, nil
}

// Status is a node's view of the cluster.
type Status struct {
	// ID is this node's id; State is "Leader", "Follower", "Candidate" or "Shutdown".
	ID, State string
	// LeaderID and LeaderAddress name the current leader, empty when none is known.
	LeaderID, LeaderAddress string
	// Term is the current Raft term.
	Term uint64
	// LastIndex is the last index in this node's log; CommitIndex the last known committed
	// index; AppliedIndex the last index applied to the local FSM.
	LastIndex, CommitIndex, AppliedIndex uint64
	// LastContact is when a follower last heard from the leader (zero on the leader).
	LastContact time.Time
	// Peers is the latest configuration, sorted by id.
	Peers []PeerStatus
}

// PeerStatus is one server of the configuration.
type PeerStatus struct {
	ID, Address string
	// Suffrage is "Voter", "Nonvoter" or "Staging".
	Suffrage string
	// Leader is true for the current leader; Self for this node.
	Leader, Self bool
	// Replication is the leader's view of this follower; nil on followers and for the
	// leader's own entry.
	Replication *ReplicationStatus
}

// ReplicationStatus is the leader's view of replication to one follower.
type ReplicationStatus struct {
	// Healthy is false while heartbeats to the follower fail.
	Healthy bool
	// LastContact is the last successful contact when heartbeats started failing.
	LastContact time.Time
}

// Status returns this node's view of the cluster.
func (n *Node) Status() Status {
	r := n.raft.Load()
	leaderAddr, leaderID := r.LeaderWithID()
	st := Status{
		ID:            n.cfg.ID,
		State:         r.State().String(),
		LeaderID:      string(leaderID),
		LeaderAddress: string(leaderAddr),
		Term:          r.CurrentTerm(),
		LastIndex:     r.LastIndex(),
		CommitIndex:   r.CommitIndex(),
		AppliedIndex:  r.AppliedIndex(),
	}
	isLeader := r.State() == raft.Leader
	if !isLeader {
		st.LastContact = r.LastContact()
	}
	n.leaderMu.Lock()
	failing := make(map[raft.ServerID]time.Time, len(n.failing))
	for id, t := range n.failing {
		failing[id] = t
	}
	n.leaderMu.Unlock()
	for _, s := range n.configuration() {
		p := PeerStatus{
			ID:       string(s.ID),
			Address:  string(s.Address),
			Suffrage: s.Suffrage.String(),
			Leader:   s.ID == leaderID,
			Self:     string(s.ID) == n.cfg.ID,
		}
		if isLeader && !p.Self {
			rs := &ReplicationStatus{Healthy: true}
			if t, bad := failing[s.ID]; bad {
				rs.Healthy, rs.LastContact = false, t
			}
			p.Replication = rs
		}
		st.Peers = append(st.Peers, p)
	}
	slices.SortFunc(st.Peers, func(a, b PeerStatus) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return st
}
