// Package clustertest runs real meshca-server processes for tests: it builds the binaries
// once per test binary, writes a config per node, starts N nodes on 127.0.0.1 with free ports
// and data directories in the test's temporary directory, waits until they are ready, finds
// the leader, mints certificates with the cluster's CA key (an admin client certificate, a
// provider's server certificate), kills, stops and restarts nodes, and stops everything at the
// end of the test.
//
// A test binary that uses it should call Main from TestMain, so the built binaries are
// removed when it exits:
//
//	func TestMain(m *testing.M) { os.Exit(clustertest.Main(m)) }
package clustertest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/controlplane"
)

// WaitTimeout bounds every wait of the harness (a node becoming ready, a leader elected, a
// process exiting). Nothing measures how long a wait took.
const WaitTimeout = 60 * time.Second

// DefaultTrustDomain is the trust domain of a cluster whose Options name none.
const DefaultTrustDomain = "mesh.test"

var (
	buildMu  sync.Mutex
	buildDir string
	built    = map[string]string{}
)

// Main runs the tests and removes the binaries built for them. Call it from TestMain.
func Main(m *testing.M) int {
	code := m.Run()
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	return code
}

// Binary builds cmd/<name> of this module (meshca-server with cgo, the others without) once
// per test binary, without the race detector, and returns its path.
func Binary(t testing.TB, name string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[name]; ok {
		return p
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "meshca-clustertest-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = d
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if p, err := exec.LookPath("go"); err == nil {
		gobin = p
	}
	out := filepath.Join(buildDir, name)
	cmd := exec.Command(gobin, "build", "-o", out, "github.com/meshca/meshca/cmd/"+name)
	cgo := "0"
	if name == "meshca-server" {
		cgo = "1"
	}
	cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build cmd/%s: %v\n%s", name, err, b)
	}
	built[name] = out
	return out
}

// Options shape a cluster.
type Options struct {
	// Nodes is how many meshca-server processes to run; 3 when zero.
	Nodes int
	// TrustDomain is the cluster's; DefaultTrustDomain when empty.
	TrustDomain string
	// Providers are seeded at bootstrap.
	Providers []controlplane.ProviderConfig
	// Admins are system administrators besides AdminID.
	Admins []string
	// Tune adjusts node i's config (0-based) before it is written.
	Tune func(i int, cfg *controlplane.Config)
	// Env is added to every node's environment (e.g. a SoftHSM2 token's).
	Env []string
	// NodeEnv, when set, is added to node i's environment after Env (e.g. its own token).
	NodeEnv func(i int) []string
}

// Cluster is a running set of meshca-server processes that bootstrapped together.
type Cluster struct {
	t       testing.TB
	bin     string
	env     []string
	td      spiffeid.TrustDomain
	dir     string
	caDir   string
	kekPath string
	kek     signer.KEK
	// Nodes are the cluster's nodes, n1 first.
	Nodes []*Node

	caOnce sync.Once
	ca     *CA
	caErr  error
}

// Node is one meshca-server process.
type Node struct {
	// ID is the node id (n1, n2, ...).
	ID string
	// GRPCAddr, HTTPAddr and ClusterAddr are where it listens on 127.0.0.1.
	GRPCAddr, HTTPAddr, ClusterAddr string
	// Config is its configuration, written to ConfigPath.
	Config     *controlplane.Config
	ConfigPath string
	// LogPath receives its standard output and error (appended across restarts).
	LogPath string
	// Env is added to its environment after the cluster's (Options.NodeEnv).
	Env []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// AdminID is the SPIFFE ID of the system administrator every cluster has; AdminCert mints its
// client certificate.
func (c *Cluster) AdminID() spiffeid.ID {
	return spiffeid.RequireFromSegments(c.td, "ns", "sys.admin", "sa", "clustertest")
}

// Start builds meshca-server (once), starts opts.Nodes processes that bootstrap one cluster
// sharing one self-signed CA directory, and waits until every node is ready. Everything is
// stopped and removed at the end of the test.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = DefaultTrustDomain
	}
	c := &Cluster{t: t, bin: Binary(t, "meshca-server"), env: opts.Env, td: spiffeid.RequireTrustDomainFromString(opts.TrustDomain), dir: t.TempDir()}
	c.caDir = filepath.Join(c.dir, "ca")
	c.kekPath = filepath.Join(c.dir, "kek")
	raw := make([]byte, signer.KEKSize)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.kekPath, []byte(hex.EncodeToString(raw)), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if c.kek, err = signer.NewKEK(raw); err != nil {
		t.Fatal(err)
	}
	ports := FreePorts(t, 3*opts.Nodes)
	var peers []controlplane.PeerConfig
	for i := range opts.Nodes {
		n := &Node{
			ID:          fmt.Sprintf("n%d", i+1),
			GRPCAddr:    ports[3*i],
			HTTPAddr:    ports[3*i+1],
			ClusterAddr: ports[3*i+2],
		}
		c.Nodes = append(c.Nodes, n)
		peers = append(peers, controlplane.PeerConfig{ID: n.ID, Address: n.ClusterAddr})
	}
	for i, n := range c.Nodes {
		ndir := filepath.Join(c.dir, n.ID)
		if err := os.MkdirAll(ndir, 0o700); err != nil {
			t.Fatal(err)
		}
		cfg := &controlplane.Config{
			NodeID: n.ID, DataDir: filepath.Join(ndir, "data"), TrustDomain: opts.TrustDomain,
			Listen:    controlplane.ListenConfig{GRPC: n.GRPCAddr, HTTP: n.HTTPAddr, Cluster: n.ClusterAddr},
			CA:        controlplane.CAConfig{Mode: controlplane.CAModeSelfSigned, Dir: c.caDir, KEKFile: c.kekPath},
			Raft:      controlplane.RaftConfig{Bootstrap: true, Peers: peers},
			Admins:    append([]string{c.AdminID().String()}, opts.Admins...),
			Providers: opts.Providers,
		}
		if opts.Tune != nil {
			opts.Tune(i, cfg)
		}
		n.Config = cfg
		n.ConfigPath = filepath.Join(ndir, "config.yaml")
		n.LogPath = filepath.Join(ndir, "server.log")
		if opts.NodeEnv != nil {
			n.Env = opts.NodeEnv(i)
		}
		out, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(n.ConfigPath, out, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(c.stopAll)
	for _, n := range c.Nodes {
		c.StartNode(n)
	}
	for _, n := range c.Nodes {
		c.WaitReady(n)
	}
	return c
}

// FreePorts returns n distinct 127.0.0.1 addresses that were free a moment ago.
func FreePorts(t testing.TB, n int) []string {
	t.Helper()
	var lns []net.Listener
	var out []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

// TrustDomain is the cluster's trust domain.
func (c *Cluster) TrustDomain() spiffeid.TrustDomain { return c.td }

// Dir is the cluster's directory: the shared ca dir, the KEK and a folder per node.
func (c *Cluster) Dir() string { return c.dir }

// CADir is the self-signed CA directory the nodes share.
func (c *Cluster) CADir() string { return c.caDir }

// KEKPath is the file holding the KEK that opens the CA key in CADir.
func (c *Cluster) KEKPath() string { return c.kekPath }

// StartNode starts a node's process (again, after Kill or Stop) without waiting for it to be
// ready.
func (c *Cluster) StartNode(n *Node) {
	c.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		c.t.Fatalf("%s is already running", n.ID)
	}
	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.bin, "-config", n.ConfigPath, "-log-level", "debug")
	cmd.Env = append(append(os.Environ(), c.env...), n.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		c.t.Fatalf("start %s: %v", n.ID, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	n.cmd, n.done = cmd, done
}

// Kill sends SIGKILL to a node and waits for it to exit.
func (c *Cluster) Kill(n *Node) { c.t.Helper(); c.signal(n, syscall.SIGKILL) }

// Stop sends SIGTERM to a node (a graceful stop) and waits for it to exit.
func (c *Cluster) Stop(n *Node) { c.t.Helper(); c.signal(n, syscall.SIGTERM) }

// Restart stops a running node gracefully, starts it again from its data dir and waits until
// it is ready.
func (c *Cluster) Restart(n *Node) {
	c.t.Helper()
	if n.Running() {
		c.Stop(n)
	}
	c.StartNode(n)
	c.WaitReady(n)
}

// Running reports whether the node's process is running.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// Log returns what the node wrote so far.
func (n *Node) Log() string {
	b, _ := os.ReadFile(n.LogPath)
	return string(b)
}

// Signal sends sig to a running node without waiting for it (e.g. the SIGUSR1 and SIGUSR2 of
// controlplane.CPUProfileEnv).
func (c *Cluster) Signal(n *Node, sig syscall.Signal) {
	c.t.Helper()
	n.mu.Lock()
	cmd := n.cmd
	n.mu.Unlock()
	if cmd == nil {
		c.t.Fatalf("signal %v: %s is not running", sig, n.ID)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		c.t.Fatalf("signal %v to %s: %v", sig, n.ID, err)
	}
}

func (c *Cluster) signal(n *Node, sig syscall.Signal) {
	c.t.Helper()
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(WaitTimeout):
		_ = cmd.Process.Kill()
		<-done
		c.t.Errorf("%s did not exit within %s of %v; killed", n.ID, WaitTimeout, sig)
	}
	n.mu.Lock()
	n.cmd, n.done = nil, nil
	n.mu.Unlock()
}

// stopAll stops every node at the end of the test, showing the logs of a failed test.
func (c *Cluster) stopAll() {
	for _, n := range c.Nodes {
		c.signal(n, syscall.SIGTERM)
	}
	if c.t.Failed() {
		for _, n := range c.Nodes {
			log := n.Log()
			if len(log) > 20000 {
				log = "...\n" + log[len(log)-20000:]
			}
			c.t.Logf("--- %s log (%s) ---\n%s", n.ID, n.LogPath, log)
		}
	}
}

// Roots reads the cluster's root certificates from the shared CA directory (the key need not
// be there yet).
func (c *Cluster) Roots() *x509.CertPool {
	c.t.Helper()
	raw, err := os.ReadFile(filepath.Join(c.caDir, controlplane.SelfSignedCertFile))
	if err != nil {
		c.t.Fatalf("cluster roots: %v", err)
	}
	certs, err := ca.ParseCertificatesPEM(raw)
	if err != nil {
		c.t.Fatal(err)
	}
	p := x509.NewCertPool()
	for _, r := range certs {
		p.AddCert(r)
	}
	return p
}

// Bundle is the cluster's trust bundle, as go-spiffe verifiers take it.
func (c *Cluster) Bundle() *x509bundle.Bundle { return c.CA().Bundle() }

// Issuer opens the cluster's CA from the shared CA directory with the KEK, as an operator
// holding the KEK could.
func (c *Cluster) Issuer() *ca.Issuer { return c.CA().Issuer() }

// CA is the cluster's CA, opened from the shared CA directory with the KEK.
func (c *Cluster) CA() *CA {
	c.t.Helper()
	c.caOnce.Do(func() { c.ca, c.caErr = OpenCA(c.td, c.caDir, c.kek, time.Now()) })
	if c.caErr != nil {
		c.t.Fatal(c.caErr)
	}
	return c.ca
}

// CA mints test certificates with a cluster's CA key: a self-signed CA directory that the
// cluster's nodes generated, opened with the KEK, as an operator holding the KEK could.
type CA struct {
	td     spiffeid.TrustDomain
	issuer *ca.Issuer
}

// OpenCA opens the self-signed CA in dir (the files meshca-server generates at first
// bootstrap) with kek.
func OpenCA(td spiffeid.TrustDomain, dir string, kek signer.KEK, now time.Time) (*CA, error) {
	iss, err := controlplane.LoadSelfSignedCA(dir, kek, now)
	if err != nil {
		return nil, fmt.Errorf("open CA in %s: %w", dir, err)
	}
	return &CA{td: td, issuer: iss}, nil
}

// Issuer is the CA's issuer (its key, certificate and roots).
func (a *CA) Issuer() *ca.Issuer { return a.issuer }

// Roots are the CA's root certificates.
func (a *CA) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range a.issuer.Roots() {
		p.AddCert(r)
	}
	return p
}

// Bundle is the CA's trust bundle, as go-spiffe verifiers take it.
func (a *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(a.td, a.issuer.Roots())
}

// TLSConfig trusts the CA's roots and presents cert when it is not nil.
func (a *CA) TLSConfig(cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{RootCAs: a.Roots(), MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

// CertOptions shape a certificate IssueCert mints.
type CertOptions struct {
	// TTL is its lifetime; one hour when zero. NotBefore is a minute before now.
	TTL time.Duration
	// DNSNames and IPs are its SANs besides the SPIFFE ID; a certificate with neither gets
	// localhost and 127.0.0.1, so it can serve a test's local server.
	DNSNames []string
	IPs      []net.IP
	// Key is its key; a new P-256 key when nil.
	Key crypto.Signer
}

// IssueCert mints a certificate for id signed with the cluster's CA key, for clients and
// servers of a test: an admin, a provider's confirm endpoint. It is not recorded in the
// replicated state (it has no instance and is never refreshed).
func (c *Cluster) IssueCert(id spiffeid.ID, opts CertOptions) tls.Certificate {
	c.t.Helper()
	out, err := c.CA().IssueCert(id, opts)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// IssueCert mints a certificate for id signed with the CA's key, valid from a minute before
// now. It is not recorded in any replicated state.
func (a *CA) IssueCert(id spiffeid.ID, opts CertOptions) (tls.Certificate, error) {
	key := opts.Key
	if key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return tls.Certificate{}, err
		}
		key = k
	}
	ttl := opts.TTL
	if ttl == 0 {
		ttl = time.Hour
	}
	dns, ips := opts.DNSNames, opts.IPs
	if len(dns) == 0 && len(ips) == 0 {
		dns, ips = []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	serial, err := ca.NewSerial(nil)
	if err != nil {
		return tls.Certificate{}, err
	}
	uri, _ := url.Parse(id.String())
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: id.Path()},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(ttl),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, URIs: []*url.URL{uri}, DNSNames: dns, IPAddresses: ips,
		SignatureAlgorithm: a.issuer.Signer().SignatureAlgorithm(),
	}
	der, err := signer.CreateCertificate(rand.Reader, tmpl, a.issuer.Certificate(), key.Public(), a.issuer.Signer())
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("sign certificate for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	out := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	for _, ch := range a.issuer.Chain() {
		out.Certificate = append(out.Certificate, ch.Raw)
	}
	return out, nil
}

// AdminCert is a client certificate of AdminID, a system administrator from the config.
func (c *Cluster) AdminCert() tls.Certificate {
	c.t.Helper()
	return c.IssueCert(c.AdminID(), CertOptions{})
}

// TLSConfig trusts the cluster's roots and presents cert when it is not nil.
func (c *Cluster) TLSConfig(cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{RootCAs: c.Roots(), MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

// Dial opens a gRPC connection to a node's gRPC port, presenting cert when it is not nil. It
// is closed at the end of the test.
func (c *Cluster) Dial(n *Node, cert *tls.Certificate) *grpc.ClientConn {
	c.t.Helper()
	cc := c.Connect(n, cert)
	c.t.Cleanup(func() { cc.Close() })
	return cc
}

// Connect is Dial for a connection the caller closes (one per call, as a client whose
// certificate changes with every refresh needs).
func (c *Cluster) Connect(n *Node, cert *tls.Certificate) *grpc.ClientConn {
	cc, err := grpc.NewClient(n.GRPCAddr, grpc.WithTransportCredentials(credentials.NewTLS(c.TLSConfig(cert))),
		// The agent's options for its one-call connections (sds/agent's caClient).
		grpc.WithStaticStreamWindowSize(1<<16-1), grpc.WithStaticConnWindowSize(1<<16-1),
		grpc.WithReadBufferSize(0))
	if err != nil {
		c.t.Fatal(err)
	}
	return cc
}

// HTTPClient talks to the nodes' HTTPS ports, presenting cert when it is not nil.
func (c *Cluster) HTTPClient(cert *tls.Certificate) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: c.TLSConfig(cert)}}
}

// URL is the HTTPS URL of path on a node.
func (n *Node) URL(path string) string { return "https://" + n.HTTPAddr + path }

// WaitReady waits until the node answers /readyz with 200: it knows a leader and has the CA.
func (c *Cluster) WaitReady(n *Node) {
	c.t.Helper()
	c.poll(n.ID+" ready", func() error {
		if !n.Running() {
			return fmt.Errorf("%s is not running", n.ID)
		}
		if _, err := os.Stat(filepath.Join(c.caDir, controlplane.SelfSignedCertFile)); err != nil {
			return err
		}
		resp, err := c.HTTPClient(nil).Get(n.URL(controlplane.PathReadyz))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %s", resp.Status)
		}
		return nil
	})
}

// Leader waits until exactly one running node says it leads, and returns it.
func (c *Cluster) Leader() *Node {
	c.t.Helper()
	var leader *Node
	c.poll("a single leader", func() error {
		leader = nil
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			is, err := c.isLeader(n)
			if err != nil {
				return err
			}
			if is {
				if leader != nil {
					return fmt.Errorf("both %s and %s lead", leader.ID, n.ID)
				}
				leader = n
			}
		}
		if leader == nil {
			return errors.New("no node leads")
		}
		return nil
	})
	return leader
}

// Followers are the running nodes other than the leader.
func (c *Cluster) Followers() []*Node {
	c.t.Helper()
	l := c.Leader()
	var out []*Node
	for _, n := range c.Nodes {
		if n != l && n.Running() {
			out = append(out, n)
		}
	}
	return out
}

// isLeader reads meshca_raft_is_leader from the node's /metrics.
func (c *Cluster) isLeader(n *Node) (bool, error) {
	v, err := c.Metric(n, "meshca_raft_is_leader", nil)
	return v == 1, err
}

// Metric scrapes a node's /metrics over a connection of its own, closed after, and returns
// the value of the series of name whose labels include labels (a counter, a gauge, or a
// histogram's sample count).
func (c *Cluster) Metric(n *Node, name string, labels map[string]string) (float64, error) {
	// Close the connection after the scrape: a test polling a metric would otherwise leave an
	// idle connection, and a goroutine serving it, on the node per scrape.
	hc := c.HTTPClient(nil)
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(n.URL(controlplane.PathMetrics))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return 0, err
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(&buf)
	if err != nil {
		return 0, err
	}
	fam, ok := fams[name]
	if !ok {
		return 0, fmt.Errorf("%s: no metric %s", n.ID, name)
	}
next:
	for _, m := range fam.GetMetric() {
		for _, lp := range m.GetLabel() {
			if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
				continue next
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), nil
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), nil
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), nil
		}
	}
	return 0, fmt.Errorf("%s: no series of %s with %v", n.ID, name, labels)
}

// poll retries check until it returns nil, failing the test after WaitTimeout.
func (c *Cluster) poll(what string, check func() error) {
	c.t.Helper()
	Poll(c.t, what, check)
}

// Poll is the harness's bounded wait for tests: it retries check until it returns nil, and
// fails the test with check's last error after WaitTimeout.
func (c *Cluster) Poll(what string, check func() error) {
	c.t.Helper()
	c.poll(what, check)
}

// Poll retries check every 50 ms until it returns nil, and fails t with check's last error
// after WaitTimeout. Nothing measures how long it took.
func Poll(t testing.TB, what string, check func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), WaitTimeout)
	defer cancel()
	var err error
	for {
		if err = check(); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
