package raftstore

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

func mustMarshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestApplyAnswersAnyEntryWithAResult(t *testing.T) {
	envelope := func(mod func(c *meshcav1.Command)) func(t *testing.T) []byte {
		return func(t *testing.T) []byte {
			c := fxCommand("cmd-x", fxT0, &meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: "weather"}})
			mod(c)
			return mustMarshal(t, c)
		}
	}
	tests := []struct {
		name    string
		entry   func(t *testing.T) []byte
		want    meshcav1.ResultCode
		message string
	}{
		{"garbage bytes are an invalid command", func(*testing.T) []byte { return []byte{0xff, 0xff, 0xff, 0xff, 0x0f} }, codeInvalid, "entry:"},
		{"an empty entry has no id", func(*testing.T) []byte { return nil }, codeInvalid, "id:"},
		{"invalid UTF-8 in a string is an invalid command", func(*testing.T) []byte {
			b := protowire.AppendTag(nil, 2, protowire.BytesType)
			return protowire.AppendBytes(b, []byte{0xc3, 0x28})
		}, codeInvalid, "entry:"},
		{"an unknown version is refused", envelope(func(c *meshcav1.Command) { c.Version = 2 }), meshcav1.ResultCode_RESULT_CODE_UNSUPPORTED_VERSION, "version: 2"},
		{"a missing version is refused", envelope(func(c *meshcav1.Command) { c.Version = 0 }), meshcav1.ResultCode_RESULT_CODE_UNSUPPORTED_VERSION, "version: 0"},
		{"a missing id is refused", envelope(func(c *meshcav1.Command) { c.Id = "" }), codeInvalid, "id:"},
		{"an id with spaces is refused", envelope(func(c *meshcav1.Command) { c.Id = "a b" }), codeInvalid, "id:"},
		{"a missing time is refused", envelope(func(c *meshcav1.Command) { c.Time = 0 }), codeInvalid, "time:"},
		{"an envelope without a command is an unknown command", envelope(func(c *meshcav1.Command) { c.Command = nil }), meshcav1.ResultCode_RESULT_CODE_UNKNOWN_COMMAND, "command:"},
		{"a command type from a newer version is an unknown command", func(t *testing.T) []byte {
			b := envelope(func(c *meshcav1.Command) { c.Command = nil })(t)
			b = protowire.AppendTag(b, 999, protowire.BytesType)
			return protowire.AppendBytes(b, []byte{0x0a, 0x01, 'x'})
		}, meshcav1.ResultCode_RESULT_CODE_UNKNOWN_COMMAND, "unknown field numbers [999]"},
		{"a command with a missing body is invalid", envelope(func(c *meshcav1.Command) {
			c.Command = &meshcav1.Command_RecordRefresh{}
		}), codeInvalid, "record_refresh"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := newFSMFixture(t)
			before := contentHash(fx.state())
			res := decodeResult(t, fx.raw(tt.entry(t)))
			expectCode(t, res, tt.want)
			if !strings.Contains(res.GetMessage(), tt.message) {
				t.Fatalf("message %q does not name %q", res.GetMessage(), tt.message)
			}
			if res.GetIndex() != fx.index {
				t.Fatalf("result index %d, want %d", res.GetIndex(), fx.index)
			}
			if contentHash(fx.state()) != before {
				t.Fatal("a refused entry changed the records")
			}
		})
	}
}

func TestEveryCommandTypeHasAHandler(t *testing.T) {
	oneof := (&meshcav1.Command{}).ProtoReflect().Descriptor().Oneofs().ByName("command")
	fields := oneof.Fields()
	if fields.Len() < 29 {
		t.Fatalf("oneof has %d command types", fields.Len())
	}
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		t.Run(string(fd.Name()), func(t *testing.T) {
			fx := newFSMFixture(t)
			c := &meshcav1.Command{Version: CommandVersion, Id: "cmd-1", Time: fxT0.UnixNano()}
			m := c.ProtoReflect()
			m.Set(fd, protoreflect.ValueOfMessage(m.NewField(fd).Message()))
			res := fx.applyCmd(c)
			if res.GetCode() == meshcav1.ResultCode_RESULT_CODE_UNKNOWN_COMMAND || res.GetCode() == meshcav1.ResultCode_RESULT_CODE_UNSPECIFIED {
				t.Fatalf("%s: %v: %s", fd.Name(), res.GetCode(), res.GetMessage())
			}
		})
	}
}

func TestConfigurationEntriesAnswerNil(t *testing.T) {
	fx := newFSMFixture(t)
	before := contentHash(fx.state())
	out := fx.fsm.ApplyBatch([]*raft.Log{
		{Index: 1, Type: raft.LogConfiguration, Data: []byte("whatever raft encodes")},
		{Index: 2, Type: raft.LogCommand, Data: mustMarshal(t, fxCommand("c-1", fxT0, &meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: "weather"}}))},
	})
	if len(out) != 2 || out[0] != nil {
		t.Fatalf("ApplyBatch = %v, want nil for the configuration entry", out)
	}
	expectCode(t, decodeResult(t, out[1].([]byte)), codeOK)
	if contentHash(fx.state()) == before || fx.state().AppliedIndex() != 2 {
		t.Fatalf("applied index %d after the batch", fx.state().AppliedIndex())
	}
}

func TestDuplicateCommandIDIsAppliedOnce(t *testing.T) {
	fx := newFSMFixture(t).setup()
	first := mustMarshal(t, fxCommand("reg-1", fx.now, fx.register(fxInstance1, "a1", "k1")))
	r1 := fx.raw(first)
	expectCode(t, decodeResult(t, r1), codeOK)
	after := contentHash(fx.state())

	// The same entry again (a retry after a leader change) answers the first result.
	if r2 := fx.raw(first); !bytes.Equal(r1, r2) {
		t.Fatal("a retried command got a different result")
	}
	// Even a different body under the same id is not applied: the id names the operation.
	other := mustMarshal(t, fxCommand("reg-1", fx.now, fx.register("pod-2", "b1", "k2")))
	if r3 := fx.raw(other); !bytes.Equal(r1, r3) {
		t.Fatal("a command reusing an applied id got a new result")
	}
	if contentHash(fx.state()) != after {
		t.Fatal("a duplicate command id changed the records")
	}
	if _, err := fx.state().InstanceByID(fxProvider, "pod-2"); err == nil {
		t.Fatal("the second body under an applied id was applied")
	}
	// Refusals are remembered too: a refused command retried stays refused the same way.
	refused := mustMarshal(t, fxCommand("reg-2", fx.now, fx.register(fxInstance1, "a1", "k1")))
	rr := fx.raw(refused)
	expectCode(t, decodeResult(t, rr), codeAlreadyExists)
	if !bytes.Equal(rr, fx.raw(refused)) {
		t.Fatal("a retried refusal got a different result")
	}
}

func TestReceiptWindowIsBoundedAndInLogOrder(t *testing.T) {
	fx := newFSMFixtureWith(t, FSMConfig{ReceiptWindow: 4, ReceiptBytes: 1 << 20, EventRetention: 100})
	create := func(id, name string) []byte {
		return mustMarshal(t, fxCommand(id, fx.now, &meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: name}, Mode: meshcav1.PutMode_PUT_MODE_CREATE}))
	}
	for i, name := range []string{"d-a", "d-b", "d-c", "d-d", "d-e", "d-f"} {
		expectCode(t, decodeResult(t, fx.raw(create("id-"+string(rune('0'+i)), name))), codeOK)
	}
	if n := fx.state().Sizes().Receipts; n != 4 {
		t.Fatalf("%d receipts kept, want the window of 4", n)
	}
	if _, err := fx.state().Receipt("id-1"); err == nil {
		t.Fatal("id-1 is still remembered beyond the window")
	}
	if _, err := fx.state().Receipt("id-2"); err != nil {
		t.Fatalf("id-2 forgotten inside the window: %v", err)
	}
	// id-5 is inside the window: answered from its receipt. id-0 fell out: executed again,
	// and its domain exists, so create mode refuses it.
	expectCode(t, decodeResult(t, fx.raw(create("id-5", "d-f"))), codeOK)
	expectCode(t, decodeResult(t, fx.raw(create("id-0", "d-a"))), codeAlreadyExists)
}

func TestEventRetentionIsBounded(t *testing.T) {
	fx := newFSMFixtureWith(t, FSMConfig{ReceiptWindow: 100, ReceiptBytes: 1 << 20, EventRetention: 5})
	for i := 0; i < 12; i++ {
		fx.must(&meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: "d" + string(rune('a'+i))}})
	}
	evs := fx.state().Events(0, 0)
	if len(evs) != 5 || evs[0].GetIndex() != 8 || evs[4].GetIndex() != 12 || fx.state().LastEventIndex() != 12 {
		t.Fatalf("events kept: %v", evs)
	}
	if got := fx.state().Events(10, 2); len(got) != 2 || got[0].GetIndex() != 10 {
		t.Fatalf("Events(10, 2) = %v", got)
	}
}

func TestPruneRemovesWhatEndedBeforeTheCutoff(t *testing.T) {
	fx := newFSMFixture(t).setup()
	day := 24 * time.Hour
	fx.must(fx.register("pod-old", "a1", "k1"))
	fx.must(&meshcav1.RevokeCommand{Target: &meshcav1.RevokeCommand_Serial{Serial: "a1"}})
	fx.issueToken("jti-old", "pod-x", fx.now.Add(time.Hour))
	fx.must(&meshcav1.UseNonceCommand{Scope: "sports.api", Nonce: "n-old", Expires: fx.now.Add(time.Hour).UnixNano()})
	oldEvents := fx.state().LastEventIndex()

	fx.now = fx.now.Add(2 * day)
	fx.must(fx.register("pod-new", "b1", "k2"))
	fx.issueToken("jti-new", "pod-y", fx.now.Add(time.Hour))
	fx.must(&meshcav1.UseNonceCommand{Scope: "sports.api", Nonce: "n-new", Expires: fx.now.Add(time.Hour).UnixNano()})
	crl := func() uint64 { ca, _ := fx.state().CA(); return ca.GetCrlNumber() }
	crlBefore := crl()

	expectCode(t, fx.apply(&meshcav1.PruneCommand{Cutoff: fx.now.Add(time.Minute).UnixNano()}), codeInvalid)

	res := fx.must(&meshcav1.PruneCommand{Cutoff: fx.now.Add(-time.Hour).UnixNano()}).GetPrune()
	want := &meshcav1.PruneResult{Certs: 1, KeyUses: 1, Revocations: 1, Tokens: 1, Nonces: 1, Events: oldEvents}
	if !proto.Equal(res, want) {
		t.Fatalf("prune removed %v, want %v", res, want)
	}
	s := fx.state()
	for _, gone := range []error{
		func() error { _, err := s.Cert("a1"); return err }(),
		func() error { _, err := s.KeyUse(spki("k1")); return err }(),
		func() error { _, err := s.Revocation("a1"); return err }(),
		func() error { _, err := s.Token("jti-old"); return err }(),
		func() error { _, err := s.Nonce("sports.api", "n-old"); return err }(),
	} {
		if gone == nil {
			t.Fatal("a record older than the cutoff survived the prune")
		}
	}
	for _, kept := range []error{
		func() error { _, err := s.Cert("b1"); return err }(),
		func() error { _, err := s.KeyUse(spki("k2")); return err }(),
		func() error { _, err := s.Token("jti-new"); return err }(),
		func() error { _, err := s.Nonce("sports.api", "n-new"); return err }(),
	} {
		if kept != nil {
			t.Fatalf("a record younger than the cutoff was pruned: %v", kept)
		}
	}
	if crl() != crlBefore+1 {
		t.Fatalf("CRL number %d after pruning a revocation, want %d", crl(), crlBefore+1)
	}
	if evs := s.Events(0, 0); len(evs) == 0 || evs[0].GetIndex() != oldEvents+1 {
		t.Fatalf("events after prune start at %v", evs)
	}
	// The instance record outlives its certificate: a revoked id stays revoked for good.
	if _, err := s.InstanceByID(fxProvider, "pod-old"); err != nil {
		t.Fatalf("instance pruned with its certificate: %v", err)
	}
}

func TestPruneLimitLeavesTheRestForTheNextPrune(t *testing.T) {
	fx := newFSMFixture(t).setup()
	for i := 0; i < 5; i++ {
		fx.must(fx.register("pod-"+string(rune('a'+i)), "a"+string(rune('1'+i)), "k"+string(rune('1'+i))))
	}
	fx.now = fx.now.Add(48 * time.Hour)
	prune := &meshcav1.PruneCommand{Cutoff: fx.now.UnixNano(), Limit: 2}
	var total uint64
	for i := 0; ; i++ {
		res := fx.must(prune).GetPrune()
		total += res.GetCerts()
		if !res.GetMore() {
			break
		}
		if i > 10 {
			t.Fatal("prune never finishes")
		}
	}
	if total != 5 || fx.state().Sizes().Certs != 0 {
		t.Fatalf("pruned %d certificates in steps, %d left", total, fx.state().Sizes().Certs)
	}
}

func TestChangedIsClosedByTheNextApply(t *testing.T) {
	fx := newFSMFixture(t)
	ch := fx.fsm.Changed()
	select {
	case <-ch:
		t.Fatal("Changed closed before any change")
	default:
	}
	fx.must(&meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: "weather"}})
	select {
	case <-ch:
	default:
		t.Fatal("Changed not closed by Apply")
	}
	if fx.fsm.Changed() == ch {
		t.Fatal("Changed returned the closed channel again")
	}
}

func TestStateReadsAreCopies(t *testing.T) {
	fx := newFSMFixture(t).setup()
	fx.must(fx.register(fxInstance1, "a1", "k1"))
	before := fx.fsm.StateHash()
	inst := fx.instance(fxInstance1)
	inst.CurrentSerial = "ff"
	ca, _ := fx.state().CA()
	ca.Roots[0] = []byte("evil")
	if fx.fsm.StateHash() != before || fx.instance(fxInstance1).GetCurrentSerial() != "a1" {
		t.Fatal("changing a record read from the state changed the state")
	}
}

func TestReceiptsAreBoundedBySize(t *testing.T) {
	fx := newFSMFixtureWith(t, FSMConfig{ReceiptWindow: 100, ReceiptBytes: 3000, EventRetention: 100})
	submit := func(id string, size int) []byte {
		return fx.raw(mustMarshal(t, fxCommand(id, fx.now, &meshcav1.SubmitCSRCommand{Id: id, Csr: make([]byte, size), Submitter: "user.a"})))
	}
	submit("r1", 1000)
	submit("r2", 1000)
	if n := fx.state().Sizes().Receipts; n != 2 {
		t.Fatalf("%d receipts, want both under the size bound", n)
	}
	submit("r3", 1000) // the three results exceed 3000 bytes: r1's receipt goes
	if _, err := fx.state().Receipt("r1"); err == nil {
		t.Fatal("the oldest receipt was kept beyond the size bound")
	}
	big := submit("r4", 5000) // bigger than the bound alone: kept, everything older goes
	if fx.state().Sizes().Receipts != 1 {
		t.Fatalf("%d receipts, want only the newest", fx.state().Sizes().Receipts)
	}
	if again := submit("r4", 5000); !bytes.Equal(again, big) {
		t.Fatal("the newest command is not answered from its receipt")
	}
}
