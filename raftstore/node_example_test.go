package raftstore_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/meshca/meshca/raftstore"
	"github.com/meshca/meshca/raftstore/internal/kvfsm"
	"github.com/meshca/meshca/raftstore/internal/testpki"
)

// A single node forms a cluster of its own, then proposes a command and gets the state
// machine's result once it is committed. A real node runs raftstore.NewFSM; a small test
// state machine stands in here.
func ExampleNewNode() {
	dir, err := os.MkdirTemp("", "raftstore-example-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	ca, err := testpki.NewCA("mesh.example", time.Now())
	if err != nil {
		panic(err)
	}
	svid, err := ca.IssueNode("n1", time.Now()) // spiffe://mesh.example/meshca/server/n1
	if err != nil {
		panic(err)
	}

	cfg := raftstore.DefaultNodeConfig()
	cfg.ID = "n1"
	cfg.DataDir = dir
	cfg.BindAddr = "127.0.0.1:0"
	cfg.TrustDomain = "mesh.example"
	cfg.SVID = svid
	cfg.Bundle = ca.Bundle()
	cfg.Bootstrap = true // no InitialPeers: a cluster of this node alone; others Join later
	cfg.Logger = slog.New(slog.DiscardHandler)
	node, err := raftstore.NewNode(cfg, kvfsm.New())
	if err != nil {
		panic(err)
	}
	defer node.Shutdown()

	// Propose waits for a leader (here: this node, once elected) within the context's time.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	result, err := node.Propose(ctx, kvfsm.Command("cmd-1", []byte("hello")))
	if err != nil {
		panic(err)
	}
	fmt.Println(string(result))
	fmt.Println(node.Status().Peers[0].ID, node.IsLeader())
	// Output:
	// applied 1
	// n1 true
}
