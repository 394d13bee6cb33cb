package raftstore

import (
	"context"
	"errors"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// Limits of one forwarded batch. A follower sends whatever accumulated while it was sending the
// previous batch, up to these bounds; a single command larger than forwardBatchBytes goes alone.
const (
	forwardBatchMax   = 256
	forwardBatchBytes = 1 << 20
)

// forwardBatcher sends the proposals of concurrent callers on a follower to one leader address,
// on one ForwardStream. A single sender takes whatever queued while it sent the previous
// batch and sends it at once, without waiting for earlier answers; a receiver hands each
// answer, which comes in the order of the batches, to the callers of its batch. So a quiet
// follower forwards each command at once, a busy one sends many per message, and no command
// waits for an earlier batch to be applied before it leaves.
type forwardBatcher struct {
	client  meshcav1.InternalClient
	observe func(commands int) // called with the size of each batch

	mu      sync.Mutex
	queue   []*pendingForward
	sending bool           // the sender runs
	stream  *forwardStream // the current stream: nil before the first; the sender replaces a broken one
	closed  bool
}

// pendingForward is one caller's command waiting for its result.
type pendingForward struct {
	ctx    context.Context
	cmd    []byte
	done   chan struct{}
	result []byte
	err    error // a gRPC status error: the leader's answer for the command, or the stream's
}

func (p *pendingForward) finish(result []byte, err error) {
	p.result, p.err = result, err
	close(p.done)
}

// forwardStream is one ForwardStream call and the batches sent on it that await answers.
type forwardStream struct {
	cancel context.CancelFunc
	s      meshcav1.Internal_ForwardStreamClient

	mu     sync.Mutex
	sent   [][]*pendingForward // oldest first
	broken bool
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
	if b.closed {
		b.mu.Unlock()
		return nil, errBatcherClosed
	}
	b.queue = append(b.queue, p)
	if !b.sending {
		b.sending = true
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

// send sends batches until the queue is empty, then ends; forward starts it again. Only one
// sender runs at a time, so it alone opens streams, and it does so without holding b.mu: opening
// may wait for the connection, and callers must still be able to queue and give up meanwhile.
func (b *forwardBatcher) send() {
	for {
		b.mu.Lock()
		batch := b.take()
		if len(batch) == 0 {
			b.sending = false
			b.mu.Unlock()
			return
		}
		st, closed := b.stream, b.closed
		b.mu.Unlock()
		var err error
		switch {
		case closed:
			err = errBatcherClosed
		case st == nil || st.isBroken():
			st, err = b.open()
		}
		if err != nil {
			for _, p := range batch {
				p.finish(nil, err)
			}
			continue
		}
		st.sendBatch(batch, b.observe)
	}
}

// errBatcherClosed is what commands get once the node is shutting down.
var errBatcherClosed = status.Error(codes.Unavailable, "raftstore: forward: the node is shutting down")

// open starts a stream and makes it the current one. It is called by the sender only.
func (b *forwardBatcher) open() (*forwardStream, error) {
	ctx, cancel := context.WithCancel(context.Background())
	s, err := b.client.ForwardStream(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	st := &forwardStream{cancel: cancel, s: s}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		st.fail(errBatcherClosed)
		return nil, errBatcherClosed
	}
	b.stream = st
	b.mu.Unlock()
	go st.receive()
	return st, nil
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

// close ends the stream; commands sent on it and those forwarded later fail with Unavailable.
func (b *forwardBatcher) close() {
	b.mu.Lock()
	b.closed = true
	st := b.stream
	b.mu.Unlock()
	if st != nil {
		st.fail(errBatcherClosed)
	}
}

// sendBatch sends one batch. The batch is recorded as awaiting its answer before it is sent, so
// the receiver finds it; a send that fails breaks the stream and fails every batch on it.
func (st *forwardStream) sendBatch(batch []*pendingForward, observe func(int)) {
	st.mu.Lock()
	if st.broken {
		st.mu.Unlock()
		for _, p := range batch {
			p.finish(nil, status.Error(codes.Unavailable, "raftstore: forward: the stream to the leader broke"))
		}
		return
	}
	st.sent = append(st.sent, batch)
	st.mu.Unlock()
	req := &meshcav1.ForwardRequest{Commands: make([][]byte, len(batch))}
	for i, p := range batch {
		req.Commands[i] = p.cmd
	}
	observe(len(batch))
	if err := st.s.Send(req); err != nil {
		// Send reports io.EOF when the stream ended; the receiver may fail the batches with
		// the stream's status first.
		st.fail(streamError(err))
	}
}

// receive hands each answer to the callers of the oldest batch awaiting one, until the stream
// ends.
func (st *forwardStream) receive() {
	for {
		resp, err := st.s.Recv()
		if err != nil {
			st.fail(streamError(err))
			return
		}
		st.mu.Lock()
		if len(st.sent) == 0 {
			st.mu.Unlock()
			st.fail(status.Error(codes.Internal, "raftstore: forward: the leader answered a batch that was not sent"))
			return
		}
		batch := st.sent[0]
		st.sent[0] = nil
		st.sent = st.sent[1:]
		st.mu.Unlock()
		results := resp.GetResults()
		if len(results) != len(batch) {
			err := status.Errorf(codes.Internal, "leader answered %d results for %d commands", len(results), len(batch))
			for _, p := range batch {
				p.finish(nil, err)
			}
			continue
		}
		for i, p := range batch {
			if r := results[i]; codes.Code(r.GetCode()) != codes.OK {
				p.finish(nil, status.Error(codes.Code(r.GetCode()), r.GetMessage()))
			} else {
				p.finish(r.GetResult(), nil)
			}
		}
	}
}

// fail breaks the stream: every batch awaiting an answer fails with err (a gRPC status error)
// and the next batch opens a new stream.
func (st *forwardStream) fail(err error) {
	st.mu.Lock()
	if st.broken {
		st.mu.Unlock()
		return
	}
	st.broken = true
	sent := st.sent
	st.sent = nil
	st.mu.Unlock()
	st.cancel()
	for _, batch := range sent {
		for _, p := range batch {
			p.finish(nil, err)
		}
	}
}

func (st *forwardStream) isBroken() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.broken
}

// streamError is the status error callers get when the stream ends: the stream's own status,
// or Unavailable (outcome unknown, worth a retry) when it ended without one.
func streamError(err error) error {
	if st, ok := status.FromError(err); ok && st.Code() != codes.OK && st.Code() != codes.Unknown {
		return err
	}
	if errors.Is(err, context.Canceled) {
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Errorf(codes.Unavailable, "raftstore: forward: the stream to the leader ended: %v", err)
}
