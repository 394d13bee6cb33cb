package raftstore

import (
	"crypto/sha256"
	"testing"

	"google.golang.org/protobuf/proto"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// fsmCase is one precondition: a world (given), one command (when), its code (want) and what
// must hold after (then). A refusal other than SERIAL_MISMATCH must leave every record as it
// was; runFSMCases checks that for each case.
type fsmCase struct {
	name  string
	given func(fx *fsmFixture)
	when  func(fx *fsmFixture) any
	want  meshcav1.ResultCode
	then  func(t *testing.T, fx *fsmFixture, res *meshcav1.CommandResult)
}

func runFSMCases(t *testing.T, cases []fsmCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fx := newFSMFixture(t).setup()
			if tc.given != nil {
				tc.given(fx)
			}
			body := tc.when(fx)
			before := contentHash(fx.state())
			res := fx.apply(body)
			expectCode(t, res, tc.want)
			changed := contentHash(fx.state()) != before
			switch tc.want {
			case meshcav1.ResultCode_RESULT_CODE_OK, meshcav1.ResultCode_RESULT_CODE_SERIAL_MISMATCH:
			default:
				if changed {
					t.Fatalf("refused command (%v) changed the state", res.GetCode())
				}
			}
			if tc.then != nil {
				tc.then(t, fx, res)
			}
		})
	}
}

// contentHash hashes every record except the command receipts (which every command, refused or
// not, adds): it changes exactly when a command changed the replicated records.
func contentHash(s *State) [sha256.Size]byte {
	h := sha256.New()
	rw := &recordWriter{w: h}
	_, err := walkRecords(s, func(rec *meshcav1.SnapshotRecord) error {
		switch r := rec.GetRecord().(type) {
		case *meshcav1.SnapshotRecord_Receipt:
			return nil
		case *meshcav1.SnapshotRecord_Counters:
			rec = &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Counters{Counters: &meshcav1.StateCounters{
				NextEventIndex: r.Counters.GetNextEventIndex(),
			}}}
		}
		return rw.write(rec)
	})
	if err != nil {
		panic(err)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// payloadInstance returns the instance a result carries.
func payloadInstance(t *testing.T, res *meshcav1.CommandResult) *meshcav1.Instance {
	t.Helper()
	inst := res.GetInstance()
	if inst == nil {
		t.Fatalf("result carries %T, want an instance", res.GetPayload())
	}
	return inst
}

func equalProto(a, b proto.Message) bool { return proto.Equal(a, b) }
