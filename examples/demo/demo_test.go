package demo_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/examples/demo"
	"github.com/meshca/meshca/sds"
)

// waitFor bounds every wait: a rotation or request that does not come fails the test instead of
// hanging it. It is a deadline, not a timing assertion.
const waitFor = 30 * time.Second

// fakeAgent serves what meshca-agent serves (the sds package's SDS server and Workload API over
// Unix sockets bound to one identity each) from a Store the test rotates by hand.
type fakeAgent struct {
	t         *testing.T
	authority *ca.Authority
	store     *sds.Store
	sockets   map[string]string // service → socket
}

func startFakeAgent(t *testing.T, services ...string) *fakeAgent {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("mesh.example")
	rootKey, _ := signer.GenerateSoftware(signer.ECDSAP256)
	interKey, _ := signer.GenerateSoftware(signer.ECDSAP256)
	issuer, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: td, RootKey: rootKey, IntermediateKey: interKey, Now: time.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(ca.Config{TrustDomain: td, Issuer: issuer})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeAgent{t: t, authority: authority, store: sds.NewStore(), sockets: map[string]string{}}
	if err := f.store.SetBundle(authority.Bundle()); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "demo")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	table := &sds.CallerTable{BySocket: map[string]spiffeid.ID{}}
	for _, s := range services {
		f.sockets[s] = filepath.Join(dir, s+".sock")
		table.BySocket[f.sockets[s]] = f.id(s)
		f.rotate(s)
	}
	logger := slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))
	sdsServer, err := sds.NewSDSServer(sds.SDSConfig{Source: f.store, Resolver: table, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	wl, err := sds.NewWorkloadAPI(sds.WorkloadAPIConfig{Source: f.store, Resolver: table, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(sds.PeerCredentials()))
	sdsServer.Register(g)
	wl.Register(g)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, path := range f.sockets {
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = g.Serve(l) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = sdsServer.Run(ctx) }()
	t.Cleanup(func() { cancel(); sdsServer.Close(); g.Stop(); wg.Wait() })
	return f
}

func (f *fakeAgent) id(service string) spiffeid.ID {
	return spiffeid.RequireFromPath(f.authority.TrustDomain(), "/ns/demo/sa/"+service)
}

// rotate issues the service a new certificate with a new key and serves it, as the agent does
// after a refresh.
func (f *fakeAgent) rotate(service string) string {
	t := f.t
	req := policy.WorkloadRequest{TrustDomain: f.authority.TrustDomain().Name(), Domain: "demo", Service: service, ProviderDNSSuffix: "demo.mesh.example", InstanceID: service + "-1",
		Now: time.Now(), Purposes: []policy.Purpose{policy.ClientAuth, policy.ServerAuth}, ServerAuthAllowed: true}
	req.Serial, _ = ca.NewSerial(nil)
	names, err := req.Names()
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	uri, _ := url.Parse(names.SPIFFEID.String())
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: names.CommonName}, DNSNames: []string{names.ServiceDNS, names.InstanceDNS}, URIs: []*url.URL{uri},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	issued, err := f.authority.IssueWorkload(csr, req)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.ParseRaw(concat(issued.Chain), mustPKCS8(t, key))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.store.SetSVID(svid); err != nil {
		t.Fatal(err)
	}
	return issued.Template.SerialNumber.Text(16)
}

func concat(ders [][]byte) []byte {
	var out []byte
	for _, d := range ders {
		out = append(out, d...)
	}
	return out
}

func mustPKCS8(t *testing.T, key *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der
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

func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling interval of a bounded wait
	}
}

// pair runs the server with its material over SDS and the client over the Workload API.
type pair struct {
	server *demo.Server
	client *demo.Client
	logs   *lockedBuffer
	stop   func()
}

func startPair(t *testing.T, f *fakeAgent, serverID string) *pair {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitFor)
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	srv, err := demo.NewServer(ctx, demo.ServerConfig{
		Listen: "127.0.0.1:0", AllowedPeer: f.id("client").String(), Logger: logger,
		Source: demo.SourceConfig{Kind: demo.SourceSDS, SDSSocket: f.sockets["server"]},
	})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := demo.NewClient(ctx, demo.ClientConfig{
		URL: "https://" + srv.Addr() + "/hello", ServerID: serverID, Logger: logger,
		Source: demo.SourceConfig{Kind: demo.SourceWorkloadAPI, WorkloadAPIAddr: "unix://" + f.sockets["client"]},
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = srv.Serve(ctx) }()
	go func() { defer wg.Done(); _ = cl.Run(ctx) }()
	p := &pair{server: srv, client: cl, logs: logs}
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			_ = cl.Close()
		})
	}
	t.Cleanup(p.stop)
	return p
}

func TestTheDemoFollowsRotationsWithoutAFailedHandshake(t *testing.T) {
	f := startFakeAgent(t, "server", "client")
	p := startPair(t, f, f.id("server").String())
	for i := range 3 {
		before := p.client.Stats().Requests
		serverSerial := f.rotate("server")
		clientSerial := f.rotate("client")
		poll(t, "both rotations seen", func() bool {
			return p.server.Stats().Serial == serverSerial && p.client.Stats().Serial == clientSerial
		})
		// Requests go on with the new certificates.
		poll(t, "requests after the rotation", func() bool { return p.client.Stats().Requests >= before+50 })
		if got := p.server.Stats().Rotations; got != int64(i+1) {
			t.Fatalf("server counted %d rotations, want %d", got, i+1)
		}
	}
	p.stop()
	cs, ss := p.client.Stats(), p.server.Stats()
	if cs.HandshakeFailures != 0 || ss.HandshakeFailures != 0 || cs.Failures != 0 {
		t.Fatalf("client %+v server %+v\n%s", cs, ss, p.logs)
	}
	if cs.Rotations != 3 || ss.Rotations != 3 || ss.Requests < cs.Requests {
		t.Fatalf("client %+v server %+v", cs, ss)
	}
	if n := strings.Count(p.logs.String(), "demo: rotation"); n != 6 {
		t.Fatalf("%d rotations logged, want 6:\n%s", n, p.logs)
	}
}

func TestAServerThatIsNotTheExpectedIdentityFailsTheHandshakeAndIsCounted(t *testing.T) {
	f := startFakeAgent(t, "server", "client")
	p := startPair(t, f, f.id("other").String())
	// A handshake failure is counted in the dialer, the failed request only when the call
	// returns: wait for both, or stopping may cancel the last call in between.
	poll(t, "failed handshakes and requests", func() bool {
		cs := p.client.Stats()
		return cs.HandshakeFailures >= 3 && cs.Failures >= 3 && p.server.Stats().HandshakeFailures >= 3
	})
	p.stop()
	if cs := p.client.Stats(); cs.Requests != 0 || cs.Failures < 3 {
		t.Fatalf("client %+v: requests to the wrong server must fail", cs)
	}
	if !strings.Contains(p.logs.String(), `msg="demo: handshake failed" workload=demo-client`) ||
		!strings.Contains(p.logs.String(), `msg="demo: handshake failed" workload=demo-server`) {
		t.Fatalf("failed handshakes are not logged on both sides:\n%s", p.logs)
	}
}
