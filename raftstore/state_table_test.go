package raftstore

import (
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
)

// model is what a table should hold: a plain map.
type model map[uint64]string

// contents reads a table back in key order, checking the order as it goes.
func contents(t *testing.T, tb *table[uint64, string]) model {
	t.Helper()
	out := model{}
	var prev uint64
	tb.scan(func(k uint64, v string) bool {
		if len(out) > 0 && k <= prev {
			t.Fatalf("key %d after %d: not in order", k, prev)
		}
		prev = k
		out[k] = v
		return true
	})
	if len(out) != tb.Len() {
		t.Fatalf("scan saw %d records, Len says %d", len(out), tb.Len())
	}
	return out
}

// randomChanges makes n seeded changes to a working table and to its model: sets of new and
// existing keys and deletes, over a key range that makes the B-tree split, merge and rebalance.
func randomChanges(rng *rand.Rand, tb *table[uint64, string], m model, n int) {
	for range n {
		k := rng.Uint64N(4000)
		if rng.IntN(3) == 0 {
			tb.Delete(k)
			delete(m, k)
			continue
		}
		v := string(rune('a' + rng.IntN(26)))
		tb.Set(k, v)
		m[k] = v
	}
}

func TestTableCopies(t *testing.T) {
	t.Run("a frozen copy never sees the working table's later changes", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(1, 2))
		tb := workingTable(&journal{})
		m := model{}
		type view struct {
			frozen table[uint64, string]
			want   model
		}
		var views []view
		for range 40 {
			randomChanges(rng, &tb, m, 500)
			views = append(views, view{frozen: tb.frozen(), want: maps.Clone(m)})
		}
		if got := contents(t, &tb); !maps.Equal(got, m) {
			t.Fatalf("working table holds %d records, want %d", len(got), len(m))
		}
		for i, v := range views {
			if got := contents(t, &v.frozen); !maps.Equal(got, v.want) {
				t.Fatalf("frozen copy %d holds %d records, want the %d it had when frozen", i, len(got), len(v.want))
			}
		}
	})
	t.Run("a working copy of a frozen table starts with its records and leaves it alone", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(3, 4))
		base := workingTable(&journal{})
		m := model{}
		randomChanges(rng, &base, m, 3000)
		frozen := base.frozen()
		w := frozen.working(&journal{})
		if got := contents(t, &w); !maps.Equal(got, m) {
			t.Fatal("the working copy does not hold the frozen table's records")
		}
		randomChanges(rng, &w, maps.Clone(m), 3000)
		if got := contents(t, &frozen); !maps.Equal(got, m) {
			t.Fatal("changing the working copy changed the frozen table")
		}
	})
	t.Run("a frozen table refuses changes", func(t *testing.T) {
		tb := workingTable(&journal{})
		tb.Set(1, "a")
		frozen := tb.frozen()
		for name, change := range map[string]func(){
			"set":    func() { frozen.Set(2, "b") },
			"delete": func() { frozen.Delete(1) },
		} {
			func() {
				defer func() {
					if recover() == nil {
						t.Errorf("%s on a frozen table did not panic", name)
					}
				}()
				change()
			}()
		}
		if got := contents(t, &frozen); !maps.Equal(got, model{1: "a"}) {
			t.Fatalf("frozen table holds %v after refused changes", got)
		}
	})
}

func TestJournal(t *testing.T) {
	for _, tc := range []struct {
		name   string
		commit bool
	}{
		{"a rolled back command leaves every table as it was", false},
		{"a committed command keeps its changes", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(5, 6))
			j := &journal{}
			a := workingTable(j)
			b := workingTable(j)
			ma, mb := model{}, model{}
			// Changes outside a command are not journaled.
			randomChanges(rng, &a, ma, 2000)
			randomChanges(rng, &b, mb, 2000)
			frozenA := a.frozen() // the command also copies shared nodes
			wantA, wantB := maps.Clone(ma), maps.Clone(mb)
			frozenWant := maps.Clone(ma)

			j.begin()
			randomChanges(rng, &a, ma, 1500) // the same keys change many times
			randomChanges(rng, &b, mb, 10)
			if tc.commit {
				j.commit()
				wantA, wantB = ma, mb
			} else {
				j.rollback()
			}
			if got := contents(t, &a); !maps.Equal(got, wantA) {
				t.Fatalf("table a holds %d records, want %d", len(got), len(wantA))
			}
			if got := contents(t, &b); !maps.Equal(got, wantB) {
				t.Fatalf("table b holds %d records, want %d", len(got), len(wantB))
			}
			if len(a.undo) != 0 || len(b.undo) != 0 || len(j.touched) != 0 || j.recording {
				t.Fatal("the journal still holds changes after the command ended")
			}
			// The next command journals afresh: roll it back, nothing changes.
			j.begin()
			a.Set(1<<40, "new")
			a.Delete(slices.Sorted(maps.Keys(wantA))[0])
			j.rollback()
			if got := contents(t, &a); !maps.Equal(got, wantA) {
				t.Fatal("rolling back the next command changed the table")
			}
			if got := contents(t, &frozenA); !maps.Equal(got, frozenWant) {
				t.Fatal("the command or its rollback changed a frozen copy")
			}
		})
	}
}

// workingTable is an empty working table journaling into j.
func workingTable(j *journal) table[uint64, string] {
	tb := newTable[uint64, string]()
	return tb.working(j)
}
