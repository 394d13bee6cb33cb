package raftstore

import (
	"github.com/tidwall/btree"
)

// tableDegree is the B-tree degree of every table: a node holds up to 2*tableDegree-1
// records. Smaller nodes are cheaper to copy when a batch first changes them (a record
// changed in a table of random keys, such as command ids or key hashes, copies its leaf);
// larger nodes make shallower trees.
const tableDegree = 16

// table is one record table: a B-tree sorted by key (github.com/tidwall/btree, whose copies
// share their nodes and copy a shared node the first time they change it).
//
// A table is either frozen — part of a published State, never changed again, safe for any
// number of readers — or one of the FSM's working tables, changed in place by the one writer.
// Publishing freezes an O(1) copy of each working table; the working table then copies a node
// only the first time it changes it after a publish, so a batch of commands copies each node it
// touches once, instead of once per change as a persistent map would. Every change to a working
// table is journaled while a command runs, so a command that does not commit is undone in place.
type table[K string | uint64, V any] struct {
	m *btree.Map[K, V]
	// j is the writer's journal; nil for a frozen table, which refuses changes.
	j *journal
	// undo holds the changes of the running command, oldest first.
	undo []change[K, V]
	// gen moves with every change to a working table (an undone one too): a watcher compares
	// it to learn whether the table changed.
	gen uint64
}

// change is one journaled change: the record a key held before, if any.
type change[K string | uint64, V any] struct {
	key K
	old V
	had bool
}

func newTable[K string | uint64, V any]() table[K, V] {
	return table[K, V]{m: btree.NewMap[K, V](tableDegree)}
}

// Get looks a key up.
func (t *table[K, V]) Get(key K) (V, bool) { return t.m.Get(key) }

// Len is the number of records.
func (t *table[K, V]) Len() int { return t.m.Len() }

// ascend calls fn with each record whose key is from or after it, in key order, until fn
// returns false.
func (t *table[K, V]) ascend(from K, fn func(K, V) bool) { t.m.Ascend(from, fn) }

// scan calls fn with every record in key order until fn returns false.
func (t *table[K, V]) scan(fn func(K, V) bool) { t.m.Scan(fn) }

// first returns the record with the smallest key.
func (t *table[K, V]) first() (K, V, bool) { return t.m.Min() }

// Set stores a record under a key, replacing any record there.
func (t *table[K, V]) Set(key K, value V) { t.swap(key, value) }

// swap stores a record under a key and returns the record it replaced, if any.
func (t *table[K, V]) swap(key K, value V) (V, bool) {
	t.mustBeWorking()
	t.gen++
	old, had := t.m.Set(key, value)
	t.record(key, old, had)
	return old, had
}

// Delete removes the record under a key, if any.
func (t *table[K, V]) Delete(key K) {
	t.mustBeWorking()
	t.gen++
	if old, had := t.m.Delete(key); had {
		t.record(key, old, true)
	}
}

// load adds a record to a table being built by a snapshot restore (not yet frozen or
// working): records arrive in key order, which the B-tree appends without splitting nodes.
func (t *table[K, V]) load(key K, value V) { t.m.Load(key, value) }

func (t *table[K, V]) mustBeWorking() {
	if t.j == nil {
		// A published table is read concurrently and must never change: reaching this is a bug.
		panic("raftstore: change to a frozen table")
	}
}

// record journals a change while a command runs.
func (t *table[K, V]) record(key K, old V, had bool) {
	if !t.j.recording {
		return
	}
	if len(t.undo) == 0 {
		t.j.touched = append(t.j.touched, t)
	}
	t.undo = append(t.undo, change[K, V]{key: key, old: old, had: had})
}

// rollback undoes the journaled changes, newest first.
func (t *table[K, V]) rollback() {
	for i := len(t.undo) - 1; i >= 0; i-- {
		c := t.undo[i]
		if c.had {
			t.m.Set(c.key, c.old)
		} else {
			t.m.Delete(c.key)
		}
	}
	t.forget()
}

// forget drops the journaled changes: the command committed.
func (t *table[K, V]) forget() {
	clear(t.undo)
	t.undo = t.undo[:0]
}

// frozen returns a frozen copy sharing every node with t. t must be the working table.
func (t *table[K, V]) frozen() table[K, V] {
	return table[K, V]{m: t.m.Copy()}
}

// working returns a working copy of t that journals into j. Making it marks t's tree as
// copied (tidwall/btree gives both sides a new owner id), a write to t's header: t must not be
// published yet.
func (t *table[K, V]) working(j *journal) table[K, V] {
	return table[K, V]{m: t.m.Copy(), j: j}
}

// journal records the changes one command makes to the working tables, so that a command that
// does not commit (a refusal that changes nothing, or a panic) is undone in place.
type journal struct {
	recording bool
	// touched are the tables with journaled changes, in the order first changed.
	touched []undoable
}

// undoable is a table with journaled changes.
type undoable interface {
	rollback()
	forget()
}

// begin starts journaling a command.
func (j *journal) begin() { j.recording = true }

// commit keeps the command's changes.
func (j *journal) commit() { j.end(undoable.forget) }

// rollback undoes the command's changes.
func (j *journal) rollback() { j.end(undoable.rollback) }

func (j *journal) end(f func(undoable)) {
	for i := len(j.touched) - 1; i >= 0; i-- {
		f(j.touched[i])
	}
	clear(j.touched)
	j.touched = j.touched[:0]
	j.recording = false
}
