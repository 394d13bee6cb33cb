package controlplane

import (
	"context"
	"fmt"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// clusterResource is the Raft group, for authorization.
var clusterResource = Resource{Kind: "cluster", Name: "raft"}

// ClusterStatus is the answering node's view of the Raft group and, when asked, the hash of
// its replicated state, so replicas can be compared over the network.
func (a *Admin) ClusterStatus(ctx context.Context, req *meshcav1.ClusterStatusRequest) (*meshcav1.ClusterStatusResponse, error) {
	st := a.store.State()
	if _, err := a.authorize(ctx, st, ActionClusterRead, clusterResource); err != nil {
		return nil, err
	}
	s := a.cfg.Cluster.Status()
	out := &meshcav1.ClusterStatusResponse{
		NodeId: s.ID, State: s.State, LeaderId: s.LeaderID, LeaderAddress: s.LeaderAddress, Term: s.Term,
		LastIndex: s.LastIndex, CommitIndex: s.CommitIndex, AppliedIndex: s.AppliedIndex,
		LastEventIndex: st.LastEventIndex(),
	}
	if req.GetStateHash() {
		sum := st.Hash()
		out.StateHash, out.StateAppliedIndex = sum[:], st.AppliedIndex()
	}
	for _, p := range s.Peers {
		cp := &meshcav1.ClusterPeer{Id: p.ID, Address: p.Address, Suffrage: p.Suffrage, Leader: p.Leader, Self: p.Self}
		if p.Replication != nil {
			cp.ReplicationKnown, cp.Healthy = true, p.Replication.Healthy
		}
		out.Peers = append(out.Peers, cp)
	}
	return out, nil
}

// JoinNode adds a voter.
func (a *Admin) JoinNode(ctx context.Context, req *meshcav1.JoinNodeRequest) (*meshcav1.JoinNodeResponse, error) {
	c, err := a.authorize(ctx, a.store.State(), ActionClusterWrite, clusterResource)
	if err != nil {
		return nil, err
	}
	if err := required("id", req.GetId()); err != nil {
		return nil, err
	}
	if err := required("address", req.GetAddress()); err != nil {
		return nil, err
	}
	if err := a.cfg.Cluster.Join(ctx, req.GetId(), req.GetAddress()); err != nil {
		return nil, fmt.Errorf("id: %w", err)
	}
	a.log.Info("admin change", "caller", c.SPIFFEID, "command", "join", "node", req.GetId(), "address", req.GetAddress())
	return &meshcav1.JoinNodeResponse{}, nil
}

// RemoveNode removes a server.
func (a *Admin) RemoveNode(ctx context.Context, req *meshcav1.RemoveNodeRequest) (*meshcav1.RemoveNodeResponse, error) {
	c, err := a.authorize(ctx, a.store.State(), ActionClusterWrite, clusterResource)
	if err != nil {
		return nil, err
	}
	if err := required("id", req.GetId()); err != nil {
		return nil, err
	}
	if err := a.cfg.Cluster.Remove(ctx, req.GetId()); err != nil {
		return nil, fmt.Errorf("id: %w", err)
	}
	a.log.Info("admin change", "caller", c.SPIFFEID, "command", "remove", "node", req.GetId())
	return &meshcav1.RemoveNodeResponse{}, nil
}

// TransferLeader hands leadership to another voter.
func (a *Admin) TransferLeader(ctx context.Context, req *meshcav1.TransferLeaderRequest) (*meshcav1.TransferLeaderResponse, error) {
	c, err := a.authorize(ctx, a.store.State(), ActionClusterWrite, clusterResource)
	if err != nil {
		return nil, err
	}
	if err := a.cfg.Cluster.TransferLeadership(ctx, req.GetId()); err != nil {
		return nil, fmt.Errorf("id: %w", err)
	}
	a.log.Info("admin change", "caller", c.SPIFFEID, "command", "transfer_leadership", "to", req.GetId())
	return &meshcav1.TransferLeaderResponse{}, nil
}

// TakeSnapshot snapshots the answering node.
func (a *Admin) TakeSnapshot(ctx context.Context, _ *meshcav1.TakeSnapshotRequest) (*meshcav1.TakeSnapshotResponse, error) {
	c, err := a.authorize(ctx, a.store.State(), ActionClusterWrite, clusterResource)
	if err != nil {
		return nil, err
	}
	info, err := a.cfg.Cluster.Snapshot()
	if err != nil {
		return nil, err
	}
	node := a.cfg.Cluster.Status().ID
	a.log.Info("admin change", "caller", c.SPIFFEID, "command", "snapshot", "node", node, "index", info.Index)
	return &meshcav1.TakeSnapshotResponse{Id: info.ID, Index: info.Index, Term: info.Term, Size: info.Size, NodeId: node}, nil
}
