// Package kvfsm is a small deterministic state machine for testing the Raft node without the
// real FSM: a command is "<id>\n<payload>", applied once per id (a retried command answers with
// its first result), and the state is the set of applied ids with their payloads.
package kvfsm

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"

	"github.com/hashicorp/raft"
)

// Command builds the command bytes for id and payload.
func Command(id string, payload []byte) []byte {
	cmd := make([]byte, 0, len(id)+1+len(payload))
	cmd = append(cmd, id...)
	cmd = append(cmd, '\n')
	return append(cmd, payload...)
}

// FSM implements raft.FSM and raft.BatchingFSM.
type FSM struct {
	mu      sync.Mutex
	entries map[string]entry
	applied uint64 // distinct commands applied

	batches    uint64
	batchedLog uint64
	maxBatch   int
}

type entry struct {
	Payload []byte `json:"payload"`
	Result  []byte `json:"result"`
}

var _ raft.BatchingFSM = (*FSM)(nil)

// New returns an empty FSM.
func New() *FSM { return &FSM{entries: map[string]entry{}} }

// Apply applies one log entry.
func (f *FSM) Apply(l *raft.Log) interface{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applyLocked(l)
}

// ApplyBatch applies committed entries in order and counts the batch size.
func (f *FSM) ApplyBatch(logs []*raft.Log) []interface{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.batches++
	f.batchedLog += uint64(len(logs))
	f.maxBatch = max(f.maxBatch, len(logs))
	out := make([]interface{}, len(logs))
	for i, l := range logs {
		out[i] = f.applyLocked(l)
	}
	return out
}

func (f *FSM) applyLocked(l *raft.Log) interface{} {
	if l.Type != raft.LogCommand {
		return nil
	}
	id, payload, ok := bytes.Cut(l.Data, []byte{'\n'})
	if !ok || len(id) == 0 {
		return []byte("error: command: want \"<id>\\n<payload>\"")
	}
	if e, seen := f.entries[string(id)]; seen {
		return e.Result
	}
	f.applied++
	result := []byte("applied " + strconv.FormatUint(f.applied, 10))
	f.entries[string(id)] = entry{Payload: bytes.Clone(payload), Result: result}
	return result
}

// Has reports whether the command id was applied.
func (f *FSM) Has(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.entries[id]
	return ok
}

// Len returns the number of distinct commands applied.
func (f *FSM) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.entries)
}

// IDs returns the applied command ids, sorted.
func (f *FSM) IDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := make([]string, 0, len(f.entries))
	for id := range f.entries {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// BatchStats returns how many ApplyBatch calls there were, how many entries they carried and
// the largest batch.
func (f *FSM) BatchStats() (batches, entries uint64, largest int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.batches, f.batchedLog, f.maxBatch
}

// StateHash hashes the state in id order, so equal states hash equal on every node.
func (f *FSM) StateHash() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := make([]string, 0, len(f.entries))
	for id := range f.entries {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	h := sha256.New()
	for _, id := range ids {
		e := f.entries[id]
		fmt.Fprintf(h, "%d:%s%d:%s%d:%s", len(id), id, len(e.Payload), e.Payload, len(e.Result), e.Result)
	}
	return h.Sum(nil)
}

type snapshotData struct {
	Applied uint64           `json:"applied"`
	Entries map[string]entry `json:"entries"`
}

// Snapshot captures a copy of the state.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &snapshot{data: snapshotData{Applied: f.applied, Entries: maps(f.entries)}}, nil
}

// Restore replaces the state with the snapshot's.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var data snapshotData
	if err := json.NewDecoder(rc).Decode(&data); err != nil {
		return fmt.Errorf("kvfsm: decode snapshot: %w", err)
	}
	if data.Entries == nil {
		data.Entries = map[string]entry{}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries, f.applied = data.Entries, data.Applied
	return nil
}

func maps(m map[string]entry) map[string]entry {
	out := make(map[string]entry, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

type snapshot struct{ data snapshotData }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s.data); err != nil {
		sink.Cancel()
		return fmt.Errorf("kvfsm: write snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() {}
