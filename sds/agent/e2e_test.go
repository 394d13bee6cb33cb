package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.yaml.in/yaml/v3"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/controlplane/confirm"
	"github.com/meshca/meshca/examples/demo"
	"github.com/meshca/meshca/internal/clustertest"
	"github.com/meshca/meshca/internal/testenv"
	"github.com/meshca/meshca/sds"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Main(m)) }

// The provider of the real-cluster tests and its DNS suffix.
const (
	e2eProvider = "sys.auth.e2e"
	e2eSuffix   = "e2e.mesh.test"
	// builtinE2ESuffix is the DNS suffix of the CA's own provider (register and service key
	// tokens) on the real cluster.
	builtinE2ESuffix = "meshca.mesh.test"
	// e2eTTL is the certificate lifetime the agent asks the real cluster for: short, so that
	// rotations happen every few seconds of real time.
	e2eTTL = 6 * time.Second
)

// startRealCluster starts three meshca-server processes with a provider served by the test
// (its server certificate minted by the cluster's CA for its own identity) that confirms
// instances whose identity document is "doc:<instance id>", and the services the tests use.
func startRealCluster(t *testing.T) *clustertest.Cluster {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	confirmURL := "https://" + ln.Addr().String() + "/confirm"
	c := clustertest.Start(t, clustertest.Options{
		Nodes: 3,
		Providers: []controlplane.ProviderConfig{
			{Name: e2eProvider, DNSSuffix: e2eSuffix, ConfirmEndpoint: confirmURL},
			{Name: BuiltinProvider, DNSSuffix: builtinE2ESuffix},
		},
		Tune: func(_ int, cfg *controlplane.Config) {
			cfg.Services = []controlplane.ServiceConfig{
				{Name: "sports.api", LaunchGrants: []string{e2eProvider}},
				{Name: "demo.server", LaunchGrants: []string{e2eProvider}},
				{Name: "demo.client", LaunchGrants: []string{e2eProvider}},
				{Name: "sports.web", LaunchGrants: []string{BuiltinProvider}},
				{Name: "sports.batch", LaunchGrants: []string{BuiltinProvider}},
			}
		},
	})
	id, err := controlplane.ServiceSPIFFEID(c.TrustDomain(), e2eProvider)
	if err != nil {
		t.Fatal(err)
	}
	cert := c.IssueCert(id, clustertest.CertOptions{TTL: time.Hour})
	svid := &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert.Leaf}, PrivateKey: cert.PrivateKey.(crypto.Signer)}
	nodes := tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		if id.MemberOf(c.TrustDomain()) && strings.HasPrefix(id.Path(), DefaultServerIDPrefix) {
			return nil
		}
		return errors.New("not a CA node: " + id.String())
	})
	srv := &http.Server{
		TLSConfig:         tlsconfig.MTLSServerConfig(svid, c.Bundle(), nodes),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(io.LimitReader(r.Body, confirm.MaxRequestBytes))
			req, err := confirm.DecodeRequest(body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			if string(req.AttestationData) != "doc:"+req.InstanceID {
				_, _ = io.WriteString(w, `{"allowed": false, "reason": "unknown identity document"}`)
				return
			}
			_, _ = io.WriteString(w, `{"allowed": true}`)
		}),
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	return c
}

// realConfig is an agent for three identities of the e2e provider: sports.api mapped by the
// test's uid on the shared sockets, and demo.server and demo.client on sockets of their own.
func realConfig(t *testing.T, c *clustertest.Cluster, dir, instance string) *Config {
	t.Helper()
	bundle, err := c.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "bundle.pem"), bundle, 0o644)
	var servers []string
	for _, n := range c.Nodes {
		servers = append(servers, n.GRPCAddr)
	}
	identity := func(domain, service, instance string) IdentityConfig {
		doc := filepath.Join(dir, domain+"."+service+".doc")
		write(t, doc, []byte("doc:"+instance+"\n"), 0o600)
		return IdentityConfig{
			Domain: domain, Service: service, InstanceID: instance, ProviderDNSSuffix: e2eSuffix, ServerAuth: true,
			Attestation: AttestationConfig{Provider: e2eProvider, IdentityDocument: &DocumentConfig{File: doc}},
		}
	}
	api := identity("sports", "api", "pod-"+instance)
	api.UIDs = []uint32{uint32(os.Getuid())}
	server := identity("demo", "server", "server-"+instance)
	server.Socket = filepath.Join(dir, "server.sock")
	client := identity("demo", "client", "client-"+instance)
	client.Socket = filepath.Join(dir, "client.sock")
	cfg := &Config{
		TrustDomain:       c.TrustDomain().Name(),
		Servers:           servers,
		TrustBundle:       filepath.Join(dir, "bundle.pem"),
		StateDir:          filepath.Join(dir, "state"),
		FilesDir:          filepath.Join(dir, "files"),
		SDSSocket:         filepath.Join(dir, "sds.sock"),
		WorkloadAPISocket: filepath.Join(dir, "wl.sock"),
		AdminSocket:       filepath.Join(dir, "admin.sock"),
		TTL:               NewDuration(e2eTTL),
		Identities:        []IdentityConfig{api, server, client},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// issuedOnCluster sums a flow's meshca_issued_total over the running nodes.
func issuedOnCluster(t *testing.T, c *clustertest.Cluster, flow string) float64 {
	t.Helper()
	sum := 0.0
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		v, err := c.Metric(n, "meshca_issued_total", map[string]string{"flow": flow})
		if err != nil {
			t.Fatalf("%s: %v", n.ID, err)
		}
		sum += v
	}
	return sum
}

func TestAgentOnARealThreeNodeCluster(t *testing.T) {
	testenv.SkipIfShort(t, "starts a real three-node cluster")
	c := startRealCluster(t)
	dir := shortDir(t)
	cfg := realConfig(t, c, dir, "1.e2e")
	apiID := spiffeid.RequireFromString("spiffe://" + c.TrustDomain().Name() + "/ns/sports/sa/api")
	a := startAgent(t, cfg, nil)

	e := openEnvoy(t, cfg.SDSSocket, sds.NameDefault, sds.NameRootCA)
	first := e.recv()
	t.Run("default and ROOTCA: the key matches the certificate, the chain verifies to ROOTCA", func(t *testing.T) {
		if len(first) != 2 {
			t.Fatalf("%d secrets, want default and ROOTCA", len(first))
		}
		chain := certOf(t, first[sds.NameDefault])
		if err := verifyChain(chain, rootsOf(t, first[sds.NameRootCA]), time.Now()); err != nil {
			t.Fatal(err)
		}
		if id, err := x509svid.IDFromCert(chain[0]); err != nil || id != apiID {
			t.Fatalf("SPIFFE ID %v %v, want %s", id, err, apiID)
		}
		if got := chain[0].NotAfter.Sub(chain[0].NotBefore); got > e2eTTL+2*time.Minute {
			t.Fatalf("lifetime %s: the requested ttl %s was not honoured", got, e2eTTL)
		}
	})
	t.Run("a rotation is pushed on the same stream without asking again", func(t *testing.T) {
		old := serialOf(t, first[sds.NameDefault])
		got := e.recvUntil("a rotated certificate", func(m map[string]*tlsv3.Secret) bool {
			return m[sds.NameDefault] != nil && serialOf(t, m[sds.NameDefault]) != old
		})
		if err := verifyChain(certOf(t, got[sds.NameDefault]), rootsOf(t, got[sds.NameRootCA]), time.Now()); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a go-spiffe X509Source sees the rotation", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), clustertest.WaitTimeout)
		defer cancel()
		src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+cfg.WorkloadAPISocket)))
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		svid, err := src.GetX509SVID()
		if err != nil || svid.ID != apiID {
			t.Fatalf("X509Source: %v %v", svid, err)
		}
		before := svid.Certificates[0].SerialNumber
		for {
			if err := src.WaitUntilUpdated(ctx); err != nil {
				t.Fatalf("no rotation seen by the X509Source: %v", err)
			}
			if now, err := src.GetX509SVID(); err == nil && now.Certificates[0].SerialNumber.Cmp(before) != 0 {
				break
			}
		}
	})
	t.Run("the demo completes 1,000 mTLS requests across three rotations without a failed handshake", func(t *testing.T) {
		runDemo(t, cfg, c.TrustDomain())
	})
	t.Run("register and service key tokens from the admin API register; a revoked instance is no longer served", func(t *testing.T) {
		runTokenFlows(t, c)
	})
	t.Run("the binaries: meshca-agent, demo-server and demo-client as processes", func(t *testing.T) {
		runBinaries(t, c)
	})

	// Restart the agent from its state dir (in the test itself, so it outlives the subtests).
	registered := issuedOnCluster(t, c, controlplane.FlowRegister)
	a.stop()
	b := startAgent(t, cfg, nil)
	t.Run("a restart refreshes instead of registering", func(t *testing.T) {
		poll(t, "refreshes by the restarted agent", func() bool {
			return agentCount(t, b, "meshca_agent_rotations_total", "refresh") >= 2
		})
		if n := agentCount(t, b, "meshca_agent_rotations_total", "register"); n != 0 {
			t.Fatalf("the restarted agent registered %v times", n)
		}
		if now := issuedOnCluster(t, c, controlplane.FlowRegister); now != registered {
			t.Fatalf("the cluster issued %v registrations across the restart, want %v", now, registered)
		}
	})
	t.Run("a refresh fails over when the first CA node is down", func(t *testing.T) {
		c.Kill(c.Nodes[0])
		before := agentCount(t, b, "meshca_agent_rotations_total", "refresh")
		poll(t, "two refreshes with n1 down", func() bool {
			return agentCount(t, b, "meshca_agent_rotations_total", "refresh") >= before+2
		})
		if !strings.Contains(b.logs.String(), "CA node failed, trying the next") {
			t.Error("the failover is not logged")
		}
		poll(t, "the bundle stream on a live node", func() bool {
			return strings.Contains(b.logs.String(), "bundle stream from CA node ended")
		})
	})
}

// agentCount sums a counter of the agent's registry over the series whose flow label is flow.
func agentCount(t *testing.T, r *runningAgent, name, flow string) float64 {
	t.Helper()
	families, err := r.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "flow" && l.GetValue() == flow {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// runDemo runs the demo server (material over SDS) and client (over the Workload API) on their
// identity sockets until the client made 1,000 requests and both saw three rotations.
func runDemo(t *testing.T, cfg *Config, td spiffeid.TrustDomain) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*clustertest.WaitTimeout)
	defer cancel()
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	clientID := "spiffe://" + td.Name() + "/ns/demo/sa/client"
	serverID := "spiffe://" + td.Name() + "/ns/demo/sa/server"
	srv, err := demo.NewServer(ctx, demo.ServerConfig{
		Listen:      "127.0.0.1:0",
		Source:      demo.SourceConfig{Kind: demo.SourceSDS, SDSSocket: cfg.Identities[1].Socket},
		AllowedPeer: clientID,
		Logger:      logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	srvCtx, stopSrv := context.WithCancel(ctx)
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(srvCtx) }()
	cl, err := demo.NewClient(ctx, demo.ClientConfig{
		URL: "https://" + srv.Addr() + "/hello", ServerID: serverID,
		Source: demo.SourceConfig{Kind: demo.SourceWorkloadAPI, WorkloadAPIAddr: "unix://" + cfg.Identities[2].Socket},
		Logger: logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	clCtx, stopClient := context.WithCancel(ctx)
	clDone := make(chan error, 1)
	go func() { clDone <- cl.Run(clCtx) }()

	deadline := time.Now().Add(3 * clustertest.WaitTimeout)
	for {
		cs, ss := cl.Stats(), srv.Stats()
		if cs.Requests >= 1000 && cs.Rotations >= 3 && ss.Rotations >= 3 {
			break
		}
		if cs.HandshakeFailures > 0 || ss.HandshakeFailures > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling interval of a bounded wait
	}
	stopClient()
	<-clDone
	_ = cl.Close()
	stopSrv()
	if err := <-srvDone; err != nil {
		t.Errorf("server: %v", err)
	}
	cs, ss := cl.Stats(), srv.Stats()
	t.Logf("client %+v", cs)
	t.Logf("server %+v", ss)
	if cs.HandshakeFailures != 0 || ss.HandshakeFailures != 0 || cs.Failures != 0 {
		t.Fatalf("failed handshakes: client %d, server %d; failed requests %d\n%s", cs.HandshakeFailures, ss.HandshakeFailures, cs.Failures, logs)
	}
	if cs.Requests < 1000 || cs.Rotations < 3 || ss.Rotations < 3 {
		t.Fatalf("within the deadline: %d requests, client rotations %d, server rotations %d\n%s", cs.Requests, cs.Rotations, ss.Rotations, logs)
	}
	if ss.Requests < cs.Requests {
		t.Fatalf("server answered %d of the client's %d requests", ss.Requests, cs.Requests)
	}
	if strings.Count(logs.String(), "demo: rotation") < 6 {
		t.Fatalf("the rotations are not logged:\n%s", logs)
	}
}

// goBuild builds a main package of this module without cgo into dir.
func goBuild(t *testing.T, dir, pkg string) string {
	t.Helper()
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, "github.com/meshca/meshca/"+pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// process is a started binary whose output is collected.
type process struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan error
}

func startProcess(t *testing.T, bin string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(bin, args...), out: &lockedBuffer{}, done: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(bin), p.out)
		}
	})
	return p
}

// stop sends SIGTERM and waits for the exit, within a bound; it returns the exit error.
func (p *process) stop(t *testing.T) error {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		return err
	case <-time.After(clustertest.WaitTimeout):
		t.Fatalf("%s did not stop on SIGTERM", p.cmd.Path)
		return nil
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// demoStats reads a demo workload's /stats.
func demoStats(addr string) (demo.Stats, error) {
	var st demo.Stats
	resp, err := http.Get("http://" + addr + "/stats")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

// runBinaries runs the built meshca-agent with a YAML config against the cluster, and the demo
// workloads as processes on its identity sockets, until the client made 300 requests across two
// rotations; then SIGTERM stops each with exit status 0 and the agent removes its sockets.
func runBinaries(t *testing.T, c *clustertest.Cluster) {
	bin := t.TempDir()
	agentBin := clustertest.Binary(t, "meshca-agent")
	serverBin := goBuild(t, bin, "examples/demo-server")
	clientBin := goBuild(t, bin, "examples/demo-client")

	dir := shortDir(t)
	cfg := realConfig(t, c, dir, "2.e2e")
	raw, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "agent.yaml"), raw, 0o600)
	agentProc := startProcess(t, agentBin, "-config", filepath.Join(dir, "agent.yaml"), "-log-level", "debug")
	poll(t, "the agent ready on its admin socket", func() bool {
		if _, err := os.Stat(cfg.AdminSocket); err != nil {
			return false
		}
		code, _ := adminGet(t, cfg.AdminSocket, ReadyPath)
		return code == http.StatusOK
	})

	td := c.TrustDomain().Name()
	listen, serverStats, clientStats := freeAddr(t), freeAddr(t), freeAddr(t)
	serverProc := startProcess(t, serverBin, "-listen", listen, "-source", "sds", "-sds-socket", cfg.Identities[1].Socket,
		"-peer-id", "spiffe://"+td+"/ns/demo/sa/client", "-stats", serverStats)
	// The server listens before it serves /stats.
	poll(t, "demo-server listening", func() bool { _, err := demoStats(serverStats); return err == nil })
	clientProc := startProcess(t, clientBin, "-url", "https://"+listen+"/hello", "-server-id", "spiffe://"+td+"/ns/demo/sa/server",
		"-interval", "10ms", "-source", "workload-api", "-workload-api", "unix://"+cfg.Identities[2].Socket, "-stats", clientStats)
	var cs, ss demo.Stats
	poll(t, "300 requests across two rotations", func() bool {
		var err1, err2 error
		cs, err1 = demoStats(clientStats)
		ss, err2 = demoStats(serverStats)
		return err1 == nil && err2 == nil && cs.Requests >= 300 && cs.Rotations >= 2 && ss.Rotations >= 2 ||
			cs.HandshakeFailures > 0 || ss.HandshakeFailures > 0
	})
	if err := clientProc.stop(t); err != nil {
		t.Errorf("demo-client exit: %v", err)
	}
	if err := serverProc.stop(t); err != nil {
		t.Errorf("demo-server exit: %v", err)
	}
	if cs.HandshakeFailures != 0 || ss.HandshakeFailures != 0 || cs.Failures != 0 {
		t.Fatalf("client %+v server %+v", cs, ss)
	}
	if !strings.Contains(clientProc.out.String(), "demo: rotation") || !strings.Contains(serverProc.out.String(), "demo: rotation") {
		t.Error("the demo processes do not log their rotations")
	}
	if err := agentProc.stop(t); err != nil {
		t.Fatalf("meshca-agent exit after SIGTERM: %v", err)
	}
	for _, sock := range []string{cfg.SDSSocket, cfg.WorkloadAPISocket, cfg.AdminSocket, cfg.Identities[1].Socket} {
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Errorf("socket %s left behind: %v", sock, err)
		}
	}
	for _, f := range []string{sds.CertFile, sds.KeyFile, sds.BundleFile} {
		if _, err := os.Stat(filepath.Join(cfg.FilesDir, "demo.server", f)); err != nil {
			t.Errorf("files_dir: %v", err)
		}
	}
	assertMode(t, filepath.Join(cfg.FilesDir, "demo.server", sds.KeyFile), 0o600)
}

// runTokenFlows registers one identity with a register token and one with a service key token,
// both from the admin API, then revokes the first through the admin API.
func runTokenFlows(t *testing.T, c *clustertest.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), clustertest.WaitTimeout)
	defer cancel()
	adminCert := c.AdminCert()
	admin := meshcav1.NewAdminClient(c.Dial(c.Leader(), &adminCert))
	tok, err := admin.IssueRegisterToken(ctx, &meshcav1.IssueRegisterTokenRequest{Domain: "sports", Service: "web", InstanceId: "web-1.e2e"})
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AddServiceKey(ctx, &meshcav1.AddServiceKeyRequest{Identity: "sports.batch", Key: &meshcav1.ServiceKey{Version: "1", PublicKey: pub}}); err != nil {
		t.Fatal(err)
	}

	dir := shortDir(t)
	bundle, err := c.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "bundle.pem"), bundle, 0o644)
	write(t, filepath.Join(dir, "web.token"), []byte(tok.GetToken()+"\n"), 0o600)
	if err := signer.WritePlaintextFile(filepath.Join(dir, "batch.key"), key); err != nil {
		t.Fatal(err)
	}
	var servers []string
	for _, n := range c.Nodes {
		servers = append(servers, n.GRPCAddr)
	}
	cfg := &Config{
		TrustDomain: c.TrustDomain().Name(), Servers: servers,
		TrustBundle: filepath.Join(dir, "bundle.pem"), StateDir: filepath.Join(dir, "state"),
		AdminSocket: filepath.Join(dir, "admin.sock"), TTL: NewDuration(e2eTTL),
		Identities: []IdentityConfig{
			{Domain: "sports", Service: "web", InstanceID: "web-1.e2e", ProviderDNSSuffix: builtinE2ESuffix, Socket: filepath.Join(dir, "web.sock"),
				Attestation: AttestationConfig{RegisterTokenFile: filepath.Join(dir, "web.token")}},
			{Domain: "sports", Service: "batch", InstanceID: "batch-1.e2e", ProviderDNSSuffix: builtinE2ESuffix, Socket: filepath.Join(dir, "batch.sock"),
				Attestation: AttestationConfig{ServiceKey: &ServiceKeyConfig{KeyFile: filepath.Join(dir, "batch.key"), KeyVersion: "1"}}},
		},
	}
	cfg.SetDefaults()
	a := startAgent(t, cfg, nil)
	web := spiffeid.RequireFromString("spiffe://" + c.TrustDomain().Name() + "/ns/sports/sa/web")
	batch := spiffeid.RequireFromString("spiffe://" + c.TrustDomain().Name() + "/ns/sports/sa/batch")
	poll(t, "both identities registered and refreshed", func() bool {
		return a.servedSerial(web) != "" && a.servedSerial(batch) != "" &&
			agentCount(t, a, "meshca_agent_rotations_total", "register") == 2 &&
			agentCount(t, a, "meshca_agent_rotations_total", "refresh") >= 2
	})

	if _, err := admin.RevokeInstance(ctx, &meshcav1.RevokeInstanceRequest{Provider: BuiltinProvider, InstanceId: "web-1.e2e",
		Reason: meshcav1.RevocationReason_REVOCATION_REASON_KEY_COMPROMISE, Detail: "agent e2e"}); err != nil {
		t.Fatal(err)
	}
	poll(t, "the revoked instance withdrawn", func() bool { return a.servedSerial(web) == "" })
	poll(t, "the spent register token noticed", logged(a, "register token already used"))
	if !strings.Contains(a.logs.String(), `level=ERROR msg="agent: CA refused to refresh`) {
		t.Error("the refusal is not logged as an error")
	}
	if agentCount(t, a, "meshca_agent_rotations_total", "register") != 2 {
		t.Error("the agent registered again with a spent register token")
	}
	if a.servedSerial(batch) == "" {
		t.Error("the other identity stopped being served")
	}
}
