package raftstore

import (
	"bytes"
	"io"
	"testing"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// FuzzApplyCommand feeds raw log entry bytes to the state machine (on top of the usual world,
// so valid commands reach deep paths). Whatever the bytes, Apply must answer a decodable result
// without panicking, two replicas must answer and end identically, a retry of the entry must
// answer with the same code, and the state must survive a snapshot round trip. The seed corpus
// is in testdata/fuzz/FuzzApplyCommand (valid commands of every type, refusals and garbage).
func FuzzApplyCommand(f *testing.F) {
	fx := newFSMFixture(f)
	f.Add([]byte{})
	f.Add([]byte{0x08, 0x01})
	f.Add(mustMarshal(f, fx.cmd(fx.register(fxInstance1, "a1", "k1"))))
	f.Add(mustMarshal(f, fx.cmd(fx.refresh(fxInstance1, "a1", "a2", "k2"))))
	f.Fuzz(func(t *testing.T, entry []byte) {
		a := newFSMFixture(t).setup()
		a.must(a.register(fxInstance1, "a1", "k1"))
		b := newFSMFixture(t).setup()
		b.must(b.register(fxInstance1, "a1", "k1"))

		ra, rb := a.raw(entry), b.raw(entry)
		if !bytes.Equal(ra, rb) {
			t.Fatal("two replicas answered the same entry differently")
		}
		res := decodeResult(t, ra)
		if res.GetCode() == meshcav1.ResultCode_RESULT_CODE_UNSPECIFIED {
			t.Fatal("result has no code")
		}
		if res.GetCode() != codeOK && res.GetMessage() == "" {
			t.Fatalf("refusal %v without a message", res.GetCode())
		}
		if a.fsm.StateHash() != b.fsm.StateHash() {
			t.Fatal("two replicas diverged on the same entry")
		}
		if again := decodeResult(t, a.raw(entry)); again.GetCode() != res.GetCode() {
			t.Fatalf("retry answered %v, first answer %v", again.GetCode(), res.GetCode())
		}
		var snap bytes.Buffer
		if err := a.state().WriteSnapshot(&snap); err != nil {
			t.Fatalf("WriteSnapshot: %v", err)
		}
		c, err := NewFSM(DefaultFSMConfig())
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Restore(io.NopCloser(&snap)); err != nil {
			t.Fatalf("Restore: %v", err)
		}
		if c.StateHash() != a.fsm.StateHash() {
			t.Fatal("snapshot round trip changed the state")
		}
	})
}
