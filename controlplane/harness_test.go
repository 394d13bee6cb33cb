package controlplane

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/controlplane/confirm"
)

const (
	testTD     = "mesh.test"
	testSuffix = "test.mesh.test"
	// waitTimeout bounds every poll; nothing asserts on how long a wait took.
	waitTimeout = 30 * time.Second
)

func testLogger() *slog.Logger {
	if os.Getenv("MESHCA_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testServer is one single-node meshca-server running in this process on 127.0.0.1.
type testServer struct {
	t   testing.TB
	s   *Server
	cfg *Config
	kek signer.KEK
	iss *ca.Issuer // the CA key, loaded from ca.dir as an operator holding the KEK could
}

// startServer starts a single-node server with a fresh self-signed CA; mutate adjusts the
// config first. It waits until the node is ready and stops it at cleanup.
func startServer(t testing.TB, mutate func(*Config)) *testServer {
	t.Helper()
	dir := t.TempDir()
	raw := make([]byte, 32)
	rand.Read(raw)
	kekPath := filepath.Join(dir, "kek")
	if err := os.WriteFile(kekPath, []byte(hex.EncodeToString(raw)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &Config{
		NodeID: "n1", DataDir: filepath.Join(dir, "data"), TrustDomain: testTD,
		Listen: ListenConfig{GRPC: "127.0.0.1:0", Cluster: "127.0.0.1:0", HTTP: "127.0.0.1:0"},
		CA:     CAConfig{Mode: CAModeSelfSigned, Dir: filepath.Join(dir, "ca"), KEKFile: kekPath},
		Raft:   RaftConfig{Bootstrap: true, Peers: []PeerConfig{{ID: "n1", Address: "127.0.0.1:0"}}},
	}
	if mutate != nil {
		mutate(cfg)
	}
	cfg.setDefaults()
	s, err := New(cfg, Options{Logger: testLogger()})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitFor(t, "server ready", func() error { return s.Ready() })
	kek, err := signer.KEKFromFile(kekPath)
	if err != nil {
		t.Fatal(err)
	}
	auth, _, err := s.Authority()
	if err != nil {
		t.Fatal(err)
	}
	iss := auth.Issuer()
	if cfg.CA.Mode == CAModeSelfSigned {
		// An operator holding the KEK opens the same CA from ca.dir.
		opened, err := LoadSelfSignedCA(cfg.CA.Dir, kek, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if !opened.Certificate().Equal(iss.Certificate()) || opened.Signer().KeyID() != iss.Signer().KeyID() {
			t.Fatal("ca.dir holds another CA than the replicated one")
		}
	}
	return &testServer{t: t, s: s, cfg: cfg, kek: kek, iss: iss}
}

// waitFor polls check until it returns nil, failing the test after waitTimeout.
func waitFor(t testing.TB, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	var err error
	for time.Now().Before(deadline) {
		if err = check(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not after %s: %v", what, waitTimeout, err)
}

// apply commits a command through the server, failing the test on refusal.
func (ts *testServer) apply(cmd *meshcav1.Command) *meshcav1.CommandResult {
	ts.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	res, err := ts.s.Apply(ctx, cmd)
	if err != nil {
		ts.t.Fatalf("apply %v: %v", cmd, err)
	}
	return res
}

// addService creates the domain (if needed) and a service that grants launch to patterns.
func (ts *testServer) addService(domain, service string, grants ...string) {
	ts.t.Helper()
	if _, err := ts.s.Store().State().Domain(domain); err != nil {
		ts.apply(&meshcav1.Command{Command: &meshcav1.Command_PutDomain{PutDomain: &meshcav1.PutDomainCommand{
			Domain: &meshcav1.Domain{Name: domain, Admins: []string{"sys.admin.root"}},
		}}})
	}
	ts.apply(&meshcav1.Command{Command: &meshcav1.Command_PutService{PutService: &meshcav1.PutServiceCommand{
		Service: &meshcav1.Service{Domain: domain, Name: service, LaunchGrants: grants},
	}}})
}

// addProvider registers a provider (enabled).
func (ts *testServer) addProvider(name, suffix, endpoint string) {
	ts.t.Helper()
	ts.apply(&meshcav1.Command{Command: &meshcav1.Command_PutProvider{PutProvider: &meshcav1.PutProviderCommand{
		Provider: &meshcav1.Provider{Name: name, DnsSuffix: suffix, ConfirmEndpoint: endpoint, Enabled: true},
	}}})
}

// bundlePool is the trust bundle as a cert pool.
func (ts *testServer) bundlePool() *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range ts.s.Bundle().X509Authorities() {
		p.AddCert(c)
	}
	return p
}

// dial opens a gRPC connection to addr, presenting cert (may be nil).
func dial(t testing.TB, addr string, roots *x509.CertPool, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// client is an Identity client without a client certificate.
func (ts *testServer) client() meshcav1.IdentityClient {
	return meshcav1.NewIdentityClient(dial(ts.t, ts.s.GRPCAddr(), ts.bundlePool(), nil))
}

// clientWith is an Identity client authenticated with cert.
func (ts *testServer) clientWith(cert *tls.Certificate) meshcav1.IdentityClient {
	return meshcav1.NewIdentityClient(dial(ts.t, ts.s.GRPCAddr(), ts.bundlePool(), cert))
}

// testWorkload is an instance's key and the names its CSR carries.
type testWorkload struct {
	key   crypto.Signer
	names policy.WorkloadNames
	// domain, service, instance id and the provider DNS suffix the names were built from.
	domain, service, id, suffix string
}

func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newWorkload(t testing.TB, domain, service, suffix, id string) *testWorkload {
	t.Helper()
	names, err := policy.WorkloadRequest{TrustDomain: testTD, Domain: domain, Service: service, ProviderDNSSuffix: suffix, InstanceID: id}.Names()
	if err != nil {
		t.Fatal(err)
	}
	return &testWorkload{key: newKey(t), names: names, domain: domain, service: service, id: id, suffix: suffix}
}

// csr makes the workload's CSR with its key; mutate may change the template first.
func (w *testWorkload) csr(t testing.TB, mutate func(*x509.CertificateRequest)) []byte {
	t.Helper()
	uri, _ := url.Parse(w.names.SPIFFEID.String())
	tmpl := &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: w.names.CommonName},
		DNSNames: []string{w.names.ServiceDNS, w.names.InstanceDNS},
		URIs:     []*url.URL{uri},
	}
	if mutate != nil {
		mutate(tmpl)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, w.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// registerReq is a Register request for the workload under provider.
func (w *testWorkload) registerReq(t testing.TB, provider string) *meshcav1.RegisterRequest {
	return &meshcav1.RegisterRequest{Provider: provider, Domain: w.domain, Service: w.service, Csr: w.csr(t, nil), AttestationData: []byte("doc:" + w.id)}
}

// tlsCert makes a TLS client certificate from an issued response and the workload's key.
func (w *testWorkload) tlsCert(t testing.TB, resp *meshcav1.IdentityResponse) *tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair([]byte(resp.GetCertificate()+resp.GetChain()), pemKey(t, w.key))
	if err != nil {
		t.Fatal(err)
	}
	return &c
}

func pemKey(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// signLeaf signs a leaf certificate with iss for key: the way a test mints certificates (a
// provider's server certificate, an expired workload certificate) with the cluster's CA key.
func signLeaf(t testing.TB, iss *ca.Issuer, key crypto.Signer, tmpl *x509.Certificate) *x509.Certificate {
	t.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber, _ = ca.NewSerial(nil)
	}
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage |= x509.KeyUsageDigitalSignature
	tmpl.SignatureAlgorithm = iss.Signer().SignatureAlgorithm()
	der, err := signer.CreateCertificate(rand.Reader, tmpl, iss.Certificate(), key.Public(), iss.Signer())
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// serverSVID mints a server SVID for id, valid now, with the loopback IP SAN.
func serverSVID(t testing.TB, iss *ca.Issuer, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	key := newKey(t)
	uri, _ := url.Parse(id.String())
	now := time.Now()
	leaf := signLeaf(t, iss, key, &x509.Certificate{
		Subject:     pkix.Name{CommonName: id.Path()},
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    now.Add(time.Hour),
		URIs:        []*url.URL{uri},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
	return &x509svid.SVID{ID: id, Certificates: append([]*x509.Certificate{leaf}, iss.Chain()...), PrivateKey: key}
}

// testProvider is a launcher's confirm endpoint on 127.0.0.1, served over mutual TLS with a
// server certificate the test gives it; it admits CA nodes of the trust domain as clients.
type testProvider struct {
	ln  net.Listener
	url string

	mu     sync.Mutex
	decide func(*confirm.Request) (int, string)
	seen   []*confirm.Request
}

// errEmpty is what a poll returns while what it waits for is not there yet.
var errEmpty = errors.New("not there yet")

// defaultDecide confirms an instance whose attestation is "doc:<instance id>" unless its id
// starts with "deny-".
func defaultDecide(r *confirm.Request) (int, string) {
	if strings.HasPrefix(r.InstanceID, "deny-") {
		return 200, `{"allowed": false, "reason": "instance ` + r.InstanceID + ` was not launched here"}`
	}
	if string(r.AttestationData) != "doc:"+r.InstanceID {
		return 200, `{"allowed": false, "reason": "identity document does not match"}`
	}
	return 200, `{"allowed": true}`
}

// setDecide changes how the provider answers; nil restores defaultDecide.
func (p *testProvider) setDecide(f func(*confirm.Request) (int, string)) {
	if f == nil {
		f = defaultDecide
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.decide = f
}

// federatedJWKS is the SPIFFE bundle (JWKS) of a foreign trust domain whose roots are iss's.
func federatedJWKS(t testing.TB, td string, iss *ca.Issuer) []byte {
	t.Helper()
	b := spiffebundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(td), iss.Roots())
	out, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// listenProvider binds the provider's port; serve starts it once it has a certificate.
func listenProvider(t testing.TB) *testProvider {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return &testProvider{ln: ln, url: "https://" + ln.Addr().String() + "/confirm", decide: defaultDecide}
}

// serve serves the confirm endpoint with svid as the server certificate, trusting clients
// that chain to bundle and are CA nodes of the trust domain.
func (p *testProvider) serve(t testing.TB, svid *x509svid.SVID, bundle x509bundle.Source) {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString(testTD)
	nodes := tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		if id.MemberOf(td) && strings.HasPrefix(id.Path(), "/meshca/server/") {
			return nil
		}
		return errors.New("not a CA node: " + id.String())
	})
	srv := &http.Server{
		TLSConfig:         tlsconfig.MTLSServerConfig(svid, bundle, nodes),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			req, err := confirm.DecodeRequest(body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			p.mu.Lock()
			p.seen = append(p.seen, req)
			decide := p.decide
			p.mu.Unlock()
			code, out := decide(req)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			io.WriteString(w, out)
		}),
	}
	go srv.ServeTLS(p.ln, "", "")
	t.Cleanup(func() { srv.Close() })
}

// requests returns the confirm requests seen so far.
func (p *testProvider) requests() []*confirm.Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*confirm.Request(nil), p.seen...)
}

// mustJSON marshals v.
func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// parseLeaf parses the leaf PEM of a response.
func parseLeaf(t testing.TB, resp *meshcav1.IdentityResponse) *x509.Certificate {
	t.Helper()
	certs, err := ca.ParseCertificatesPEM([]byte(resp.GetCertificate()))
	if err != nil || len(certs) != 1 {
		t.Fatalf("certificate: %v (%d certificates)", err, len(certs))
	}
	return certs[0]
}

// serialOf is a certificate's serial as the state writes it.
func serialOf(c *x509.Certificate) string { return c.SerialNumber.Text(16) }
