package raftstore

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// benchApply measures Apply of one command type: setup builds the world (not timed), gen
// builds command i (all built before the clock starts).
func benchApply(b *testing.B, batch int, setup func(fx *fsmFixture), gen func(fx *fsmFixture, i int) any) {
	fx := newFSMFixture(b).setup()
	if setup != nil {
		setup(fx)
	}
	logs := make([]*raft.Log, b.N)
	for i := range logs {
		fx.now = fx.now.Add(time.Millisecond)
		logs[i] = &raft.Log{Index: fx.index + uint64(i) + 1, Term: 1, Type: raft.LogCommand, Data: mustMarshal(b, fx.cmd(gen(fx, i)))}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for start := 0; start < len(logs); start += max(batch, 1) {
		end := min(start+max(batch, 1), len(logs))
		if batch <= 1 {
			fx.fsm.Apply(logs[start])
		} else {
			fx.fsm.ApplyBatch(logs[start:end])
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cmds/s")
	// The commands must have done their job, or the numbers measure refusals.
	last := decodeResult(b, fx.fsm.Apply(logs[len(logs)-1]).([]byte))
	if last.GetCode() != codeOK {
		b.Fatalf("last command: %v %s", last.GetCode(), last.GetMessage())
	}
}

func hexSerial(prefix, i int) string { return fmt.Sprintf("%x%06x", prefix, i) }

// registerMany registers n instances pod-<i> with serials hexSerial(0xa, i).
func registerMany(fx *fsmFixture, n int) {
	logs := make([]*raft.Log, 0, 256)
	flush := func() {
		fx.fsm.ApplyBatch(logs)
		logs = logs[:0]
	}
	for i := 0; i < n; i++ {
		fx.index++
		logs = append(logs, &raft.Log{Index: fx.index, Type: raft.LogCommand,
			Data: mustMarshal(fx.t, fx.cmd(fx.register(fmt.Sprintf("pod-%d", i), hexSerial(0xa, i), fmt.Sprintf("base-%d", i))))})
		if len(logs) == cap(logs) {
			flush()
		}
	}
	flush()
}

func BenchmarkApply(b *testing.B) {
	b.Run("register", func(b *testing.B) {
		benchApply(b, 1, nil, func(fx *fsmFixture, i int) any {
			return fx.register(fmt.Sprintf("pod-%d", i), hexSerial(0xb, i), fmt.Sprintf("k-%d", i))
		})
	})
	b.Run("register/batch64", func(b *testing.B) {
		benchApply(b, 64, nil, func(fx *fsmFixture, i int) any {
			return fx.register(fmt.Sprintf("pod-%d", i), hexSerial(0xb, i), fmt.Sprintf("k-%d", i))
		})
	})
	b.Run("register/100k-instances", func(b *testing.B) {
		benchApply(b, 1, func(fx *fsmFixture) { registerMany(fx, 100_000) }, func(fx *fsmFixture, i int) any {
			return fx.register(fmt.Sprintf("new-%d", i), hexSerial(0xb, i), fmt.Sprintf("k-%d", i))
		})
	})
	b.Run("refresh", func(b *testing.B) {
		benchApply(b, 1, func(fx *fsmFixture) { fx.must(fx.register(fxInstance1, hexSerial(0xc, 0), "k-0")) }, func(fx *fsmFixture, i int) any {
			return fx.refresh(fxInstance1, hexSerial(0xc, i), hexSerial(0xc, i+1), fmt.Sprintf("k-%d", i+1))
		})
	})
	b.Run("refresh/100k-instances", func(b *testing.B) {
		benchApply(b, 1, func(fx *fsmFixture) { registerMany(fx, 100_000) }, func(fx *fsmFixture, i int) any {
			id := i % 100_000
			gen := i / 100_000
			presented := hexSerial(0xa, id)
			if gen > 0 {
				presented = hexSerial(0xd0+gen-1, id)
			}
			return fx.refresh(fmt.Sprintf("pod-%d", id), presented, hexSerial(0xd0+gen, id), fmt.Sprintf("r-%d", i))
		})
	})
	b.Run("revoke-serial", func(b *testing.B) {
		var n int
		benchApply(b, 1, func(fx *fsmFixture) { n = b.N; registerMany(fx, n) }, func(fx *fsmFixture, i int) any {
			return &meshcav1.RevokeCommand{Target: &meshcav1.RevokeCommand_Serial{Serial: hexSerial(0xa, i%n)}}
		})
	})
	b.Run("use-nonce", func(b *testing.B) {
		benchApply(b, 1, nil, func(fx *fsmFixture, i int) any {
			return &meshcav1.UseNonceCommand{Scope: "sports.api", Nonce: strconv.Itoa(i), Expires: fx.now.Add(time.Minute).UnixNano()}
		})
	})
	b.Run("issue-token", func(b *testing.B) {
		benchApply(b, 1, nil, func(fx *fsmFixture, i int) any {
			return &meshcav1.IssueTokenCommand{Token: &meshcav1.Token{Jti: strconv.Itoa(i), Domain: fxDomain, Service: fxService, InstanceId: "pod-x", IssuedBy: "user.a", Expires: fx.now.Add(time.Hour).UnixNano()}}
		})
	})
	b.Run("submit-csr", func(b *testing.B) {
		benchApply(b, 1, nil, func(fx *fsmFixture, i int) any {
			return &meshcav1.SubmitCSRCommand{Id: strconv.Itoa(i), Csr: make([]byte, 600), Spec: []byte(`{"common_name":"db.example"}`), Submitter: "user.a"}
		})
	})
	b.Run("put-domain", func(b *testing.B) {
		benchApply(b, 1, nil, func(fx *fsmFixture, i int) any {
			return &meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: fmt.Sprintf("d%d", i), Admins: []string{"user.a", "user.b"}}}
		})
	})
	b.Run("put-federation", func(b *testing.B) {
		benchApply(b, 1, nil, func(fx *fsmFixture, i int) any {
			return &meshcav1.PutFederationCommand{Federation: &meshcav1.Federation{TrustDomain: fmt.Sprintf("td%d.example", i%8), Bundle: make([]byte, 2048), Sequence: uint64(i)}}
		})
	})
	b.Run("duplicate-id", func(b *testing.B) {
		fx := newFSMFixture(b).setup()
		data := mustMarshal(b, fx.cmd(fx.register(fxInstance1, "a1", "k1")))
		fx.raw(data)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			fx.fsm.Apply(&raft.Log{Index: uint64(100 + i), Type: raft.LogCommand, Data: data})
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cmds/s")
	})
}

// BenchmarkApplyBatchSteadyState applies refreshes in batches of 64, as the leader hands them
// over, to a state like a production node's after a while: 100,000 registered instances, the
// receipt window and the event retention full (every command also evicts the oldest receipt and
// event), and command ids, serials and key hashes random, as NewCommandID and the CA make them,
// so every command touches its own part of each large table.
func BenchmarkApplyBatchSteadyState(b *testing.B) {
	const instances = 100_000
	fx := newFSMFixture(b).setup()
	rng := rand.New(rand.NewPCG(7, 8))
	random := func(n int) string {
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		return hex.EncodeToString(buf)
	}
	serial := func() string { return "1" + random(15) } // positive, no leading zero
	current := make([]string, instances)
	log := func(body any) *raft.Log {
		fx.index++
		fx.now = fx.now.Add(time.Millisecond)
		return &raft.Log{Index: fx.index, Term: 1, Type: raft.LogCommand, Data: mustMarshal(b, fxCommand(random(16), fx.now, body))}
	}
	batches := func(logs []*raft.Log, each func([]*raft.Log)) {
		for start := 0; start < len(logs); start += 64 {
			each(logs[start:min(start+64, len(logs))])
		}
	}
	setup := make([]*raft.Log, instances)
	for i := range setup {
		current[i] = serial()
		setup[i] = log(fx.register(fmt.Sprintf("pod-%d.ns-%d", i, i%100), current[i], random(8)))
	}
	batches(setup, func(logs []*raft.Log) { fx.fsm.ApplyBatch(logs) })
	if sz := fx.state().Sizes(); sz.Instances != instances || sz.Receipts != DefaultFSMConfig().ReceiptWindow {
		b.Fatalf("setup left %+v", sz)
	}
	logs := make([]*raft.Log, b.N)
	for i := range logs {
		id := int(uint64(i) * 7919 % instances)
		next := serial()
		logs[i] = log(fx.refresh(fmt.Sprintf("pod-%d.ns-%d", id, id%100), current[id], next, random(8)))
		current[id] = next
	}
	results := make([]interface{}, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	batches(logs, func(logs []*raft.Log) { results = append(results, fx.fsm.ApplyBatch(logs)...) })
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cmds/s")
	for i, r := range results {
		if res := decodeResult(b, r.([]byte)); res.GetCode() != codeOK {
			b.Fatalf("refresh %d: %v %s; the numbers would measure refusals", i, res.GetCode(), res.GetMessage())
		}
	}
}

// millionInstances builds a state holding n realistic Instance records (as a restore would),
// and its indexes.
func millionInstances(n int, now time.Time) (*State, *writerState) {
	bld := newStateBuilder()
	bld.sawCounters = true
	t := now.UnixNano()
	for i := 0; i < n; i++ {
		inst := &meshcav1.Instance{
			Provider: fxProvider, Domain: fxDomain, Service: "svc" + strconv.Itoa(i%100),
			InstanceId:    fmt.Sprintf("pod-%07d.ns-%03d.cluster-a", i, i%1000),
			CurrentSerial: fmt.Sprintf("%032x", uint64(i)*2654435761+1), CurrentIssued: t, CurrentClientAddr: fmt.Sprintf("10.%d.%d.%d:443", i>>16&255, i>>8&255, i&255),
			PreviousSerial: fmt.Sprintf("%032x", uint64(i)*40503+7), PreviousIssued: t - int64(12*time.Hour), PreviousClientAddr: fmt.Sprintf("10.%d.%d.%d:443", i>>16&255, i>>8&255, i&255),
			Hostname: fmt.Sprintf("node-%04d", i%5000), Created: t - int64(72*time.Hour),
		}
		bld.add(&meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Instance{Instance: inst}})
	}
	s, w, _ := bld.state()
	return s, w
}

// vmRSS reads the process's resident set size from /proc/self/status, in MiB (0 if unknown).
func vmRSS() float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// BenchmarkSnapshotMillionInstances persists a state of 1,000,000 Instance records to a file
// through the FSM's snapshot path and restores it into a fresh FSM, reporting snapshot bytes,
// snapshot and restore seconds, and memory after the restore (with only the restored state
// alive): Go heap in use, Go's total Sys, and the process's VmRSS.
func BenchmarkSnapshotMillionInstances(b *testing.B) {
	const n = 1_000_000
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		src, err := NewFSM(DefaultFSMConfig())
		if err != nil {
			b.Fatal(err)
		}
		src.reset(millionInstances(n, fxT0))
		want := src.StateHash()
		path := filepath.Join(b.TempDir(), "snapshot")
		file, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()

		start := time.Now()
		snap, _ := src.Snapshot()
		if err := snap.Persist(&fileSink{File: file}); err != nil {
			b.Fatal(err)
		}
		snapshotTime := time.Since(start)

		b.StopTimer()
		info, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		src, snap = nil, nil
		runtime.GC()
		debug.FreeOSMemory()
		dst, err := NewFSM(DefaultFSMConfig())
		if err != nil {
			b.Fatal(err)
		}
		in, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()

		start = time.Now()
		if err := dst.Restore(in); err != nil {
			b.Fatal(err)
		}
		restoreTime := time.Since(start)

		b.StopTimer()
		if got := dst.State().Sizes().Instances; got != n {
			b.Fatalf("restored %d instances, want %d", got, n)
		}
		start = time.Now()
		if dst.StateHash() != want {
			b.Fatal("restored state hash differs")
		}
		hashTime := time.Since(start)
		runtime.GC()
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(info.Size())/(1<<20), "snapshot_MiB")
		b.ReportMetric(snapshotTime.Seconds(), "snapshot_s")
		b.ReportMetric(restoreTime.Seconds(), "restore_s")
		b.ReportMetric(hashTime.Seconds(), "hash_s")
		b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap_inuse_MiB")
		b.ReportMetric(float64(ms.Sys)/(1<<20), "sys_MiB")
		b.ReportMetric(vmRSS(), "vmrss_MiB")
		runtime.KeepAlive(dst)
		b.StartTimer()
	}
}

// fileSink is a raft.SnapshotSink over a file, as raft's FileSnapshotStore provides.
type fileSink struct{ *os.File }

func (s *fileSink) ID() string    { return "bench" }
func (s *fileSink) Cancel() error { return s.File.Close() }
