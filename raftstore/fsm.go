// Package raftstore keeps meshca's replicated state on hashicorp/raft: the Raft node (log,
// transport, forwarding to the leader) and the state machine (FSM) that holds every record of
// DESIGN.md §3 and decides the preconditions that must be linearizable — which serial an
// instance may refresh with, whether a provider may still launch a service — inside Apply.
package raftstore

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// CommandVersion is the command protocol version this release applies.
const CommandVersion = 1

// FSMConfig configures the state machine. Every node of a cluster must use the same values:
// they decide what the replicated state keeps, and so its hash.
type FSMConfig struct {
	// ReceiptWindow is how many command ids (the latest, in log order) are remembered with their
	// result, so that a retried command is answered with its first result instead of being
	// applied again.
	ReceiptWindow int
	// ReceiptBytes bounds the total size of the remembered results; the oldest go first (the
	// newest is always kept).
	ReceiptBytes int
	// EventRetention is how many events are kept; the oldest go first. Prune also removes
	// events older than its cutoff.
	EventRetention int
	// Logger receives the rare internal errors (a command that made Apply fail). Nil: discard.
	Logger *slog.Logger
}

// DefaultFSMConfig returns the production configuration.
func DefaultFSMConfig() FSMConfig {
	return FSMConfig{ReceiptWindow: 1 << 16, ReceiptBytes: 64 << 20, EventRetention: 100_000}
}

// ErrInvalidConfig is returned (wrapped) for an FSMConfig that Validate refuses.
var ErrInvalidConfig = errors.New("raftstore: invalid configuration")

// Validate checks the configuration.
func (c FSMConfig) Validate() error {
	if c.ReceiptWindow < 1 {
		return fmt.Errorf("ReceiptWindow: %w: %d, must be at least 1", ErrInvalidConfig, c.ReceiptWindow)
	}
	if c.ReceiptBytes < 1 {
		return fmt.Errorf("ReceiptBytes: %w: %d, must be at least 1", ErrInvalidConfig, c.ReceiptBytes)
	}
	if c.EventRetention < 1 {
		return fmt.Errorf("EventRetention: %w: %d, must be at least 1", ErrInvalidConfig, c.EventRetention)
	}
	return nil
}

// FSM is meshca's Raft state machine. Apply and ApplyBatch take each log entry's Data as a
// marshaled meshca.v1.Command and return, per entry, a []byte holding the marshaled
// meshca.v1.CommandResult. They are deterministic: no clock, randomness, I/O or map order; the
// proposer puts time, serials and ids in the command. Any input, even garbage, is answered with
// a result, never a panic.
//
// The writer changes a working state in place and publishes a frozen copy of it, in O(1) (the
// copy shares the B-tree nodes; the writer copies a node the first time it changes it after a
// publish). Snapshot captures the published state in O(1) and Persist streams it while Apply
// goes on; readers get consistent, lock-free views with State.
//
// Copies are made only for readers: after a batch the writer publishes at once when the last
// published state was looked at, and otherwise only marks it stale, so a node nobody reads
// from (a follower without clients) changes its tables in place and copies nothing. The first
// State after a stale mark freezes the working state itself, waiting for at most the batch
// being applied.
type FSM struct {
	cfg    FSMConfig
	logger *slog.Logger

	// mu serializes the writers: Apply, ApplyBatch and Restore.
	mu sync.Mutex
	// work is the writer's working state, guarded by mu and never handed out.
	work *State
	// state is the published, frozen state.
	state atomic.Pointer[State]
	// stale: work holds changes that state lacks (set and cleared under mu).
	stale atomic.Bool
	// viewed: State handed state out since it was published.
	viewed atomic.Bool
	// trustMark is what the trust watchers last saw of the working state (guarded by mu).
	trustMark trustMark

	watchMu sync.Mutex
	watch   chan struct{}
	// trustWatch is closed when the CA record or a federation changes.
	trustWatch chan struct{}
}

// trustMark tells whether the CA record or the federations changed: the CA record is replaced,
// never changed in place, and every change to the federations moves their table's generation.
type trustMark struct {
	ca  *meshcav1.CA
	fed uint64
}

var _ raft.BatchingFSM = (*FSM)(nil)

// NewFSM returns a state machine holding the empty state.
func NewFSM(cfg FSMConfig) (*FSM, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	f := &FSM{cfg: cfg, logger: logger}
	f.reset(emptyState(), newWriterState())
	return f, nil
}

// State returns the current state: an immutable view that stays consistent however long the
// caller keeps it. It holds every command whose answer its caller has seen.
func (f *FSM) State() *State {
	if f.stale.Load() {
		f.mu.Lock()
		if f.stale.Load() {
			f.state.Store(f.work.freeze())
			f.stale.Store(false)
		}
		f.mu.Unlock()
	}
	if !f.viewed.Load() {
		f.viewed.Store(true)
	}
	return f.state.Load()
}

// StateHash is the SHA-256 of the current state's canonical serialization.
func (f *FSM) StateHash() [sha256.Size]byte { return f.State().Hash() }

// Changed returns a channel that is closed the next time the state changes (a command or
// batch is applied, or a snapshot restored). Take a new channel after each change.
func (f *FSM) Changed() <-chan struct{} {
	f.watchMu.Lock()
	defer f.watchMu.Unlock()
	if f.watch == nil {
		f.watch = make(chan struct{})
	}
	return f.watch
}

// TrustChanged returns a channel that is closed the next time the CA record or a federation
// changes (or a snapshot is restored): what a node's served trust bundles and issuing view
// follow, without waking for every issuance. Take a new channel after each change.
func (f *FSM) TrustChanged() <-chan struct{} {
	f.watchMu.Lock()
	defer f.watchMu.Unlock()
	if f.trustWatch == nil {
		f.trustWatch = make(chan struct{})
	}
	return f.trustWatch
}

// reset makes the frozen state s, not yet published, both the working state (with w, the
// indexes of its records) and the current state. The caller holds mu or owns f alone.
func (f *FSM) reset(s *State, w *writerState) {
	f.work = s.thaw(w)
	f.state.Store(s)
	f.stale.Store(false)
	f.changed(true)
}

// applied ends an Apply or ApplyBatch: it publishes the working state when the last published
// one was looked at, else marks it stale, and wakes the watchers. The caller holds mu.
func (f *FSM) applied() {
	if f.viewed.Swap(false) {
		f.state.Store(f.work.freeze())
		f.stale.Store(false)
	} else {
		f.stale.Store(true)
	}
	f.changed(false)
}

// changed wakes the watchers of every change, and those of trust changes when the CA record or
// the federations changed since they were last woken (or always, with trust). The caller holds
// mu.
func (f *FSM) changed(trust bool) {
	mark := trustMark{ca: f.work.ca, fed: f.work.federations.gen}
	trust = trust || mark != f.trustMark
	f.trustMark = mark
	f.watchMu.Lock()
	if f.watch != nil {
		close(f.watch)
		f.watch = nil
	}
	if trust && f.trustWatch != nil {
		close(f.trustWatch)
		f.trustWatch = nil
	}
	f.watchMu.Unlock()
}

// Apply applies one log entry. It implements raft.FSM.
func (f *FSM) Apply(l *raft.Log) interface{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	res := f.applyLog(f.work, l)
	f.applied()
	return res
}

// ApplyBatch applies consecutive log entries and publishes (or marks stale) the state once,
// after the last. It implements raft.BatchingFSM.
func (f *FSM) ApplyBatch(logs []*raft.Log) []interface{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]interface{}, len(logs))
	for i, l := range logs {
		out[i] = f.applyLog(f.work, l)
	}
	f.applied()
	return out
}

// applyLog applies one entry to the working state s. Entries other than commands (Raft
// configuration changes) only move the applied index and answer nil.
func (f *FSM) applyLog(s *State, l *raft.Log) interface{} {
	if l.Index > s.appliedIndex {
		s.appliedIndex = l.Index
	}
	if l.Type != raft.LogCommand {
		return nil
	}
	return f.applyCommand(s, l.Index, l.Data)
}

// applyCommand decodes, deduplicates and executes one command, and returns the marshaled result.
func (f *FSM) applyCommand(s *State, index uint64, data []byte) []byte {
	cmd, err := decodeCommand(data)
	if err != nil {
		return encodeResult(index, refusal(meshcav1.ResultCode_RESULT_CODE_INVALID_COMMAND,
			"entry: %d bytes are not a meshca.v1.Command: %v", len(data), err).res)
	}
	if err := validateID(cmd.GetId()); err != nil {
		return encodeResult(index, refusal(meshcav1.ResultCode_RESULT_CODE_INVALID_COMMAND,
			"id: %v (every command carries a client-chosen id)", err).res)
	}
	if seq, ok := s.receiptSeq[cmd.GetId()]; ok {
		r, _ := s.receipts.Get(seq)
		return r.GetResult()
	}
	res := f.execute(s, cmd)
	out := encodeResult(index, res)
	f.remember(s, cmd.GetId(), out)
	return out
}

// execute runs a command against the working state s and keeps its changes when the command
// commits: a refused command changes nothing (its journaled changes are undone), except the
// refusals that must persist (SerialMismatch revokes the instance).
func (f *FSM) execute(s *State, cmd *meshcav1.Command) (res *meshcav1.CommandResult) {
	if v := cmd.GetVersion(); v != CommandVersion {
		return refusal(meshcav1.ResultCode_RESULT_CODE_UNSUPPORTED_VERSION,
			"version: %d is not supported; this node applies version %d", v, CommandVersion).res
	}
	if cmd.GetTime() <= 0 {
		return refusal(meshcav1.ResultCode_RESULT_CODE_INVALID_COMMAND,
			"time: %d, must be a positive Unix time in nanoseconds set by the proposer", cmd.GetTime()).res
	}
	tx := &txn{State: s, cfg: &f.cfg, cmdID: cmd.GetId(), now: cmd.GetTime()}
	saved := s.stateVars
	s.j.begin()
	commit := false
	defer func() {
		p := recover()
		if commit && p == nil {
			s.j.commit()
			return
		}
		s.j.rollback()
		s.stateVars = saved
		if p != nil {
			// A bug, and the same on every replica: answer it like a refusal, leave the
			// state as it was, and say so in the log.
			f.logger.Error("raftstore: command made apply fail; state left unchanged", "command_id", cmd.GetId(), "panic", p)
			res = refusal(meshcav1.ResultCode_RESULT_CODE_INVALID_COMMAND, "command: internal error applying it: %v", p).res
		}
	}()
	o := dispatch(tx, cmd)
	commit = o.commit
	return o.res
}

// dispatch hands a command to its handler.
func dispatch(tx *txn, cmd *meshcav1.Command) outcome {
	switch c := cmd.GetCommand().(type) {
	case *meshcav1.Command_PutDomain:
		return applyPutDomain(tx, c.PutDomain)
	case *meshcav1.Command_ChangeDomainAdmins:
		return applyChangeDomainAdmins(tx, c.ChangeDomainAdmins)
	case *meshcav1.Command_DeleteDomain:
		return applyDeleteDomain(tx, c.DeleteDomain)
	case *meshcav1.Command_PutService:
		return applyPutService(tx, c.PutService)
	case *meshcav1.Command_DeleteService:
		return applyDeleteService(tx, c.DeleteService)
	case *meshcav1.Command_AddServiceKey:
		return applyAddServiceKey(tx, c.AddServiceKey)
	case *meshcav1.Command_RemoveServiceKey:
		return applyRemoveServiceKey(tx, c.RemoveServiceKey)
	case *meshcav1.Command_AddLaunchGrant:
		return applyAddLaunchGrant(tx, c.AddLaunchGrant)
	case *meshcav1.Command_RemoveLaunchGrant:
		return applyRemoveLaunchGrant(tx, c.RemoveLaunchGrant)
	case *meshcav1.Command_PutProvider:
		return applyPutProvider(tx, c.PutProvider)
	case *meshcav1.Command_DeleteProvider:
		return applyDeleteProvider(tx, c.DeleteProvider)
	case *meshcav1.Command_SetProviderEnabled:
		return applySetProviderEnabled(tx, c.SetProviderEnabled)
	case *meshcav1.Command_RecordRegister:
		return applyRegister(tx, c.RecordRegister)
	case *meshcav1.Command_RecordRefresh:
		return applyRefresh(tx, c.RecordRefresh)
	case *meshcav1.Command_VerifyExtend:
		return applyVerifyExtend(tx, c.VerifyExtend)
	case *meshcav1.Command_Revoke:
		return applyRevoke(tx, c.Revoke)
	case *meshcav1.Command_IssueToken:
		return applyIssueToken(tx, c.IssueToken)
	case *meshcav1.Command_ConsumeToken:
		return applyConsumeToken(tx, c.ConsumeToken)
	case *meshcav1.Command_UseNonce:
		return applyUseNonce(tx, c.UseNonce)
	case *meshcav1.Command_SubmitCsr:
		return applySubmitCSR(tx, c.SubmitCsr)
	case *meshcav1.Command_ApproveCsr:
		return applyApproveCSR(tx, c.ApproveCsr)
	case *meshcav1.Command_DenyCsr:
		return applyDenyCSR(tx, c.DenyCsr)
	case *meshcav1.Command_RecordCsrIssued:
		return applyCSRIssued(tx, c.RecordCsrIssued)
	case *meshcav1.Command_SetCa:
		return applySetCA(tx, c.SetCa)
	case *meshcav1.Command_PrepareCaRotation:
		return applyPrepareCARotation(tx, c.PrepareCaRotation)
	case *meshcav1.Command_ActivateCaIssuer:
		return applyActivateCAIssuer(tx, c.ActivateCaIssuer)
	case *meshcav1.Command_RetireCaRoot:
		return applyRetireCARoot(tx, c.RetireCaRoot)
	case *meshcav1.Command_PutFederation:
		return applyPutFederation(tx, c.PutFederation)
	case *meshcav1.Command_RemoveFederation:
		return applyRemoveFederation(tx, c.RemoveFederation)
	case *meshcav1.Command_Prune:
		return applyPrune(tx, c.Prune)
	case nil:
		return refusal(meshcav1.ResultCode_RESULT_CODE_UNKNOWN_COMMAND,
			"command: no command type this node knows is set%s", unknownFields(cmd))
	default:
		// A generated oneof case without a handler: a bug caught by TestEveryCommandHasAHandler.
		return refusal(meshcav1.ResultCode_RESULT_CODE_UNKNOWN_COMMAND, "command: %T has no handler", c)
	}
}

// unknownFields names the field numbers a newer proposer set that this node does not know.
func unknownFields(m proto.Message) string {
	raw := m.ProtoReflect().GetUnknown()
	var nums []int
	for len(raw) > 0 {
		num, _, n := protowire.ConsumeField(raw)
		if n < 0 {
			break
		}
		nums = append(nums, int(num))
		raw = raw[n:]
	}
	if len(nums) == 0 {
		return ""
	}
	sort.Ints(nums)
	return fmt.Sprintf(" (unknown field numbers %v)", nums)
}

// remember stores a command's result under its id and forgets the oldest ids beyond the window.
func (f *FSM) remember(s *State, id string, result []byte) {
	seq := s.nextReceipt
	s.nextReceipt++
	s.receipts.Set(seq, &meshcav1.CommandReceipt{Id: id, Sequence: seq, Result: result})
	s.receiptSeq[id] = seq
	s.receiptBytes += len(result)
	for s.receipts.Len() > f.cfg.ReceiptWindow || s.receiptBytes > f.cfg.ReceiptBytes && s.receipts.Len() > 1 {
		oldSeq, old, ok := s.receipts.first()
		if !ok {
			break
		}
		s.receiptBytes -= len(old.GetResult())
		delete(s.receiptSeq, old.GetId())
		s.receipts.Delete(oldSeq)
	}
}

// outcome is what a command handler decided: the result, and whether its changes are kept.
type outcome struct {
	res    *meshcav1.CommandResult
	commit bool
}

// refusal is a result that changes nothing.
func refusal(code meshcav1.ResultCode, format string, args ...any) outcome {
	return outcome{res: &meshcav1.CommandResult{Code: code, Message: fmt.Sprintf(format, args...)}}
}

// success is an OK result carrying the changed record; the changes are kept.
func success(payload any) outcome {
	res := &meshcav1.CommandResult{Code: meshcav1.ResultCode_RESULT_CODE_OK}
	switch p := payload.(type) {
	case *meshcav1.Domain:
		res.Payload = &meshcav1.CommandResult_Domain{Domain: p}
	case *meshcav1.Service:
		res.Payload = &meshcav1.CommandResult_Service{Service: p}
	case *meshcav1.Provider:
		res.Payload = &meshcav1.CommandResult_Provider{Provider: p}
	case *meshcav1.Instance:
		res.Payload = &meshcav1.CommandResult_Instance{Instance: p}
	case *meshcav1.Cert:
		res.Payload = &meshcav1.CommandResult_Cert{Cert: p}
	case *meshcav1.Revocation:
		res.Payload = &meshcav1.CommandResult_Revocation{Revocation: p}
	case *meshcav1.Token:
		res.Payload = &meshcav1.CommandResult_Token{Token: p}
	case *meshcav1.Nonce:
		res.Payload = &meshcav1.CommandResult_Nonce{Nonce: p}
	case *meshcav1.CSRRequest:
		res.Payload = &meshcav1.CommandResult_CsrRequest{CsrRequest: p}
	case *meshcav1.CA:
		res.Payload = &meshcav1.CommandResult_Ca{Ca: p}
	case *meshcav1.Federation:
		res.Payload = &meshcav1.CommandResult_Federation{Federation: p}
	case *meshcav1.PruneResult:
		res.Payload = &meshcav1.CommandResult_Prune{Prune: p}
	case nil:
	default:
		panic(fmt.Sprintf("raftstore: no result payload for %T", payload))
	}
	return outcome{res: res, commit: true}
}

// encodeResult stamps the log index on a result and marshals it, with the generated encoder
// (see decodeCommand); its bytes are those proto.Marshal gives.
func encodeResult(index uint64, res *meshcav1.CommandResult) []byte {
	res.Index = index
	// The generated encoder does not check strings. Those of the payload come from the state,
	// which holds only UTF-8; the message is checked here.
	if utf8.ValidString(res.GetMessage()) {
		if b, err := res.MarshalVT(); err == nil {
			return b
		}
	}
	// Only a message that is not UTF-8 gets here, and every string in a result comes from a
	// command that decoded (so is valid) or from this package.
	b, _ := proto.Marshal(&meshcav1.CommandResult{
		Code: meshcav1.ResultCode_RESULT_CODE_INVALID_COMMAND, Index: index,
		Message: "result: could not be encoded",
	})
	return b
}

// Snapshot captures the current state in O(1). It implements raft.FSM.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{state: f.State()}, nil
}

// Restore replaces the state with a snapshot stream. On error the state is left as it was.
// It implements raft.FSM.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s, w, err := readSnapshot(rc)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reset(s, w)
	return nil
}

// fsmSnapshot is an immutable state being persisted.
type fsmSnapshot struct{ state *State }

// Persist streams the state to the sink record by record.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.state.WriteSnapshot(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("persist snapshot: close sink: %w", err)
	}
	return nil
}

// Release is a no-op: the state is garbage collected once nobody holds it.
func (s *fsmSnapshot) Release() {}
