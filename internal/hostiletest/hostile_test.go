package hostiletest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/internal/clustertest"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Main(m)) }

const (
	// suffix is the DNS suffix the cluster seeds the built-in provider with.
	suffix = "meshca.mesh.test"
	// maxMessage, maxStreams, perSource and headerTimeout are the limits the attacked cluster runs with.
	maxMessage    = 64 << 10
	maxStreams    = 4
	perSource     = 600
	headerTimeout = time.Second
	// goroutineSlack is how many more goroutines than before the attacks the node may run
	// once they are over and it settled (its own timers and pools come and go).
	goroutineSlack = 25
	// rssBound is the resident memory the attacked node must stay under throughout.
	rssBound = 512 << 20
)

// TestHostileInput attacks the leader of a real three-node cluster, one attack after
// another, while a well-behaved client from another source address registers and reads the
// bundle through the same node. Every attack must get a clear refusal; afterwards the node is
// the same process, answers /healthz, returns to its goroutine count, stayed under a memory
// bound, and the well-behaved client never saw an error.
func TestHostileInput(t *testing.T) {
	c := clustertest.Start(t, clustertest.Options{
		Providers: []controlplane.ProviderConfig{{Name: controlplane.BuiltinProvider, DNSSuffix: suffix}},
		Tune: func(_ int, cfg *controlplane.Config) {
			cfg.Services = []controlplane.ServiceConfig{{Name: "sports.api", LaunchGrants: []string{controlplane.BuiltinProvider}}}
			cfg.Limits.MaxMessageBytes = maxMessage
			cfg.Limits.MaxStreamsPerCaller = maxStreams
			cfg.Limits.IssuePerSourcePerMinute = perSource
			cfg.Limits.ReadHeaderTimeout = controlplane.NewDuration(headerTimeout)
		},
	})
	node := c.Leader()
	ctx, cancel := context.WithTimeout(context.Background(), clustertest.WaitTimeout)
	defer cancel()
	metric := func(name string) float64 {
		t.Helper()
		v, err := c.Metric(node, name, nil)
		if err != nil {
			t.Fatalf("%s of %s: %v", name, node.ID, err)
		}
		return v
	}

	// The well-behaved client: another source address (the per-source limit is not its
	// concern), a register token per registration, the bundle every round.
	adminCert := c.AdminCert()
	admin := meshcav1.NewAdminClient(c.Dial(node, &adminCert))
	good := newGoodClient(t, c, node, admin)
	good.round(ctx) // connected and proven before the baseline is read
	startTime := metric("process_start_time_seconds")
	baseGoroutines := metric("go_goroutines")
	loopDone := make(chan struct{})
	loopCtx, stopLoop := context.WithCancel(ctx)
	go func() { defer close(loopDone); good.loop(loopCtx) }()
	var maxRSS float64
	sampleRSS := func() {
		if v := metric("process_resident_memory_bytes"); v > maxRSS {
			maxRSS = v
		}
	}
	roundsBefore := good.rounds()

	// The attackers' connections are closed before the goroutines are counted again.
	var attackConns []*grpc.ClientConn
	dial := func(cert *tls.Certificate) *grpc.ClientConn {
		cc := c.Connect(node, cert)
		attackConns = append(attackConns, cc)
		return cc
	}
	defer func() {
		for _, cc := range attackConns {
			cc.Close()
		}
	}()
	anon := meshcav1.NewIdentityClient(dial(nil))
	attackerID := spiffeid.RequireFromSegments(c.TrustDomain(), "ns", "attack", "sa", "mallory")
	attackerCert := c.IssueCert(attackerID, clustertest.CertOptions{})

	t.Run("oversized message is ResourceExhausted", func(t *testing.T) {
		for _, size := range []int{maxMessage + 1, 10 << 20} {
			_, err := anon.Register(ctx, &meshcav1.RegisterRequest{Provider: controlplane.BuiltinProvider, Domain: "sports", Service: "api", Csr: bytes.Repeat([]byte("A"), size)})
			wantCode(t, err, codes.ResourceExhausted, "larger than max")
			sampleRSS()
		}
	})

	t.Run("garbage protobuf in a valid gRPC frame is refused", func(t *testing.T) {
		conn := dial(nil)
		for _, garbage := range [][]byte{bytes.Repeat([]byte{0xff}, 64), {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f}, randomBytes(t, 4096)} {
			var out []byte
			err := conn.Invoke(ctx, "/meshca.v1.Identity/Register", garbage, &out, grpc.ForceCodecV2(rawCodec{}))
			wantCode(t, err, codes.Internal, "unmarshal")
		}
	})

	t.Run("garbage bytes are cut off on every port", func(t *testing.T) {
		for _, port := range []struct{ name, addr string }{{"grpc", node.GRPCAddr}, {"https", node.HTTPAddr}, {"cluster", node.ClusterAddr}} {
			if err := sendGarbage(port.addr, randomBytes(t, 64<<10)); err != nil {
				t.Fatalf("%s port %s: %v", port.name, port.addr, err)
			}
		}
	})

	t.Run("slow-loris headers are cut off after read_header_timeout", func(t *testing.T) {
		// After a completed handshake: the request line, then a header one byte at a time.
		tlsConn, err := tls.Dial("tcp", node.HTTPAddr, c.TLSConfig(nil))
		if err != nil {
			t.Fatal(err)
		}
		got, err := trickle(tlsConn, "GET /healthz HTTP/1.1\r\nHost: x\r\n", "X-Slow: "+strings.Repeat("a", 4096))
		if err != nil {
			t.Fatalf("after the handshake: %v", err)
		}
		if strings.HasPrefix(got, "HTTP/1.1 200") {
			t.Fatalf("a trickled request was answered: %q", got)
		}
		// Before the handshake: a client hello one byte at a time.
		raw, err := net.Dial("tcp", node.HTTPAddr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := trickle(raw, "", string(randomBytes(t, 4096))); err != nil {
			t.Fatalf("during the handshake: %v", err)
		}
	})

	t.Run("no client certificate is Unauthenticated or PermissionDenied", func(t *testing.T) {
		_, err := anon.Refresh(ctx, &meshcav1.RefreshRequest{Csr: []byte("x")})
		wantCode(t, err, codes.Unauthenticated, "client certificate")
		_, err = meshcav1.NewAdminClient(dial(nil)).ListDomains(ctx, &meshcav1.ListDomainsRequest{})
		wantCode(t, err, codes.Unauthenticated, "client certificate")
		st, err := secretservice.NewSecretDiscoveryServiceClient(dial(nil)).StreamSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{c.TrustDomain().Name()}}); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		_, err = st.Recv()
		wantCode(t, err, codes.PermissionDenied, "client certificate")
	})

	sds := secretservice.NewSecretDiscoveryServiceClient(dial(&attackerCert))
	streamsOpen := func(want float64) {
		t.Helper()
		c.Poll(fmt.Sprintf("%s: %v SDS streams open", node.ID, want), func() error {
			if v := metric("meshca_sds_streams_open"); v != want {
				return fmt.Errorf("meshca_sds_streams_open %v", v)
			}
			return nil
		})
	}

	t.Run("10000 resource names on the bundle SDS are ResourceExhausted", func(t *testing.T) {
		// Names that fit the message limit: refused by the SDS server's own bound on names,
		// and the stream is gone.
		short := make([]string, 10000)
		for i := range short {
			short[i] = fmt.Sprint(i)
		}
		st, err := sds.StreamSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "x"}, TypeUrl: resource.SecretType, ResourceNames: short}); err != nil {
			t.Fatal(err)
		}
		_, err = st.Recv()
		wantCode(t, err, codes.ResourceExhausted, "resource_names: 10000 names")
		sampleRSS()
		streamsOpen(0)
		// Names past the message limit: ResourceExhausted.
		long := make([]string, 10000)
		for i := range long {
			long[i] = fmt.Sprintf("spiffe://%s/ns/attack/sa/%d", c.TrustDomain().Name(), i)
		}
		st, err = sds.StreamSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: long}); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		_, err = st.Recv()
		wantCode(t, err, codes.ResourceExhausted, "larger than max")
	})

	t.Run("streams beyond max_streams_per_caller are ResourceExhausted", func(t *testing.T) {
		sctx, scancel := context.WithCancel(ctx)
		defer scancel()
		for i := range maxStreams {
			st, err := sds.StreamSecrets(sctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{"held"}}); err != nil {
				t.Fatal(err)
			}
			streamsOpen(float64(i + 1))
		}
		st, err := sds.StreamSecrets(sctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{"one-too-many"}}); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		_, err = st.Recv()
		wantCode(t, err, codes.ResourceExhausted, "limits.max_streams_per_caller", attackerID.String())
		// Another caller is not held back by this one's streams.
		adminSDS, err := secretservice.NewSecretDiscoveryServiceClient(dial(&adminCert)).StreamSecrets(sctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := adminSDS.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{"held"}}); err != nil {
			t.Fatal(err)
		}
		streamsOpen(maxStreams + 1)
		scancel()
		streamsOpen(0)
	})

	t.Run("a looping Register hits the per-source rate limit", func(t *testing.T) {
		refusedBefore, err := c.Metric(node, "meshca_refused_total", map[string]string{"reason": "rate_limited"})
		if err != nil {
			refusedBefore = 0 // the series appears with the first refusal
		}
		start := time.Now()
		passed := 0
		for {
			_, err := anon.Register(ctx, &meshcav1.RegisterRequest{})
			if status.Code(err) == codes.ResourceExhausted {
				wantCode(t, err, codes.ResourceExhausted, "limits.issue_per_source_per_minute")
				break
			}
			wantCode(t, err, codes.InvalidArgument, "provider: required")
			passed++
			if passed > 10*perSource {
				t.Fatalf("%d registrations from one address passed a limit of %d a minute", passed, perSource)
			}
		}
		// The bucket holds perSource and refills perSource a minute while the loop runs.
		refill := int(time.Since(start).Seconds()*perSource/60) + 1
		if passed < perSource || passed > perSource+refill {
			t.Fatalf("%d registrations passed before the limit, want %d..%d", passed, perSource, perSource+refill)
		}
		logBefore := len(node.Log())
		const more = 1000
		start = time.Now()
		passed = 0
		for range more {
			_, err := anon.Register(ctx, &meshcav1.RegisterRequest{})
			if status.Code(err) != codes.ResourceExhausted {
				passed++
			}
		}
		if refill := int(time.Since(start).Seconds()*perSource/60) + 1; passed > refill {
			t.Fatalf("%d of %d registrations passed an empty bucket refilling %d a minute", passed, more, perSource)
		}
		refused, err := c.Metric(node, "meshca_refused_total", map[string]string{"reason": "rate_limited"})
		if err != nil || refused-refusedBefore < more-float64(passed) {
			t.Fatalf("meshca_refused_total{reason=rate_limited} %v (before %v), want %d more: %v", refused, refusedBefore, more-passed, err)
		}
		// The refusals are counted, not logged one by one.
		if grew := len(node.Log()) - logBefore; grew > 100*1024 {
			t.Fatalf("the node's log grew %d bytes over %d refused registrations", grew, more)
		}
		sampleRSS()
	})

	// The node survived as the same process, still serves the well-behaved client, and gives
	// back what the attacks took.
	c.Poll("the well-behaved client makes progress after the attacks", func() error {
		if good.rounds() < roundsBefore+2 {
			return fmt.Errorf("%d rounds", good.rounds())
		}
		return nil
	})
	stopLoop()
	<-loopDone
	if err := good.failure(); err != nil {
		t.Fatalf("the well-behaved client failed during the attacks: %v", err)
	}
	if !node.Running() {
		t.Fatalf("%s is no longer running", node.ID)
	}
	hc := c.HTTPClient(nil)
	resp, err := hc.Get(node.URL("/healthz"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	hc.CloseIdleConnections()
	if resp.StatusCode != 200 {
		t.Fatalf("/healthz: %s", resp.Status)
	}
	if v := metric("process_start_time_seconds"); v != startTime {
		t.Fatalf("process_start_time_seconds %v, was %v: the node restarted", v, startTime)
	}
	sampleRSS()
	if maxRSS >= rssBound {
		t.Fatalf("resident memory reached %.0f MiB, bound %d MiB", maxRSS/(1<<20), rssBound>>20)
	}
	for _, cc := range attackConns {
		cc.Close()
	}
	c.Poll("goroutines settle", func() error {
		if v := metric("go_goroutines"); v > baseGoroutines+goroutineSlack {
			return fmt.Errorf("go_goroutines %v, %v before the attacks", v, baseGoroutines)
		}
		return nil
	})
	t.Logf("%s survived; well-behaved rounds %d, max RSS %.1f MiB, goroutines before %v after %v",
		node.ID, good.rounds(), maxRSS/(1<<20), baseGoroutines, metric("go_goroutines"))
}

// wantCode asserts a gRPC status code and parts of its message.
func wantCode(t testing.TB, err error, code codes.Code, parts ...string) {
	t.Helper()
	s, _ := status.FromError(err)
	if err == nil || s.Code() != code {
		t.Fatalf("error %v, want %v", err, code)
	}
	for _, p := range parts {
		if !strings.Contains(s.Message(), p) {
			t.Fatalf("message %q does not name %q", s.Message(), p)
		}
	}
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// rawCodec sends and receives bytes as they are, to put garbage in a well-formed gRPC frame.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*(v.(*[]byte)) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

// sendGarbage writes garbage to addr and reads until the server closes the connection; it
// fails only when the server still holds the connection open after clustertest.WaitTimeout.
func sendGarbage(addr string, garbage []byte) error {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(clustertest.WaitTimeout)); err != nil {
		return err
	}
	// The server may close before it read everything: a write error is the same outcome.
	_, _ = conn.Write(garbage)
	_, err = io.Copy(io.Discard, conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("the server still held the connection after %s", clustertest.WaitTimeout)
	}
	return nil
}

// trickle writes head, then tail one byte every 50 ms, until the server closes the
// connection; it returns what the server sent. It fails when the server read the whole tail
// or still held the connection after clustertest.WaitTimeout.
func trickle(conn net.Conn, head, tail string) (string, error) {
	defer conn.Close()
	if err := conn.SetReadDeadline(time.Now().Add(clustertest.WaitTimeout)); err != nil {
		return "", err
	}
	if _, err := io.WriteString(conn, head); err != nil {
		return "", err
	}
	var got bytes.Buffer
	closed := make(chan error, 1)
	go func() {
		_, err := io.Copy(&got, bufio.NewReader(conn))
		closed <- err
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case err := <-closed:
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return got.String(), fmt.Errorf("the server still held the connection after %s", clustertest.WaitTimeout)
			}
			return got.String(), nil
		case <-tick.C:
			if i >= len(tail) {
				return "", fmt.Errorf("the server read all %d trickled bytes without closing the connection", len(tail))
			}
			// A write error means the server closed; the reader reports it.
			_, _ = conn.Write([]byte{tail[i]})
		}
	}
}

// goodClient registers and reads the bundle through one node from 127.0.0.2, and records
// the first error.
type goodClient struct {
	t     testing.TB
	c     *clustertest.Cluster
	admin meshcav1.AdminClient
	id    meshcav1.IdentityClient

	mu   sync.Mutex
	n    int
	fail error
}

// maxGoodRegistrations keeps the well-behaved client's registrations under the per-source
// limit of its own address.
const maxGoodRegistrations = perSource / 4

func newGoodClient(t testing.TB, c *clustertest.Cluster, n *clustertest.Node, admin meshcav1.AdminClient) *goodClient {
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	cc, err := grpc.NewClient(n.GRPCAddr,
		grpc.WithTransportCredentials(credentials.NewTLS(c.TLSConfig(nil))),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dialer.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &goodClient{t: t, c: c, admin: admin, id: meshcav1.NewIdentityClient(cc)}
}

// round reads the bundle and, while under its budget, registers a new instance.
func (g *goodClient) round(ctx context.Context) {
	g.mu.Lock()
	n := g.n
	g.mu.Unlock()
	err := g.do(ctx, n)
	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil && g.fail == nil && ctx.Err() == nil {
		g.fail = fmt.Errorf("round %d: %w", n, err)
	}
	if err == nil {
		g.n++
	}
}

func (g *goodClient) do(ctx context.Context, n int) error {
	b, err := g.id.GetBundle(ctx, &meshcav1.GetBundleRequest{})
	if err != nil {
		return fmt.Errorf("GetBundle: %w", err)
	}
	if b.GetBundle() == "" {
		return errors.New("GetBundle: empty bundle")
	}
	if n >= maxGoodRegistrations {
		return nil
	}
	inst := fmt.Sprintf("good-%d", n)
	tok, err := g.admin.IssueRegisterToken(ctx, &meshcav1.IssueRegisterTokenRequest{Domain: "sports", Service: "api", InstanceId: inst})
	if err != nil {
		return fmt.Errorf("IssueRegisterToken: %w", err)
	}
	csr, err := csrFor(g.c.TrustDomain(), inst)
	if err != nil {
		return err
	}
	resp, err := g.id.Register(ctx, &meshcav1.RegisterRequest{Provider: controlplane.BuiltinProvider, Domain: "sports", Service: "api", Csr: csr, AttestationData: []byte(tok.GetToken())})
	if err != nil {
		return fmt.Errorf("Register %s: %w", inst, err)
	}
	if resp.GetCertificate() == "" {
		return fmt.Errorf("Register %s: no certificate", inst)
	}
	return nil
}

// loop runs rounds until ctx ends or a round fails.
func (g *goodClient) loop(ctx context.Context) {
	for ctx.Err() == nil && g.failure() == nil {
		g.round(ctx)
	}
}

func (g *goodClient) rounds() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}

func (g *goodClient) failure() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fail
}

// csrFor is a CSR of sports.api instance id through the built-in provider, with a new key.
func csrFor(td spiffeid.TrustDomain, id string) ([]byte, error) {
	names, err := policy.WorkloadRequest{TrustDomain: td.Name(), Domain: "sports", Service: "api", ProviderDNSSuffix: suffix, InstanceID: id}.Names()
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	uri, err := url.Parse(names.SPIFFEID.String())
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: names.CommonName},
		DNSNames: []string{names.ServiceDNS, names.InstanceDNS},
		URIs:     []*url.URL{uri},
	}, key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}
