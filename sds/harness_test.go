package sds

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"os"
	"path/filepath"
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
	"google.golang.org/protobuf/proto"
)

// waitFor bounds every wait on a stream: a push that does not come fails the test instead of
// hanging it. It is a deadline, not a timing assertion.
const waitFor = 20 * time.Second

var (
	tdMesh   = "mesh.example"
	idAPI    = spiffeid.RequireFromString("spiffe://mesh.example/ns/sports/sa/api")
	idWeb    = spiffeid.RequireFromString("spiffe://mesh.example/ns/sports/sa/web")
	tdFed    = spiffeid.RequireTrustDomainFromString("partner.example")
	fedIDStr = "spiffe://partner.example"
)

type server struct {
	store  *Store
	sds    *SDSServer
	wl     *WorkloadAPI
	reg    *prometheus.Registry
	sock   string
	socket map[string]string // extra sockets by name
	logs   *lockedBuffer
}

// lockedBuffer collects the server's log lines.
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

// startServer serves SDS and the Workload API with PeerCredentials on a Unix socket in a temp
// dir (plus one extra socket per name in extra), resolving callers with the table build returns.
func startServer(t *testing.T, store *Store, build func(sockets map[string]string) *CallerTable, extra ...string) *server {
	t.Helper()
	dir := t.TempDir()
	s := &server{store: store, reg: prometheus.NewRegistry(), sock: filepath.Join(dir, "main.sock"), socket: map[string]string{}, logs: &lockedBuffer{}}
	paths := map[string]string{"main": s.sock}
	for _, name := range extra {
		paths[name] = filepath.Join(dir, name+".sock")
		s.socket[name] = paths[name]
	}
	table := build(paths)
	logger := slog.New(slog.NewTextHandler(s.logs, nil))
	var err error
	s.sds, err = NewSDSServer(SDSConfig{Source: store, Resolver: table, Logger: logger, Registerer: s.reg})
	if err != nil {
		t.Fatal(err)
	}
	s.wl, err = NewWorkloadAPI(WorkloadAPIConfig{Source: store, Resolver: table, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(PeerCredentials()))
	s.sds.Register(g)
	s.wl.Register(g)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, p := range paths {
		lis, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = g.Serve(lis)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = s.sds.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		s.sds.Close()
		g.Stop()
		wg.Wait()
	})
	return s
}

// byUID maps the test process's own uid to id.
func byUID(id spiffeid.ID) func(map[string]string) *CallerTable {
	return func(map[string]string) *CallerTable {
		return &CallerTable{ByUID: map[uint32]spiffeid.ID{uint32(os.Getuid()): id}}
	}
}

func dial(t *testing.T, sock string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func sdsClient(t *testing.T, sock string) secretservice.SecretDiscoveryServiceClient {
	return secretservice.NewSecretDiscoveryServiceClient(dial(t, sock))
}

func streamCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

// sotw is an Envoy-like state-of-the-world SDS client stream.
type sotw struct {
	t  *testing.T
	st secretservice.SecretDiscoveryService_StreamSecretsClient
}

func openSotW(t *testing.T, c secretservice.SecretDiscoveryServiceClient) *sotw {
	t.Helper()
	st, err := c.StreamSecrets(streamCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return &sotw{t: t, st: st}
}

func (s *sotw) send(req *discovery.DiscoveryRequest) {
	s.t.Helper()
	if req.TypeUrl == "" {
		req.TypeUrl = resource.SecretType
	}
	if err := s.st.Send(req); err != nil {
		s.t.Fatalf("send: %v", err)
	}
}

// subscribe sends the first request of a stream.
func (s *sotw) subscribe(names ...string) {
	s.send(&discovery.DiscoveryRequest{Node: envoyNode("sidecar"), ResourceNames: names})
}

// ack acknowledges resp, keeping names subscribed.
func (s *sotw) ack(resp *discovery.DiscoveryResponse, names ...string) {
	s.send(&discovery.DiscoveryRequest{VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: names})
}

func (s *sotw) recv() *discovery.DiscoveryResponse {
	s.t.Helper()
	resp, err := s.st.Recv()
	if err != nil {
		s.t.Fatalf("waiting for a response: %v", err)
	}
	return resp
}

func secretsOf(t *testing.T, resources [][]byte) map[string]*tlsv3.Secret {
	t.Helper()
	out := map[string]*tlsv3.Secret{}
	for _, raw := range resources {
		s := &tlsv3.Secret{}
		if err := proto.Unmarshal(raw, s); err != nil {
			t.Fatal(err)
		}
		if _, dup := out[s.Name]; dup {
			t.Fatalf("secret %q sent twice in one response", s.Name)
		}
		out[s.Name] = s
	}
	return out
}

func sotwSecrets(t *testing.T, resp *discovery.DiscoveryResponse) map[string]*tlsv3.Secret {
	t.Helper()
	raws := make([][]byte, 0, len(resp.Resources))
	for _, a := range resp.Resources {
		if a.TypeUrl != resource.SecretType {
			t.Fatalf("resource type %q, want %q", a.TypeUrl, resource.SecretType)
		}
		raws = append(raws, a.Value)
	}
	return secretsOf(t, raws)
}

func deltaSecrets(t *testing.T, resp *discovery.DeltaDiscoveryResponse) map[string]*tlsv3.Secret {
	t.Helper()
	raws := make([][]byte, 0, len(resp.Resources))
	for _, r := range resp.Resources {
		raws = append(raws, r.Resource.Value)
	}
	got := secretsOf(t, raws)
	for _, r := range resp.Resources {
		if _, ok := got[r.Name]; !ok {
			t.Fatalf("delta resource named %q holds another secret", r.Name)
		}
	}
	return got
}

func names(m map[string]*tlsv3.Secret) []string {
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	return out
}

func sameNames(got map[string]*tlsv3.Secret, want ...string) bool {
	if len(got) != len(want) {
		return false
	}
	for _, n := range want {
		if _, ok := got[n]; !ok {
			return false
		}
	}
	return true
}

// leafOf checks that a TlsCertificate secret's key matches its certificate and returns the
// parsed chain.
func leafOf(t *testing.T, s *tlsv3.Secret) []*x509.Certificate {
	t.Helper()
	tc := s.GetTlsCertificate()
	if tc == nil {
		t.Fatalf("secret %q: not a TlsCertificate", s.Name)
	}
	pair, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatalf("secret %q: key does not match certificate: %v", s.Name, err)
	}
	chain := make([]*x509.Certificate, 0, len(pair.Certificate))
	for _, der := range pair.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	return chain
}

// rootsOf parses a validation context secret's trusted CAs.
func rootsOf(t *testing.T, s *tlsv3.Secret) *x509.CertPool {
	t.Helper()
	vc := s.GetValidationContext()
	if vc == nil {
		t.Fatalf("secret %q: not a validation context", s.Name)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(vc.GetTrustedCa().GetInlineBytes()) {
		t.Fatalf("secret %q: trusted_ca holds no certificate", s.Name)
	}
	return pool
}

func verifies(chain []*x509.Certificate, roots *x509.CertPool) error {
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: testNow,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	return err
}

// poll waits until cond holds, checking after every scheduler yield, within waitFor.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling interval of a bounded wait, not a wait for an event
	}
}

// heldWatches counts watches the server is holding for id.
func (s *server) heldWatches(id spiffeid.ID) int {
	c := s.sds.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.nodes[id.String()]
	if !ok {
		return 0
	}
	return len(n.held)
}

// envoyNode is the node an Envoy sends; its id is a claim the server must ignore.
func envoyNode(id string) *core.Node {
	return &core.Node{Id: id, Cluster: "sports"}
}
