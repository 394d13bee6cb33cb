package controlplane

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
)

// Principals of the admin tests (trust domain testTD).
const (
	rootAdmin   = "spiffe://mesh.test/ns/ops/sa/root"
	robotAdmin  = "spiffe://mesh.test/ns/ops/sa/robot" // a system admin by service principal
	sportsAdmin = "spiffe://mesh.test/ns/sports/sa/admin"
	newsAdmin   = "spiffe://mesh.test/ns/news/sa/admin"
	plainCaller = "spiffe://mesh.test/ns/sports/sa/api" // an admin of nothing
)

// adminEnv is a one-node meshca-server in this process (real Raft, real TLS on 127.0.0.1)
// with its admin API, and a second port that serves an Admin with a register token signer,
// built by the server's own gRPC server constructor (same TLS, error mapping, stream limit).
type adminEnv struct {
	*testServer
	roots  *x509.CertPool
	tokens *recordingTokens
	admin  *Admin
	addr2  string
}

// recordingTokens stands in for the register token signer (another part of the server): it
// returns a recognizable token string and remembers what it was asked to sign.
type recordingTokens struct {
	mu     sync.Mutex
	signed []*meshcav1.Token
}

func (r *recordingTokens) SignRegisterToken(tok *meshcav1.Token) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.signed = append(r.signed, tok)
	return "test-token." + tok.GetJti(), nil
}

func (r *recordingTokens) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.signed)
}

// newAdminEnv starts a single-node server whose system admins are rootAdmin and the service
// principal ops.robot, with the provider sys.auth.k8s seeded.
func newAdminEnv(t *testing.T) *adminEnv {
	t.Helper()
	ts := startServer(t, func(c *Config) {
		c.Admins = []string{rootAdmin, "ops.robot"}
		c.Providers = []ProviderConfig{{Name: "sys.auth.k8s", DNSSuffix: "k8s.mesh.test", ConfirmEndpoint: "https://127.0.0.1:1/confirm"}}
	})
	waitFor(t, "the seeded provider", func() error {
		_, err := ts.s.Store().State().Provider("sys.auth.k8s")
		return err
	})
	e := &adminEnv{testServer: ts, roots: ts.bundlePool(), tokens: &recordingTokens{}}
	s := ts.s
	var err error
	e.admin, err = NewAdmin(AdminConfig{
		TrustDomain: s.TrustDomain(), SystemAdmins: s.SystemAdmins(), Auth: s, Store: s.Store(),
		Applier: s, Cluster: s.Node(), CA: s, Tokens: e.tokens, Now: s.Now, Logger: s.Logger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	gs := s.newGRPCServer()
	e.admin.Register(gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr2 = ln.Addr().String()
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(ln) }()
	t.Cleanup(func() { e.admin.Close(); gs.Stop(); <-served })
	return e
}

// clientCert issues a client certificate naming id, signed by the cluster CA, valid for an
// hour.
func (e *adminEnv) clientCert(id string) *tls.Certificate {
	e.t.Helper()
	u, err := url.Parse(id)
	if err != nil {
		e.t.Fatal(err)
	}
	key := newKey(e.t)
	leaf := signLeaf(e.t, e.iss, key, &x509.Certificate{
		Subject: pkix.Name{CommonName: "admin test"}, URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
}

// dialAdmin connects to addr, presenting cert when it is not nil.
func (e *adminEnv) dialAdmin(addr string, cert *tls.Certificate) meshcav1.AdminClient {
	return meshcav1.NewAdminClient(dial(e.t, addr, e.roots, cert))
}

// as is an admin client of the second port (the one with a token signer) authenticated as id.
func (e *adminEnv) as(id string) meshcav1.AdminClient {
	return e.dialAdmin(e.addr2, e.clientCert(id))
}

// ctx is a context bounded by waitTimeout, cancelled at cleanup.
func (e *adminEnv) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	e.t.Cleanup(cancel)
	return ctx
}

// wantStatus asserts that err is a gRPC status with code and a message containing each of
// parts.
func wantStatus(t testing.TB, err error, code codes.Code, parts ...string) {
	t.Helper()
	s, ok := status.FromError(err)
	if !ok || err == nil {
		t.Fatalf("error = %v, want a %v status", err, code)
	}
	if s.Code() != code {
		t.Fatalf("code = %v (%q), want %v", s.Code(), s.Message(), code)
	}
	for _, p := range parts {
		if !strings.Contains(s.Message(), p) {
			t.Fatalf("message %q does not contain %q", s.Message(), p)
		}
	}
}

// ok fails the test on an error.
func ok(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// seed creates, as rootAdmin over the admin API, the domains sports (admin sportsAdmin) and
// news (admin newsAdmin) and the services sports.api and news.web, each granting launch to
// sys.auth.k8s.
func (e *adminEnv) seed() {
	e.t.Helper()
	root := e.as(rootAdmin)
	ctx := e.ctx()
	for _, d := range []struct{ name, admin, svc string }{{"sports", sportsAdmin, "api"}, {"news", newsAdmin, "web"}} {
		if _, err := root.PutDomain(ctx, &meshcav1.PutDomainRequest{Domain: &meshcav1.Domain{Name: d.name, Admins: []string{d.admin}}, Mode: meshcav1.PutMode_PUT_MODE_CREATE}); err != nil {
			e.t.Fatal(err)
		}
		if _, err := root.PutService(ctx, &meshcav1.PutServiceRequest{Service: &meshcav1.Service{Domain: d.name, Name: d.svc, LaunchGrants: []string{"sys.auth.k8s"}}}); err != nil {
			e.t.Fatal(err)
		}
	}
}

// register records, straight through the log as the identity API does after its checks, an
// instance of domain.service launched by sys.auth.k8s with a fresh certificate, and returns
// the certificate's serial.
func (e *adminEnv) register(domain, service, instanceID string) string {
	e.t.Helper()
	serial := newSerialHex(e.t)
	e.registerSerial(domain, service, instanceID, serial)
	return serial
}

// registerSerial is register with a chosen serial.
func (e *adminEnv) registerSerial(domain, service, instanceID, serial string) {
	e.t.Helper()
	e.apply(&meshcav1.Command{Command: &meshcav1.Command_RecordRegister{RecordRegister: &meshcav1.RecordRegisterCommand{
		Provider: "sys.auth.k8s", Domain: domain, Service: service, InstanceId: instanceID,
		Cert: e.certRecord(serial), ClientAddr: "127.0.0.1",
	}}})
}

// refresh records a refresh of an instance presenting serial and returns its error.
func (e *adminEnv) refresh(domain, service, instanceID, presented string) error {
	e.t.Helper()
	_, err := e.s.Apply(e.ctx(), &meshcav1.Command{Command: &meshcav1.Command_RecordRefresh{RecordRefresh: &meshcav1.RecordRefreshCommand{
		Provider: "sys.auth.k8s", Domain: domain, Service: service, InstanceId: instanceID, PresentedSerial: presented,
		Cert: e.certRecord(newSerialHex(e.t)), ClientAddr: "127.0.0.1",
	}}})
	return err
}

func newSerialHex(t testing.TB) string {
	t.Helper()
	n, err := ca.NewSerial(nil)
	if err != nil {
		t.Fatal(err)
	}
	return n.Text(16)
}

// certRecord is a Cert record of the active issuer for a fresh key, valid for an hour.
func (e *adminEnv) certRecord(serial string) *meshcav1.Cert {
	e.t.Helper()
	_, issuer, err := e.s.Authority()
	if err != nil {
		e.t.Fatal(err)
	}
	spki := make([]byte, 32)
	if _, err := rand.Read(spki); err != nil {
		e.t.Fatal(err)
	}
	now := time.Now()
	return &meshcav1.Cert{
		Serial: serial, NotBefore: now.Add(-time.Minute).UnixNano(), NotAfter: now.Add(time.Hour).UnixNano(),
		SpkiSha256: spki, Purposes: []meshcav1.Purpose{meshcav1.Purpose_PURPOSE_CLIENT_AUTH}, IssuerId: issuer.GetId(),
	}
}

// bigSerial parses a hex serial.
func bigSerial(t testing.TB, s string) *big.Int {
	t.Helper()
	n, ok := new(big.Int).SetString(s, 16)
	if !ok {
		t.Fatalf("serial %q is not hex", s)
	}
	return n
}
