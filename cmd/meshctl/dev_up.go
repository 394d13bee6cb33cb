//go:build unix

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.yaml.in/yaml/v3"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/sds/agent"
)

// The identities of the local cluster.
const (
	// devProvider is the example provider's service identity, and devProviderDomain,
	// devProviderService and devProviderInstance its parts and instance id.
	devProvider         = "sys.auth.example"
	devProviderDomain   = "sys.auth"
	devProviderService  = "example"
	devProviderInstance = "provider-1"
	// devAdminDomain and devAdminService name the administrator DIR/env's certificate is for.
	devAdminDomain  = "sys.admin"
	devAdminService = "dev"
	// devDemoDomain is the demo workloads' domain; demo.server and demo.client.
	devDemoDomain = "demo"
	// devAdminCertTTL is the lifetime of the administrator certificate meshctl dev mints with
	// the CA key: the longest a workload certificate may have.
	devAdminCertTTL = policy.MaxWorkloadTTL
	// devRegisterTokenTTL bounds the register token that bootstraps the provider.
	devRegisterTokenTTL = 10 * time.Minute
)

// devBinaries are the programs `meshctl dev up` runs.
type devBinaries struct {
	server, agent, provider, demoServer, demoClient string
}

// findBinaries looks for each program in binDir when given; else next to the running meshctl
// (make build puts them all in bin/), else on PATH. Paths are absolute: the agent runs the
// provider from another working directory.
func findBinaries(binDir string) (devBinaries, error) {
	var dirs []string
	if binDir != "" {
		dirs = []string{binDir}
	} else if exe, err := os.Executable(); err == nil {
		if real, err := filepath.EvalSymlinks(exe); err == nil {
			exe = real
		}
		dirs = []string{filepath.Dir(exe)}
	}
	find := func(name string) (string, error) {
		for _, d := range dirs {
			p := filepath.Join(d, name)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
				return filepath.Abs(p)
			}
		}
		if binDir == "" {
			if p, err := exec.LookPath(name); err == nil {
				return filepath.Abs(p)
			}
		}
		where := "next to meshctl (" + strings.Join(dirs, ", ") + ") or on PATH"
		if binDir != "" {
			where = "in --bin-dir " + binDir
		}
		return "", fmt.Errorf("%s: not found %s; run make build (or make run)", name, where)
	}
	var b devBinaries
	for _, f := range []struct {
		name string
		dst  *string
	}{
		{"meshca-server", &b.server}, {"meshca-agent", &b.agent}, {"provider", &b.provider},
		{"demo-server", &b.demoServer}, {"demo-client", &b.demoClient},
	} {
		p, err := find(f.name)
		if err != nil {
			return devBinaries{}, err
		}
		*f.dst = p
	}
	return b, nil
}

// devMarker marks a folder as one meshctl dev made, so a later `dev up` may clear it.
const devMarker = ".meshctl-dev"

// devEntries are what `meshctl dev up` writes in DIR; a new run clears exactly these.
var devEntries = []string{"kek", "ca", "nodes", "admin", "provider", "agent", "sockets", "demo", "env", devProcessesFile}

// devNode is one CA node's addresses.
type devNode struct {
	id                    string
	grpc, http, clusterTo string
}

// devPlan is everything about one local cluster that is decided before anything starts:
// paths, ports and identities.
type devPlan struct {
	o     devOptions
	td    spiffeid.TrustDomain
	bins  devBinaries
	uid   int
	nodes []devNode
	// providerAddr serves the confirm endpoint and providerOpsAddr the provider's metrics and
	// readiness; demoAddr the demo server; the stats addresses the demo workloads' counts.
	providerAddr, providerOpsAddr, demoAddr, serverStatsAddr, clientStatsAddr string
}

// devPortCount is how many ports a cluster of n nodes needs: 3 per node (gRPC, HTTPS,
// cluster) and 5 more (the provider's two, the demo server and the demo workloads' stats).
func devPortCount(nodes int) int { return 3*nodes + 5 }

// newDevPlan lays the cluster out in o.dir on the given free ports (devPortCount).
func newDevPlan(o devOptions, bins devBinaries, ports []string, uid int) (*devPlan, error) {
	td, err := spiffeid.TrustDomainFromString(o.trustDomain)
	if err != nil {
		return nil, usageError("--trust-domain %q: %v", o.trustDomain, err)
	}
	if len(ports) != devPortCount(o.nodes) {
		return nil, fmt.Errorf("plan: %d ports for %d nodes, want %d", len(ports), o.nodes, devPortCount(o.nodes))
	}
	p := &devPlan{o: o, td: td, bins: bins, uid: uid}
	for i := range o.nodes {
		p.nodes = append(p.nodes, devNode{id: fmt.Sprintf("n%d", i+1), grpc: ports[3*i], http: ports[3*i+1], clusterTo: ports[3*i+2]})
	}
	rest := ports[3*o.nodes:]
	p.providerAddr, p.providerOpsAddr, p.demoAddr, p.serverStatsAddr, p.clientStatsAddr = rest[0], rest[1], rest[2], rest[3], rest[4]
	for _, s := range []string{p.sdsSocket(), p.workloadSocket(), p.agentAdminSocket(), p.demoServerSocket()} {
		// sockaddr_un holds 108 bytes with the terminating NUL.
		if len(s) > 107 {
			return nil, usageError("--dir %s is too long: the socket path %s is %d bytes, more than a Unix socket allows (107)", o.dir, s, len(s))
		}
	}
	return p, nil
}

func (p *devPlan) path(parts ...string) string {
	return filepath.Join(append([]string{p.o.dir}, parts...)...)
}

func (p *devPlan) kekFile() string          { return p.path("kek") }
func (p *devPlan) caDir() string            { return p.path("ca") }
func (p *devPlan) rootsFile() string        { return p.path("ca", controlplane.SelfSignedCertFile) }
func (p *devPlan) nodeDir(id string) string { return p.path("nodes", id) }
func (p *devPlan) adminCert() string        { return p.path("admin", "cert.pem") }
func (p *devPlan) adminKey() string         { return p.path("admin", "key.pem") }
func (p *devPlan) providerDocKey() string   { return p.path("provider", "document-key.pem") }
func (p *devPlan) providerToken() string    { return p.path("provider", "register-token") }
func (p *devPlan) providerFiles() string    { return p.path("agent", "files", devProvider) }
func (p *devPlan) sdsSocket() string        { return p.path("sockets", "sds.sock") }
func (p *devPlan) workloadSocket() string   { return p.path("sockets", "workload.sock") }
func (p *devPlan) agentAdminSocket() string { return p.path("sockets", "agent-admin.sock") }
func (p *devPlan) demoServerSocket() string { return p.path("sockets", "demo-server.sock") }
func (p *devPlan) envFile() string          { return p.path("env") }

// providerSuffix is the DNS suffix the example provider is registered with.
func (p *devPlan) providerSuffix() string { return "provider." + p.td.Name() }

// builtinSuffix is the DNS suffix of the built-in provider sys.auth.meshca, which confirms
// the provider's own register token.
func (p *devPlan) builtinSuffix() string { return "meshca." + p.td.Name() }

// adminSuffix is the DNS suffix of the administrator certificate meshctl dev mints.
func (p *devPlan) adminSuffix() string { return "dev." + p.td.Name() }

// confirmURL is the provider's confirm endpoint.
func (p *devPlan) confirmURL() string { return "https://" + p.providerAddr + "/confirm" }

func (p *devPlan) adminID() spiffeid.ID {
	return spiffeid.RequireFromSegments(p.td, "ns", devAdminDomain, "sa", devAdminService)
}

func (p *devPlan) demoID(service string) spiffeid.ID {
	return spiffeid.RequireFromSegments(p.td, "ns", devDemoDomain, "sa", service)
}

// serverConfig is node i's meshca-server configuration, as YAML that meshca-server's own
// strict decoder accepts.
func (p *devPlan) serverConfig(i int) ([]byte, error) {
	n := p.nodes[i]
	var peers []controlplane.PeerConfig
	for _, o := range p.nodes {
		peers = append(peers, controlplane.PeerConfig{ID: o.id, Address: o.clusterTo})
	}
	launch := []string{devProvider}
	cfg := controlplane.Config{
		NodeID: n.id, DataDir: filepath.Join(p.nodeDir(n.id), "data"), TrustDomain: p.td.Name(),
		Listen: controlplane.ListenConfig{GRPC: n.grpc, HTTP: n.http, Cluster: n.clusterTo},
		CA: controlplane.CAConfig{
			Mode: controlplane.CAModeSelfSigned, Dir: p.caDir(), KEKFile: p.kekFile(),
			WorkloadTTL: controlplane.NewDuration(p.o.certTTL),
		},
		Raft:   controlplane.RaftConfig{Bootstrap: true, Peers: peers},
		Admins: []string{p.adminID().String()},
		Providers: []controlplane.ProviderConfig{
			{Name: controlplane.BuiltinProvider, DNSSuffix: p.builtinSuffix()},
			{Name: devProvider, DNSSuffix: p.providerSuffix(), ConfirmEndpoint: p.confirmURL(), ConfirmRefresh: true},
		},
		Services: []controlplane.ServiceConfig{
			{Name: devProvider, LaunchGrants: []string{controlplane.BuiltinProvider}},
			{Name: devDemoDomain + ".server", LaunchGrants: launch},
			{Name: devDemoDomain + ".client", LaunchGrants: launch},
		},
	}
	out, err := yaml.Marshal(&cfg)
	if err != nil {
		return nil, err
	}
	if _, err := controlplane.DecodeConfig(strings.NewReader(string(out))); err != nil {
		return nil, fmt.Errorf("node %s config: %w", n.id, err)
	}
	return out, nil
}

// agentConfig is the agent's configuration, as YAML that meshca-agent's strict decoder
// accepts: the demo client's identity on the shared SDS and Workload API sockets for this
// user's uid, the demo server's on a socket of its own, both attested by the provider's
// identity documents that the agent gets by running `provider issue`; and the provider's own
// identity, registered with a one-time register token and kept as files the provider serves
// its confirm endpoint with.
func (p *devPlan) agentConfig() ([]byte, error) {
	var servers []string
	for _, n := range p.nodes {
		servers = append(servers, n.grpc)
	}
	identity := func(service, instance string) map[string]any {
		return map[string]any{
			"domain": devDemoDomain, "service": service, "instance_id": instance,
			"provider_dns_suffix": p.providerSuffix(),
			"attestation": map[string]any{
				"provider": devProvider,
				"identity_document": map[string]any{"command": []string{
					p.bins.provider, "issue", "-key", p.providerDocKey(), "-provider", devProvider,
					"-trust-domain", p.td.Name(), "-domain", devDemoDomain, "-service", service, "-instance", instance,
				}},
			},
		}
	}
	client := identity("client", "demo-client-1")
	client["uids"] = []int{p.uid}
	server := identity("server", "demo-server-1")
	server["server_auth"] = true
	server["socket"] = p.demoServerSocket()
	server["socket_mode"] = "0600"
	provider := map[string]any{
		"domain": devProviderDomain, "service": devProviderService, "instance_id": devProviderInstance,
		"provider_dns_suffix": p.builtinSuffix(), "server_auth": true,
		"attestation": map[string]any{"register_token_file": p.providerToken()},
	}
	cfg := map[string]any{
		"trust_domain":        p.td.Name(),
		"servers":             servers,
		"trust_bundle":        p.rootsFile(),
		"state_dir":           p.path("agent", "state"),
		"files_dir":           p.path("agent", "files"),
		"sds_socket":          p.sdsSocket(),
		"workload_api_socket": p.workloadSocket(),
		"admin_socket":        p.agentAdminSocket(),
		"ttl":                 p.o.certTTL.String(),
		// Registrations wait for the provider, which waits for its own certificate: retry soon.
		"refresh":    map[string]any{"backoff_max": "5s"},
		"identities": []any{provider, client, server},
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := agent.DecodeConfig(strings.NewReader(string(out))); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	return out, nil
}

// envVar is one line of DIR/env.
type envVar struct{ name, value string }

// env is what DIR/env sets: how to reach everything that runs.
func (p *devPlan) env() []envVar {
	n1 := p.nodes[0]
	workloadAPI := "unix://" + p.workloadSocket()
	return []envVar{
		{envAddr, n1.grpc},
		{envCert, p.adminCert()},
		{envKey, p.adminKey()},
		{envCABundle, p.rootsFile()},
		{"MESHCA_SDS_SOCKET", p.sdsSocket()},
		{"MESHCA_WORKLOAD_API", workloadAPI},
		{"MESHCA_BUNDLE_URL", "https://" + n1.http + controlplane.PathBundle},
		{"MESHCA_EXTEND_URL", "https://" + n1.http + controlplane.PathAuthenticators},
		// go-spiffe clients read the Workload API address from here.
		{"SPIFFE_ENDPOINT_SOCKET", workloadAPI},
		{envAgentSocket, p.agentAdminSocket()},
		{"MESHCA_PROVIDER_METRICS", "http://" + p.providerOpsAddr + "/metrics"},
		{"MESHCA_DEMO_SERVER_STATS", "http://" + p.serverStatsAddr + "/stats"},
		{"MESHCA_DEMO_CLIENT_STATS", "http://" + p.clientStatsAddr + "/stats"},
	}
}

// writeEnvFile writes vars as shell lines NAME=value (quoted where the shell needs it)
// followed by one export line, so `. DIR/env` sets and exports them.
func writeEnvFile(path string, vars []envVar) error {
	var b strings.Builder
	b.WriteString("# meshctl dev: the local cluster. Load it into a shell with: . " + shellQuote(path) + "\n")
	names := make([]string, 0, len(vars))
	for _, v := range vars {
		fmt.Fprintf(&b, "%s=%s\n", v.name, shellQuote(v.value))
		names = append(names, v.name)
	}
	b.WriteString("export " + strings.Join(names, " ") + "\n")
	return sds.WriteFileAtomic(path, []byte(b.String()), 0o644)
}

// shellQuote quotes s for a POSIX shell: bare when it holds only safe characters, else in
// single quotes.
func shellQuote(s string) string {
	safe := s != ""
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("@%+=:,./_-", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// freePorts returns n distinct 127.0.0.1 addresses that were free a moment ago.
func freePorts(n int) ([]string, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var out []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("picking a free port: %w", err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	return out, nil
}

// prepareDir makes o.dir ready for a new cluster: it refuses a folder where a dev cluster
// still runs or that meshctl dev did not make, and clears what an earlier run left.
func prepareDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("--dir: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("--dir: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, devMarker)); errors.Is(err, fs.ErrNotExist) {
		if len(entries) > 0 {
			return fmt.Errorf("--dir %s is not empty and meshctl dev did not make it: choose an empty or new folder", dir)
		}
		return os.WriteFile(filepath.Join(dir, devMarker), []byte("made by meshctl dev up; meshctl dev up clears this folder's cluster files\n"), 0o600)
	}
	procs, err := readProcesses(dir)
	if err != nil {
		return err
	}
	var live []string
	for _, p := range procs {
		if p.running() {
			live = append(live, fmt.Sprintf("%s (pid %d)", p.Name, p.PID))
		}
	}
	if len(live) > 0 {
		return fmt.Errorf("a dev cluster still runs in %s: %s; stop it with meshctl dev down --dir %s", dir, strings.Join(live, ", "), dir)
	}
	for _, e := range devEntries {
		if err := os.RemoveAll(filepath.Join(dir, e)); err != nil {
			return fmt.Errorf("clearing the previous run: %w", err)
		}
	}
	return nil
}

// devUp starts the local cluster and waits until everything is ready. Without --foreground it
// returns and the processes keep running; with it, it shows their status until ctx ends and
// then stops them.
func devUp(ctx context.Context, o devOptions, out io.Writer) (err error) {
	bins, err := findBinaries(o.binDir)
	if err != nil {
		return err
	}
	ports, err := freePorts(devPortCount(o.nodes))
	if err != nil {
		return err
	}
	p, err := newDevPlan(o, bins, ports, os.Getuid())
	if err != nil {
		return err
	}
	if err := prepareDir(o.dir); err != nil {
		return err
	}
	sup := &supervisor{dir: o.dir}
	up := false
	defer func() {
		if err != nil && !up {
			fmt.Fprintf(out, "meshctl dev up failed; stopping what it started\n")
			if stopErr := stopProcesses(sup.records(), o.stopTimeout, out); stopErr != nil {
				err = errors.Join(err, stopErr)
			}
			_ = os.Remove(filepath.Join(o.dir, devProcessesFile))
		}
	}()
	waitCtx, cancel := context.WithTimeout(ctx, o.wait)
	defer cancel()
	if err := p.startCluster(waitCtx, sup, out); err != nil {
		return err
	}
	if err := p.mintAdminCert(); err != nil {
		return err
	}
	if err := p.issueProviderToken(waitCtx); err != nil {
		return err
	}
	if err := p.makeDocumentKey(waitCtx); err != nil {
		return err
	}
	if err := p.startAgent(sup, out); err != nil {
		return err
	}
	if err := p.startProvider(waitCtx, sup, out); err != nil {
		return err
	}
	hc := unixHTTPClient(p.agentAdminSocket())
	defer hc.CloseIdleConnections()
	if err := sup.waitFor(waitCtx, "the agent's certificates", func(ctx context.Context) error {
		return httpOK(ctx, hc, "http://agent"+agent.ReadyPath)
	}); err != nil {
		return err
	}
	if err := p.startDemo(waitCtx, sup, out); err != nil {
		return err
	}
	if err := writeEnvFile(p.envFile(), p.env()); err != nil {
		return err
	}
	p.printSummary(out)
	up = true
	if !o.foreground {
		return nil
	}
	// The foreground stops everything itself, however it ends.
	return p.foreground(ctx, sup, out)
}

// startCluster starts the CA nodes and waits until each serves with the cluster's CA.
func (p *devPlan) startCluster(ctx context.Context, sup *supervisor, out io.Writer) error {
	kek := make([]byte, signer.KEKSize)
	if _, err := rand.Read(kek); err != nil {
		return err
	}
	if err := os.WriteFile(p.kekFile(), []byte(hex.EncodeToString(kek)+"\n"), 0o600); err != nil {
		return err
	}
	for i, n := range p.nodes {
		cfg, err := p.serverConfig(i)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(p.nodeDir(n.id), 0o700); err != nil {
			return err
		}
		cfgPath := filepath.Join(p.nodeDir(n.id), "config.yaml")
		if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
			return err
		}
		if _, err := sup.start(n.id, p.bins.server, []string{"-config", cfgPath}, filepath.Join(p.nodeDir(n.id), "server.log")); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "started %d CA nodes; waiting for the cluster\n", len(p.nodes))
	if err := sup.waitFor(ctx, "the CA root", func(context.Context) error {
		_, err := os.Stat(p.rootsFile())
		return err
	}); err != nil {
		return err
	}
	roots, err := os.ReadFile(p.rootsFile())
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(roots) {
		return fmt.Errorf("%s holds no certificate", p.rootsFile())
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	defer hc.CloseIdleConnections()
	for _, n := range p.nodes {
		if err := sup.waitFor(ctx, n.id+" ready", func(ctx context.Context) error {
			return httpOK(ctx, hc, "https://"+n.http+controlplane.PathReadyz)
		}); err != nil {
			return err
		}
	}
	return nil
}

// httpOK gets url and wants 200.
func httpOK(ctx context.Context, hc *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// mintAdminCert signs, with the cluster's CA key (meshctl dev made the KEK), the client
// certificate of the system administrator the nodes' config names, for DIR/env: the one
// credential nothing else can hand out.
func (p *devPlan) mintAdminCert() error {
	kek, err := signer.KEKFromFile(p.kekFile())
	if err != nil {
		return err
	}
	now := time.Now()
	iss, err := controlplane.LoadSelfSignedCA(p.caDir(), kek, now)
	if err != nil {
		return err
	}
	auth, err := ca.New(ca.Config{TrustDomain: p.td, Issuer: iss})
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := mintWorkload(auth, policy.WorkloadRequest{
		TrustDomain: p.td.Name(), Domain: devAdminDomain, Service: devAdminService, InstanceID: "meshctl",
		ProviderDNSSuffix: p.adminSuffix(), TTL: devAdminCertTTL, Now: now,
	})
	if err != nil {
		return fmt.Errorf("administrator certificate: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(p.adminCert()), 0o700); err != nil {
		return err
	}
	if err := sds.WriteFileAtomic(p.adminKey(), keyPEM, 0o600); err != nil {
		return err
	}
	return sds.WriteFileAtomic(p.adminCert(), certPEM, 0o644)
}

// issueProviderToken asks the admin API, as the administrator, for the one-time register
// token the agent registers the provider's own identity with.
func (p *devPlan) issueProviderToken(ctx context.Context) error {
	d, err := dial(settings{addr: p.nodes[0].grpc, cert: p.adminCert(), key: p.adminKey(), caBundle: p.rootsFile()})
	if err != nil {
		return err
	}
	defer d.conn.Close()
	r, err := d.client.IssueRegisterToken(ctx, &meshcav1.IssueRegisterTokenRequest{
		Domain: devProviderDomain, Service: devProviderService, InstanceId: devProviderInstance,
		TtlSeconds: int64(devRegisterTokenTTL / time.Second),
	})
	if err != nil {
		return fmt.Errorf("register token for %s: %w", devProvider, err)
	}
	if err := os.MkdirAll(filepath.Dir(p.providerToken()), 0o700); err != nil {
		return err
	}
	return sds.WriteFileAtomic(p.providerToken(), []byte(r.GetToken()+"\n"), 0o600)
}

// mintWorkload makes a P-256 key and a CSR with exactly the names of req, has auth issue it
// under its policy, and returns the chain and the key (PKCS#8) as PEM.
func mintWorkload(auth *ca.Authority, req policy.WorkloadRequest) (certPEM, keyPEM []byte, err error) {
	if req.ServerAuthAllowed {
		req.Purposes = []policy.Purpose{policy.ClientAuth, policy.ServerAuth}
	}
	names, err := req.Names()
	if err != nil {
		return nil, nil, err
	}
	if req.Serial, err = ca.NewSerial(nil); err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	uri, err := url.Parse(names.SPIFFEID.String())
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: names.CommonName}, URIs: []*url.URL{uri},
		DNSNames: []string{names.ServiceDNS, names.InstanceDNS},
	}, key)
	if err != nil {
		return nil, nil, err
	}
	issued, err := auth.IssueWorkload(csr, req)
	if err != nil {
		return nil, nil, err
	}
	var certs []*x509.Certificate
	for _, der := range issued.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, err
		}
		certs = append(certs, c)
	}
	return (&x509svid.SVID{ID: names.SPIFFEID, Certificates: certs, PrivateKey: key}).Marshal()
}

// startAgent starts the agent with the provider's and the demo workloads' identities.
func (p *devPlan) startAgent(sup *supervisor, out io.Writer) error {
	cfg, err := p.agentConfig()
	if err != nil {
		return err
	}
	for _, d := range []string{p.path("agent"), p.path("sockets")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	cfgPath := p.path("agent", "config.yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		return err
	}
	if _, err := sup.start("agent", p.bins.agent, []string{"-config", cfgPath}, p.path("agent", "agent.log")); err != nil {
		return err
	}
	fmt.Fprintf(out, "started the agent; it registers %s with a register token\n", devProvider)
	return nil
}

// makeDocumentKey has the provider make the key it signs identity documents with.
func (p *devPlan) makeDocumentKey(ctx context.Context) error {
	keygen := exec.CommandContext(ctx, p.bins.provider, "keygen", "-key", p.providerDocKey())
	if b, err := keygen.CombinedOutput(); err != nil {
		return fmt.Errorf("provider keygen: %w: %s", err, strings.TrimSpace(string(b)))
	}
	return nil
}

// startProvider starts the provider's confirm endpoint once the agent has written the
// provider's certificate, key and bundle.
func (p *devPlan) startProvider(ctx context.Context, sup *supervisor, out io.Writer) error {
	cert, key, bundle := filepath.Join(p.providerFiles(), sds.CertFile), filepath.Join(p.providerFiles(), sds.KeyFile), filepath.Join(p.providerFiles(), sds.BundleFile)
	if err := sup.waitFor(ctx, "the provider's certificate from the agent", func(context.Context) error {
		for _, f := range []string{cert, key, bundle} {
			if _, err := os.Stat(f); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	args := []string{
		"serve", "-key", p.providerDocKey(), "-provider", devProvider, "-trust-domain", p.td.Name(),
		"-listen", p.providerAddr, "-tls-cert", cert, "-tls-key", key, "-tls-bundle", bundle,
		"-ops-listen", p.providerOpsAddr,
	}
	if _, err := sup.start("provider", p.bins.provider, args, p.path("provider", "provider.log")); err != nil {
		return err
	}
	fmt.Fprintf(out, "started the provider %s at %s; the agent registers the demo workloads through it\n", devProvider, p.confirmURL())
	return sup.waitFor(ctx, "the provider ready", func(ctx context.Context) error {
		return httpOK(ctx, http.DefaultClient, "http://"+p.providerOpsAddr+"/readyz")
	})
}

// unixHTTPClient talks HTTP over a Unix socket.
func unixHTTPClient(socket string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
}

// startDemo starts the demo server (SDS on its own agent socket) and the demo client (the
// Workload API on the shared socket), and waits until the client completed a request.
func (p *devPlan) startDemo(ctx context.Context, sup *supervisor, out io.Writer) error {
	if err := os.MkdirAll(p.path("demo"), 0o700); err != nil {
		return err
	}
	serverArgs := []string{
		"-listen", p.demoAddr, "-source", "sds", "-sds-socket", p.demoServerSocket(),
		"-peer-id", p.demoID("client").String(), "-stats", p.serverStatsAddr,
	}
	if _, err := sup.start("demo-server", p.bins.demoServer, serverArgs, p.path("demo", "demo-server.log")); err != nil {
		return err
	}
	if err := sup.waitFor(ctx, "the demo server", func(ctx context.Context) error {
		_, err := fetchStats(ctx, "http://"+p.serverStatsAddr+"/stats")
		return err
	}); err != nil {
		return err
	}
	clientArgs := []string{
		"-url", "https://" + p.demoAddr + "/hello", "-server-id", p.demoID("server").String(), "-interval", "250ms",
		"-source", "workload-api", "-workload-api", "unix://" + p.workloadSocket(), "-stats", p.clientStatsAddr,
	}
	if _, err := sup.start("demo-client", p.bins.demoClient, clientArgs, p.path("demo", "demo-client.log")); err != nil {
		return err
	}
	fmt.Fprintf(out, "started the demo server and client; waiting for the first mTLS request\n")
	return sup.waitFor(ctx, "the demo client's first request", func(ctx context.Context) error {
		st, err := fetchStats(ctx, "http://"+p.clientStatsAddr+"/stats")
		if err != nil {
			return err
		}
		if st.Requests == 0 {
			return errors.New("no request completed yet")
		}
		return nil
	})
}

// demoStats are the counts a demo workload serves at /stats (examples/demo Stats).
type demoStats struct {
	Requests          int64     `json:"requests"`
	Failures          int64     `json:"failures"`
	HandshakeFailures int64     `json:"handshake_failures"`
	Rotations         int64     `json:"rotations"`
	Serial            string    `json:"serial"`
	SPIFFEID          string    `json:"spiffe_id"`
	NotAfter          time.Time `json:"not_after"`
}

// fetchStats reads a demo workload's counts.
func fetchStats(ctx context.Context, url string) (demoStats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return demoStats{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return demoStats{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return demoStats{}, fmt.Errorf("%s: %s", url, resp.Status)
	}
	var st demoStats
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&st); err != nil {
		return demoStats{}, fmt.Errorf("%s: %w", url, err)
	}
	return st, nil
}

// printSummary says what runs and how to use it.
func (p *devPlan) printSummary(out io.Writer) {
	var ids []string
	for _, n := range p.nodes {
		ids = append(ids, n.id+" "+n.grpc)
	}
	fmt.Fprintf(out, "\nmeshca dev cluster is up (trust domain %s, workload certificates live %s)\n", p.td.Name(), p.o.certTTL)
	fmt.Fprintf(out, "  CA nodes     %s\n", strings.Join(ids, ", "))
	fmt.Fprintf(out, "  provider     %s (%s)\n", devProvider, p.confirmURL())
	fmt.Fprintf(out, "  agent        SDS %s, Workload API %s\n", p.sdsSocket(), p.workloadSocket())
	fmt.Fprintf(out, "  demo         %s -> https://%s/hello (%s)\n", p.demoID("client"), p.demoAddr, p.demoID("server"))
	fmt.Fprintf(out, "  data, logs   %s\n", p.o.dir)
	fmt.Fprintf(out, "\nuse it:  . %s && meshctl cluster status\n", shellQuote(p.envFile()))
	if !p.o.foreground {
		fmt.Fprintf(out, "stop it: meshctl dev down --dir %s\n", shellQuote(p.o.dir))
	}
}

// foreground shows, every statusEvery, the demo's requests, failed handshakes and rotations,
// until ctx ends (Ctrl-C, SIGTERM) or a process exits; then it stops everything.
func (p *devPlan) foreground(ctx context.Context, sup *supervisor, out io.Writer) error {
	fmt.Fprintf(out, "running in the foreground; Ctrl-C stops everything\n\n")
	watchCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	exited := sup.exitedAny(watchCtx)
	tick := time.NewTicker(p.o.statusEvery)
	defer tick.Stop()
	var last [2]demoStats
	var failure error
loop:
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintf(out, "\nstopping\n")
			break loop
		case <-exited:
			failure = sup.exitedChild()
			fmt.Fprintf(out, "\n%v\nstopping everything\n", failure)
			break loop
		case <-tick.C:
			p.printStatus(ctx, out, &last)
		}
	}
	err := stopProcesses(sup.records(), p.o.stopTimeout, out)
	if err == nil {
		_ = os.Remove(filepath.Join(p.o.dir, devProcessesFile))
	}
	return errors.Join(failure, err)
}

// printStatus prints one status line, and a line for each rotation since the last one.
func (p *devPlan) printStatus(ctx context.Context, out io.Writer, last *[2]demoStats) {
	now := time.Now().Format("15:04:05")
	var cur [2]demoStats
	for i, u := range []string{p.serverStatsAddr, p.clientStatsAddr} {
		st, err := fetchStats(ctx, "http://"+u+"/stats")
		if err != nil {
			fmt.Fprintf(out, "%s  %s stats: %v\n", now, []string{"demo-server", "demo-client"}[i], err)
			return
		}
		cur[i] = st
		if st.Rotations > last[i].Rotations {
			fmt.Fprintf(out, "%s  rotation: %s now presents serial %s (not after %s)\n", now, st.SPIFFEID, shortSerial(st.Serial), st.NotAfter.Local().Format("15:04:05"))
		}
	}
	s, c := cur[0], cur[1]
	fmt.Fprintf(out, "%s  requests %d ok, %d failed | failed handshakes: client %d, server %d | rotations: client %d, server %d\n",
		now, c.Requests, c.Failures, c.HandshakeFailures, s.HandshakeFailures, c.Rotations, s.Rotations)
	*last = cur
}

// shortSerial shortens a hex serial for a status line.
func shortSerial(s string) string {
	if len(s) > 12 {
		return s[:12] + "…"
	}
	return s
}
