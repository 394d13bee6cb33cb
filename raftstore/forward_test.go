package raftstore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/meshca/meshca/raftstore/internal/kvfsm"
)

func TestProposalsInFlightOnAFollowerSurviveTheLeaderStopping(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	follower := c.follower(leader)
	const clients, each = 8, 40
	var done atomic.Int64
	stopAt := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				_, err := c.nodes[follower].Propose(ctx, kvfsm.Command(fmt.Sprintf("w%d-%d", w, i), nil))
				cancel()
				if err != nil {
					errs <- fmt.Errorf("client %d command %d: %w", w, i, err)
					return
				}
				if done.Add(1) == clients*each/3 {
					once.Do(func() { close(stopAt) })
				}
			}
		}()
	}
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()
	select {
	case <-stopAt:
		c.stop(leader) // forwarded calls in flight lose their leader; Propose retries them
		<-allDone
	case <-allDone: // a client failed before a third of the commands were acknowledged
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	c.waitLeader()
	c.waitConverged()
	for i, f := range c.fsms {
		if c.nodes[i] != nil && f.Len() != clients*each {
			t.Errorf("%s holds %d commands, want %d (each applied once)", c.ids[i], f.Len(), clients*each)
		}
	}
}
