//go:build unix

package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/internal/clustertest"
	"github.com/meshca/meshca/internal/testenv"
	"github.com/meshca/meshca/sds/agent"
)

func TestParseProcStat(t *testing.T) {
	tail := " 1 1 1 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 8 0 461461 1000 200"
	cases := []struct {
		name  string
		line  string
		state byte
		ticks uint64
		bad   bool
	}{
		{"a running process", "4242 (meshca-server) S" + tail, 'S', 461461, false},
		{"a name with spaces and parentheses is skipped whole", "4242 (a (b) c)) R" + tail, 'R', 461461, false},
		{"an exited, unreaped process is a zombie", "4242 (demo-client) Z" + tail, 'Z', 461461, false},
		{"a line without the name is refused", "4242 S" + tail, 0, 0, true},
		{"a truncated line is refused", "4242 (x) S 1 1 1", 0, 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, err := parseProcStat(tc.line)
			if tc.bad {
				if err == nil {
					t.Fatalf("parsed %+v", st)
				}
				return
			}
			if err != nil || st.state != tc.state || st.startTicks != tc.ticks {
				t.Fatalf("got %+v, %v; want state %c, start %d", st, err, tc.state, tc.ticks)
			}
		})
	}
}

func TestDevOptionsRules(t *testing.T) {
	good := devOptions{dir: "x", nodes: 3, certTTL: time.Minute, wait: time.Minute, stopTimeout: time.Second, statusEvery: time.Second}
	cases := []struct {
		name   string
		change func(*devOptions)
		part   string
	}{
		{"the folder is required", func(o *devOptions) { o.dir = "" }, "--dir is required"},
		{"a cluster has 1, 3 or 5 nodes", func(o *devOptions) { o.nodes = 2 }, "--nodes 2"},
		{"certificates live at least 10s", func(o *devOptions) { o.certTTL = 5 * time.Second }, "--cert-ttl 5s"},
		{"certificates live at most 30 days", func(o *devOptions) { o.certTTL = 721 * time.Hour }, "720h"},
		{"lifetimes are whole seconds", func(o *devOptions) { o.certTTL = 10500 * time.Millisecond }, "whole number of seconds"},
		{"the wait is positive", func(o *devOptions) { o.wait = 0 }, "--wait"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			tc.change(&o)
			err := o.check()
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.part) {
				t.Fatalf("err = %v, want a usage error naming %q", err, tc.part)
			}
		})
	}
	o := good
	if err := o.check(); err != nil || !filepath.IsAbs(o.dir) {
		t.Fatalf("good options: %v, dir %q", err, o.dir)
	}
}

// TestEnvFileSurvivesTheShell writes values a shell would mangle and reads them back through
// a real shell, as a user does with `. DIR/env`.
func TestEnvFileSurvivesTheShell(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatalf("no sh: %v", err)
	}
	path := filepath.Join(t.TempDir(), "env")
	vars := []envVar{
		{"MESHCA_PLAIN", "/tmp/dev/admin/cert.pem"},
		{"MESHCA_SPACES", "/tmp/my dev/sockets/sds.sock"},
		{"MESHCA_QUOTES", `it's "$HOME" and $(echo no) and ` + "`no`"},
		{"MESHCA_EMPTY", ""},
	}
	if err := writeEnvFile(path, vars); err != nil {
		t.Fatal(err)
	}
	got := sourceEnv(t, sh, path)
	for _, v := range vars {
		if got[v.name] != v.value {
			t.Errorf("%s = %q after sourcing, want %q", v.name, got[v.name], v.value)
		}
	}
}

// sourceEnv sources an env file in a shell and returns what the shell exports.
func sourceEnv(t *testing.T, sh, path string) map[string]string {
	t.Helper()
	cmd := exec.Command(sh, "-c", `. "$1" && env`, "sh", path)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sourcing %s: %v", path, err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	return env
}

func testPlan(t *testing.T, dir string) *devPlan {
	t.Helper()
	o := devOptions{dir: dir, nodes: 3, certTTL: 30 * time.Second, trustDomain: "mesh.test", wait: time.Minute, stopTimeout: time.Second, statusEvery: time.Second}
	if err := o.check(); err != nil {
		t.Fatal(err)
	}
	ports, err := freePorts(devPortCount(o.nodes))
	if err != nil {
		t.Fatal(err)
	}
	bins := devBinaries{server: "/bin/meshca-server", agent: "/bin/meshca-agent", provider: "/bin/provider", demoServer: "/bin/demo-server", demoClient: "/bin/demo-client"}
	p, err := newDevPlan(o, bins, ports, 1234)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDevPlanConfigs holds the generated configs to the servers' and the agent's own strict
// decoders and to the wiring meshctl dev promises.
func TestDevPlanConfigs(t *testing.T) {
	p := testPlan(t, t.TempDir())
	for i := range p.nodes {
		raw, err := p.serverConfig(i)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := controlplane.DecodeConfig(bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		if len(cfg.Raft.Peers) != 3 || cfg.CA.WorkloadTTL.D() != 30*time.Second || cfg.Admins[0] != "spiffe://mesh.test/ns/sys.admin/sa/dev" {
			t.Fatalf("node %d config: %+v", i, cfg)
		}
		var example, builtin bool
		for _, pr := range cfg.Providers {
			example = example || pr.Name == devProvider && pr.ConfirmEndpoint == "https://"+p.providerAddr+"/confirm" && pr.ConfirmRefresh
			builtin = builtin || pr.Name == controlplane.BuiltinProvider && pr.ConfirmEndpoint == ""
		}
		if !example || !builtin {
			t.Fatalf("node %d providers: %+v", i, cfg.Providers)
		}
	}
	raw, err := p.agentConfig()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := agent.DecodeConfig(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]agent.IdentityConfig{}
	for _, id := range cfg.Identities {
		byName[id.Name] = id
	}
	if id := byName[devProvider]; id.Attestation.RegisterTokenFile != p.providerToken() || !id.ServerAuth {
		t.Fatalf("the provider's identity: %+v", id)
	}
	if id := byName["demo.client"]; len(id.UIDs) != 1 || id.UIDs[0] != 1234 || id.Attestation.IdentityDocument == nil || id.Attestation.IdentityDocument.Command[0] != "/bin/provider" {
		t.Fatalf("the demo client's identity: %+v", id)
	}
	if id := byName["demo.server"]; id.Socket != p.demoServerSocket() || !id.ServerAuth {
		t.Fatalf("the demo server's identity: %+v", id)
	}
	if cfg.TTL.D() != 30*time.Second || len(cfg.Servers) != 3 {
		t.Fatalf("agent config: %+v", cfg)
	}
	t.Run("a folder too deep for Unix sockets is refused", func(t *testing.T) {
		o := p.o
		o.dir = "/" + strings.Repeat("d", 100)
		ports, _ := freePorts(devPortCount(o.nodes))
		if _, err := newDevPlan(o, p.bins, ports, 1); !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "Unix socket") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestPrepareDir(t *testing.T) {
	t.Run("a folder meshctl dev did not make is left alone", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("mine"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := prepareDir(dir); err == nil || !strings.Contains(err.Error(), "not empty") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("a previous run's files are cleared, nothing else", func(t *testing.T) {
		dir := t.TempDir()
		if err := prepareDir(dir); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"kek", "env", "notes.txt"} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.MkdirAll(filepath.Join(dir, "nodes", "n1"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := prepareDir(dir); err != nil {
			t.Fatal(err)
		}
		for f, want := range map[string]bool{"kek": false, "env": false, "nodes": false, "notes.txt": true, devMarker: true} {
			if _, err := os.Stat(filepath.Join(dir, f)); (err == nil) != want {
				t.Errorf("%s exists: %v, want %v", f, err == nil, want)
			}
		}
	})
	t.Run("a folder where a recorded process runs is refused", func(t *testing.T) {
		dir := t.TempDir()
		if err := prepareDir(dir); err != nil {
			t.Fatal(err)
		}
		self := devProcess{Name: "agent", PID: os.Getpid(), StartTicks: startTicksOf(os.Getpid())}
		if err := writeProcesses(dir, []devProcess{self}); err != nil {
			t.Fatal(err)
		}
		if err := prepareDir(dir); err == nil || !strings.Contains(err.Error(), "meshctl dev down") {
			t.Fatalf("err = %v", err)
		}
	})
}

// TestStopProcesses stops real processes the way `dev down` does: SIGTERM to each process
// group, SIGKILL for one that ignores it, and never a process whose pid was reused.
func TestStopProcesses(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatalf("no sh: %v", err)
	}
	dir := t.TempDir()
	sup := &supervisor{dir: dir}
	polite, err := sup.start("demo-client", sh, []string{"-c", "exec sleep 600"}, filepath.Join(dir, "polite.log"))
	if err != nil {
		t.Fatal(err)
	}
	stubborn, err := sup.start("agent", sh, []string{"-c", `trap "" TERM; exec sleep 600`}, filepath.Join(dir, "stubborn.log"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := sup.start("n1", sh, []string{"-c", "exec sleep 600"}, filepath.Join(dir, "other.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = other.rec.signal(syscall.SIGKILL)
		<-other.exited
	})
	recorded, err := readProcesses(dir)
	if err != nil || len(recorded) != 3 {
		t.Fatalf("recorded %v, %v", recorded, err)
	}
	for _, p := range recorded {
		if !p.running() {
			t.Fatalf("%s is not running after start", p.Name)
		}
	}
	if !procAvailable() {
		t.Fatalf("no %s: the pid-reuse check cannot be tested", procRoot)
	}
	reused := other.rec
	reused.StartTicks++
	var out bytes.Buffer
	if err := stopProcesses([]devProcess{polite.rec, stubborn.rec, reused}, 300*time.Millisecond, &out); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*child{polite, stubborn} {
		// stopProcesses returns once the process is dead (a zombie at least); our own Wait
		// goroutine reaps it a moment later, so allow it that moment.
		select {
		case <-c.exited:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s still runs after stopProcesses", c.rec.Name)
		}
	}
	if !strings.Contains(out.String(), "agent (pid") || !strings.Contains(out.String(), "SIGKILL") {
		t.Fatalf("the stubborn process was not killed:\n%s", out.String())
	}
	if strings.Contains(out.String(), fmt.Sprintf("demo-client (pid %d) still runs", polite.rec.PID)) {
		t.Fatalf("the polite process needed SIGKILL:\n%s", out.String())
	}
	if !other.rec.running() || strings.Contains(out.String(), "n1") {
		t.Fatalf("a process whose record does not match (reused pid) was signalled:\n%s", out.String())
	}
}

func procAvailable() bool {
	_, err := os.Stat(filepath.Join(procRoot, "self", "stat"))
	return err == nil
}

func TestDevDownWithNothingRecorded(t *testing.T) {
	var out bytes.Buffer
	if err := devDown(t.TempDir(), time.Second, &out); err != nil || !strings.Contains(out.String(), "nothing to stop") {
		t.Fatalf("%v: %s", err, out.String())
	}
}

func TestFindBinariesNamesWhatIsMissing(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"meshca-server", "meshca-agent"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	_, err := findBinaries(dir)
	if err == nil || !strings.Contains(err.Error(), "provider: not found in --bin-dir "+dir) || !strings.Contains(err.Error(), "make build") {
		t.Fatalf("err = %v", err)
	}
}

// devBinDir builds everything `meshctl dev up` runs into one folder, meshctl itself included,
// so meshctl finds the others next to itself as it does in bin/.
func devBinDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"meshctl", "meshca-server", "meshca-agent"} {
		built := clustertest.Binary(t, name)
		if name == "meshctl" {
			// A copy, not a link: meshctl looks next to its own resolved path.
			raw, err := os.ReadFile(built)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, name), raw, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.Symlink(built, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if p, err := exec.LookPath("go"); err == nil {
		gobin = p
	}
	for _, name := range []string{"provider", "demo-server", "demo-client"} {
		cmd := exec.Command(gobin, "build", "-o", filepath.Join(dir, name), "github.com/meshca/meshca/examples/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build examples/%s: %v\n%s", name, err, out)
		}
	}
	return dir
}

// runIn runs a built program with env and returns its output and exit code.
func runIn(ctx context.Context, t *testing.T, env []string, bin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	}
	t.Fatalf("%s %v: %v\n%s", bin, args, err, out)
	return "", -1
}

// sdsDefault asks the agent's SDS socket for "default" and "ROOTCA" in one state-of-the-world
// request, as Envoy does, and returns the certificate with its key, checked to verify to
// ROOTCA.
func sdsDefault(ctx context.Context, t *testing.T, socket string) *x509svid.SVID {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := secretservice.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"default", "ROOTCA"}
	if err := st.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "dev-test"}, TypeUrl: resource.SecretType, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var svid *x509svid.SVID
	var roots []byte
	for _, a := range resp.GetResources() {
		sec := &tlsv3.Secret{}
		if err := a.UnmarshalTo(sec); err != nil {
			t.Fatal(err)
		}
		switch sec.GetName() {
		case "default":
			tc := sec.GetTlsCertificate()
			// Parse refuses a key that does not match the certificate.
			if svid, err = x509svid.Parse(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes()); err != nil {
				t.Fatalf("default: %v", err)
			}
		case "ROOTCA":
			roots = sec.GetValidationContext().GetTrustedCa().GetInlineBytes()
		}
	}
	if svid == nil || roots == nil {
		t.Fatalf("SDS answered %d resources without default and ROOTCA", len(resp.GetResources()))
	}
	bundle, err := x509bundle.Parse(svid.ID.TrustDomain(), roots)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		t.Fatalf("default does not verify to ROOTCA: %v", err)
	}
	return svid
}

// TestDevUpAndDown runs `meshctl dev up` with the built binaries into a temporary folder,
// with certificates that live 10 seconds, uses what DIR/env says, watches the demo through a
// rotation, and runs `meshctl dev down`.
func TestDevUpAndDown(t *testing.T) {
	testenv.SkipIfShort(t, "starts a cluster, an agent, the provider and the demo (real processes)")
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatalf("no sh: %v", err)
	}
	bin := devBinDir(t)
	meshctl := filepath.Join(bin, "meshctl")
	dir := filepath.Join(t.TempDir(), "dev")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	baseEnv := []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()}
	t.Cleanup(func() {
		// Whatever happened, nothing is left running.
		out, _ := runIn(context.Background(), t, baseEnv, meshctl, "dev", "down", "--dir", dir)
		if t.Failed() {
			t.Logf("dev down:\n%s", out)
			for _, log := range []string{"agent/agent.log", "provider/provider.log", "demo/demo-client.log", "demo/demo-server.log", "nodes/n1/server.log"} {
				t.Logf("--- %s ---\n%s", log, logTail(filepath.Join(dir, log), 40))
			}
		}
	})

	out, code := runIn(ctx, t, baseEnv, meshctl, "dev", "up", "--dir", dir, "--cert-ttl", "10s", "--wait", "90s")
	if code != 0 {
		t.Fatalf("meshctl dev up exited %d:\n%s", code, out)
	}
	procs, err := readProcesses(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range procs {
		if !p.running() {
			t.Fatalf("%s (pid %d) is not running after dev up", p.Name, p.PID)
		}
		names = append(names, p.Name)
	}
	if got := strings.Join(names, ","); got != "n1,n2,n3,agent,provider,demo-server,demo-client" {
		t.Fatalf("dev up started %s", got)
	}

	env := sourceEnv(t, sh, filepath.Join(dir, "env"))
	for _, name := range []string{"MESHCA_ADMIN_ADDR", "MESHCA_ADMIN_CERT", "MESHCA_ADMIN_KEY", "MESHCA_CA_BUNDLE", "MESHCA_SDS_SOCKET", "MESHCA_WORKLOAD_API", "MESHCA_BUNDLE_URL", "MESHCA_EXTEND_URL"} {
		if env[name] == "" {
			t.Fatalf("DIR/env does not set %s", name)
		}
	}
	var shellEnv []string
	for k, v := range env {
		shellEnv = append(shellEnv, k+"="+v)
	}

	t.Run("an admin call with the env's certificate works", func(t *testing.T) {
		out, code := runIn(ctx, t, shellEnv, meshctl, "cluster", "status")
		if code != 0 || !strings.Contains(out, "leader") || !strings.Contains(out, "n3") {
			t.Fatalf("meshctl cluster status exited %d:\n%s", code, out)
		}
	})
	t.Run("the provider confirmed the demo workloads", func(t *testing.T) {
		resp, err := http.Get(env["MESHCA_PROVIDER_METRICS"])
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		allowed := map[string]float64{}
		for _, m := range fams["meshca_provider_confirmations_total"].GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["answer"] == "allowed" {
				allowed[labels["operation"]] += m.GetCounter().GetValue()
			}
		}
		if allowed["register"] < 2 {
			t.Fatalf("the provider allowed %v, want both demo registrations", allowed)
		}
	})
	td := spiffeid.RequireTrustDomainFromString(devDefaultTrustDomain)
	client := spiffeid.RequireFromSegments(td, "ns", "demo", "sa", "client")
	t.Run("the SDS socket serves default to an SDS client", func(t *testing.T) {
		svid := sdsDefault(ctx, t, env["MESHCA_SDS_SOCKET"])
		if svid.ID != client {
			t.Fatalf("default is %s, want %s (this user's uid maps to the demo client)", svid.ID, client)
		}
	})
	t.Run("the Workload API answers a go-spiffe client", func(t *testing.T) {
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(env["MESHCA_WORKLOAD_API"]))
		if err != nil {
			t.Fatal(err)
		}
		if svid.ID != client {
			t.Fatalf("the Workload API gave %s, want %s", svid.ID, client)
		}
	})
	t.Run("the env's bundle and extend URLs answer", func(t *testing.T) {
		roots, err := os.ReadFile(env["MESHCA_CA_BUNDLE"])
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(roots) {
			t.Fatalf("%s holds no certificate", env["MESHCA_CA_BUNDLE"])
		}
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(env["MESHCA_WORKLOAD_API"]))
		if err != nil {
			t.Fatal(err)
		}
		cert := tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
		for _, c := range svid.Certificates {
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		}}
		defer hc.CloseIdleConnections()
		get := func(url string) string {
			t.Helper()
			resp, err := hc.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %s %s", url, resp.Status, body)
			}
			return string(body)
		}
		bundle, err := spiffebundle.Parse(td, []byte(get(env["MESHCA_BUNDLE_URL"])))
		if err != nil || len(bundle.X509Authorities()) == 0 {
			t.Fatalf("the bundle endpoint: %v", err)
		}
		if body := get(env["MESHCA_EXTEND_URL"]); !strings.Contains(body, client.String()) {
			t.Fatalf("the extend API lists %s, want the demo client's authenticator", body)
		}
	})
	t.Run("the demo does mTLS across rotations without a failed handshake", func(t *testing.T) {
		stats := func() (demoStats, demoStats) {
			s, err := fetchStats(ctx, env["MESHCA_DEMO_SERVER_STATS"])
			if err != nil {
				t.Fatal(err)
			}
			c, err := fetchStats(ctx, env["MESHCA_DEMO_CLIENT_STATS"])
			if err != nil {
				t.Fatal(err)
			}
			return s, c
		}
		poll := func(what string, done func(s, c demoStats) bool) (demoStats, demoStats) {
			for {
				s, c := stats()
				if done(s, c) {
					return s, c
				}
				select {
				case <-ctx.Done():
					t.Fatalf("waiting for %s: %v (server %+v, client %+v)", what, ctx.Err(), s, c)
				case <-time.After(200 * time.Millisecond):
				}
			}
		}
		_, c := poll("a rotation on both sides", func(s, c demoStats) bool { return s.Rotations >= 1 && c.Rotations >= 1 })
		s, c2 := poll("requests after the rotation", func(_, now demoStats) bool { return now.Requests > c.Requests })
		if c2.Failures != 0 || c2.HandshakeFailures != 0 || s.HandshakeFailures != 0 {
			t.Fatalf("failures: client %+v, server %+v", c2, s)
		}
		if s.Requests == 0 || s.SPIFFEID != "spiffe://mesh.example/ns/demo/sa/server" {
			t.Fatalf("server %+v", s)
		}
	})

	out, code = runIn(ctx, t, baseEnv, meshctl, "dev", "down", "--dir", dir)
	if code != 0 {
		t.Fatalf("meshctl dev down exited %d:\n%s", code, out)
	}
	for _, p := range procs {
		if p.running() {
			t.Errorf("%s (pid %d) still runs after dev down", p.Name, p.PID)
		}
	}
	if left, err := readProcesses(dir); err != nil || len(left) != 0 {
		t.Fatalf("records left after dev down: %v, %v", left, err)
	}
}

// TestDevUpStopsWhatItStartedWhenAPartFails gives dev up a server that dies at start: dev up
// fails naming it with the end of its log, and leaves nothing running or recorded.
func TestDevUpStopsWhatItStartedWhenAPartFails(t *testing.T) {
	bin := t.TempDir()
	scripts := map[string]string{
		"meshca-server": "#!/bin/sh\necho 'config: listen.grpc: address already in use' >&2\nexit 3\n",
		"meshca-agent":  "#!/bin/sh\nexit 1\n",
		"provider":      "#!/bin/sh\nexit 1\n",
		"demo-server":   "#!/bin/sh\nexit 1\n",
		"demo-client":   "#!/bin/sh\nexit 1\n",
	}
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(bin, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(t.TempDir(), "dev")
	o := devOptions{dir: dir, nodes: 3, certTTL: time.Minute, trustDomain: "mesh.test", binDir: bin, wait: time.Minute, stopTimeout: time.Second, statusEvery: time.Second}
	if err := o.check(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := devUp(context.Background(), o, &out)
	if err == nil || !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("err = %v, want the node that exited and its log", err)
	}
	if procs, err := readProcesses(dir); err != nil || len(procs) != 0 {
		t.Fatalf("records left: %v, %v", procs, err)
	}
}
