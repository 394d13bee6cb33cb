package raftstore

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/raftstore/internal/kvfsm"
)

// streamLeader is a leader whose ForwardStream answers the way a test tells it to, over real
// gRPC on loopback. Each answer waits for release when it is set, so a test can hold answers.
type streamLeader struct {
	meshcav1.UnimplementedInternalServer
	release chan struct{}
	// answer answers one request; an error ends the stream with that status.
	answer func(req *meshcav1.ForwardRequest) (*meshcav1.ForwardResponse, error)

	mu      sync.Mutex
	msgs    [][]string
	streams int
}

func (l *streamLeader) ForwardStream(s meshcav1.Internal_ForwardStreamServer) error {
	l.mu.Lock()
	l.streams++
	l.mu.Unlock()
	// Requests are taken as they come; answers go out in order, each once released.
	reqs := make(chan *meshcav1.ForwardRequest, 64)
	go func() {
		defer close(reqs)
		for {
			req, err := s.Recv()
			if err != nil {
				return
			}
			var cmds []string
			for _, c := range req.GetCommands() {
				cmds = append(cmds, string(c))
			}
			l.mu.Lock()
			l.msgs = append(l.msgs, cmds)
			l.mu.Unlock()
			reqs <- req
		}
	}()
	for req := range reqs {
		if l.release != nil {
			select {
			case <-l.release:
			case <-s.Context().Done():
				return nil
			}
		}
		resp, err := l.answer(req)
		if err != nil {
			return err
		}
		if err := s.Send(resp); err != nil {
			return nil
		}
	}
	return nil
}

func (l *streamLeader) msgsSoFar() [][]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.msgs)
}

func (l *streamLeader) streamsSoFar() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.streams
}

// serveInternal serves srv on a loopback port and returns a client of it.
func serveInternal(t *testing.T, srv meshcav1.InternalServer) meshcav1.InternalClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	meshcav1.RegisterInternalServer(s, srv)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	cc, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return meshcav1.NewInternalClient(cc)
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

// forwardAsync forwards cmd on its own goroutine and delivers the outcome to out.
func forwardAsync(ctx context.Context, b *forwardBatcher, cmd string, out chan<- forwardOutcome) {
	go func() {
		res, err := b.forward(ctx, []byte(cmd))
		out <- forwardOutcome{cmd: cmd, result: string(res), err: err}
	}()
}

func queued(b *forwardBatcher) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}

// holdSender returns an observe function that blocks the sender at its first batch until the
// returned release is called, and records every batch size.
func holdSender() (observe func(int), held chan struct{}, release func(), sizes func() []int) {
	var mu sync.Mutex
	var got []int
	held = make(chan struct{})
	gate := make(chan struct{})
	var once sync.Once
	observe = func(n int) {
		mu.Lock()
		got = append(got, n)
		first := len(got) == 1
		mu.Unlock()
		if first {
			close(held)
			<-gate
		}
	}
	release = func() { once.Do(func() { close(gate) }) }
	sizes = func() []int { mu.Lock(); defer mu.Unlock(); return slices.Clone(got) }
	return observe, held, release, sizes
}

func TestForwardBatcherSendsWhatQueuedWhileItSent(t *testing.T) {
	l := &streamLeader{answer: echo}
	observe, held, release, sizes := holdSender()
	defer release()
	b := newForwardBatcher(serveInternal(t, l), observe)
	out := make(chan forwardOutcome, 8)
	forwardAsync(context.Background(), b, "s0", out)
	<-held
	// While the sender is busy with s0, the next commands queue; they go in one message.
	later := []string{"q0", "fail1", "q2", "q3"}
	for i, c := range later {
		forwardAsync(context.Background(), b, c, out)
		waitFor(t, c+" queued", func() bool { return queued(b) == i+1 })
	}
	release()
	for range 1 + len(later) {
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
	if msgs, want := l.msgsSoFar(), [][]string{{"s0"}, later}; !slices.EqualFunc(msgs, want, slices.Equal) {
		t.Fatalf("messages = %v, want %v", msgs, want)
	}
	if got := sizes(); !slices.Equal(got, []int{1, len(later)}) {
		t.Fatalf("observed sizes = %v, want [1 %d]", got, len(later))
	}
	if n := l.streamsSoFar(); n != 1 {
		t.Fatalf("%d streams, want every batch on one", n)
	}
}

// A batch leaves without waiting for the answers to earlier ones, and the answers, which come
// in order, reach the right callers.
func TestForwardBatcherSendsBeforeEarlierAnswers(t *testing.T) {
	l := &streamLeader{release: make(chan struct{}), answer: echo}
	b := newForwardBatcher(serveInternal(t, l), nil)
	out := make(chan forwardOutcome, 3)
	for i, c := range []string{"a", "b", "c"} {
		forwardAsync(context.Background(), b, c, out)
		// The leader holds every answer; the next command still reaches it.
		waitFor(t, c+" at the leader", func() bool {
			n := 0
			for _, m := range l.msgsSoFar() {
				n += len(m)
			}
			return n == i+1
		})
	}
	close(l.release)
	for range 3 {
		if o := <-out; o.err != nil || o.result != "r:"+o.cmd {
			t.Errorf("%s: result %q, err %v; want r:%s", o.cmd, o.result, o.err, o.cmd)
		}
	}
}

func TestForwardBatcherFailsTheBatchesOfABrokenStreamAndOpensAnother(t *testing.T) {
	l := &streamLeader{release: make(chan struct{}), answer: func(req *meshcav1.ForwardRequest) (*meshcav1.ForwardResponse, error) {
		if string(req.GetCommands()[0]) == "break" {
			return nil, status.Error(codes.Unavailable, "leader went away")
		}
		return echo(req)
	}}
	b := newForwardBatcher(serveInternal(t, l), nil)
	out := make(chan forwardOutcome, 2)
	forwardAsync(context.Background(), b, "break", out)
	waitFor(t, "break at the leader", func() bool { return len(l.msgsSoFar()) == 1 })
	forwardAsync(context.Background(), b, "waiting", out)
	waitFor(t, "waiting at the leader", func() bool { return len(l.msgsSoFar()) == 2 })
	close(l.release)
	// The stream ends at "break": both batches on it fail with its status, "waiting" too,
	// though the leader had it (its outcome is unknown; the caller retries).
	for range 2 {
		if o := <-out; status.Code(o.err) != codes.Unavailable {
			t.Errorf("%s: %v, want Unavailable", o.cmd, o.err)
		}
	}
	res, err := b.forward(context.Background(), []byte("after"))
	if err != nil || string(res) != "r:after" {
		t.Fatalf("after the break: %q, %v; want r:after on a new stream", res, err)
	}
	if n := l.streamsSoFar(); n != 2 {
		t.Fatalf("%d streams, want 2", n)
	}
}

func TestForwardBatcherFailsEveryCommandOfAShortAnswer(t *testing.T) {
	l := &streamLeader{answer: func(req *meshcav1.ForwardRequest) (*meshcav1.ForwardResponse, error) {
		return &meshcav1.ForwardResponse{Results: []*meshcav1.ForwardResult{{Result: []byte("x")}}}, nil
	}}
	observe, held, release, _ := holdSender()
	b := newForwardBatcher(serveInternal(t, l), observe)
	out := make(chan forwardOutcome, 3)
	forwardAsync(context.Background(), b, "single", out)
	<-held
	forwardAsync(context.Background(), b, "a", out)
	forwardAsync(context.Background(), b, "b", out)
	waitFor(t, "a and b queued", func() bool { return queued(b) == 2 })
	release()
	for range 3 {
		o := <-out
		want := codes.Internal
		if o.cmd == "single" {
			want = codes.OK
		}
		if got := status.Code(o.err); got != want {
			t.Errorf("%s: %v, want code %v", o.cmd, o.err, want)
		}
	}
}

func TestForwardBatcherDropsCallersThatGaveUp(t *testing.T) {
	l := &streamLeader{answer: echo}
	observe, held, release, _ := holdSender()
	defer release()
	b := newForwardBatcher(serveInternal(t, l), observe)
	out := make(chan forwardOutcome, 2)
	forwardAsync(context.Background(), b, "first", out)
	<-held
	// A caller that gives up while its command is queued gets its context's error at once,
	// and its command is not sent.
	ctx, cancel := context.WithCancel(context.Background())
	forwardAsync(ctx, b, "gone", out)
	waitFor(t, "the command queued", func() bool { return queued(b) == 1 })
	cancel()
	if o := <-out; o.cmd != "gone" || o.err != context.Canceled {
		t.Fatalf("%s: %v, want gone: context.Canceled", o.cmd, o.err)
	}
	b.mu.Lock()
	if batch := b.take(); len(batch) != 0 {
		t.Errorf("take() = %d commands, want the abandoned one dropped", len(batch))
	}
	b.mu.Unlock()
}

func TestForwardBatcherAfterClose(t *testing.T) {
	l := &streamLeader{release: make(chan struct{}), answer: echo}
	b := newForwardBatcher(serveInternal(t, l), nil)
	out := make(chan forwardOutcome, 1)
	forwardAsync(context.Background(), b, "pending", out)
	waitFor(t, "pending at the leader", func() bool { return len(l.msgsSoFar()) == 1 })
	b.close()
	if o := <-out; status.Code(o.err) != codes.Unavailable {
		t.Fatalf("pending: %v, want Unavailable once the batcher is closed", o.err)
	}
	if _, err := b.forward(context.Background(), []byte("later")); status.Code(err) != codes.Unavailable {
		t.Fatalf("later: %v, want Unavailable", err)
	}
	close(l.release)
}

// stuckClient is a leader whose ForwardStream does not open until released, as when the
// connection to it is still being attempted.
type stuckClient struct {
	meshcav1.InternalClient
	release chan struct{}
}

func (c stuckClient) ForwardStream(ctx context.Context, _ ...grpc.CallOption) (meshcav1.Internal_ForwardStreamClient, error) {
	select {
	case <-c.release:
		return nil, status.Error(codes.Unavailable, "connection refused")
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// While a stream is being opened, other callers can still queue and give up on time.
func TestForwardBatcherCallersGiveUpWhileAStreamOpens(t *testing.T) {
	c := stuckClient{release: make(chan struct{})}
	b := newForwardBatcher(c, nil)
	out := make(chan forwardOutcome, 3)
	first, cancel := context.WithCancel(context.Background())
	forwardAsync(first, b, "first", out)
	waitFor(t, "the sender to take the first command", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.sending && len(b.queue) == 0
	})
	ctx, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	forwardAsync(ctx, b, "second", out)
	if o := <-out; o.cmd != "second" || o.err != context.DeadlineExceeded {
		t.Fatalf("%s: %v, want second: its own deadline while the stream is still opening", o.cmd, o.err)
	}
	cancel()
	if o := <-out; o.cmd != "first" || o.err != context.Canceled {
		t.Fatalf("%s: %v, want first: context.Canceled", o.cmd, o.err)
	}
	// When opening fails, the command that was taken fails with that error; the next caller
	// gets the same.
	close(c.release)
	forwardAsync(context.Background(), b, "third", out)
	if o := <-out; status.Code(o.err) != codes.Unavailable {
		t.Fatalf("%s: %v, want Unavailable from the failed open", o.cmd, o.err)
	}
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

// On the stream a malformed request is answered with the refusal for each of its commands (one
// result for a request without any), and the stream goes on.
func TestForwardStreamAnswersMalformedRequestsAndGoesOn(t *testing.T) {
	tooMany := make([][]byte, forwardBatchMax+1)
	for i := range tooMany {
		tooMany[i] = []byte("x")
	}
	client := serveInternal(t, &internalServer{})
	s, err := client.ForwardStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		cmds [][]byte
		want string
	}{
		"no commands":   {nil, "commands: must hold at least one command"},
		"empty command": {[][]byte{[]byte("a"), nil}, "commands[1]: must not be empty"},
		"too many":      {tooMany, fmt.Sprintf("commands: %d commands, at most %d per message", forwardBatchMax+1, forwardBatchMax)},
	} {
		if err := s.Send(&meshcav1.ForwardRequest{Commands: tc.cmds}); err != nil {
			t.Fatalf("%s: send: %v", name, err)
		}
		resp, err := s.Recv()
		if err != nil {
			t.Fatalf("%s: the stream ended: %v", name, err)
		}
		if want := max(len(tc.cmds), 1); len(resp.GetResults()) != want {
			t.Fatalf("%s: %d results, want %d", name, len(resp.GetResults()), want)
		}
		for i, r := range resp.GetResults() {
			if codes.Code(r.GetCode()) != codes.InvalidArgument || r.GetMessage() != tc.want {
				t.Errorf("%s: result %d: %v %q, want InvalidArgument %q", name, i, codes.Code(r.GetCode()), r.GetMessage(), tc.want)
			}
		}
	}
}

// A busy follower forwards many commands per message, and every caller still gets its own
// result.
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
		t.Fatalf("%d forwarded messages for %d commands: no batching", calls, clients*each)
	}
	t.Logf("%d commands in %d forwarded messages (%.1f per message)", clients*each, calls, cmds/float64(calls))
	c.waitConverged()
	for i, f := range c.fsms {
		if f.Len() != clients*each {
			t.Errorf("%s holds %d commands, want %d", c.ids[i], f.Len(), clients*each)
		}
	}
}

// forwardedSoFar returns how many batches n forwarded and how many commands they carried.
func forwardedSoFar(t testing.TB, n *Node) (calls uint64, cmds float64) {
	t.Helper()
	var m dto.Metric
	if err := n.metrics.forwardBatch.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}
