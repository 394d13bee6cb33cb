package faulttest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/internal/clustertest"
)

// The cluster's names. Inside the containers every node listens on fixed ports; the test
// reaches a node's gRPC and HTTPS ports through ports published on 127.0.0.1.
const (
	trustDomain    = "mesh.test"
	providerName   = "sys.auth.fault"
	providerSuffix = "fault.mesh.test"
	providerHost   = "provider"
	providerPort   = "8444"
	domainName     = "sports"
	serviceName    = "api"
	grpcPort       = "8443"
	httpPort       = "8080"
	clusterPort    = "7000"
	kekEnv         = "MESHCA_KEK"
	configPath     = "/etc/meshca/server.yaml"
	// statusTimeout bounds one admin call of the harness.
	statusTimeout = 3 * time.Second
)

// cluster is three meshca-server containers. Each is on two networks: the cluster network
// (internal: Raft, forwarding to the leader and the provider's confirm endpoint, where the
// nodes find each other by the aliases raft-n1, raft-n2, raft-n3) and the client network,
// which publishes its gRPC and HTTPS ports on 127.0.0.1. Disconnecting a node from the
// cluster network partitions it from the others while the test can still talk to it.
type cluster struct {
	d       *docker
	img     images
	td      spiffeid.TrustDomain
	network string // the cluster network
	nodes   []*node
	ca      *clustertest.CA
	admin   tls.Certificate
}

// node is one meshca-server container.
type node struct {
	id        string
	container string
	// alias is the node's name on the cluster network.
	alias string
	// grpcAddr and httpAddr are its published ports on 127.0.0.1.
	grpcAddr, httpAddr string

	connOnce sync.Once
	conn     *grpc.ClientConn
	connErr  error
}

// startCluster builds the images and starts a cluster and its provider: three nodes that
// bootstrap together, generating one self-signed CA in the shared CA volume (its key sealed
// under a KEK passed in the environment), each with its data dir on a volume of its own.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	img, bin := buildImages(t)
	d := newDocker(t, bin)
	c := &cluster{d: d, img: img, td: spiffeid.RequireTrustDomainFromString(trustDomain)}
	c.network = d.name("cluster")
	clients := d.name("clients")
	d.must(append(append([]string{"network", "create", "--internal"}, d.labels()...), c.network)...)
	d.must(append(append([]string{"network", "create"}, d.labels()...), clients)...)
	caVolume := d.name("ca")
	d.must(append(append([]string{"volume", "create"}, d.labels()...), caVolume)...)

	raw := make([]byte, signer.KEKSize)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	kek, err := signer.NewKEK(raw)
	if err != nil {
		t.Fatal(err)
	}
	adminID := spiffeid.RequireFromSegments(c.td, "ns", "sys.admin", "sa", "faulttest")
	ports := clustertest.FreePorts(t, 6)
	var peers []controlplane.PeerConfig
	for i := range 3 {
		n := &node{id: fmt.Sprintf("n%d", i+1), grpcAddr: ports[2*i], httpAddr: ports[2*i+1]}
		n.container, n.alias = d.name(n.id), "raft-"+n.id
		c.nodes = append(c.nodes, n)
		peers = append(peers, controlplane.PeerConfig{ID: n.id, Address: n.alias + ":" + clusterPort})
	}
	dir := t.TempDir()
	for _, n := range c.nodes {
		cfg := &controlplane.Config{
			NodeID: n.id, DataDir: "/data", TrustDomain: trustDomain,
			Listen: controlplane.ListenConfig{
				GRPC: "0.0.0.0:" + grpcPort, HTTP: "0.0.0.0:" + httpPort,
				Cluster: "0.0.0.0:" + clusterPort, ClusterAdvertise: n.alias + ":" + clusterPort,
			},
			CA:     controlplane.CAConfig{Mode: controlplane.CAModeSelfSigned, Dir: "/ca", KEKEnv: kekEnv},
			Raft:   controlplane.RaftConfig{Bootstrap: true, Peers: peers},
			Admins: []string{adminID.String()},
			Providers: []controlplane.ProviderConfig{{
				Name: providerName, DNSSuffix: providerSuffix,
				ConfirmEndpoint: "https://" + providerHost + ":" + providerPort + "/confirm",
			}},
			Services: []controlplane.ServiceConfig{{Name: domainName + "." + serviceName, LaunchGrants: []string{"sys.auth.*"}}},
			// Every call of the load client comes from the client network's gateway: the
			// rate limits must not be what refuses it.
			Limits: controlplane.LimitsConfig{IssuePerIdentityPerMinute: 1 << 20, IssuePerSourcePerMinute: 1 << 20},
		}
		out, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, n.id+".yaml")
		if err := os.WriteFile(path, out, 0o600); err != nil {
			t.Fatal(err)
		}
		data := d.name(n.id + "-data")
		d.must(append(append([]string{"volume", "create"}, d.labels()...), data)...)
		args := append([]string{"create", "--name", n.container}, d.labels()...)
		args = append(args, "--network", clients,
			"-p", n.grpcAddr+":"+grpcPort, "-p", n.httpAddr+":"+httpPort,
			"-v", caVolume+":/ca", "-v", data+":/data",
			"-e", kekEnv+"="+hex.EncodeToString(raw),
			img.server, "-config", configPath, "-log-level", "debug")
		d.must(args...)
		d.must("cp", path, n.container+":"+configPath)
		d.must("network", "connect", "--alias", n.alias, c.network, n.container)
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			if n.conn != nil {
				n.conn.Close()
			}
		}
		if t.Failed() {
			for _, name := range []string{c.nodes[0].container, c.nodes[1].container, c.nodes[2].container, d.name("provider")} {
				t.Logf("--- %s log (last 200 lines) ---\n%s", name, d.logs(name, 200))
			}
		}
	})
	d.must(append([]string{"start"}, c.nodes[0].container, c.nodes[1].container, c.nodes[2].container)...)

	// The CA the nodes generated, read out of the shared volume and opened with the KEK, as
	// an operator holding it could: it mints the admin's and the provider's certificates.
	caDir := filepath.Join(dir, "ca")
	clustertest.Poll(t, "the CA the nodes generated", func() error {
		if err := os.RemoveAll(caDir); err != nil {
			return err
		}
		if _, err := d.cmd("cp", c.nodes[0].container+":/ca", caDir); err != nil {
			return err
		}
		c.ca, err = clustertest.OpenCA(c.td, caDir, kek, time.Now())
		return err
	})
	if c.admin, err = c.ca.IssueCert(adminID, clustertest.CertOptions{}); err != nil {
		t.Fatal(err)
	}
	c.startProvider(t, dir)
	for _, n := range c.nodes {
		c.connect(t, n)
		c.waitReady(t, n)
	}
	c.leader(t, c.nodes)
	return c
}

// startProvider runs the provider on the cluster network with a certificate for its own
// service identity.
func (c *cluster) startProvider(t *testing.T, dir string) {
	t.Helper()
	id, err := controlplane.ServiceSPIFFEID(c.td, providerName)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := c.ca.IssueCert(id, clustertest.CertOptions{TTL: 24 * time.Hour, DNSNames: []string{providerHost}})
	if err != nil {
		t.Fatal(err)
	}
	stage := filepath.Join(dir, "provider")
	if err := os.Mkdir(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	var chain, roots []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	for _, r := range c.ca.Issuer().Roots() {
		roots = append(roots, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"cert.pem": chain, "key.pem": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), "bundle.pem": roots,
	} {
		if err := os.WriteFile(filepath.Join(stage, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	name := c.d.name("provider")
	args := append([]string{"create", "--name", name}, c.d.labels()...)
	args = append(args, "--network", c.network, "--network-alias", providerHost, c.img.provider,
		"-trust-domain", trustDomain, "-listen", ":"+providerPort,
		"-cert", "/provider/cert.pem", "-key", "/provider/key.pem", "-bundle", "/provider/bundle.pem")
	c.d.must(args...)
	c.d.must("cp", stage, name+":/")
	c.d.must("start", name)
}

// connect opens the admin connection to a node; it reconnects by itself after the node
// restarts, retrying at least every second.
func (c *cluster) connect(t *testing.T, n *node) {
	t.Helper()
	n.connOnce.Do(func() {
		n.conn, n.connErr = grpc.NewClient(n.grpcAddr,
			grpc.WithTransportCredentials(credentials.NewTLS(c.ca.TLSConfig(&c.admin))),
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
				MinConnectTimeout: 2 * time.Second,
			}))
	})
	if n.connErr != nil {
		t.Fatal(n.connErr)
	}
}

// adminClient is the admin API of a node.
func (c *cluster) adminClient(n *node) meshcav1.AdminClient { return meshcav1.NewAdminClient(n.conn) }

// status asks a node for its view of the cluster (and its state hash when hash is set).
func (c *cluster) status(n *node, hash bool) (*meshcav1.ClusterStatusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	st, err := c.adminClient(n).ClusterStatus(ctx, &meshcav1.ClusterStatusRequest{StateHash: hash})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", n.id, err)
	}
	return st, nil
}

// leader waits until exactly one of among says it leads and the others of among follow it.
func (c *cluster) leader(t testing.TB, among []*node) *node {
	t.Helper()
	var leader *node
	clustertest.Poll(t, "one leader that every node follows", func() error {
		leader = nil
		ids := map[string]string{}
		for _, n := range among {
			st, err := c.status(n, false)
			if err != nil {
				return err
			}
			ids[n.id] = st.GetLeaderId()
			if st.GetState() == "Leader" {
				if leader != nil {
					return fmt.Errorf("both %s and %s lead", leader.id, n.id)
				}
				leader = n
			}
		}
		if leader == nil {
			return fmt.Errorf("no node leads (leaders seen: %v)", ids)
		}
		for id, l := range ids {
			if l != leader.id {
				return fmt.Errorf("%s follows %q, not %s", id, l, leader.id)
			}
		}
		return nil
	})
	return leader
}

// followers are the nodes other than l.
func (c *cluster) followers(l *node) []*node {
	var out []*node
	for _, n := range c.nodes {
		if n != l {
			out = append(out, n)
		}
	}
	return out
}

// waitReady waits until the node answers /readyz with 200: it knows a leader and has the CA.
func (c *cluster) waitReady(t testing.TB, n *node) {
	t.Helper()
	client := &http.Client{Timeout: statusTimeout, Transport: &http.Transport{TLSClientConfig: c.ca.TLSConfig(nil)}}
	defer client.CloseIdleConnections()
	clustertest.Poll(t, n.id+" ready", func() error {
		resp, err := client.Get("https://" + n.httpAddr + controlplane.PathReadyz)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: /readyz: %s: %s", n.id, resp.Status, strings.TrimSpace(string(body)))
		}
		return nil
	})
}

// converged waits until every node has applied the same log index and holds a state with
// the same hash, and returns them.
func (c *cluster) converged(t testing.TB) (uint64, []byte) {
	t.Helper()
	var index uint64
	var hash []byte
	clustertest.Poll(t, "every node at the same applied index with the same state hash", func() error {
		var first *meshcav1.ClusterStatusResponse
		for _, n := range c.nodes {
			st, err := c.status(n, true)
			if err != nil {
				return err
			}
			if first == nil {
				first = st
				continue
			}
			if st.GetStateAppliedIndex() != first.GetStateAppliedIndex() {
				return fmt.Errorf("%s applied %d, %s applied %d", first.GetNodeId(), first.GetStateAppliedIndex(), st.GetNodeId(), st.GetStateAppliedIndex())
			}
			if string(st.GetStateHash()) != string(first.GetStateHash()) {
				t.Fatalf("at applied index %d %s has state hash %x and %s has %x", st.GetStateAppliedIndex(),
					first.GetNodeId(), first.GetStateHash(), st.GetNodeId(), st.GetStateHash())
			}
		}
		index, hash = first.GetStateAppliedIndex(), first.GetStateHash()
		return nil
	})
	return index, hash
}

// Faults, each a docker command on a node's container.

func (c *cluster) kill(t testing.TB, n *node) {
	t.Helper()
	c.d.must("kill", "-s", "KILL", n.container)
}

func (c *cluster) start(t testing.TB, nodes ...*node) {
	t.Helper()
	args := []string{"start"}
	for _, n := range nodes {
		args = append(args, n.container)
	}
	c.d.must(args...)
}

func (c *cluster) stop(t testing.TB, nodes ...*node) {
	t.Helper()
	args := []string{"stop", "-t", "20"}
	for _, n := range nodes {
		args = append(args, n.container)
	}
	c.d.must(args...)
}

func (c *cluster) pause(t testing.TB, n *node)   { t.Helper(); c.d.must("pause", n.container) }
func (c *cluster) unpause(t testing.TB, n *node) { t.Helper(); c.d.must("unpause", n.container) }

// disconnect takes the node off the cluster network: it can no longer reach the other nodes
// or the provider, and they cannot reach it; the test still reaches it on the client network.
func (c *cluster) disconnect(t testing.TB, n *node) {
	t.Helper()
	c.d.must("network", "disconnect", c.network, n.container)
}

// reconnect puts the node back on the cluster network under its alias.
func (c *cluster) reconnect(t testing.TB, n *node) {
	t.Helper()
	c.d.must("network", "connect", "--alias", n.alias, c.network, n.container)
}
