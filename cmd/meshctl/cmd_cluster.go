package main

import (
	"context"
	"flag"
	"fmt"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

func clusterCommands() []*command {
	return []*command{
		{path: "cluster status", summary: "show the answering node's view of the Raft group", maxArgs: 0,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, _ []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					s, err := c.ClusterStatus(ctx, &meshcav1.ClusterStatusRequest{})
					if err != nil {
						return err
					}
					return inv.print(s, func(t *table) {
						t.row("node", s.GetNodeId(), s.GetState())
						t.row("leader", orDash(s.GetLeaderId()), orDash(s.GetLeaderAddress()))
						t.row("term", fmt.Sprint(s.GetTerm()))
						t.row("indexes", fmt.Sprintf("last %d, commit %d, applied %d", s.GetLastIndex(), s.GetCommitIndex(), s.GetAppliedIndex()))
						t.row("last event", fmt.Sprint(s.GetLastEventIndex()))
						t.row("")
						t.row("PEER", "ADDRESS", "SUFFRAGE", "ROLE", "REPLICATION")
						for _, p := range s.GetPeers() {
							role := "follower"
							if p.GetLeader() {
								role = "leader"
							}
							if p.GetSelf() {
								role += " (this node)"
							}
							repl := "-"
							if p.GetReplicationKnown() {
								repl = map[bool]string{true: "healthy", false: "failing"}[p.GetHealthy()]
							}
							t.row(p.GetId(), p.GetAddress(), p.GetSuffrage(), role, repl)
						}
					})
				}
			}},
		{path: "cluster join", args: "NODE_ID ADDRESS", summary: "add a node (reached at its cluster address) as a voter", minArgs: 2, maxArgs: 2,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, args []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.JoinNode(ctx, &meshcav1.JoinNodeRequest{Id: args[0], Address: args[1]})
					if err != nil {
						return err
					}
					return inv.print(r, func(t *table) { t.row(fmt.Sprintf("node %s at %s joined", args[0], args[1])) })
				}
			}},
		{path: "cluster remove", args: "NODE_ID", summary: "remove a node from the Raft group", minArgs: 1, maxArgs: 1,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, args []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.RemoveNode(ctx, &meshcav1.RemoveNodeRequest{Id: args[0]})
					if err != nil {
						return err
					}
					return inv.print(r, func(t *table) { t.row(fmt.Sprintf("node %s removed", args[0])) })
				}
			}},
		{path: "cluster transfer-leader", args: "[NODE_ID]", summary: "hand leadership to a voter (default: the most up-to-date)", maxArgs: 1,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, args []string) error {
					to := ""
					if len(args) == 1 {
						to = args[0]
					}
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.TransferLeader(ctx, &meshcav1.TransferLeaderRequest{Id: to})
					if err != nil {
						return err
					}
					return inv.print(r, func(t *table) { t.row("leadership transferred") })
				}
			}},
		{path: "cluster snapshot", summary: "snapshot the answering node's state and compact its log", maxArgs: 0,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, _ []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.TakeSnapshot(ctx, &meshcav1.TakeSnapshotRequest{})
					if err != nil {
						return err
					}
					return inv.print(r, func(t *table) {
						t.row(fmt.Sprintf("node %s: snapshot %s at index %d, term %d, %d bytes", r.GetNodeId(), r.GetId(), r.GetIndex(), r.GetTerm(), r.GetSize()))
					})
				}
			}},
	}
}
