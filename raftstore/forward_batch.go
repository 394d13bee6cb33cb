package raftstore

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// Limits of one Forward call. A follower sends whatever accumulated while earlier calls were in
// flight, up to these bounds; a single command larger than forwardBatchBytes goes alone.
const (
	forwardMaxInFlight = 4
	forwardBatchMax    = 256
	forwardBatchBytes  = 1 << 20
)

// forwardBatcher groups the proposals of concurrent callers on a follower into Forward calls to
// one leader address. While forwardMaxInFlight calls are outstanding, new commands queue and go
// together in the next call, so a quiet follower forwards each command at once and a busy one
// pays one round trip and one gRPC call for many commands.
type forwardBatcher struct {
	client  meshcav1.InternalClient
	observe func(commands int) // called with the size of each call

	mu       sync.Mutex
	queue    []*pendingForward
	inFlight int
}

// pendingForward is one caller's command waiting for its result.
type pendingForward struct {
	ctx    context.Context
	cmd    []byte
	done   chan struct{}
	result []byte
	err    error // a gRPC status error, as a single Forward call would return
}

func newForwardBatcher(client meshcav1.InternalClient, observe func(int)) *forwardBatcher {
	if observe == nil {
		observe = func(int) {}
	}
	return &forwardBatcher{client: client, observe: observe}
}

// forward proposes cmd through the leader and returns the state machine's result. Its errors
// are gRPC status errors or ctx's error, as a direct call would return. When ctx ends first
// the command may still be applied; the command id makes a retry safe.
func (b *forwardBatcher) forward(ctx context.Context, cmd []byte) ([]byte, error) {
	p := &pendingForward{ctx: ctx, cmd: cmd, done: make(chan struct{})}
	b.mu.Lock()
	b.queue = append(b.queue, p)
	if b.inFlight < forwardMaxInFlight {
		b.inFlight++
		go b.send()
	}
	b.mu.Unlock()
	select {
	case <-p.done:
		return p.result, p.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// send makes Forward calls until the queue is empty, then gives its slot back.
func (b *forwardBatcher) send() {
	for {
		b.mu.Lock()
		batch := b.take()
		if len(batch) == 0 {
			b.inFlight--
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.call(batch)
	}
}

// take removes the next batch from the queue, dropping commands whose caller gave up. The
// caller holds b.mu.
func (b *forwardBatcher) take() []*pendingForward {
	var batch []*pendingForward
	size, n := 0, 0
	for n < len(b.queue) && len(batch) < forwardBatchMax {
		p := b.queue[n]
		if p.ctx.Err() != nil {
			n++
			continue
		}
		if len(batch) > 0 && size+len(p.cmd) > forwardBatchBytes {
			break
		}
		batch = append(batch, p)
		size += len(p.cmd)
		n++
	}
	clear(b.queue[:n])
	b.queue = b.queue[n:]
	if len(b.queue) == 0 {
		b.queue = nil
	}
	return batch
}

// call sends one batch and hands each caller its result. The call ends at the latest deadline
// of its callers, or as soon as all of them have given up.
func (b *forwardBatcher) call(batch []*pendingForward) {
	deadline := time.Now().Add(defaultProposeTimeout)
	if d, ok := batch[0].ctx.Deadline(); ok {
		deadline = d
	}
	req := &meshcav1.ForwardRequest{Commands: make([][]byte, len(batch))}
	for i, p := range batch {
		req.Commands[i] = p.cmd
		if d, ok := p.ctx.Deadline(); ok && d.After(deadline) {
			deadline = d
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var waiting sync.WaitGroup
	waiting.Add(len(batch))
	for _, p := range batch {
		stop := context.AfterFunc(p.ctx, waiting.Done)
		defer func() {
			if stop() {
				waiting.Done()
			}
		}()
	}
	allGone := make(chan struct{})
	go func() {
		waiting.Wait()
		close(allGone)
	}()
	go func() {
		select {
		case <-allGone:
			cancel()
		case <-ctx.Done():
		}
	}()

	b.observe(len(batch))
	resp, err := b.client.Forward(ctx, req)
	if err == nil && len(resp.GetResults()) != len(batch) {
		err = status.Errorf(codes.Internal, "leader answered %d results for %d commands", len(resp.GetResults()), len(batch))
	}
	for i, p := range batch {
		if err != nil {
			p.err = err
		} else if r := resp.GetResults()[i]; codes.Code(r.GetCode()) != codes.OK {
			p.err = status.Error(codes.Code(r.GetCode()), r.GetMessage())
		} else {
			p.result = r.GetResult()
		}
		close(p.done)
	}
}
