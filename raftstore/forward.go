package raftstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// Retry pacing while the leader is unknown or unreachable: a leader change wakes the retry
// at once; the backoff only bounds the polling when no change is observed.
const (
	retryBackoffMin = 5 * time.Millisecond
	retryBackoffMax = 200 * time.Millisecond
	// defaultProposeTimeout applies when the caller's context has no deadline.
	defaultProposeTimeout = 30 * time.Second
)

// internalKeepalive is how often a follower pings the leader while it has a stream open (gRPC's
// least interval), and how long it waits for the answer before it fails the stream.
const internalKeepalive = 10 * time.Second

// errRetry marks an attempt whose failure is worth retrying with the (possibly new) leader.
var errRetry = errors.New("retry with the leader")

// Propose appends cmd to the Raft log and returns the state machine's result once the entry
// is committed and applied. On a follower it forwards cmd to the leader over the internal
// gRPC service, retrying with the new leader after a leader change until ctx ends. A retry
// after an unknown outcome is safe because the FSM applies a command id once. When no leader
// can be reached before ctx ends, the error wraps ErrUnavailable (and ErrNoLeader if none
// was known). Without a deadline on ctx, Propose gives up after 30 s.
func (n *Node) Propose(ctx context.Context, cmd []byte) ([]byte, error) {
	if len(cmd) == 0 {
		return nil, errors.New("raftstore: propose: command: must not be empty")
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultProposeTimeout)
		defer cancel()
	}
	start := time.Now()
	var result []byte
	path, err := n.leaderCall(ctx, "propose",
		func(ctx context.Context) error {
			var err error
			result, err = n.applyLocal(ctx, cmd)
			return err
		},
		func(ctx context.Context, addr string, _ meshcav1.InternalClient) error {
			b, err := n.clients.batcher(addr)
			if err != nil {
				return err
			}
			result, err = b.forward(ctx, cmd)
			return err
		})
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	n.metrics.propose.WithLabelValues(path, outcome).Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, err
	}
	return result, nil
}

// leaderCall runs local on the leader or remote against the leader, retrying after leader
// changes and transient failures until ctx ends. It returns which path the last attempt took.
func (n *Node) leaderCall(ctx context.Context, op string, local func(context.Context) error, remote func(ctx context.Context, addr string, c meshcav1.InternalClient) error) (string, error) {
	backoff := retryBackoffMin
	path := "leader"
	var last error
	for {
		if n.isShutdown() {
			return path, fmt.Errorf("raftstore: %s: %w", op, ErrShutdown)
		}
		// Taken before the attempt, so a leader change during it wakes the retry.
		epoch := n.leaderEpoch()
		r := n.raft.Load()
		var err error
		if r.State() == raft.Leader {
			path = "leader"
			err = local(ctx)
		} else if addr, id := r.LeaderWithID(); addr == "" {
			err = fmt.Errorf("%w: %w", errRetry, ErrNoLeader)
		} else {
			path = "forwarded"
			err = n.callLeader(ctx, epoch, string(id), string(addr), remote)
		}
		if err == nil {
			return path, nil
		}
		if !errors.Is(err, errRetry) {
			return path, err
		}
		last = err
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
			return path, unavailable(op, last, ctx.Err())
		case <-n.stop:
			timer.Stop()
			return path, fmt.Errorf("raftstore: %s: %w", op, ErrShutdown)
		case <-epoch.Done():
			timer.Stop()
			backoff = retryBackoffMin
		case <-timer.C:
			backoff = min(2*backoff, retryBackoffMax)
		}
	}
}

// unavailable builds the error of a call that ran out of time while retrying.
func unavailable(op string, last, ctxErr error) error {
	if errors.Is(last, ErrNoLeader) {
		return fmt.Errorf("%s: %w (gave up: %w)", op, ErrNoLeader, ctxErr)
	}
	return fmt.Errorf("%s: %w: last attempt: %v (gave up: %w)", op, ErrUnavailable, last, ctxErr)
}

// callLeader makes one remote attempt. The attempt is abandoned when the leader changes, so
// a call to a dead leader does not wait for the caller's whole deadline.
func (n *Node) callLeader(ctx context.Context, epoch context.Context, id, addr string, remote func(ctx context.Context, addr string, c meshcav1.InternalClient) error) error {
	client, err := n.clients.get(addr)
	if err != nil {
		return fmt.Errorf("%w: leader %s at %s: %w", errRetry, id, addr, err)
	}
	attempt, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(epoch, func() { cancel(errors.New("leader changed")) })
	defer stop()
	err = remote(attempt, addr, client)
	if err == nil {
		return nil
	}
	if ctx.Err() == nil && attempt.Err() != nil {
		return fmt.Errorf("%w: leader %s at %s: %w", errRetry, id, addr, context.Cause(attempt))
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.FailedPrecondition, codes.Aborted, codes.DeadlineExceeded, codes.Canceled:
		return fmt.Errorf("%w: leader %s at %s: %w", errRetry, id, addr, err)
	case codes.NotFound:
		return fmt.Errorf("raftstore: leader %s at %s: %w: %s", id, addr, ErrUnknownServer, status.Convert(err).Message())
	}
	return fmt.Errorf("raftstore: leader %s at %s: %w", id, addr, err)
}

// applyLocal applies cmd on this node, which must lead. Errors that mean "ask the new
// leader" wrap errRetry.
func (n *Node) applyLocal(ctx context.Context, cmd []byte) ([]byte, error) {
	r := n.raft.Load()
	return n.applyResult(ctx, r.Apply(cmd, timeoutOf(ctx, defaultProposeTimeout)))
}

// applyResult waits for an Apply and returns the state machine's result.
func (n *Node) applyResult(ctx context.Context, f raft.ApplyFuture) ([]byte, error) {
	err, finished := n.await(ctx, f.Error)
	if !finished {
		return nil, fmt.Errorf("%w: outcome unknown: %w", errRetry, err)
	}
	return futureResult(f, err)
}

// futureResult maps a resolved Apply future (err is its Error) to the state machine's result
// or our error; errors that mean "ask the new leader" wrap errRetry.
func futureResult(f raft.ApplyFuture, err error) ([]byte, error) {
	switch {
	case err == nil:
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrEnqueueTimeout):
		return nil, fmt.Errorf("%w: %w", errRetry, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return nil, fmt.Errorf("raftstore: apply: %w", ErrShutdown)
	default:
		return nil, fmt.Errorf("raftstore: apply: %w", err)
	}
	switch res := f.Response().(type) {
	case []byte:
		return res, nil
	case error:
		return nil, fmt.Errorf("raftstore: apply: state machine: %w", res)
	default:
		return nil, fmt.Errorf("%w: got %T", ErrBadResult, res)
	}
}

// internalServer implements meshca.v1.Internal on the leader.
type internalServer struct {
	meshcav1.UnimplementedInternalServer
	node *Node
}

func newInternalServer(n *Node) *grpc.Server {
	s := grpc.NewServer(grpc.Creds(handshakenTLS{}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: internalKeepalive / 2}))
	meshcav1.RegisterInternalServer(s, &internalServer{node: n})
	return s
}

// checkForwardRequest checks the shape of a forwarded request, with a gRPC status error naming
// the field and the rule.
func checkForwardRequest(req *meshcav1.ForwardRequest) error {
	cmds := req.GetCommands()
	if len(cmds) == 0 {
		return status.Error(codes.InvalidArgument, "commands: must hold at least one command")
	}
	if len(cmds) > forwardBatchMax {
		return status.Errorf(codes.InvalidArgument, "commands: %d commands, at most %d per message", len(cmds), forwardBatchMax)
	}
	for i, c := range cmds {
		if len(c) == 0 {
			return status.Errorf(codes.InvalidArgument, "commands[%d]: must not be empty", i)
		}
	}
	return nil
}

// propose hands every command to Raft, in order, and returns their futures.
func (s *internalServer) propose(cmds [][]byte) []raft.ApplyFuture {
	r := s.node.raft.Load()
	futures := make([]raft.ApplyFuture, len(cmds))
	for i, c := range cmds {
		futures[i] = r.Apply(c, defaultProposeTimeout)
	}
	return futures
}

// forwardResult is one command's entry in a ForwardResponse.
func forwardResult(res []byte, err error) *meshcav1.ForwardResult {
	if err != nil {
		st := status.Convert(grpcError(err))
		return &meshcav1.ForwardResult{Code: int32(st.Code()), Message: st.Message()}
	}
	return &meshcav1.ForwardResult{Result: res}
}

// forwardStreamDepth bounds the request messages of one ForwardStream whose answers are
// pending; a follower sending more waits (gRPC flow control) until answers go out.
const forwardStreamDepth = 1024

// ForwardStream applies the commands a follower sends on one stream. Each request message is
// handed to Raft as it arrives; a responder answers the messages in order as their commands
// are applied, so the follower need not wait for one answer before sending the next batch. A
// malformed request, or any request while this node does not lead, is answered with that
// status for each of its commands.
func (s *internalServer) ForwardStream(stream meshcav1.Internal_ForwardStreamServer) error {
	type pending struct {
		futures []raft.ApplyFuture
		refused error // set when the request was refused as a whole
		n       int
	}
	answers := make(chan pending, forwardStreamDepth)
	sent := make(chan error, 1)
	go func() {
		var sendErr error
		for a := range answers {
			resp := &meshcav1.ForwardResponse{Results: make([]*meshcav1.ForwardResult, a.n)}
			for i := range a.n {
				if a.refused != nil {
					st := status.Convert(a.refused)
					resp.Results[i] = &meshcav1.ForwardResult{Code: int32(st.Code()), Message: st.Message()}
					continue
				}
				// Raft resolves every future: when the entry is applied, leadership is
				// lost or Raft shuts down.
				f := a.futures[i]
				resp.Results[i] = forwardResult(futureResult(f, f.Error()))
			}
			if sendErr == nil {
				sendErr = stream.Send(resp)
			}
		}
		sent <- sendErr
	}()
	var recvErr error
	for {
		req, err := stream.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				recvErr = err
			}
			break
		}
		a := pending{n: max(len(req.GetCommands()), 1)}
		if err := checkForwardRequest(req); err != nil {
			a.refused = err
		} else if err := s.requireLeader(); err != nil {
			a.refused = err
		} else {
			a.futures = s.propose(req.GetCommands())
		}
		answers <- a
	}
	close(answers)
	if err := <-sent; err != nil {
		return err
	}
	return recvErr
}

func (s *internalServer) requireLeader() error {
	if s.node.raft.Load().State() != raft.Leader {
		id, addr := s.node.Leader()
		return status.Errorf(codes.FailedPrecondition, "not the leader (leader: %q at %q)", id, addr)
	}
	return nil
}

// grpcError maps a local error onto the status a forwarding node branches on.
func grpcError(err error) error {
	switch {
	case errors.Is(err, errRetry), errors.Is(err, ErrShutdown), errors.Is(err, ErrNotLeader), errors.Is(err, ErrUnavailable):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// clientPool keeps one gRPC connection, and one batcher of forwarded proposals, per leader
// address.
type clientPool struct {
	creds    credentials.TransportCredentials
	mu       sync.Mutex
	conns    map[string]*grpc.ClientConn
	batchers map[string]*forwardBatcher
	observe  func(int) // the size of each forwarded batch
}

func newClientPool(cfg *tls.Config, observe func(int)) *clientPool {
	return &clientPool{creds: credentials.NewTLS(cfg), conns: map[string]*grpc.ClientConn{}, batchers: map[string]*forwardBatcher{}, observe: observe}
}

func (p *clientPool) get(addr string) (meshcav1.InternalClient, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.getLocked(addr)
}

// batcher returns the batcher of proposals forwarded to addr.
func (p *clientPool) batcher(addr string) (*forwardBatcher, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, err := p.getLocked(addr)
	if err != nil {
		return nil, err
	}
	if b, ok := p.batchers[addr]; ok {
		return b, nil
	}
	b := newForwardBatcher(c, p.observe)
	p.batchers[addr] = b
	return b, nil
}

func (p *clientPool) getLocked(addr string) (meshcav1.InternalClient, error) {
	if p.conns == nil {
		return nil, ErrShutdown
	}
	cc, ok := p.conns[addr]
	if !ok {
		var err error
		cc, err = grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(p.creds),
			// The forwarding stream lives as long as the leader does: pings find a leader
			// that went away without closing the connection, which fails the stream.
			grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: internalKeepalive, Timeout: internalKeepalive}))
		if err != nil {
			return nil, fmt.Errorf("grpc client for %s: %w", addr, err)
		}
		p.conns[addr] = cc
	}
	return meshcav1.NewInternalClient(cc), nil
}

// Close closes every connection; get fails afterwards.
func (p *clientPool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.batchers {
		b.close()
	}
	for _, cc := range p.conns {
		cc.Close()
	}
	p.conns = nil
}

// handshakenTLS is the gRPC server's transport credentials for connections the mux already
// handshook: it reports the TLS state to gRPC (peer.AuthInfo) without a second handshake.
type handshakenTLS struct{}

var _ credentials.TransportCredentials = handshakenTLS{}

func (handshakenTLS) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("raftstore: handshakenTLS is for the server side only")
}

func (handshakenTLS) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, nil, fmt.Errorf("raftstore: internal service: connection is %T, want *tls.Conn", c)
	}
	return c, credentials.TLSInfo{
		State:          tc.ConnectionState(),
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
	}, nil
}

func (handshakenTLS) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.3"}
}

func (h handshakenTLS) Clone() credentials.TransportCredentials { return h }

func (handshakenTLS) OverrideServerName(string) error { return nil }
