package raftstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// Proposer commits a command to the Raft log and returns the state machine's result for it,
// only after the command is committed and applied (on any node: followers forward to the
// leader). The Raft node implements it.
type Proposer interface {
	Propose(ctx context.Context, cmd []byte) ([]byte, error)
}

// Sentinel errors for the result codes callers branch on; a refused command's error wraps one
// of them (use errors.Is) and is a *CommandError (use errors.As for the code and message).
var (
	// ErrInvalidCommand: the command is malformed (a field missing or breaking its rule).
	ErrInvalidCommand = errors.New("raftstore: invalid command")
	// ErrUnsupportedVersion: the command's protocol version is not the one this cluster applies.
	ErrUnsupportedVersion = errors.New("raftstore: unsupported command version")
	// ErrUnknownCommand: no command type the applying node knows was set.
	ErrUnknownCommand = errors.New("raftstore: unknown command type")
	// ErrAlreadyExists: the record the command creates exists already.
	ErrAlreadyExists = errors.New("raftstore: already exists")
	// ErrFailedPrecondition: the record is not in a state that allows the command.
	ErrFailedPrecondition = errors.New("raftstore: failed precondition")
	// ErrSerialMismatch: a refresh presented a serial that is neither the instance's current nor
	// its once-retryable previous serial; the instance is now revoked.
	ErrSerialMismatch = errors.New("raftstore: serial mismatch")
	// ErrLaunchNotAuthorized: the service grants launch to no pattern matching the provider, or
	// a register token is bound to another instance.
	ErrLaunchNotAuthorized = errors.New("raftstore: launch not authorized")
	// ErrProviderDisabled: the provider is disabled.
	ErrProviderDisabled = errors.New("raftstore: provider disabled")
	// ErrKeyReused: the certificate's public key was used before and reuse was not forced.
	ErrKeyReused = errors.New("raftstore: public key reused")
	// ErrInstanceRevoked: the instance is revoked; it never refreshes or registers again.
	ErrInstanceRevoked = errors.New("raftstore: instance revoked")
	// ErrCertRevoked: the presented certificate is revoked.
	ErrCertRevoked = errors.New("raftstore: certificate revoked")
	// ErrCertExpired: the presented certificate has expired.
	ErrCertExpired = errors.New("raftstore: certificate expired")
	// ErrTokenUsed: the register token was used before.
	ErrTokenUsed = errors.New("raftstore: token already used")
	// ErrTokenExpired: the register token has expired.
	ErrTokenExpired = errors.New("raftstore: token expired")
	// ErrNonceReused: the service-key token's nonce was used before (a replay).
	ErrNonceReused = errors.New("raftstore: nonce reused")
	// ErrBadResultCode: the result carries a code this release does not know.
	ErrBadResultCode = errors.New("raftstore: unknown result code")
)

// codeErrors maps result codes to sentinel errors.
var codeErrors = map[meshcav1.ResultCode]error{
	meshcav1.ResultCode_RESULT_CODE_INVALID_COMMAND:       ErrInvalidCommand,
	meshcav1.ResultCode_RESULT_CODE_UNSUPPORTED_VERSION:   ErrUnsupportedVersion,
	meshcav1.ResultCode_RESULT_CODE_UNKNOWN_COMMAND:       ErrUnknownCommand,
	meshcav1.ResultCode_RESULT_CODE_NOT_FOUND:             ErrNotFound,
	meshcav1.ResultCode_RESULT_CODE_ALREADY_EXISTS:        ErrAlreadyExists,
	meshcav1.ResultCode_RESULT_CODE_FAILED_PRECONDITION:   ErrFailedPrecondition,
	meshcav1.ResultCode_RESULT_CODE_SERIAL_MISMATCH:       ErrSerialMismatch,
	meshcav1.ResultCode_RESULT_CODE_LAUNCH_NOT_AUTHORIZED: ErrLaunchNotAuthorized,
	meshcav1.ResultCode_RESULT_CODE_PROVIDER_DISABLED:     ErrProviderDisabled,
	meshcav1.ResultCode_RESULT_CODE_KEY_REUSED:            ErrKeyReused,
	meshcav1.ResultCode_RESULT_CODE_INSTANCE_REVOKED:      ErrInstanceRevoked,
	meshcav1.ResultCode_RESULT_CODE_CERT_REVOKED:          ErrCertRevoked,
	meshcav1.ResultCode_RESULT_CODE_CERT_EXPIRED:          ErrCertExpired,
	meshcav1.ResultCode_RESULT_CODE_TOKEN_USED:            ErrTokenUsed,
	meshcav1.ResultCode_RESULT_CODE_TOKEN_EXPIRED:         ErrTokenExpired,
	meshcav1.ResultCode_RESULT_CODE_NONCE_REUSED:          ErrNonceReused,
}

// CommandError is a command the state machine refused. It wraps the sentinel error of its code.
type CommandError struct {
	// Code is the result code.
	Code meshcav1.ResultCode
	// Message says what was refused, naming the field and the rule.
	Message string
	// Index is the Raft log index the command was applied at.
	Index uint64
}

// Error returns the message.
func (e *CommandError) Error() string { return e.Message }

// Unwrap returns the sentinel error of the code.
func (e *CommandError) Unwrap() error {
	if err, ok := codeErrors[e.Code]; ok {
		return err
	}
	return ErrBadResultCode
}

// ResultError returns nil for an OK result and a *CommandError for any other.
func ResultError(res *meshcav1.CommandResult) error {
	if res.GetCode() == meshcav1.ResultCode_RESULT_CODE_OK {
		return nil
	}
	msg := res.GetMessage()
	if msg == "" {
		msg = res.GetCode().String()
	}
	return &CommandError{Code: res.GetCode(), Message: msg, Index: res.GetIndex()}
}

// NewCommandID returns a random 128-bit command id in hex. Choose the id once per logical
// operation and reuse it when retrying, so the operation is applied once.
func NewCommandID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("raftstore: crypto/rand failed: %v", err))
	}
	return hex.EncodeToString(b[:])
}

// NewCommand wraps a command body (a *meshcav1.RecordRefreshCommand, ...) in the envelope:
// the current protocol version, the client-chosen id, and the proposer's time.
func NewCommand(id string, now time.Time, body proto.Message) (*meshcav1.Command, error) {
	c := &meshcav1.Command{Version: CommandVersion, Id: id, Time: now.UnixNano()}
	m := c.ProtoReflect()
	want := body.ProtoReflect().Descriptor().FullName()
	fields := m.Descriptor().Oneofs().ByName("command").Fields()
	for i := 0; i < fields.Len(); i++ {
		if fd := fields.Get(i); fd.Message().FullName() == want {
			m.Set(fd, protoreflect.ValueOfMessage(body.ProtoReflect()))
			return c, nil
		}
	}
	return nil, fmt.Errorf("command body %s: %w: not a command type", want, ErrInvalidCommand)
}

// Store is the typed face of the replicated state: Apply proposes a command through the Raft
// node and maps its result to errors; State reads the local state machine.
type Store struct {
	proposer Proposer
	fsm      *FSM
}

// NewStore returns a Store that proposes through p and reads from fsm (the state machine the
// local Raft node applies to).
func NewStore(p Proposer, fsm *FSM) *Store {
	return &Store{proposer: p, fsm: fsm}
}

// Apply proposes a command and returns its result once it is committed and applied. A refused
// command returns the result (it may carry a record, e.g. the revoked instance on
// SerialMismatch) and a *CommandError wrapping the sentinel of its code. A failure to commit
// (no quorum, deadline) returns the proposer's error and no result; retrying with the same
// command id is then safe.
//
// Apply fills in the protocol version when it is zero; the caller sets id and time.
func (s *Store) Apply(ctx context.Context, cmd *meshcav1.Command) (*meshcav1.CommandResult, error) {
	if cmd.GetVersion() == 0 {
		cmd = proto.CloneOf(cmd)
		cmd.Version = CommandVersion
	}
	data, err := proto.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("command %s: marshal: %w", cmd.GetId(), err)
	}
	out, err := s.proposer.Propose(ctx, data)
	if err != nil {
		return nil, fmt.Errorf("command %s: %w", cmd.GetId(), err)
	}
	res := new(meshcav1.CommandResult)
	if err := proto.Unmarshal(out, res); err != nil {
		return nil, fmt.Errorf("command %s: result is not a meshca.v1.CommandResult: %w", cmd.GetId(), err)
	}
	return res, ResultError(res)
}

// State returns the local state machine's current state: an immutable, consistent view. Reads
// are local and may trail the leader by the replication lag; decisions that must be
// linearizable are made by commands.
func (s *Store) State() *State { return s.fsm.State() }

// FSM returns the local state machine.
func (s *Store) FSM() *FSM { return s.fsm }
