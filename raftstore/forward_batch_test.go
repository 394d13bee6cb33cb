package raftstore

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/raftstore/internal/kvfsm"
)

// leaderDouble answers Forward calls the way a test tells it to. Calls block until release is
// closed (when set), so a test can queue commands behind calls in flight.
type leaderDouble struct {
	meshcav1.InternalClient
	release chan struct{}
	answer  func(req *meshcav1.ForwardRequest) (*meshcav1.ForwardResponse, error)

	mu    sync.Mutex
	calls [][]string
	ended []error // ctx.Err() seen by each call when it returned
}

func (d *leaderDouble) Forward(ctx context.Context, req *meshcav1.ForwardRequest, _ ...grpc.CallOption) (*meshcav1.ForwardResponse, error) {
	var cmds []string
	for _, c := range req.GetCommands() {
		cmds = append(cmds, string(c))
	}
	d.mu.Lock()
	d.calls = append(d.calls, cmds)
	d.mu.Unlock()
	if d.release != nil {
		select {
		case <-d.release:
		case <-ctx.Done():
			d.mu.Lock()
			d.ended = append(d.ended, ctx.Err())
			d.mu.Unlock()
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	return d.answer(req)
}

func (d *leaderDouble) callsSoFar() [][]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.calls)
}

// echo answers every command with "r:<command>", except commands starting with "fail", which
// are answered with Unavailable.
func echo(req *meshcav1.ForwardRequest) (*meshcav1.ForwardResponse, error) {
	resp := &meshcav1.ForwardResponse{}
	for _, c := range req.GetCommands() {
		if string(c[:min(4, len(c))]) == "fail" {
			resp.Results = append(resp.Results, &meshcav1.ForwardResult{Code: int32(codes.Unavailable), Message: "outcome unknown: " + string(c)})
			continue
		}
		resp.Results = append(resp.Results, &meshcav1.ForwardResult{Result: []byte("r:" + string(c))})
	}
	return resp, nil
}

type forwardOutcome struct {
	cmd    string
	result string
	err    error
}

// forwardAll submits cmds one after another (each waiting until its call or queue slot is
// taken) and collects the outcomes.
func forwardAll(t *testing.T, b *forwardBatcher, d *leaderDouble, cmds []string, wantCalls int) chan forwardOutcome {
	t.Helper()
	out := make(chan forwardOutcome, len(cmds))
	for _, c := range cmds {
		go func() {
			res, err := b.forward(context.Background(), []byte(c))
			out <- forwardOutcome{cmd: c, result: string(res), err: err}
		}()
		// Submit in order: wait until the command is in a call or in the queue.
		waitFor(t, "command "+c+" in a call or queued", func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			n := len(b.queue)
			for _, call := range d.callsSoFar() {
				n += len(call)
			}
			return n >= slices.Index(cmds, c)+1
		})
	}
	waitFor(t, "the calls in flight", func() bool { return len(d.callsSoFar()) >= wantCalls })
	return out
}

// singles names the commands that fill every slot, each in a call of its own.
func singles() []string {
	var cmds []string
	for i := range forwardMaxInFlight {
		cmds = append(cmds, fmt.Sprintf("s%d", i))
	}
	return cmds
}

func TestForwardBatcherSendsWhatQueuedBehindCallsInFlight(t *testing.T) {
	d := &leaderDouble{release: make(chan struct{}), answer: echo}
	var sizes []int
	var mu sync.Mutex
	b := newForwardBatcher(d, func(n int) { mu.Lock(); sizes = append(sizes, n); mu.Unlock() })
	queued := []string{"q0", "fail1", "q2", "q3"}
	cmds := append(singles(), queued...)
	out := forwardAll(t, b, d, cmds, forwardMaxInFlight)
	// The first commands each went at once, one per slot; the rest wait in the queue.
	if got := d.callsSoFar(); len(got) != forwardMaxInFlight {
		t.Fatalf("calls before release = %v, want %d single-command calls", got, forwardMaxInFlight)
	}
	close(d.release)
	for range cmds {
		o := <-out
		switch {
		case o.cmd == "fail1":
			if status.Code(o.err) != codes.Unavailable || status.Convert(o.err).Message() != "outcome unknown: fail1" {
				t.Errorf("fail1: err = %v, want the leader's Unavailable status for that command", o.err)
			}
		case o.err != nil || o.result != "r:"+o.cmd:
			t.Errorf("%s: result %q, err %v; want r:%s", o.cmd, o.result, o.err, o.cmd)
		}
	}
	var want [][]string
	var wantSizes []int
	for _, c := range singles() {
		want = append(want, []string{c})
		wantSizes = append(wantSizes, 1)
	}
	want = append(want, queued)
	wantSizes = append(wantSizes, len(queued))
	if calls := d.callsSoFar(); !slices.EqualFunc(calls, want, slices.Equal) {
		t.Fatalf("calls = %v, want %v", calls, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(sizes, wantSizes) {
		t.Fatalf("observed sizes = %v, want %v", sizes, wantSizes)
	}
}

func TestForwardBatcherFailsEveryCommandOfAFailedOrShortCall(t *testing.T) {
	// The singles go one per call; a and b queue behind them and go together.
	for name, tc := range map[string]struct {
		answer             func(*meshcav1.ForwardRequest) (*meshcav1.ForwardResponse, error)
		single, afterwards codes.Code
	}{
		"call fails": {
			answer: func(*meshcav1.ForwardRequest) (*meshcav1.ForwardResponse, error) {
				return nil, status.Error(codes.FailedPrecondition, "not the leader")
			},
			single: codes.FailedPrecondition, afterwards: codes.FailedPrecondition,
		},
		"one result for every call": {
			answer: func(*meshcav1.ForwardRequest) (*meshcav1.ForwardResponse, error) {
				return &meshcav1.ForwardResponse{Results: []*meshcav1.ForwardResult{{Result: []byte("x")}}}, nil
			},
			single: codes.OK, afterwards: codes.Internal,
		},
	} {
		t.Run(name, func(t *testing.T) {
			d := &leaderDouble{release: make(chan struct{}), answer: tc.answer}
			b := newForwardBatcher(d, nil)
			cmds := append(singles(), "a", "b")
			out := forwardAll(t, b, d, cmds, forwardMaxInFlight)
			close(d.release)
			for range cmds {
				o := <-out
				want := tc.single
				if o.cmd == "a" || o.cmd == "b" {
					want = tc.afterwards
				}
				if got := status.Code(o.err); got != want {
					t.Errorf("%s: %v, want code %v", o.cmd, o.err, want)
				}
			}
		})
	}
}

func TestForwardBatcherDropsCallersThatGaveUpAndEndsAbandonedCalls(t *testing.T) {
	d := &leaderDouble{release: make(chan struct{}), answer: echo}
	b := newForwardBatcher(d, nil)
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 1)
	go func() {
		_, err := b.forward(ctx, []byte("abandoned"))
		errs <- err
	}()
	waitFor(t, "the first call", func() bool { return len(d.callsSoFar()) == 1 })
	// A caller that gives up gets its context's error at once, and the call it was alone in
	// ends instead of waiting for the leader.
	cancel()
	if err := <-errs; err != context.Canceled {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	waitFor(t, "the abandoned call to end", func() bool { d.mu.Lock(); defer d.mu.Unlock(); return len(d.ended) == 1 })

	// A command whose caller gave up while it was queued is not sent.
	ctx2, cancel2 := context.WithCancel(context.Background())
	b.mu.Lock()
	b.inFlight = forwardMaxInFlight // hold the slots so commands queue
	b.mu.Unlock()
	go func() { _, err := b.forward(ctx2, []byte("gone")); errs <- err }()
	waitFor(t, "the command queued", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.queue) == 1 })
	cancel2()
	<-errs
	b.mu.Lock()
	if batch := b.take(); len(batch) != 0 {
		t.Errorf("take() = %d commands, want the abandoned one dropped", len(batch))
	}
	b.mu.Unlock()
}

func TestForwardTakeBoundsABatch(t *testing.T) {
	b := newForwardBatcher(nil, nil)
	big := make([]byte, forwardBatchBytes/2+1)
	for range 3 {
		b.queue = append(b.queue, &pendingForward{ctx: context.Background(), cmd: big})
	}
	if n := len(b.take()); n != 1 {
		t.Fatalf("take() with three commands over half the byte bound = %d commands, want 1", n)
	}
	b.queue = nil
	for range forwardBatchMax + 5 {
		b.queue = append(b.queue, &pendingForward{ctx: context.Background(), cmd: []byte("x")})
	}
	if n := len(b.take()); n != forwardBatchMax {
		t.Fatalf("take() = %d commands, want at most %d", n, forwardBatchMax)
	}
	if len(b.queue) != 5 {
		t.Fatalf("%d left in the queue, want 5", len(b.queue))
	}
}

func TestForwardRefusesMalformedRequests(t *testing.T) {
	s := &internalServer{}
	tooMany := make([][]byte, forwardBatchMax+1)
	for i := range tooMany {
		tooMany[i] = []byte("x")
	}
	for name, tc := range map[string]struct {
		cmds [][]byte
		want string
	}{
		"no commands":   {nil, "commands: must hold at least one command"},
		"empty command": {[][]byte{[]byte("a"), nil}, "commands[1]: must not be empty"},
		"too many":      {tooMany, fmt.Sprintf("commands: %d commands, at most %d per call", forwardBatchMax+1, forwardBatchMax)},
	} {
		_, err := s.Forward(context.Background(), &meshcav1.ForwardRequest{Commands: tc.cmds})
		if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() != tc.want {
			t.Errorf("%s: %v, want InvalidArgument %q", name, err, tc.want)
		}
	}
}

// A busy follower forwards many commands per call, and every caller still gets its own result.
func TestFollowerBatchesConcurrentProposals(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	leader := c.waitLeader()
	follower := c.follower(leader)
	const clients, each = 64, 20
	callsBefore, cmdsBefore := forwardedSoFar(t, c.nodes[follower])
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for w := range clients {
		wg.Go(func() {
			for i := range each {
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				res, err := c.nodes[follower].Propose(ctx, kvfsm.Command(fmt.Sprintf("b%d-%d", w, i), nil))
				cancel()
				if err != nil {
					errs <- fmt.Errorf("client %d command %d: %w", w, i, err)
					return
				}
				if len(res) < len("applied ") || string(res[:8]) != "applied " {
					errs <- fmt.Errorf("client %d command %d: result %q", w, i, res)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	calls, cmds := forwardedSoFar(t, c.nodes[follower])
	calls, cmds = calls-callsBefore, cmds-cmdsBefore
	if int(cmds) != clients*each {
		t.Fatalf("forwarded %v commands, want %d", cmds, clients*each)
	}
	if calls >= uint64(clients*each) {
		t.Fatalf("%d Forward calls for %d commands: no batching", calls, clients*each)
	}
	t.Logf("%d commands in %d Forward calls (%.1f per call)", clients*each, calls, cmds/float64(calls))
	c.waitConverged()
	for i, f := range c.fsms {
		if f.Len() != clients*each {
			t.Errorf("%s holds %d commands, want %d", c.ids[i], f.Len(), clients*each)
		}
	}
}

// forwardedSoFar returns how many Forward calls n made and how many commands they carried.
func forwardedSoFar(t testing.TB, n *Node) (calls uint64, cmds float64) {
	t.Helper()
	var m dto.Metric
	if err := n.metrics.forwardBatch.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}
