package raftstore

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/hashicorp/raft"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// directProposer applies commands straight to one FSM, as a single-node log would.
type directProposer struct {
	mu    sync.Mutex
	fsm   *FSM
	index uint64
	err   error
	reply []byte
}

func (p *directProposer) Propose(_ context.Context, cmd []byte) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil || p.reply != nil {
		return p.reply, p.err
	}
	p.index++
	return p.fsm.Apply(&raft.Log{Index: p.index, Term: 1, Type: raft.LogCommand, Data: cmd}).([]byte), nil
}

func newDirectStore(t *testing.T) (*Store, *fsmFixture) {
	fx := newFSMFixture(t).setup()
	p := &directProposer{fsm: fx.fsm, index: fx.index}
	return NewStore(p, fx.fsm), fx
}

func TestResultErrorMapsEveryCodeToItsSentinel(t *testing.T) {
	seen := map[error]meshcav1.ResultCode{}
	values := meshcav1.ResultCode(0).Descriptor().Values()
	for i := 0; i < values.Len(); i++ {
		code := meshcav1.ResultCode(values.Get(i).Number())
		err := ResultError(&meshcav1.CommandResult{Code: code, Message: "field: rule", Index: 7})
		switch code {
		case meshcav1.ResultCode_RESULT_CODE_OK:
			if err != nil {
				t.Fatalf("OK maps to error %v", err)
			}
			continue
		case meshcav1.ResultCode_RESULT_CODE_UNSPECIFIED:
			if !errors.Is(err, ErrBadResultCode) {
				t.Fatalf("UNSPECIFIED maps to %v, want ErrBadResultCode", err)
			}
			continue
		}
		var ce *CommandError
		if !errors.As(err, &ce) || ce.Code != code || ce.Index != 7 || ce.Error() != "field: rule" {
			t.Fatalf("%v: error %#v", code, err)
		}
		sentinel := errors.Unwrap(err)
		if sentinel == nil || sentinel == ErrBadResultCode {
			t.Fatalf("%v has no sentinel", code)
		}
		if other, dup := seen[sentinel]; dup {
			t.Fatalf("%v and %v share sentinel %v", code, other, sentinel)
		}
		seen[sentinel] = code
	}
	if err := ResultError(&meshcav1.CommandResult{Code: meshcav1.ResultCode(99)}); !errors.Is(err, ErrBadResultCode) {
		t.Fatalf("an unknown code maps to %v", err)
	}
}

func TestStoreApplyReturnsTypedErrors(t *testing.T) {
	ctx := context.Background()
	st, fx := newDirectStore(t)
	res, err := st.Apply(ctx, fx.cmd(fx.register(fxInstance1, "a1", "k1")))
	if err != nil || res.GetInstance().GetCurrentSerial() != "a1" {
		t.Fatalf("register: %v, %v", res, err)
	}
	_, err = st.Apply(ctx, fx.cmd(fx.register("pod-2", "b1", "k1")))
	if !errors.Is(err, ErrKeyReused) {
		t.Fatalf("reused key: %v, want ErrKeyReused", err)
	}
	res, err = st.Apply(ctx, fx.cmd(fx.refresh(fxInstance1, "ff", "a2", "k2")))
	if !errors.Is(err, ErrSerialMismatch) {
		t.Fatalf("wrong serial: %v, want ErrSerialMismatch", err)
	}
	if !res.GetInstance().GetRevoked() {
		t.Fatal("SerialMismatch result does not carry the revoked instance")
	}
	_, err = st.Apply(ctx, fx.cmd(fx.refresh(fxInstance1, "a1", "a3", "k3")))
	if !errors.Is(err, ErrInstanceRevoked) {
		t.Fatalf("refresh of a revoked instance: %v, want ErrInstanceRevoked", err)
	}
	if inst, _ := st.State().Instance(fxProvider, fxDomain, fxService, fxInstance1); !inst.GetRevoked() {
		t.Fatal("local read does not show the revocation")
	}
}

func TestStoreApplySetsTheVersionWithoutChangingTheCaller(t *testing.T) {
	st, fx := newDirectStore(t)
	cmd := fx.cmd(&meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: "weather"}})
	cmd.Version = 0
	if _, err := st.Apply(context.Background(), cmd); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if cmd.GetVersion() != 0 {
		t.Fatal("Apply changed the caller's command")
	}
}

func TestStoreApplyWrapsProposerFailures(t *testing.T) {
	fx := newFSMFixture(t)
	unavailable := errors.New("no quorum")
	st := NewStore(&directProposer{fsm: fx.fsm, err: unavailable}, fx.fsm)
	res, err := st.Apply(context.Background(), fx.cmd(&meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: "weather"}}))
	if res != nil || !errors.Is(err, unavailable) {
		t.Fatalf("Apply = %v, %v; want no result and the proposer's error", res, err)
	}
	st = NewStore(&directProposer{fsm: fx.fsm, reply: []byte{0xff}}, fx.fsm)
	if _, err := st.Apply(context.Background(), fx.cmd(nil)); err == nil {
		t.Fatal("an undecodable result was accepted")
	}
}

func TestNewCommandIDIsAValidUniqueID(t *testing.T) {
	a, b := NewCommandID(), NewCommandID()
	if a == b || validateID(a) != nil || len(a) != 32 {
		t.Fatalf("NewCommandID gave %q and %q", a, b)
	}
}

func TestNewCommandWrapsEveryCommandType(t *testing.T) {
	fields := (&meshcav1.Command{}).ProtoReflect().Descriptor().Oneofs().ByName("command").Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		body := (&meshcav1.Command{}).ProtoReflect().NewField(fd).Message().Interface()
		c, err := NewCommand("id-1", fxT0, body)
		if err != nil {
			t.Fatalf("%s: %v", fd.Name(), err)
		}
		if c.GetVersion() != CommandVersion || c.GetId() != "id-1" || c.GetTime() != fxT0.UnixNano() ||
			c.ProtoReflect().WhichOneof(fd.ContainingOneof()) != fd {
			t.Fatalf("%s: envelope %v", fd.Name(), c)
		}
	}
	if _, err := NewCommand("id-1", fxT0, &meshcav1.Instance{}); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("a record as command body: %v, want ErrInvalidCommand", err)
	}
}
