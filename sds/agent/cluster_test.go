package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/sds"
)

// testCluster is a test double of meshca-server's Identity API and its bundle SDS, built from
// the ca package: real issuance under the real policy, real TLS on 127.0.0.1, the serial rules
// of DESIGN.md §4 kept in memory, and the sds package's server streaming bundles over mTLS.
// It stands in for a cluster until tests run against internal/clustertest.
type testCluster struct {
	t         testing.TB
	td        spiffeid.TrustDomain
	now       func() time.Time
	authority *ca.Authority
	issuer    *ca.Issuer
	// bundles is what the cluster streams to agents: the own bundle and federated ones.
	bundles *sds.Store

	mu          sync.Mutex
	providers   map[string]string // provider → DNS suffix
	instances   map[string]*testInstance
	calls       []testCall
	tokens      map[string]string // register token → instance id it is bound to
	usedTokens  map[string]bool
	serviceKeys map[string]crypto.PublicKey // "<domain>.<service>/<version>"
	nonces      map[string]bool
	nodes       []*testNode
}

type testInstance struct {
	current, previous string
	previousUsed      bool
	revoked           bool
}

// testCall is one Identity call a node answered.
type testCall struct {
	method   string // Register or Refresh
	node     string
	serial   string // the client certificate's serial, for Refresh
	issued   string // the new serial, when one was issued
	code     codes.Code
	provider string
}

type testNode struct {
	name   string
	addr   string
	g      *grpc.Server
	done   chan struct{}
	stop   sync.Once
	stopFn func()
}

const (
	testProvider       = "sys.auth.test"
	testProviderSuffix = "test.mesh.example"
	builtinSuffix      = "meshca.mesh.example"
	clusterTTL         = time.Hour
)

func newTestCluster(t testing.TB, now func() time.Time, nodes int) *testCluster {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("mesh.example")
	rootKey, err := signer.GenerateSoftware(signer.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	interKey, err := signer.GenerateSoftware(signer.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	start := now()
	issuer, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: td, RootKey: rootKey, IntermediateKey: interKey, Now: start.Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	pc := policy.DefaultConfig()
	pc.DefaultTTL = clusterTTL
	authority, err := ca.New(ca.Config{TrustDomain: td, Issuer: issuer, Policy: pc})
	if err != nil {
		t.Fatal(err)
	}
	c := &testCluster{
		t: t, td: td, now: now, authority: authority, issuer: issuer, bundles: sds.NewStore(),
		providers:   map[string]string{testProvider: testProviderSuffix, BuiltinProvider: builtinSuffix},
		instances:   map[string]*testInstance{},
		tokens:      map[string]string{},
		usedTokens:  map[string]bool{},
		serviceKeys: map[string]crypto.PublicKey{},
		nonces:      map[string]bool{},
	}
	if err := c.bundles.SetBundle(authority.Bundle()); err != nil {
		t.Fatal(err)
	}
	for i := range nodes {
		c.nodes = append(c.nodes, c.startNode(fmt.Sprintf("n%d", i+1)))
	}
	return c
}

func (c *testCluster) addrs() []string {
	out := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n.addr
	}
	return out
}

func (c *testCluster) bundlePEM() []byte {
	b, err := c.authority.Bundle().Marshal()
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

func (c *testCluster) roots() *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range c.authority.Bundle().X509Authorities() {
		p.AddCert(r)
	}
	return p
}

// nodeCert is a CA node's certificate, spiffe://<td>/meshca/server/<name>, valid for a year
// around the start so any clock the test moves stays inside it.
func (c *testCluster) nodeCert(name string) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		c.t.Fatal(err)
	}
	serial, err := ca.NewSerial(nil)
	if err != nil {
		c.t.Fatal(err)
	}
	start := c.now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "meshca " + name},
		NotBefore:    start.Add(-time.Hour),
		NotAfter:     start.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{{Scheme: "spiffe", Host: c.td.Name(), Path: "/meshca/server/" + name}},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.issuer.Certificate(), key.Public(), c.issuer.Signer())
	if err != nil {
		c.t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	for _, x := range c.issuer.Chain() {
		cert.Certificate = append(cert.Certificate, x.Raw)
	}
	return cert
}

func (c *testCluster) startNode(name string) *testNode {
	t := c.t
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{c.nodeCert(name)},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    c.roots(),
		Time:         c.now,
		MinVersion:   tls.VersionTLS12,
	})
	g := grpc.NewServer(grpc.Creds(creds))
	meshcav1.RegisterIdentityServer(g, &testIdentityServer{c: c, node: name})
	bundleSDS, err := sds.NewSDSServer(sds.SDSConfig{Source: c.bundles, Resolver: sds.TLSPeerResolver{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	bundleSDS.Register(g)
	ctx, cancel := context.WithCancel(context.Background())
	n := &testNode{name: name, addr: lis.Addr().String(), g: g, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = g.Serve(lis) }()
	go func() { defer wg.Done(); _ = bundleSDS.Run(ctx) }()
	go func() { wg.Wait(); close(n.done) }()
	stop := func() {
		n.stop.Do(func() {
			cancel()
			bundleSDS.Close()
			g.Stop()
			<-n.done
		})
	}
	t.Cleanup(stop)
	n.stopFn = stop
	return n
}

// down stops a node: its address refuses connections from now on.
func (n *testNode) down() { n.stopFn() }

func (c *testCluster) record(call testCall) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, call)
}

// callsOf returns the calls answered so far with method.
func (c *testCluster) callsOf(method string) []testCall {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []testCall
	for _, call := range c.calls {
		if call.method == method {
			out = append(out, call)
		}
	}
	return out
}

func (c *testCluster) okCalls(method string) []testCall {
	var out []testCall
	for _, call := range c.callsOf(method) {
		if call.code == codes.OK {
			out = append(out, call)
		}
	}
	return out
}

// issueRegisterToken makes a one-time register token bound to an instance.
func (c *testCluster) issueRegisterToken(instanceID string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	tok := fmt.Sprintf("rt-%x", b)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tokens[tok] = instanceID
	return tok
}

func (c *testCluster) addServiceKey(domain, service, version string, pub crypto.PublicKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.serviceKeys[domain+"."+service+"/"+version] = pub
}

// revoke marks an instance revoked, as an operator or a compromise detection would.
func (c *testCluster) revoke(provider, domain, service, instanceID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := provider + "/" + domain + "." + service + "/" + instanceID
	inst, ok := c.instances[key]
	if !ok {
		c.t.Fatalf("revoke: no instance %s", key)
	}
	inst.revoked = true
}

// testIdentityServer is one node's Identity API over the cluster's shared state.
type testIdentityServer struct {
	meshcav1.UnimplementedIdentityServer
	c    *testCluster
	node string
}

func (s *testIdentityServer) Register(ctx context.Context, req *meshcav1.RegisterRequest) (*meshcav1.IdentityResponse, error) {
	resp, err := s.register(req)
	call := testCall{method: "Register", node: s.node, code: status.Code(err), provider: req.GetProvider()}
	if resp != nil {
		call.issued = resp.Serial
	}
	s.c.record(call)
	return resp, err
}

func (s *testIdentityServer) register(req *meshcav1.RegisterRequest) (*meshcav1.IdentityResponse, error) {
	c := s.c
	suffix, ok := c.providers[req.GetProvider()]
	if !ok {
		return nil, status.Errorf(codes.PermissionDenied, "provider: %q is not registered", req.GetProvider())
	}
	csrDER, _, instanceID, err := parseCSR(req.GetCsr(), suffix)
	if err != nil {
		return nil, err
	}
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case req.GetProvider() == testProvider:
		if string(req.GetAttestationData()) != "doc:"+instanceID {
			return nil, status.Errorf(codes.PermissionDenied, "attestation_data: provider %s does not confirm instance %q", testProvider, instanceID)
		}
	case req.GetServiceToken() != "":
		if err := c.checkServiceTokenLocked(req, now); err != nil {
			return nil, err
		}
	default:
		tok := string(req.GetAttestationData())
		bound, ok := c.tokens[tok]
		switch {
		case !ok:
			return nil, status.Error(codes.PermissionDenied, "attestation_data: unknown register token")
		case c.usedTokens[tok]:
			return nil, status.Error(codes.PermissionDenied, "attestation_data: register token already used")
		case bound != instanceID:
			return nil, status.Errorf(codes.PermissionDenied, "attestation_data: token is bound to instance %q", bound)
		}
		c.usedTokens[tok] = true
	}
	key := req.GetProvider() + "/" + req.GetDomain() + "." + req.GetService() + "/" + instanceID
	if inst, ok := c.instances[key]; ok && inst.revoked {
		return nil, status.Errorf(codes.PermissionDenied, "instance %q: revoked", instanceID)
	}
	resp, err := c.issueLocked(csrDER, req.GetDomain(), req.GetService(), suffix, instanceID, req.GetTtlSeconds(), req.GetServerAuth(), now)
	if err != nil {
		return nil, err
	}
	c.instances[key] = &testInstance{current: resp.Serial}
	return resp, nil
}

func (c *testCluster) checkServiceTokenLocked(req *meshcav1.RegisterRequest, now time.Time) error {
	tok, err := jwt.ParseSigned(req.GetServiceToken(), []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256, jose.EdDSA})
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "service_token: %v", err)
	}
	if len(tok.Headers) != 1 {
		return status.Error(codes.InvalidArgument, "service_token: one signature expected")
	}
	kid := tok.Headers[0].KeyID
	pub, ok := c.serviceKeys[req.GetDomain()+"."+req.GetService()+"/"+kid]
	if !ok {
		return status.Errorf(codes.PermissionDenied, "service_token: no key version %q", kid)
	}
	var claims ServiceTokenClaims
	if err := tok.Claims(pub, &claims); err != nil {
		return status.Errorf(codes.PermissionDenied, "service_token: signature: %v", err)
	}
	if err := claims.ValidateWithLeeway(jwt.Expected{
		Issuer: req.GetDomain() + "." + req.GetService(), AnyAudience: jwt.Audience{c.td.IDString()}, Time: now,
	}, 0); err != nil {
		return status.Errorf(codes.PermissionDenied, "service_token: %v", err)
	}
	if claims.Domain != req.GetDomain() || claims.Service != req.GetService() || claims.KeyVersion != kid {
		return status.Error(codes.PermissionDenied, "service_token: claims do not match the request")
	}
	if claims.ID == "" || c.nonces[claims.ID] {
		return status.Error(codes.PermissionDenied, "service_token: nonce replayed")
	}
	c.nonces[claims.ID] = true
	return nil
}

func (s *testIdentityServer) Refresh(ctx context.Context, req *meshcav1.RefreshRequest) (*meshcav1.IdentityResponse, error) {
	presented := ""
	if leaf := clientLeaf(ctx); leaf != nil {
		presented = leaf.SerialNumber.Text(16)
	}
	resp, err := s.refresh(ctx, req)
	call := testCall{method: "Refresh", node: s.node, serial: presented, code: status.Code(err)}
	if resp != nil {
		call.issued = resp.Serial
	}
	s.c.record(call)
	return resp, err
}

func clientLeaf(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 {
		return nil
	}
	return info.State.VerifiedChains[0][0]
}

func (s *testIdentityServer) refresh(ctx context.Context, req *meshcav1.RefreshRequest) (*meshcav1.IdentityResponse, error) {
	c := s.c
	leaf := clientLeaf(ctx)
	if leaf == nil {
		return nil, status.Error(codes.Unauthenticated, "client certificate: required for a refresh")
	}
	// The leaf's instance SAN says which provider launched it.
	provider, suffix, instanceID := "", "", ""
	for p, suf := range c.providers {
		for _, d := range leaf.DNSNames {
			if id, ok := strings.CutSuffix(d, ".instanceid.athenz."+suf); ok {
				provider, suffix, instanceID = p, suf, id
			}
		}
	}
	if provider == "" {
		return nil, status.Error(codes.PermissionDenied, "client certificate: no instance SAN")
	}
	csrDER, csr, csrInstance, err := parseCSR(req.GetCsr(), suffix)
	if err != nil {
		return nil, err
	}
	if csrInstance != instanceID || csr.Subject.CommonName != leaf.Subject.CommonName {
		return nil, status.Error(codes.PermissionDenied, "csr: identity or instance differs from the client certificate's")
	}
	// The CN is <domain>.<service>; the service is the last label.
	cn := leaf.Subject.CommonName
	i := strings.LastIndex(cn, ".")
	if i <= 0 {
		return nil, status.Errorf(codes.PermissionDenied, "client certificate: CN %q is not <domain>.<service>", cn)
	}
	domain, service := cn[:i], cn[i+1:]
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	key := provider + "/" + domain + "." + service + "/" + instanceID
	inst, ok := c.instances[key]
	if !ok {
		return nil, status.Errorf(codes.PermissionDenied, "instance %q: unknown", instanceID)
	}
	if inst.revoked {
		return nil, status.Errorf(codes.PermissionDenied, "instance %q: revoked", instanceID)
	}
	presented := leaf.SerialNumber.Text(16)
	switch {
	case presented == inst.current:
	case presented == inst.previous && !inst.previousUsed:
		inst.previousUsed = true
	default:
		inst.revoked = true
		return nil, status.Errorf(codes.PermissionDenied, "serial %s: not the instance's current serial %s; instance revoked", presented, inst.current)
	}
	resp, err := c.issueLocked(csrDER, domain, service, suffix, instanceID, req.GetTtlSeconds(), req.GetServerAuth(), now)
	if err != nil {
		return nil, err
	}
	if presented == inst.current {
		inst.previous, inst.previousUsed = inst.current, false
	}
	inst.current = resp.Serial
	return resp, nil
}

func parseCSR(pemCSR []byte, suffix string) ([]byte, *x509.CertificateRequest, string, error) {
	der, err := ca.DecodeCSR(pemCSR)
	if err != nil {
		return nil, nil, "", status.Errorf(codes.InvalidArgument, "csr: %v", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, nil, "", status.Errorf(codes.InvalidArgument, "csr: %v", err)
	}
	for _, d := range csr.DNSNames {
		if id, ok := strings.CutSuffix(d, ".instanceid.athenz."+suffix); ok {
			return der, csr, id, nil
		}
	}
	return nil, nil, "", status.Errorf(codes.InvalidArgument, "csr: no instance id SAN under %q", suffix)
}

func (c *testCluster) issueLocked(csrDER []byte, domain, service, suffix, instanceID string, ttlSeconds int64, serverAuth bool, now time.Time) (*meshcav1.IdentityResponse, error) {
	serial, err := ca.NewSerial(nil)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "serial: %v", err)
	}
	req := policy.WorkloadRequest{
		Domain: domain, Service: service, ProviderDNSSuffix: suffix, InstanceID: instanceID,
		TTL: time.Duration(ttlSeconds) * time.Second, Now: now, Serial: serial, ServerAuthAllowed: true,
	}
	if serverAuth {
		req.Purposes = []policy.Purpose{policy.ClientAuth, policy.ServerAuth}
	}
	issued, err := c.authority.IssueWorkload(csrDER, req)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	leaf, err := issued.Leaf()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	bundle, err := c.authority.Bundle().Marshal()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	id, _ := req.Names()
	return &meshcav1.IdentityResponse{
		Certificate: string(ca.EncodeCertificatesPEM(issued.Chain[0])),
		Chain:       string(ca.EncodeCertificatesPEM(issued.Chain[1:]...)),
		Bundle:      string(bundle),
		Serial:      leaf.SerialNumber.Text(16),
		SpiffeId:    id.SPIFFEID.String(),
		InstanceId:  instanceID,
		NotAfter:    leaf.NotAfter.Unix(),
	}, nil
}

// newRoot makes another self-signed root of the cluster's trust domain, as a CA rotation
// publishes ahead of using it.
func (c *testCluster) newRoot() *x509.Certificate {
	key, err := signer.GenerateSoftware(signer.ECDSAP256)
	if err != nil {
		c.t.Fatal(err)
	}
	iss, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: c.td, RootKey: key, Now: c.now()})
	if err != nil {
		c.t.Fatal(err)
	}
	return iss.Certificate()
}

// publishRoot adds root to the bundle the cluster streams, as the first step of a CA rotation
// does, and returns the new bundle.
func (c *testCluster) publishRoot(root *x509.Certificate) *x509bundle.Bundle {
	b, err := ca.AddRoot(c.authority.Bundle(), root)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.bundles.SetBundle(b); err != nil {
		c.t.Fatal(err)
	}
	return b
}

// federate adds (or replaces) a federated trust domain's bundle in what the cluster streams.
func (c *testCluster) federate(td string) *x509bundle.Bundle {
	key, err := signer.GenerateSoftware(signer.ECDSAP256)
	if err != nil {
		c.t.Fatal(err)
	}
	ftd := spiffeid.RequireTrustDomainFromString(td)
	iss, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: ftd, RootKey: key, Now: c.now()})
	if err != nil {
		c.t.Fatal(err)
	}
	b := x509bundle.FromX509Authorities(ftd, []*x509.Certificate{iss.Certificate()})
	if err := c.bundles.SetBundle(b); err != nil {
		c.t.Fatal(err)
	}
	return b
}

func serialsOf(calls []testCall) []string {
	out := []string{}
	for _, c := range calls {
		out = append(out, c.serial)
	}
	return out
}
