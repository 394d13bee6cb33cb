package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/internal/clustertest"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Main(m)) }

// meshctlRun is the outcome of one run of the built binary.
type meshctlRun struct {
	stdout, stderr string
	code           int
}

// e2e runs the built meshctl binary against a real cluster.
type e2e struct {
	t   *testing.T
	bin string
	dir string
}

// run runs meshctl with only env as its environment (plus HOME and XDG_CONFIG_HOME pointing
// into the test's folder, so no user config file is read).
func (e *e2e) run(env []string, args ...string) meshctlRun {
	e.t.Helper()
	cmd := exec.Command(e.bin, args...)
	cmd.Env = append([]string{"HOME=" + e.dir, "XDG_CONFIG_HOME=" + filepath.Join(e.dir, "xdg")}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		e.t.Fatalf("meshctl %s: %v", strings.Join(args, " "), err)
	}
	return meshctlRun{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

// ok runs meshctl and fails the test unless it exits 0.
func (e *e2e) ok(env []string, args ...string) string {
	e.t.Helper()
	r := e.run(env, args...)
	if r.code != 0 {
		e.t.Fatalf("meshctl %s: exit %d\n%s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// writeCredentials writes a client certificate and key as PEM files named name.pem and
// name.key in dir.
func writeCredentials(t *testing.T, dir, name string, cert tls.Certificate) (certPath, keyPath string) {
	t.Helper()
	var certPEM []byte
	for _, der := range cert.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certPath, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// oneErrorLine asserts that stderr is exactly one line starting with prefix.
func oneErrorLine(t *testing.T, r meshctlRun, code int, prefix string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d; stderr %q", r.code, code, r.stderr)
	}
	if strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, prefix) {
		t.Fatalf("stderr %q, want one line starting with %q", r.stderr, prefix)
	}
}

// The built, static meshctl against a real three-node cluster: settings from the environment
// and from a config file, calls through a follower and the leader, table and JSON output,
// the CSR flow, the CRL, the event stream, and one-line errors with a non-zero exit.
func TestMeshctlAgainstACluster(t *testing.T) {
	c := clustertest.Start(t, clustertest.Options{
		Nodes:     3,
		Providers: []controlplane.ProviderConfig{{Name: "sys.auth.k8s", DNSSuffix: "k8s.mesh.test", ConfirmEndpoint: "https://127.0.0.1:1/confirm"}},
	})
	e := &e2e{t: t, bin: clustertest.Binary(t, "meshctl"), dir: t.TempDir()}
	adminCert, adminKey := writeCredentials(t, e.dir, "admin", c.AdminCert())
	bundle := filepath.Join(e.dir, "ca.pem")
	var bundlePEM []byte
	for _, r := range c.Bundle().X509Authorities() {
		bundlePEM = append(bundlePEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	if err := os.WriteFile(bundle, bundlePEM, 0o644); err != nil {
		t.Fatal(err)
	}
	leader, follower := c.Leader(), c.Followers()[0]
	envAt := func(addr, cert, key string) []string {
		return []string{envAddr + "=" + addr, envCert + "=" + cert, envKey + "=" + key, envCABundle + "=" + bundle}
	}
	admin := envAt(follower.GRPCAddr, adminCert, adminKey)

	// JSON output parses with the .proto field names.
	var providers struct {
		Providers []struct {
			Name      string `json:"name"`
			DNSSuffix string `json:"dns_suffix"`
			Enabled   bool   `json:"enabled"`
		} `json:"providers"`
	}
	if err := json.Unmarshal([]byte(e.ok(admin, "provider", "list", "--output", "json")), &providers); err != nil {
		t.Fatal(err)
	}
	if len(providers.Providers) != 1 || providers.Providers[0].Name != "sys.auth.k8s" || providers.Providers[0].DNSSuffix != "k8s.mesh.test" || !providers.Providers[0].Enabled {
		t.Fatalf("providers %+v", providers)
	}

	// Mutations through a follower (forwarded to the leader), table output.
	const sportsAdmin = "spiffe://mesh.test/ns/sports/sa/admin"
	out := e.ok(admin, "domain", "add", "sports", "--admin", sportsAdmin)
	if !strings.Contains(out, "sports") || !strings.Contains(out, sportsAdmin) || !strings.HasPrefix(out, "NAME") {
		t.Fatalf("domain add printed %q", out)
	}
	var svc struct {
		Domain       string   `json:"domain"`
		Name         string   `json:"name"`
		LaunchGrants []string `json:"launch_grants"`
	}
	if err := json.Unmarshal([]byte(e.ok(admin, "-o", "json", "service", "add", "sports.api", "--grant", "sys.auth.k8s")), &svc); err != nil {
		t.Fatal(err)
	}
	if svc.Domain != "sports" || svc.Name != "api" || len(svc.LaunchGrants) != 1 || svc.LaunchGrants[0] != "sys.auth.k8s" {
		t.Fatalf("service %+v", svc)
	}

	// Refusals: one line naming the command, the code, the field and the rule; exit 1.
	oneErrorLine(t, e.run(admin, "provider", "add", "sys.auth.k8s2", "--dns-suffix", "k8s.mesh.test"), exitError,
		`meshctl: provider add: AlreadyExists: provider.dns_suffix: "k8s.mesh.test" equals or nests with provider "sys.auth.k8s"`)
	oneErrorLine(t, e.run(admin, "service", "grant", "add", "sports.api", "sys.auth.nope"), exitError,
		`meshctl: service grant add: FailedPrecondition: pattern: provider "sys.auth.nope" is not registered`)
	workloadCert, workloadKey := writeCredentials(t, e.dir, "workload",
		c.IssueCert(spiffeid.RequireFromString("spiffe://mesh.test/ns/sports/sa/api"), clustertest.CertOptions{}))
	oneErrorLine(t, e.run(envAt(leader.GRPCAddr, workloadCert, workloadKey), "domain", "delete", "sports"), exitError,
		"meshctl: domain delete: PermissionDenied: caller spiffe://mesh.test/ns/sports/sa/api is not a system admin")
	// A command line error: the error line, then the usage hint; exit 2.
	if r := e.run(admin, "domain", "add"); r.code != exitUsage || r.stderr != "meshctl: domain add: expected NAME\n"+
		"usage: meshctl domain add NAME [flags] (run \"meshctl domain add -h\" for the flags)\n" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}

	// Settings from a config file alone, with paths relative to it.
	cfg := filepath.Join(e.dir, "meshctl.yaml")
	if err := os.WriteFile(cfg, []byte("addr: "+leader.GRPCAddr+"\ncert: admin.pem\nkey: admin.key\nca_bundle: ca.pem\noutput: json\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var status struct {
		NodeID string `json:"node_id"`
		State  string `json:"state"`
		Peers  []struct {
			ID string `json:"id"`
		} `json:"peers"`
	}
	if err := json.Unmarshal([]byte(e.ok(nil, "--config", cfg, "cluster", "status")), &status); err != nil {
		t.Fatal(err)
	}
	if status.NodeID != leader.ID || status.State != "Leader" || len(status.Peers) != 3 {
		t.Fatalf("cluster status %+v", status)
	}

	// A manual-approval request: submitted, approved, its certificate written and verified.
	csrPath := filepath.Join(e.dir, "web.csr")
	if err := os.WriteFile(csrPath, pemCSR(t, "web.sports.example"), 0o644); err != nil {
		t.Fatal(err)
	}
	var submitted struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}
	if err := json.Unmarshal([]byte(e.ok(admin, "csr", "submit", "--csr", csrPath, "--common-name", "web.sports.example", "--purpose", "server_auth", "-o", "json")), &submitted); err != nil {
		t.Fatal(err)
	}
	if submitted.ID == "" || submitted.State != "CSR_STATE_PENDING" {
		t.Fatalf("submitted %+v", submitted)
	}
	certPath := filepath.Join(e.dir, "web.pem")
	if out := e.ok(admin, "csr", "approve", submitted.ID, "--out", certPath); !strings.Contains(out, "issued") {
		t.Fatalf("csr approve printed %q", out)
	}
	raw, err := os.ReadFile(certPath)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		t.Fatalf("%s holds no PEM", certPath)
	}
	issued, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := issued.Verify(x509.VerifyOptions{Roots: c.Roots(), DNSName: "web.sports.example", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatalf("approved certificate: %v", err)
	}

	// The CRL, DER, signed by the CA.
	crlPath := filepath.Join(e.dir, "crl.der")
	e.ok(admin, "crl", "get", "--out", crlPath)
	der, err := os.ReadFile(crlPath)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(c.Issuer().Certificate()); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	if out := e.ok(admin, "ca", "status"); !strings.Contains(out, "stable") || !strings.Contains(out, "active") {
		t.Fatalf("ca status printed %q", out)
	}

	// The event stream from index 1, one JSON object per line, in log order.
	lines := strings.Split(strings.TrimSpace(e.ok(admin, "events", "watch", "--from", "1", "--count", "4", "-o", "json")), "\n")
	if len(lines) != 4 {
		t.Fatalf("events watch printed %d lines: %q", len(lines), lines)
	}
	var last uint64
	for _, l := range lines {
		var ev struct {
			Index uint64 `json:"index,string"`
			Kind  string `json:"kind"`
		}
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("event line %q: %v", l, err)
		}
		if ev.Index <= last || ev.Kind == "" {
			t.Fatalf("event %+v after index %d", ev, last)
		}
		last = ev.Index
	}

	// The cluster commands: a snapshot on one node, then leadership handed to a named voter.
	if out := e.ok(admin, "cluster", "snapshot"); !strings.Contains(out, "node "+follower.ID+": snapshot ") {
		t.Fatalf("cluster snapshot printed %q", out)
	}
	to := c.Followers()[len(c.Followers())-1]
	e.ok(envAt(leader.GRPCAddr, adminCert, adminKey), "cluster", "transfer-leader", to.ID)
	if now := c.Leader(); now.ID != to.ID {
		t.Fatalf("leader after transfer-leader %s: %s", to.ID, now.ID)
	}
	oneErrorLine(t, e.run(admin, "cluster", "remove", "n9"), exitError, `meshctl: cluster remove: NotFound: id: `)

	// A watch holds its stream until the node stops: a graceful stop ends it at once with
	// UNAVAILABLE (not after the drain's grace period, when the transport would be cut).
	watched := c.Followers()[0]
	watch := exec.Command(e.bin, "events", "watch", "-o", "json")
	watch.Env = append([]string{"HOME=" + e.dir}, envAt(watched.GRPCAddr, adminCert, adminKey)...)
	var watchOut, watchErr syncBuffer
	watch.Stdout, watch.Stderr = &watchOut, &watchErr
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	// Once an event made after the watch started arrives, the stream is open.
	made := 0
	c.Poll("the watch to receive a new event", func() error {
		made++
		e.ok(admin, "domain", "add", "weather-"+strconv.Itoa(made))
		if !strings.Contains(watchOut.String(), "domain/weather-") {
			return errors.New("no event yet")
		}
		return nil
	})
	c.Stop(watched)
	err = watch.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitError ||
		!strings.HasPrefix(watchErr.String(), "meshctl: events watch: Unavailable: server: stopping") {
		t.Fatalf("watch ended with %v, stderr %q", err, watchErr.String())
	}
}

// syncBuffer is a bytes.Buffer a process writes to while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// pemCSR makes a PEM CSR for a fresh key naming cn.
func pemCSR(t *testing.T, cn string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, DNSNames: []string{cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}
