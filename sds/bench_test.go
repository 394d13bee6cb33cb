package sds

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// benchServerEnv, when set to a socket path, turns the test binary into the SDS server of the
// fan-out benchmark: the server runs in its own process so its memory can be measured apart
// from the Envoy-like client's.
const benchServerEnv = "MESHCA_SDS_BENCH_SERVER"

// benchProfileEnv names a directory: when set, the fan-out benchmark logs the server's memory
// stats and writes its heap and CPU profiles there.
const benchProfileEnv = "MESHCA_SDS_BENCH_PROFILE_DIR"

func copyFile(b *testing.B, from, to string) {
	data, err := os.ReadFile(from)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o644); err != nil {
		b.Fatal(err)
	}
}

func TestMain(m *testing.M) {
	if sock := os.Getenv(benchServerEnv); sock != "" {
		os.Exit(runBenchServer(sock, os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

// fatalTB lets the test CA helpers run outside a test (in the benchmark's server process).
type fatalTB struct{ testing.TB }

func (fatalTB) Helper()                      {}
func (fatalTB) Fatal(args ...any)            { panic(fmt.Sprint(args...)) }
func (fatalTB) Fatalf(f string, args ...any) { panic(fmt.Sprintf(f, args...)) }

// runBenchServer serves SDS on sock and obeys one command per line on in:
// "bundle" changes the trust bundle, "gc" returns freed memory to the OS, "watches" prints how
// many watches are open for the identity. Each command is answered with one line.
func runBenchServer(sock string, in io.Reader, out io.Writer) int {
	ca := newTestCA(fatalTB{}, tdMesh)
	alt := [2]*x509.Certificate{newTestCA(fatalTB{}, tdMesh).root, newTestCA(fatalTB{}, tdMesh).root}
	store := NewStore()
	if err := store.SetBundle(ca.bundle()); err != nil {
		panic(err)
	}
	if err := store.SetSVID(ca.issue(fatalTB{}, idAPI)); err != nil {
		panic(err)
	}
	srv, err := NewSDSServer(SDSConfig{
		Source:   store,
		Resolver: &CallerTable{ByUID: map[uint32]spiffeid.ID{uint32(os.Getuid()): idAPI}},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		panic(err)
	}
	g := grpc.NewServer(grpc.Creds(PeerCredentials()))
	srv.Register(g)
	lis, err := net.Listen("unix", sock)
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = g.Serve(lis) }()
	go func() { defer wg.Done(); _ = srv.Run(ctx) }()
	defer func() {
		cancel()
		srv.Close()
		g.Stop()
		wg.Wait()
	}()
	fmt.Fprintln(out, "ready")
	lines := bufio.NewScanner(in)
	for i := 0; lines.Scan(); i++ {
		switch lines.Text() {
		case "bundle":
			b := x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.root, alt[i%2]})
			if err := store.SetBundle(b); err != nil {
				panic(err)
			}
			fmt.Fprintln(out, "ok")
		case "gc":
			// Two collections empty sync.Pool caches (their victims survive one), so what is
			// left is what the streams hold.
			runtime.GC()
			debug.FreeOSMemory()
			fmt.Fprintln(out, "ok")
		case "stats":
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Fprintf(out, "heap_inuse=%d stack_inuse=%d goroutines=%d\n", ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine())
		case "heapprofile":
			f, err := os.Create(sock + ".heap")
			if err == nil {
				_ = pprof.WriteHeapProfile(f)
				_ = f.Close()
			}
			fmt.Fprintln(out, sock+".heap")
		case "cpustart":
			f, err := os.Create(sock + ".cpu")
			if err == nil {
				err = pprof.StartCPUProfile(f)
			}
			fmt.Fprintln(out, err)
		case "cpustop":
			pprof.StopCPUProfile()
			fmt.Fprintln(out, sock+".cpu")
		case "watches":
			n := 0
			if info := srv.cache.inner.GetStatusInfo(idAPI.String()); info != nil {
				n = info.GetNumWatches()
			}
			fmt.Fprintln(out, n)
		default:
			fmt.Fprintln(out, "unknown command")
		}
	}
	return 0
}

// benchServer is the server process seen from the benchmark.
type benchServer struct {
	b    *testing.B
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	sock string
}

func startBenchServer(b *testing.B) *benchServer {
	b.Helper()
	sock := filepath.Join(b.TempDir(), "sds.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), benchServerEnv+"="+sock)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	s := &benchServer{b: b, cmd: cmd, in: in, out: bufio.NewScanner(outPipe), sock: sock}
	b.Cleanup(func() {
		_ = in.Close()
		_ = cmd.Wait()
	})
	if got := s.read(); got != "ready" {
		b.Fatalf("server process said %q, want ready", got)
	}
	return s
}

func (s *benchServer) read() string {
	if !s.out.Scan() {
		s.b.Fatalf("server process ended: %v", s.out.Err())
	}
	return s.out.Text()
}

func (s *benchServer) do(cmd string) string {
	if _, err := fmt.Fprintln(s.in, cmd); err != nil {
		s.b.Fatal(err)
	}
	return s.read()
}

// rssKB reads the server process's resident set size after it returned freed memory.
func (s *benchServer) rssKB() int {
	s.do("gc")
	return vmRSS(s.b, fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
}

// clientRSSKB is the same for the benchmark's own (client) process.
func clientRSSKB(b *testing.B) int {
	runtime.GC()
	debug.FreeOSMemory()
	return vmRSS(b, "/proc/self/status")
}

func vmRSS(b *testing.B, statusFile string) int {
	raw, err := os.ReadFile(statusFile)
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.Atoi(f[1])
			if err != nil {
				b.Fatal(err)
			}
			return kb
		}
	}
	b.Fatalf("%s: no VmRSS", statusFile)
	return 0
}

// BenchmarkSDSFanout holds N SDS streams (like Envoy: a few gRPC connections, each stream
// subscribed to default and ROOTCA) against a server in its own process, and measures the time
// from a trust bundle change to the last stream receiving it, and the server's RSS per stream.
func BenchmarkSDSFanout(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("streams=%d", n), func(b *testing.B) { benchFanout(b, n) })
	}
}

const (
	streamsPerConn = 2500
	pushesPerOp    = 10
)

func benchFanout(b *testing.B, n int) {
	srv := startBenchServer(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	conns := make([]secretservice.SecretDiscoveryServiceClient, (n+streamsPerConn-1)/streamsPerConn)
	for i := range conns {
		conn, err := grpc.NewClient("unix://"+srv.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		conns[i] = secretservice.NewSecretDiscoveryServiceClient(conn)
	}
	rssBefore, clientBefore := srv.rssKB(), clientRSSKB(b)

	var (
		received atomic.Int64
		allIn    = make(chan struct{}, 1)
		lastAt   atomic.Int64 // unix nanos of the latest receipt
		failures atomic.Int64
	)
	arrived := func() {
		lastAt.Store(time.Now().UnixNano())
		if received.Add(1) == int64(n) {
			allIn <- struct{}{}
		}
	}
	names := []string{NameDefault, NameRootCA}
	var wg sync.WaitGroup
	opened := time.Now()
	for i := range n {
		st, err := conns[i%len(conns)].StreamSecrets(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := st.Send(&discovery.DiscoveryRequest{Node: envoyNode("sidecar-" + strconv.Itoa(i)), TypeUrl: resource.SecretType, ResourceNames: names}); err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				resp, err := st.Recv()
				if err != nil {
					if ctx.Err() == nil {
						failures.Add(1)
					}
					return
				}
				if len(resp.Resources) != len(names) {
					failures.Add(1)
				}
				arrived()
				if err := st.Send(&discovery.DiscoveryRequest{VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce,
					TypeUrl: resource.SecretType, ResourceNames: names}); err != nil {
					return
				}
			}
		}()
	}
	waitAll := func(what string) {
		select {
		case <-allIn:
		case <-time.After(2 * time.Minute):
			b.Fatalf("%s: %d of %d streams answered", what, received.Load(), n)
		}
	}
	waitAll("first responses")
	firstAll := time.Since(opened)
	waitWatches := func() {
		// Every stream has acknowledged and has a watch open again before the next push.
		deadline := time.Now().Add(2 * time.Minute)
		for srv.do("watches") != strconv.Itoa(n) {
			if time.Now().After(deadline) {
				b.Fatalf("watches did not all reopen")
			}
			time.Sleep(time.Millisecond) // polling interval of a bounded wait
		}
	}
	waitWatches()
	rssAfter, clientAfter := srv.rssKB(), clientRSSKB(b)
	profDir := os.Getenv(benchProfileEnv)
	if profDir != "" {
		b.Logf("server: %s", srv.do("stats"))
		copyFile(b, srv.do("heapprofile"), filepath.Join(profDir, fmt.Sprintf("sds-server-heap-%d.prof", n)))
	}

	// Each benchmark operation is pushesPerOp bundle changes, so p50 and p99 come from several
	// pushes however long one takes.
	if profDir != "" {
		srv.do("cpustart")
	}
	var spreads []time.Duration
	b.ResetTimer()
	for b.Loop() {
		for range pushesPerOp {
			received.Store(0)
			start := time.Now()
			if got := srv.do("bundle"); got != "ok" {
				b.Fatalf("bundle change: %q", got)
			}
			waitAll("push")
			spreads = append(spreads, time.Duration(lastAt.Load()-start.UnixNano()))
			b.StopTimer()
			waitWatches()
			b.StartTimer()
		}
	}
	b.StopTimer()
	if profDir != "" {
		copyFile(b, srv.do("cpustop"), filepath.Join(profDir, fmt.Sprintf("sds-server-cpu-%d.prof", n)))
	}
	cancel()
	wg.Wait()
	if f := failures.Load(); f != 0 {
		b.Fatalf("%d stream failures or partial answers", f)
	}
	slices.Sort(spreads)
	pct := func(p float64) time.Duration { return spreads[min(len(spreads)-1, int(p*float64(len(spreads))))] }
	b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "push-p50-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "push-p99-ms")
	b.ReportMetric(float64(firstAll.Milliseconds()), "first-all-ms")
	b.ReportMetric(float64(rssAfter-rssBefore)/float64(n), "server-KB/stream")
	b.ReportMetric(float64(clientAfter-clientBefore)/float64(n), "client-KB/stream")
}
