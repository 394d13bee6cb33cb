package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/sds"
)

var idAPI = spiffeid.RequireFromString("spiffe://mesh.example/ns/sports/sa/api")

// shortDir is a temporary directory with a short path: Unix socket paths are limited to about
// 100 bytes, which t.TempDir() under a long test name can exceed.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "mca")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

// lockedBuffer collects log lines from several goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testConfig is an agent config for one identity, sports.api instance pod-1, attested with the
// test provider's document from a file, mapped by the test process's uid on the shared sockets.
func testConfig(t testing.TB, c *testCluster, dir string) *Config {
	t.Helper()
	write(t, filepath.Join(dir, "bundle.pem"), c.bundlePEM(), 0o644)
	write(t, filepath.Join(dir, "doc"), []byte("doc:pod-1\n"), 0o600)
	cfg := &Config{
		TrustDomain:       c.td.Name(),
		Servers:           c.addrs(),
		TrustBundle:       filepath.Join(dir, "bundle.pem"),
		StateDir:          filepath.Join(dir, "state"),
		SDSSocket:         filepath.Join(dir, "sds.sock"),
		WorkloadAPISocket: filepath.Join(dir, "wl.sock"),
		AdminSocket:       filepath.Join(dir, "admin.sock"),
		Identities: []IdentityConfig{{
			Domain: "sports", Service: "api", InstanceID: "pod-1", ProviderDNSSuffix: testProviderSuffix,
			ServerAuth: true,
			UIDs:       []uint32{uint32(os.Getuid())},
			Attestation: AttestationConfig{
				Provider:         testProvider,
				IdentityDocument: &DocumentConfig{File: filepath.Join(dir, "doc")},
			},
		}},
	}
	cfg.SetDefaults()
	return cfg
}

func write(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
}

// runningAgent is an agent run by a test.
type runningAgent struct {
	t        testing.TB
	agent    *Agent
	cfg      *Config
	logs     *lockedBuffer
	registry *prometheus.Registry
	cancel   context.CancelFunc
	done     chan error
	stopOnce sync.Once
}

func startAgent(t testing.TB, cfg *Config, clock Clock) *runningAgent {
	t.Helper()
	logs := &lockedBuffer{}
	reg := prometheus.NewRegistry()
	a, err := New(cfg, Options{Clock: clock, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), Registry: reg, Hostname: "host-a"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningAgent{t: t, agent: a, cfg: cfg, logs: logs, registry: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	t.Cleanup(r.stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent logs:\n%s", logs.String())
		}
	})
	return r
}

// stop ends the agent and waits for Run to return.
func (r *runningAgent) stop() {
	r.stopOnce.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				r.t.Errorf("agent Run: %v", err)
			}
		case <-time.After(waitFor):
			r.t.Errorf("agent did not stop within %s", waitFor)
		}
	})
}

// servedSerial is the serial the agent serves for id now ("" for none).
func (r *runningAgent) servedSerial(id spiffeid.ID) string {
	v := r.agent.store.View(id)
	if v.SVID == nil {
		return ""
	}
	return v.SVID.Certificates[0].SerialNumber.Text(16)
}

func dialUnix(t testing.TB, sock string) *grpc.ClientConn {
	t.Helper()
	// Like Envoy, wait for the socket to be served instead of failing the first call: the
	// agent starts listening in Run.
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// envoy is an Envoy-like state-of-the-world SDS client stream on the agent's socket.
type envoy struct {
	t     testing.TB
	st    secretservice.SecretDiscoveryService_StreamSecretsClient
	names []string
}

func openEnvoy(t testing.TB, sock string, names ...string) *envoy {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitFor)
	t.Cleanup(cancel)
	st, err := secretservice.NewSecretDiscoveryServiceClient(dialUnix(t, sock)).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e := &envoy{t: t, st: st, names: names}
	if err := st.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "sidecar~10.0.0.1", Cluster: "sports"}, TypeUrl: resource.SecretType, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	return e
}

// recv waits for the next response and ACKs it, as Envoy does.
func (e *envoy) recv() map[string]*tlsv3.Secret {
	e.t.Helper()
	resp := e.recvRaw()
	out := map[string]*tlsv3.Secret{}
	for _, a := range resp.Resources {
		s := &tlsv3.Secret{}
		if err := a.UnmarshalTo(s); err != nil {
			e.t.Fatal(err)
		}
		out[s.Name] = s
	}
	return out
}

// recvRaw waits for the next response and ACKs it.
func (e *envoy) recvRaw() *discovery.DiscoveryResponse {
	e.t.Helper()
	type result struct {
		resp *discovery.DiscoveryResponse
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		resp, err := e.st.Recv()
		ch <- result{resp, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-time.After(waitFor):
		e.t.Fatalf("no SDS response within %s", waitFor)
	}
	if r.err != nil {
		e.t.Fatalf("SDS stream: %v", r.err)
	}
	if err := e.st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: e.names, VersionInfo: r.resp.VersionInfo, ResponseNonce: r.resp.Nonce}); err != nil {
		e.t.Fatalf("ACK: %v", err)
	}
	return r.resp
}

// recvUntil receives responses until cond holds for one.
func (e *envoy) recvUntil(what string, cond func(map[string]*tlsv3.Secret) bool) map[string]*tlsv3.Secret {
	e.t.Helper()
	deadline := time.Now().Add(waitFor)
	for time.Now().Before(deadline) {
		if got := e.recv(); cond(got) {
			return got
		}
	}
	e.t.Fatalf("no SDS response with %s", what)
	return nil
}

// certOf checks that a TlsCertificate secret's key matches its certificate and returns the
// parsed chain.
func certOf(t testing.TB, s *tlsv3.Secret) []*x509.Certificate {
	t.Helper()
	tc := s.GetTlsCertificate()
	if tc == nil {
		t.Fatalf("secret %q is not a TlsCertificate", s.GetName())
	}
	pair, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatalf("secret %q: key does not match the certificate: %v", s.GetName(), err)
	}
	var chain []*x509.Certificate
	for _, der := range pair.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	return chain
}

func serialOf(t testing.TB, s *tlsv3.Secret) string {
	return certOf(t, s)[0].SerialNumber.Text(16)
}

// rootsOf parses a validation context secret's trusted CAs.
func rootsOf(t testing.TB, s *tlsv3.Secret) []*x509.Certificate {
	t.Helper()
	vc := s.GetValidationContext()
	if vc == nil {
		t.Fatalf("secret %q is not a validation context", s.GetName())
	}
	out, err := ca.ParseCertificatesPEM(vc.GetTrustedCa().GetInlineBytes())
	if err != nil {
		t.Fatalf("secret %q: trusted_ca: %v", s.GetName(), err)
	}
	return out
}

// verifyChain checks a served chain against served roots at now, as Envoy would.
func verifyChain(chain, roots []*x509.Certificate, now time.Time) error {
	rp, ip := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rp.AddCert(r)
	}
	for _, c := range chain[1:] {
		ip.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: rp, Intermediates: ip, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

// adminGet does GET path on the admin socket.
func adminGet(t testing.TB, sock, path string) (int, []byte) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, Timeout: waitFor}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://agent" + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

func inventory(t testing.TB, sock string) sds.Inventory {
	t.Helper()
	code, body := adminGet(t, sock, SecretsPath)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", SecretsPath, code, body)
	}
	var inv sds.Inventory
	if err := json.Unmarshal(body, &inv); err != nil {
		t.Fatalf("inventory JSON: %v\n%s", err, body)
	}
	return inv
}

func logged(r *runningAgent, substr string) func() bool {
	return func() bool { return strings.Contains(r.logs.String(), substr) }
}
