package raftstore

import (
	"github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"
)

// truncatedTailFiler is raft-wal's segment filer with one repair. raft-wal v0.4.0 (the
// version that builds with raft v1.8.0) marks the tail segment sealed when Raft truncates
// the log's tail — a restarted leader dropping entries the new leader never committed — but
// does not write the segment's index block (hashicorp/raft-wal#31, fixed upstream after
// v0.4.0). The running WAL is fine; reopening it fails with "sealed segment has no index
// block", so a node could not restart. For exactly those segments Open rebuilds the index by
// reading the file's committed frames with raft-wal's own tail-recovery code instead of
// reading the missing block. Such a segment is only read, never appended to, and the WAL
// never asks it for entries past its MaxIndex (they live in the next segment).
type truncatedTailFiler struct {
	*segment.Filer
}

func newSegmentFiler(dir string) truncatedTailFiler {
	return truncatedTailFiler{Filer: segment.NewFiler(dir, fs.New())}
}

// Open opens a sealed segment for reading.
func (f truncatedTailFiler) Open(info types.SegmentInfo) (types.SegmentReader, error) {
	if !info.SealTime.IsZero() && info.IndexStart == 0 {
		return f.Filer.RecoverTail(info)
	}
	return f.Filer.Open(info)
}

var _ types.SegmentFiler = truncatedTailFiler{}
