package logstores

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
)

// loadMix reads the issuance command mix corpus.
func loadMix(tb testing.TB) [][]byte {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "issuance-mix.bin"))
	if err != nil {
		tb.Fatalf("read the command mix (regenerate it with raftstore/internal/mixgen): %v", err)
	}
	var cmds [][]byte
	for len(data) > 0 {
		n, k := binary.Uvarint(data)
		if k <= 0 || uint64(len(data)-k) < n {
			tb.Fatalf("corrupt command mix after %d commands", len(cmds))
		}
		cmds = append(cmds, data[k:k+int(n)])
		data = data[k+int(n):]
	}
	return cmds
}

func TestTheCommandMixIsRegisterThenThreeRefreshes(t *testing.T) {
	cmds := loadMix(t)
	if len(cmds) == 0 || len(cmds)%4 != 0 {
		t.Fatalf("%d commands, want a non-zero multiple of 4", len(cmds))
	}
	for i, c := range cmds {
		if len(c) < 100 {
			t.Fatalf("command %d is %d bytes; the mix carries full certificate records", i, len(c))
		}
	}
}

// store is one log store under test: log + stable store and its closer.
type store struct {
	logs   raft.LogStore
	stable raft.StableStore
	close  func() error
}

type openStore func(tb testing.TB, dir string) store

var stores = []struct {
	name string
	open openStore
}{
	{"raft-wal", func(tb testing.TB, dir string) store {
		meta := &metadb.BoltMetaDB{}
		w, err := wal.Open(dir, wal.WithMetaStore(meta))
		if err != nil {
			tb.Fatal(err)
		}
		return store{logs: w, stable: w, close: func() error { w.Close(); return meta.Close() }}
	}},
	{"raft-boltdb-v2", func(tb testing.TB, dir string) store {
		// NoSync is false by default: every append is fsync'd.
		b, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
		if err != nil {
			tb.Fatal(err)
		}
		return store{logs: b, stable: b, close: b.Close}
	}},
}

type noopFSM struct{}

func (noopFSM) Apply(*raft.Log) interface{}         { return nil }
func (noopFSM) Snapshot() (raft.FSMSnapshot, error) { return noopSnapshot{}, nil }
func (noopFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

type noopSnapshot struct{}

func (noopSnapshot) Persist(sink raft.SnapshotSink) error { return sink.Close() }
func (noopSnapshot) Release()                             {}

// newCluster starts three raft nodes on 127.0.0.1 with the given store and meshca's raft
// settings (raftstore.DefaultNodeConfig) and returns the leader.
func newCluster(b *testing.B, open openStore) *raft.Raft {
	b.Helper()
	var servers []raft.Server
	var trans []*raft.NetworkTransport
	for i := range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		addr := ln.Addr().(*net.TCPAddr)
		ln.Close()
		t, err := raft.NewTCPTransportWithLogger(addr.String(), addr, 3, 5*time.Second, hclog.NewNullLogger())
		if err != nil {
			b.Fatal(err)
		}
		trans = append(trans, t)
		servers = append(servers, raft.Server{ID: raft.ServerID(fmt.Sprintf("n%d", i)), Address: t.LocalAddr()})
	}
	var rafts []*raft.Raft
	for i := range 3 {
		s := open(b, b.TempDir())
		snaps, err := raft.NewFileSnapshotStoreWithLogger(b.TempDir(), 2, hclog.NewNullLogger())
		if err != nil {
			b.Fatal(err)
		}
		rc := raft.DefaultConfig()
		rc.LocalID = servers[i].ID
		rc.HeartbeatTimeout, rc.ElectionTimeout = 500*time.Millisecond, 500*time.Millisecond
		rc.LeaderLeaseTimeout, rc.CommitTimeout = 250*time.Millisecond, 20*time.Millisecond
		rc.MaxAppendEntries, rc.BatchApplyCh = 512, true
		rc.SnapshotThreshold, rc.TrailingLogs = 16384, 10240
		rc.Logger = hclog.NewNullLogger()
		if err := raft.BootstrapCluster(rc, s.logs, s.stable, snaps, trans[i], raft.Configuration{Servers: servers}); err != nil {
			b.Fatal(err)
		}
		r, err := raft.NewRaft(rc, noopFSM{}, s.logs, s.stable, snaps, trans[i])
		if err != nil {
			b.Fatal(err)
		}
		rafts = append(rafts, r)
		b.Cleanup(func() {
			r.Shutdown().Error()
			s.close()
		})
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, r := range rafts {
			if r.State() == raft.Leader {
				return r
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("no leader after 30s")
		}
		time.Sleep(10 * time.Millisecond) // poll interval of a bounded wait
	}
}

func BenchmarkCommit(b *testing.B) {
	mix := loadMix(b)
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			leader := newCluster(b, st.open)
			for _, conc := range []int{1, 16, 64} {
				b.Run(fmt.Sprintf("c=%d", conc), func(b *testing.B) {
					var next atomic.Int64
					lat := make([][]time.Duration, conc)
					errs := make(chan error, conc)
					var wg sync.WaitGroup
					b.ResetTimer()
					start := time.Now()
					for c := range conc {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for {
								i := next.Add(1)
								if i > int64(b.N) {
									return
								}
								t0 := time.Now()
								if err := leader.Apply(mix[int(i)%len(mix)], 0).Error(); err != nil {
									errs <- err
									return
								}
								lat[c] = append(lat[c], time.Since(t0))
							}
						}()
					}
					wg.Wait()
					elapsed := time.Since(start)
					b.StopTimer()
					close(errs)
					for err := range errs {
						b.Fatal(err)
					}
					all := slices.Concat(lat...)
					slices.Sort(all)
					b.ReportMetric(float64(len(all))/elapsed.Seconds(), "cmds/s")
					b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
					b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
				})
			}
		})
	}
}
