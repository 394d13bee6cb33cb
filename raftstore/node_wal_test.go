package raftstore

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
)

// openWAL opens a raft-wal in dir, with or without the truncated-tail repair.
func openWAL(t *testing.T, dir string, repaired bool) (*wal.WAL, func()) {
	t.Helper()
	meta := &metadb.BoltMetaDB{}
	var w *wal.WAL
	var err error
	if repaired {
		w, err = wal.Open(dir, wal.WithMetaStore(meta), wal.WithSegmentFiler(newSegmentFiler(dir)))
	} else {
		w, err = wal.Open(dir, wal.WithMetaStore(meta))
	}
	if err != nil {
		meta.Close()
		t.Fatalf("open wal: %v", err)
	}
	return w, func() { w.Close(); meta.Close() }
}

func logs(term uint64, from, to uint64) []*raft.Log {
	var out []*raft.Log
	for i := from; i <= to; i++ {
		out = append(out, &raft.Log{Index: i, Term: term, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("t%d-%d", term, i))})
	}
	return out
}

// writeTruncatedTail leaves dir as a deposed leader leaves it: entries 1..10 of term 1, the
// uncommitted tail 8..10 dropped, and 8..12 of term 2 from the new leader written after.
func writeTruncatedTail(t *testing.T, dir string) {
	w, closeWAL := openWAL(t, dir, true)
	defer closeWAL()
	if err := w.StoreLogs(logs(1, 1, 10)); err != nil {
		t.Fatal(err)
	}
	if err := w.DeleteRange(8, 10); err != nil {
		t.Fatal(err)
	}
	if err := w.StoreLogs(logs(2, 8, 12)); err != nil {
		t.Fatal(err)
	}
}

func TestAWALWithATruncatedTailReopensWithEveryEntry(t *testing.T) {
	dir := t.TempDir()
	writeTruncatedTail(t, dir)
	w, closeWAL := openWAL(t, dir, true)
	defer closeWAL()
	for i := uint64(1); i <= 12; i++ {
		var l raft.Log
		if err := w.GetLog(i, &l); err != nil {
			t.Fatalf("GetLog(%d) after reopen: %v", i, err)
		}
		term := uint64(1)
		if i >= 8 {
			term = 2
		}
		if want := fmt.Sprintf("t%d-%d", term, i); string(l.Data) != want || l.Term != term {
			t.Fatalf("entry %d = term %d %q, want term %d %q", i, l.Term, l.Data, term, want)
		}
	}
	if last, _ := w.LastIndex(); last != 12 {
		t.Fatalf("LastIndex = %d, want 12", last)
	}
}

// This pins down why the repair exists: if raft-wal is upgraded to a release with the fix,
// this test fails and the repair (node_wal.go) can go.
func TestUnrepairedRaftWALCannotReadATruncatedTailAfterReopen(t *testing.T) {
	dir := t.TempDir()
	writeTruncatedTail(t, dir)
	w, closeWAL := openWAL(t, dir, false)
	defer closeWAL()
	var l raft.Log
	err := w.GetLog(1, &l)
	if err == nil || !strings.Contains(err.Error(), "sealed segment has no index block") {
		t.Fatalf("GetLog(1) on raft-wal v0.4.0 without the repair: %v; the upstream bug seems fixed", err)
	}
}
