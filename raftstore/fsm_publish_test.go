package raftstore

import (
	"fmt"
	"testing"

	"github.com/hashicorp/raft"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// applyBatch hands the FSM a batch of command bodies as Raft does, and checks every result.
func (fx *fsmFixture) applyBatch(bodies ...any) {
	fx.t.Helper()
	logs := make([]*raft.Log, len(bodies))
	for i, b := range bodies {
		fx.index++
		logs[i] = &raft.Log{Index: fx.index, Term: 1, Type: raft.LogCommand, Data: mustMarshal(fx.t, fx.cmd(b))}
	}
	for i, out := range fx.fsm.ApplyBatch(logs) {
		if res := decodeResult(fx.t, out.([]byte)); res.GetCode() != meshcav1.ResultCode_RESULT_CODE_OK {
			fx.t.Fatalf("batch entry %d: %v: %s", i, res.GetCode(), res.GetMessage())
		}
	}
}

func TestStateIsFrozenOnlyForReaders(t *testing.T) {
	fx := newFSMFixture(t).setup()
	domains := func(n int) []any {
		out := make([]any, n)
		for i := range out {
			out[i] = &meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: fmt.Sprintf("d%d-%d", fx.index, i)}}
		}
		return out
	}

	// Nobody has looked since the last publish: a batch publishes nothing and copies nothing.
	fx.fsm.viewed.Store(false)
	published := fx.fsm.state.Load()
	fx.applyBatch(domains(8)...)
	if fx.fsm.state.Load() != published || !fx.fsm.stale.Load() {
		t.Fatal("a batch nobody read published a frozen copy")
	}
	// The next reader freezes the working state and sees every applied command.
	st := fx.fsm.State()
	if st == published || st.AppliedIndex() != fx.index || fx.fsm.stale.Load() {
		t.Fatalf("State after a stale mark: applied index %d, want %d (a new frozen copy)", st.AppliedIndex(), fx.index)
	}
	if got := len(st.Domains()); got != 8+1 {
		t.Fatalf("State holds %d domains, want 9", got)
	}
	// The state was read, so the next batch publishes at once, for readers that do not wait.
	fx.applyBatch(domains(3)...)
	if fx.fsm.stale.Load() || fx.fsm.state.Load().AppliedIndex() != fx.index {
		t.Fatal("a batch after a read left the published state stale")
	}
	// Frozen views handed out earlier never change.
	if got := len(st.Domains()); got != 9 {
		t.Fatalf("an earlier view changed: %d domains", got)
	}
	// A snapshot captures what was applied, stale or not.
	fx.fsm.viewed.Store(false)
	fx.applyBatch(domains(2)...)
	snap, err := fx.fsm.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.(*fsmSnapshot).state.AppliedIndex(); got != fx.index {
		t.Fatalf("snapshot at applied index %d, want %d", got, fx.index)
	}
	if fx.fsm.StateHash() != snap.(*fsmSnapshot).state.Hash() {
		t.Fatal("the snapshot's state differs from the current state")
	}
}

func TestTrustChangedWakesForCAAndFederationsOnly(t *testing.T) {
	fx := newFSMFixture(t).setup()
	woke := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	ch := fx.fsm.TrustChanged()
	fx.must(fx.register(fxInstance1, "a1", "k1"))
	fx.must(fx.refresh(fxInstance1, "a1", "a2", "k2"))
	fx.must(&meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: "weather"}})
	if woke(ch) {
		t.Fatal("TrustChanged closed by issuances and a domain change")
	}
	// A revocation moves the CRL number in the CA record.
	fx.must(&meshcav1.RevokeCommand{Target: &meshcav1.RevokeCommand_Serial{Serial: "a2"}})
	if !woke(ch) {
		t.Fatal("TrustChanged not closed when the CA record changed")
	}
	ch = fx.fsm.TrustChanged()
	fx.must(&meshcav1.PutFederationCommand{Federation: &meshcav1.Federation{TrustDomain: "other.example", Bundle: []byte("b"), Sequence: 1}})
	if !woke(ch) {
		t.Fatal("TrustChanged not closed when a federation changed")
	}
	ch = fx.fsm.TrustChanged()
	// A refused command changes nothing.
	expectCode(t, fx.apply(&meshcav1.PutFederationCommand{Federation: &meshcav1.Federation{TrustDomain: ""}}), meshcav1.ResultCode_RESULT_CODE_INVALID_COMMAND)
	fx.must(fx.register("pod-9.ns.cluster-a", "b1", "kb1"))
	if woke(ch) {
		t.Fatal("TrustChanged closed by a refused command and an issuance")
	}
}
