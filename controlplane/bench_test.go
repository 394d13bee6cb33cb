package controlplane_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/internal/clustertest"
)

// BenchmarkCluster measures Register and Refresh through a cluster of three real
// meshca-server processes on this machine, at concurrency 1, 16 and 64, sent to the leader
// and to a follower (which forwards the commit to the leader), reporting throughput and the
// p50/p99 latency of a call. Each refresh dials a new connection with the instance's current
// certificate, as an agent must. The crypto floor is the same CPU work in-process: verify a
// P-256 CSR and sign a P-256 certificate with the standard library.
//
// Besides the rates, which depend on what else the machine runs, each scenario reports the CPU
// time the server processes spent per call (leader-cpu-us/call, servers-cpu-us/call, from
// their process_cpu_seconds_total) and the floor its own (cpu-us/call): those compare across
// runs on a shared machine.
//
// Run it briefly, e.g. go test -run '^$' -bench Cluster -benchtime 200x ./controlplane/
func BenchmarkCluster(b *testing.B) {
	b.Run("crypto_floor/P-256", benchCryptoFloor)
	benchClusterMatrix(b, startE2E(b, benchLimits))
}

// benchLimits lifts the issuance rate limits, which a benchmark calling from one address for
// a few instances would hit.
func benchLimits(_ int, cfg *controlplane.Config) {
	cfg.Limits.IssuePerIdentityPerMinute = 1 << 30
	cfg.Limits.IssuePerSourcePerMinute = 1 << 30
}

// benchClusterMatrix runs register and refresh through the leader and a follower at
// concurrency 1, 16 and 64.
func benchClusterMatrix(b *testing.B, c *e2eCluster) {
	leader := c.Leader()
	follower := c.Followers()[0]
	var run atomic.Int64
	for _, op := range []string{"register", "refresh"} {
		for _, via := range []*clustertest.Node{leader, follower} {
			role := "leader"
			if via != leader {
				role = "follower"
			}
			for _, conc := range []int{1, 16, 64} {
				b.Run(fmt.Sprintf("%s/via=%s/conc=%d", op, role, conc), func(b *testing.B) {
					r := run.Add(1)
					cpu := &serverCPU{c: c, leader: leader}
					if op == "register" {
						benchRegister(b, c, via, conc, r, cpu)
					} else {
						benchRefresh(b, c, via, conc, r, cpu)
					}
				})
			}
		}
	}
}

// serverCPU measures the CPU time the cluster's server processes spend during a scenario,
// from the process_cpu_seconds_total each one exports.
type serverCPU struct {
	c                 *e2eCluster
	leader            *clustertest.Node
	leader0, servers0 float64
}

func (m *serverCPU) read(b *testing.B) (leader, servers float64) {
	for _, n := range m.c.Nodes {
		v, err := m.c.Metric(n, "process_cpu_seconds_total", nil)
		if err != nil {
			b.Fatal(err)
		}
		servers += v
		if n == m.leader {
			leader = v
		}
	}
	return leader, servers
}

// start reads the counters before the calls and, when controlplane.CPUProfileEnv is set,
// starts a CPU profile of the leader.
func (m *serverCPU) start(b *testing.B) {
	m.leader0, m.servers0 = m.read(b)
	if os.Getenv(controlplane.CPUProfileEnv) != "" {
		m.c.Signal(m.leader, syscall.SIGUSR1)
	}
}

// report reads them after the calls and reports the CPU time per call, and writes the
// leader's profile.
func (m *serverCPU) report(b *testing.B, calls int) {
	if os.Getenv(controlplane.CPUProfileEnv) != "" {
		m.c.Signal(m.leader, syscall.SIGUSR2)
	}
	if calls == 0 {
		return
	}
	leader, servers := m.read(b)
	b.ReportMetric((leader-m.leader0)*1e6/float64(calls), "leader-cpu-us/call")
	b.ReportMetric((servers-m.servers0)*1e6/float64(calls), "servers-cpu-us/call")
}

// latencies collects call durations and reports throughput and percentiles.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) report(b *testing.B, elapsed time.Duration) {
	slices.Sort(l.d)
	if len(l.d) == 0 {
		return
	}
	pct := func(p float64) float64 {
		return float64(l.d[min(len(l.d)-1, int(p*float64(len(l.d))))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(len(l.d))/elapsed.Seconds(), "calls/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// parallel runs n calls on conc workers and reports them; call(i) makes call i.
func parallel(b *testing.B, n, conc int, cpu *serverCPU, call func(i int) error) {
	var next atomic.Int64
	var lat latencies
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	cpu.start(b)
	b.ResetTimer()
	start := time.Now()
	for range conc {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || failed.Load() != nil {
					return
				}
				t0 := time.Now()
				if err := call(i); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
				lat.add(time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	lat.report(b, elapsed)
	cpu.report(b, len(lat.d))
}

func benchRegister(b *testing.B, c *e2eCluster, via *clustertest.Node, conc int, run int64, cpu *serverCPU) {
	client := meshcav1.NewIdentityClient(c.Dial(via, nil))
	reqs := make([]*meshcav1.RegisterRequest, b.N)
	for i := range reqs {
		reqs[i] = newInstance(b, c.TrustDomain(), fmt.Sprintf("r%d-%d.bench", run, i)).registerReq(b)
	}
	parallel(b, b.N, conc, cpu, func(i int) error {
		_, err := client.Register(context.Background(), reqs[i])
		return err
	})
}

func benchRefresh(b *testing.B, c *e2eCluster, via *clustertest.Node, conc int, run int64, cpu *serverCPU) {
	// One instance per worker, registered before the clock starts; each refreshes its own
	// instance in turn, with a new key each time, prepared ahead too.
	type worker struct {
		in   *instance
		cert *tls.Certificate
		csrs [][]byte
		keys []*ecdsa.PrivateKey
	}
	ws := make([]*worker, conc)
	reg := meshcav1.NewIdentityClient(c.Dial(via, nil))
	perWorker := (b.N + conc - 1) / conc
	for w := range ws {
		in := newInstance(b, c.TrustDomain(), fmt.Sprintf("f%d-%d.bench", run, w))
		resp, err := reg.Register(context.Background(), in.registerReq(b))
		if err != nil {
			b.Fatal(err)
		}
		wk := &worker{in: in, cert: in.tlsCert(b, resp)}
		for range perWorker {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			in.key = k
			wk.keys = append(wk.keys, k)
			wk.csrs = append(wk.csrs, in.csr(b))
		}
		ws[w] = wk
	}
	var next atomic.Int64
	var lat latencies
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	cpu.start(b)
	b.ResetTimer()
	start := time.Now()
	for _, wk := range ws {
		wg.Go(func() {
			for j := range perWorker {
				if int(next.Add(1)) > b.N || failed.Load() != nil {
					return
				}
				t0 := time.Now()
				cc := c.Connect(via, wk.cert)
				resp, err := meshcav1.NewIdentityClient(cc).Refresh(context.Background(), &meshcav1.RefreshRequest{Csr: wk.csrs[j]})
				cc.Close()
				if err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
				lat.add(time.Since(t0))
				wk.in.key = wk.keys[j]
				wk.cert = wk.in.tlsCert(b, resp)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	lat.report(b, elapsed)
	cpu.report(b, len(lat.d))
}

// benchCryptoFloor is the CPU work of one issuance with nothing around it: parse and verify
// a P-256 CSR, sign a P-256 certificate.
func benchCryptoFloor(b *testing.B) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "floor CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csrDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "sports.api"}, DNSNames: []string{"api.sports.mesh"}}, key)
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})
	cpu0 := processCPU(b)
	b.ResetTimer()
	start := time.Now()
	for i := 0; b.Loop(); i++ {
		blk, _ := pem.Decode(csrPEM)
		csr, err := x509.ParseCertificateRequest(blk.Bytes)
		if err != nil {
			b.Fatal(err)
		}
		if err := csr.CheckSignature(); err != nil {
			b.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), Subject: csr.Subject, DNSNames: csr.DNSNames,
			NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		if _, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, csr.PublicKey, caKey); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "calls/s")
	b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-us/call")
}

// processCPU is the user and system CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
