package raftstore

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"google.golang.org/protobuf/proto"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// The benchmarks measure commits on three in-process nodes with fsync'd raft-wal logs:
//
//   - store/leader, store/follower: our Node over the mutual-TLS transport, the real FSM,
//     proposals made on the leader or on a follower (forwarded over the internal gRPC service);
//   - raw/leader: hashicorp/raft alone with the same log store (and in-memory cache of recent
//     entries), configuration and commands, plain TCP transport and a no-op FSM: the ceiling
//     our layers are compared with.
//
// Each reports commands/s and the p50/p99 latency of one proposal at concurrency 1, 16, 64.
// The commands are the issuance mix: per instance one RecordRegister then three
// RecordRefresh commands, each with its own certificate.

var benchConcurrency = []int{1, 16, 64}

// benchTune applies the production timeouts (the test harness slows them down for -race).
func benchTune(cfg *NodeConfig) {
	def := DefaultNodeConfig()
	cfg.HeartbeatTimeout = def.HeartbeatTimeout
	cfg.ElectionTimeout = def.ElectionTimeout
	cfg.LeaderLeaseTimeout = def.LeaderLeaseTimeout
}

// issuanceMix builds the command stream of one benchmark client.
type issuanceMix struct {
	fx          *fsmFixture
	run, client int
}

func (m issuanceMix) command(k int) []byte {
	n, j := k/4, k%4
	inst := fmt.Sprintf("r%d-c%d-%d.bench", m.run, m.client, n)
	// Serials are lowercase hex, unique per run, client, instance and refresh.
	serial := func(j int) string { return fmt.Sprintf("1%04x%04x%08x%02x", m.run, m.client, n, j) }
	var body any
	if j == 0 {
		body = m.fx.register(inst, serial(0), "key-"+serial(0))
	} else {
		body = m.fx.refresh(inst, serial(j-1), serial(j), "key-"+serial(j))
	}
	b, err := proto.Marshal(fxCommand("cmd-"+serial(j), m.fx.now, body))
	if err != nil {
		panic(err)
	}
	return b
}

// benchSetup are the records the issuance mix needs.
func benchSetup(fx *fsmFixture) [][]byte {
	var out [][]byte
	for i, body := range []any{
		&meshcav1.SetCACommand{Roots: [][]byte{fxRoot}, ActiveIssuer: fxIssuer(fxIssuerID, fxRoot, fxT0.Add(365*24*time.Hour))},
		&meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: fxDomain}},
		&meshcav1.PutServiceCommand{Service: &meshcav1.Service{Domain: fxDomain, Name: fxService, LaunchGrants: []string{fxProvider}}},
		&meshcav1.PutProviderCommand{Provider: &meshcav1.Provider{Name: fxProvider, DnsSuffix: "k8s.mesh.example", Enabled: true}},
	} {
		b, err := proto.Marshal(fxCommand(fmt.Sprintf("setup-%d", i), fxT0, body))
		if err != nil {
			panic(err)
		}
		out = append(out, b)
	}
	return out
}

// runLoad runs b.N proposals spread over conc clients and reports throughput and latency.
// propose returns an error for anything but an applied, accepted command.
func runLoad(b *testing.B, conc int, run int, fx *fsmFixture, propose func([]byte) error) {
	var next atomic.Int64
	lat := make([][]time.Duration, conc)
	errs := make(chan error, conc)
	var wg sync.WaitGroup
	b.ResetTimer()
	cpu0 := processCPU(b)
	start := time.Now()
	for c := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mix := issuanceMix{fx: fx, run: run, client: c}
			for k := 0; ; k++ {
				if next.Add(1) > int64(b.N) {
					return
				}
				cmd := mix.command(k)
				t0 := time.Now()
				if err := propose(cmd); err != nil {
					errs <- err
					return
				}
				lat[c] = append(lat[c], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU(b) - cpu0
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
	// CPU time of the whole process (all three nodes and the clients) per command: what the
	// layers cost, steadier than the rate on a shared machine.
	b.ReportMetric(float64(cpu.Microseconds())/float64(len(all)), "cpu-us/cmd")
}

// processCPU is the user and system CPU time the process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var benchRun atomic.Int64

func BenchmarkPropose(b *testing.B) {
	fx := newFSMFixture(b)

	b.Run("store", func(b *testing.B) {
		c := newTestClusterWith(b, 3, benchTune, func(int) raft.FSM {
			f, err := NewFSM(DefaultFSMConfig())
			if err != nil {
				b.Fatal(err)
			}
			return f
		})
		leader := c.waitLeader()
		ctx := context.Background()
		for _, cmd := range benchSetup(fx) {
			if _, err := c.nodes[leader].Propose(ctx, cmd); err != nil {
				b.Fatal(err)
			}
		}
		proposeOn := func(n *Node) func([]byte) error {
			return func(cmd []byte) error {
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				defer cancel()
				out, err := n.Propose(ctx, cmd)
				if err != nil {
					return err
				}
				var res meshcav1.CommandResult
				if err := proto.Unmarshal(out, &res); err != nil {
					return err
				}
				if res.GetCode() != meshcav1.ResultCode_RESULT_CODE_OK {
					return fmt.Errorf("result %v: %s", res.GetCode(), res.GetMessage())
				}
				return nil
			}
		}
		for _, path := range []struct {
			name string
			node int
		}{{"leader", leader}, {"follower", c.follower(leader)}} {
			for _, conc := range benchConcurrency {
				b.Run(fmt.Sprintf("%s/c=%d", path.name, conc), func(b *testing.B) {
					calls, cmds := forwardedSoFar(b, c.nodes[path.node])
					runLoad(b, conc, int(benchRun.Add(1)), fx, proposeOn(c.nodes[path.node]))
					// How many commands a follower's forwarded message carried on average.
					if calls2, cmds2 := forwardedSoFar(b, c.nodes[path.node]); calls2 > calls {
						b.ReportMetric((cmds2-cmds)/float64(calls2-calls), "cmds/forward")
					}
				})
			}
		}
	})

	// Our Node with a state machine that does nothing: the cost of the node alone.
	// It also reports how many entries the leader's state machine got per ApplyBatch call,
	// which shows concurrency turning into batching.
	b.Run("node-noop", func(b *testing.B) {
		fsms := make([]*batchCounter, 3)
		c := newTestClusterWith(b, 3, benchTune, func(i int) raft.FSM {
			fsms[i] = &batchCounter{}
			return fsms[i]
		})
		leader := c.waitLeader()
		for _, conc := range benchConcurrency {
			b.Run(fmt.Sprintf("leader/c=%d", conc), func(b *testing.B) {
				batches, entries := fsms[leader].batches.Load(), fsms[leader].entries.Load()
				runLoad(b, conc, int(benchRun.Add(1)), fx, func(cmd []byte) error {
					ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
					defer cancel()
					_, err := c.nodes[leader].Propose(ctx, cmd)
					return err
				})
				if n := fsms[leader].batches.Load() - batches; n > 0 {
					b.ReportMetric(float64(fsms[leader].entries.Load()-entries)/float64(n), "entries/batch")
				}
			})
		}
	})

	b.Run("raw", func(b *testing.B) {
		r := newRawRaftCluster(b)
		leader := r.waitLeader(b)
		for _, conc := range benchConcurrency {
			b.Run(fmt.Sprintf("leader/c=%d", conc), func(b *testing.B) {
				runLoad(b, conc, int(benchRun.Add(1)), fx, func(cmd []byte) error {
					return leader.Apply(cmd, 0).Error()
				})
			})
		}
	})
}

// rawRaftCluster is three hashicorp/raft nodes with raft-wal logs, TCP transport and a no-op
// FSM, configured as Node configures raft.
type rawRaftCluster struct {
	rafts []*raft.Raft
}

// noopFSM applies nothing and answers every command with an empty result.
type noopFSM struct{}

func (noopFSM) Apply(*raft.Log) interface{}         { return []byte{} }
func (noopFSM) Snapshot() (raft.FSMSnapshot, error) { return noopSnapshot{}, nil }
func (noopFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

// batchCounter is a no-op batching state machine that counts ApplyBatch calls.
type batchCounter struct {
	noopFSM
	batches, entries atomic.Int64
}

func (f *batchCounter) ApplyBatch(logs []*raft.Log) []interface{} {
	f.batches.Add(1)
	f.entries.Add(int64(len(logs)))
	out := make([]interface{}, len(logs))
	for i := range out {
		out[i] = []byte{}
	}
	return out
}

type noopSnapshot struct{}

func (noopSnapshot) Persist(sink raft.SnapshotSink) error { return sink.Close() }
func (noopSnapshot) Release()                             {}

func newRawRaftCluster(b *testing.B) *rawRaftCluster {
	b.Helper()
	cfg := DefaultNodeConfig()
	var (
		servers []raft.Server
		trans   []*raft.NetworkTransport
	)
	for i := range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		addr := ln.Addr().(*net.TCPAddr)
		ln.Close()
		t, err := raft.NewTCPTransportWithLogger(addr.String(), addr, 3, cfg.TransportTimeout, hclog.NewNullLogger())
		if err != nil {
			b.Fatal(err)
		}
		trans = append(trans, t)
		servers = append(servers, raft.Server{ID: raft.ServerID(fmt.Sprintf("raw%d", i)), Address: t.LocalAddr()})
	}
	c := &rawRaftCluster{}
	for i := range 3 {
		meta := &metadb.BoltMetaDB{}
		w, err := wal.Open(b.TempDir(), wal.WithMetaStore(meta))
		if err != nil {
			b.Fatal(err)
		}
		snaps := raft.NewInmemSnapshotStore()
		rc := raft.DefaultConfig()
		rc.LocalID = servers[i].ID
		rc.HeartbeatTimeout, rc.ElectionTimeout = cfg.HeartbeatTimeout, cfg.ElectionTimeout
		rc.LeaderLeaseTimeout, rc.CommitTimeout = cfg.LeaderLeaseTimeout, cfg.CommitTimeout
		rc.MaxAppendEntries, rc.BatchApplyCh = cfg.MaxAppendEntries, true
		rc.SnapshotThreshold, rc.TrailingLogs = cfg.SnapshotThreshold, cfg.TrailingLogs
		rc.Logger = hclog.NewNullLogger()
		if err := raft.BootstrapCluster(rc, w, w, snaps, trans[i], raft.Configuration{Servers: servers}); err != nil {
			b.Fatal(err)
		}
		logs, err := raft.NewLogCache(logCacheEntries, w) // as a Node keeps them
		if err != nil {
			b.Fatal(err)
		}
		r, err := raft.NewRaft(rc, noopFSM{}, logs, w, snaps, trans[i])
		if err != nil {
			b.Fatal(err)
		}
		c.rafts = append(c.rafts, r)
		b.Cleanup(func() {
			r.Shutdown().Error()
			w.Close()
			meta.Close()
		})
	}
	return c
}

func (c *rawRaftCluster) waitLeader(b *testing.B) *raft.Raft {
	var leader *raft.Raft
	waitFor(b, "a raw raft leader", func() bool {
		for _, r := range c.rafts {
			if r.State() == raft.Leader {
				leader = r
				return true
			}
		}
		return false
	})
	return leader
}

// BenchmarkFSMApplyIssuanceMix is the state machine alone, applying the issuance mix in
// batches of 64 as the leader hands them over: the ceiling for the store's commit rate when
// every node applies on the same two cores.
func BenchmarkFSMApplyIssuanceMix(b *testing.B) {
	fx := newFSMFixture(b)
	f, err := NewFSM(DefaultFSMConfig())
	if err != nil {
		b.Fatal(err)
	}
	index := uint64(0)
	apply := func(cmds [][]byte) {
		logs := make([]*raft.Log, len(cmds))
		for i, c := range cmds {
			index++
			logs[i] = &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: c}
		}
		for i, r := range f.ApplyBatch(logs) {
			var res meshcav1.CommandResult
			if err := proto.Unmarshal(r.([]byte), &res); err != nil || res.GetCode() != meshcav1.ResultCode_RESULT_CODE_OK {
				b.Fatalf("command %d: %v %v", i, res.GetCode(), res.GetMessage())
			}
		}
	}
	apply(benchSetup(fx))
	mix := issuanceMix{fx: fx, run: int(benchRun.Add(1))}
	cmds := make([][]byte, b.N)
	for k := range cmds {
		cmds[k] = mix.command(k)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i += 64 {
		apply(cmds[i:min(i+64, b.N)])
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cmds/s")
}
