package raftstore

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protodelim"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// memSink is a raft.SnapshotSink writing into memory.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

// snapshotBytes takes a snapshot of f and persists it.
func snapshotBytes(t testing.TB, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	defer snap.Release()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed=%v cancelled=%v after a successful Persist", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

func restoreInto(t testing.TB, data []byte) *FSM {
	t.Helper()
	f, err := NewFSM(scenarioConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	return f
}

func TestReplayingOneLogGivesTheSameState(t *testing.T) {
	entries := scenario(t, 1, 3000)
	a, resA := replay(t, entries, 1)
	b, resB := replay(t, entries, 17)
	if a.StateHash() != b.StateHash() {
		t.Fatalf("state hashes differ: Apply one by one %x, ApplyBatch %x", a.StateHash(), b.StateHash())
	}
	codes := map[meshcav1.ResultCode]int{}
	for i := range resA {
		if !bytes.Equal(resA[i], resB[i]) {
			t.Fatalf("entry %d: results differ:\n%x\n%x", i+1, resA[i], resB[i])
		}
		codes[decodeResult(t, resA[i]).GetCode()]++
	}
	// The scenario must exercise the interesting paths, or equal hashes prove little.
	for _, c := range []meshcav1.ResultCode{
		meshcav1.ResultCode_RESULT_CODE_OK, codeSerialMismatch, codeInvalid, codeInstanceRevoked,
		codeFailedPrecondition, codeLaunchNotAuth, codeNonceReused, codeTokenUsed,
	} {
		if codes[c] == 0 {
			t.Errorf("scenario produced no %v result (codes: %v)", c, codes)
		}
	}
	sizes := a.State().Sizes()
	t.Logf("%d entries; results %v; records %+v", len(entries), codes, sizes)
	if sizes.Instances == 0 || sizes.Certs == 0 || sizes.Revocations == 0 || sizes.Events == 0 || sizes.Receipts == 0 || sizes.Federations == 0 {
		t.Errorf("scenario left empty tables: %+v", sizes)
	}
	// A different log gives a different state: the hash is not blind.
	c, _ := replay(t, scenario(t, 2, 3000), 1)
	if c.StateHash() == a.StateHash() {
		t.Fatal("two different logs hash the same")
	}
}

func TestSnapshotRestoreGivesTheSameHash(t *testing.T) {
	entries := scenario(t, 3, 2000)
	half := len(entries) / 2
	a, _ := replay(t, entries[:half], 1)

	b := restoreInto(t, snapshotBytes(t, a))
	if a.StateHash() != b.StateHash() {
		t.Fatalf("restored hash %x, want %x", b.StateHash(), a.StateHash())
	}
	if a.State().AppliedIndex() != b.State().AppliedIndex() || a.State().Sizes() != b.State().Sizes() {
		t.Fatalf("restored index %d sizes %+v, want %d %+v", b.State().AppliedIndex(), b.State().Sizes(), a.State().AppliedIndex(), a.State().Sizes())
	}
	// Both go on with the rest of the log: the restored counters, receipts and indexes
	// (expiry, receipt order) must behave exactly like the originals.
	for i, e := range entries[half:] {
		l := &raft.Log{Index: uint64(half + i + 1), Term: 1, Type: raft.LogCommand, Data: e}
		ra, rb := a.Apply(l).([]byte), b.Apply(l).([]byte)
		if !bytes.Equal(ra, rb) {
			t.Fatalf("entry %d: original and restored FSMs answer differently", half+i+1)
		}
	}
	if a.StateHash() != b.StateHash() {
		t.Fatal("original and restored FSMs diverged after applying the same entries")
	}
}

func TestSnapshotIsTheStateAtSnapshotTimeWhileApplyGoesOn(t *testing.T) {
	entries := scenario(t, 4, 600)
	a, _ := replay(t, entries[:300], 1)
	want := a.StateHash()
	snap, err := a.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range entries[300:] {
		a.Apply(&raft.Log{Index: uint64(301 + i), Term: 1, Type: raft.LogCommand, Data: e})
	}
	if a.StateHash() == want {
		t.Fatal("the later entries did not change the state; the test proves nothing")
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	if got := restoreInto(t, sink.Bytes()).StateHash(); got != want {
		t.Fatalf("persisted snapshot hashes %x, want the state at Snapshot() %x", got, want)
	}
}

func TestSnapshotStreamIsLengthDelimitedProtobuf(t *testing.T) {
	a, _ := replay(t, scenario(t, 5, 300), 1)
	data := snapshotBytes(t, a)
	r := bufio.NewReader(bytes.NewReader(data))
	var n int
	var last *meshcav1.SnapshotRecord
	for {
		rec := new(meshcav1.SnapshotRecord)
		err := protodelim.UnmarshalFrom(r, rec)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("record %d: %v", n, err)
		}
		if n == 0 && rec.GetHeader() == nil {
			t.Fatal("first record is not the header")
		}
		last = rec
		n++
	}
	if last.GetTrailer() == nil || last.GetTrailer().GetRecords() != uint64(n-2) {
		t.Fatalf("last record %v, want a trailer counting %d records", last, n-2)
	}
	hash := a.StateHash()
	if !bytes.Equal(last.GetTrailer().GetSha256(), hash[:]) {
		t.Fatal("trailer digest is not the state hash")
	}
}

func TestRestoreRefusesCorruptSnapshots(t *testing.T) {
	a, _ := replay(t, scenario(t, 6, 300), 1)
	good := snapshotBytes(t, a)
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x40
		return b
	}
	tests := []struct {
		name string
		data []byte
	}{
		{"an empty stream is refused", nil},
		{"a stream cut after the header is refused", good[:20]},
		{"a stream cut in the middle is refused", good[:len(good)/2]},
		{"a stream without its trailer's last byte is refused", good[:len(good)-1]},
		{"a flipped byte in a record is refused", flip(len(good) / 2)},
		{"data after the trailer is refused", append(bytes.Clone(good), 0)},
		{"garbage is refused", []byte("not a snapshot at all, just words")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := restoreInto(t, good)
			before := f.StateHash()
			err := f.Restore(io.NopCloser(bytes.NewReader(tt.data)))
			if err == nil {
				t.Fatal("Restore accepted a corrupt snapshot")
			}
			if !errors.Is(err, ErrCorruptSnapshot) {
				t.Fatalf("error %v does not wrap ErrCorruptSnapshot", err)
			}
			if f.StateHash() != before {
				t.Fatal("a refused Restore changed the state")
			}
		})
	}
}

func TestPublishedStatesDoNotChangeWhileBatchesApply(t *testing.T) {
	entries := scenario(t, 5, 1500)
	const batch = 25
	logs := make([]*raft.Log, len(entries))
	for i, e := range entries {
		logs[i] = &raft.Log{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: e}
	}
	// The hash after each batch, from a replica nobody reads concurrently.
	ref, err := NewFSM(scenarioConfig())
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64][32]byte{0: ref.StateHash()}
	for start := 0; start < len(logs); start += batch {
		end := min(start+batch, len(logs))
		ref.ApplyBatch(logs[start:end])
		want[uint64(end)] = ref.StateHash()
	}

	f, err := NewFSM(scenarioConfig())
	if err != nil {
		t.Fatal(err)
	}
	type sample struct {
		state *State
		hash  [32]byte
	}
	var samples []sample
	done := make(chan struct{})
	read := make(chan struct{})
	go func() {
		// A reader hashes published states (walking every table) while the writer changes its
		// working tables; the race detector watches the shared nodes.
		defer close(read)
		for {
			select {
			case <-done:
				return
			default:
			}
			s := f.State()
			samples = append(samples, sample{state: s, hash: s.Hash()})
		}
	}()
	for start := 0; start < len(logs); start += batch {
		f.ApplyBatch(logs[start:min(start+batch, len(logs))])
	}
	close(done)
	<-read
	if len(samples) < 2 {
		t.Fatalf("the reader saw %d states; the test proves little", len(samples))
	}
	for _, s := range samples {
		idx := s.state.AppliedIndex()
		if s.hash != want[idx] {
			t.Fatalf("the state published at index %d hashed %x while batches applied, want %x", idx, s.hash, want[idx])
		}
		if s.state.Hash() != s.hash {
			t.Fatalf("the state published at index %d changed after it was read", idx)
		}
	}
	if f.StateHash() != ref.StateHash() {
		t.Fatal("the replica read concurrently ended in another state")
	}
}
