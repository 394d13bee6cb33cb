package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/internal/clustertest"
)

// fedCluster is a cluster with the files meshctl needs to administer it.
type fedCluster struct {
	*clustertest.Cluster
	conn []string // connection flags for meshctl
}

func newFedCluster(t *testing.T, c *clustertest.Cluster, n *clustertest.Node) fedCluster {
	t.Helper()
	dir := t.TempDir()
	cert, key := writeCredentials(t, dir, "admin", c.AdminCert())
	bundle := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(bundle, rootsPEM(c.Bundle()), 0o644); err != nil {
		t.Fatal(err)
	}
	return fedCluster{Cluster: c, conn: []string{"--addr", n.GRPCAddr, "--cert", cert, "--key", key, "--ca-bundle", bundle}}
}

func rootsPEM(b *x509bundle.Bundle) []byte {
	var out []byte
	for _, r := range b.X509Authorities() {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	return out
}

// meshctl runs a meshctl command against the cluster.
func (f fedCluster) meshctl(t *testing.T, args ...string) string {
	t.Helper()
	return mustMeshctl(t, append(args, f.conn...)...)
}

// served is the bundle set node n serves (its identity API's GetBundle: the own and the
// federated bundles of its replicated state).
func served(t *testing.T, c *clustertest.Cluster, n *clustertest.Node) (*x509bundle.Set, error) {
	t.Helper()
	cc := c.Connect(n, nil)
	defer cc.Close()
	r, err := meshcav1.NewIdentityClient(cc).GetBundle(context.Background(), &meshcav1.GetBundleRequest{})
	if err != nil {
		return nil, err
	}
	set := x509bundle.NewSet()
	own, err := ca.ParseBundlePEM(c.TrustDomain(), []byte(r.GetBundle()))
	if err != nil {
		return nil, err
	}
	set.Add(own)
	for name, p := range r.GetFederated() {
		b, err := ca.ParseBundlePEM(spiffeid.RequireTrustDomainFromString(name), []byte(p))
		if err != nil {
			return nil, fmt.Errorf("federated %s: %w", name, err)
		}
		set.Add(b)
	}
	return set, nil
}

// waitServed waits until every node of c serves a bundle set that check accepts.
func waitServed(t *testing.T, c *clustertest.Cluster, what string, check func(*x509bundle.Set) error) {
	t.Helper()
	for _, n := range c.Nodes {
		c.Poll(n.ID+" serves "+what, func() error {
			set, err := served(t, c, n)
			if err != nil {
				return err
			}
			return check(set)
		})
	}
}

// federatedRoots is what check functions look at: the roots set holds for td.
func federatedRoots(set *x509bundle.Set, td spiffeid.TrustDomain) []*x509.Certificate {
	b, ok := set.Get(td)
	if !ok {
		return nil
	}
	return b.X509Authorities()
}

func svidOf(t *testing.T, id spiffeid.ID, cert tls.Certificate) *x509svid.SVID {
	t.Helper()
	var chain []*x509.Certificate
	for _, der := range cert.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: cert.PrivateKey.(crypto.Signer)}
}

// handshake runs one mTLS exchange: a server with serverSVID trusting serverSet that admits
// clientID, and a client with clientSVID trusting clientSet that expects serverID.
func handshake(t *testing.T, serverSVID, clientSVID *x509svid.SVID, serverSet, clientSet *x509bundle.Set) error {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(serverSVID, serverSet, tlsconfig.AuthorizeID(clientSVID.ID)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer conn.Close()
		buf := make([]byte, 2)
		if _, err := io.ReadFull(conn, buf); err != nil {
			served <- err
			return
		}
		_, err = conn.Write(buf)
		served <- err
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), tlsconfig.MTLSClientConfig(clientSVID, clientSet, tlsconfig.AuthorizeID(serverSVID.ID)))
	if err != nil {
		ln.Close()
		<-served
		return fmt.Errorf("client: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("hi")); err != nil {
		return err
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(conn, buf); err != nil {
		ln.Close()
		<-served
		return fmt.Errorf("client read: %w", err)
	}
	return <-served
}

// TestFederationBetweenTwoClusters federates two clusters with independent self-signed roots
// both ways — A fetches B's bundle with SPIFFE authentication bootstrapped from B's roots, B
// fetches A's with web PKI — and proves: every node of each cluster serves the other's bundle;
// a workload of A and one of B complete mTLS trusting only what their own cluster serves; a
// new root in B (a prepared rotation) reaches every node of A without a restart; and removing
// the federation stops trust.
func TestFederationBetweenTwoClusters(t *testing.T) {
	tdA, tdB := spiffeid.RequireTrustDomainFromString("a.test"), spiffeid.RequireTrustDomainFromString("b.test")
	ca1 := clustertest.Start(t, clustertest.Options{Nodes: 3, TrustDomain: tdA.Name()})
	// B's nodes trust A's root as web PKI roots: B fetches A's bundle endpoint like any HTTPS
	// site.
	ca2 := clustertest.Start(t, clustertest.Options{Nodes: 1, TrustDomain: tdB.Name(),
		Env: []string{"SSL_CERT_FILE=" + filepath.Join(ca1.CADir(), controlplane.SelfSignedCertFile)}})
	a := newFedCluster(t, ca1, ca1.Followers()[0])
	b := newFedCluster(t, ca2, ca2.Nodes[0])

	bootstrap := filepath.Join(t.TempDir(), "b-bundle.pem")
	if err := os.WriteFile(bootstrap, rootsPEM(ca2.Bundle()), 0o644); err != nil {
		t.Fatal(err)
	}
	bNode := ca2.Nodes[0]
	out := a.meshctl(t, "federation", "add", tdB.Name(), "--endpoint", bNode.URL(controlplane.PathBundle),
		"--endpoint-spiffe-id", spiffeid.RequireFromSegments(tdB, "meshca", "server", bNode.ID).String(), "--bundle", bootstrap)
	if !strings.Contains(out, tdB.Name()) {
		t.Fatalf("federation add printed %q", out)
	}
	b.meshctl(t, "federation", "add", tdA.Name(), "--endpoint", ca1.Leader().URL(controlplane.PathBundle))

	sameRoots := func(want *x509bundle.Bundle) func(*x509bundle.Set) error {
		return func(set *x509bundle.Set) error {
			got := federatedRoots(set, want.TrustDomain())
			if len(got) != len(want.X509Authorities()) {
				return fmt.Errorf("%d roots of %s, want %d", len(got), want.TrustDomain(), len(want.X509Authorities()))
			}
			for i, r := range want.X509Authorities() {
				if !got[i].Equal(r) {
					return fmt.Errorf("root %d of %s differs", i, want.TrustDomain())
				}
			}
			return nil
		}
	}
	waitServed(t, ca1, "b.test's bundle", sameRoots(ca2.Bundle()))
	waitServed(t, ca2, "a.test's bundle", sameRoots(ca1.Bundle()))

	list := a.meshctl(t, "federation", "list", "-o", "json")
	var listed struct {
		Federations []struct {
			TrustDomain      string   `json:"trust_domain"`
			EndpointSPIFFEID string   `json:"endpoint_spiffe_id"`
			RootSHA256       []string `json:"root_sha256"`
			Sequence         string   `json:"sequence"`
			RefreshHint      string   `json:"refresh_hint_seconds"`
		} `json:"federations"`
	}
	if err := json.Unmarshal([]byte(list), &listed); err != nil {
		t.Fatalf("federation list -o json: %v\n%s", err, list)
	}
	if len(listed.Federations) != 1 || listed.Federations[0].TrustDomain != tdB.Name() ||
		listed.Federations[0].EndpointSPIFFEID != "spiffe://b.test/meshca/server/n1" || len(listed.Federations[0].RootSHA256) != 1 {
		t.Fatalf("federation list: %s", list)
	}
	// B's bundle endpoint sets the refresh hint and a sequence number, and A keeps both.
	if f := listed.Federations[0]; f.RefreshHint != fmt.Sprint(int64(controlplane.BundleRefreshHint/time.Second)) || f.Sequence == "" || f.Sequence == "0" {
		t.Fatalf("stored refresh hint %q s and sequence %q; want %s and a sequence number", f.RefreshHint, f.Sequence, controlplane.BundleRefreshHint)
	}

	aID := spiffeid.RequireFromSegments(tdA, "ns", "sports", "sa", "api")
	bID := spiffeid.RequireFromSegments(tdB, "ns", "news", "sa", "web")
	aSVID := svidOf(t, aID, ca1.IssueCert(aID, clustertest.CertOptions{}))
	bSVID := svidOf(t, bID, ca2.IssueCert(bID, clustertest.CertOptions{}))
	setA, err := served(t, ca1, ca1.Nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	setB, err := served(t, ca2, bNode)
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, bSVID, aSVID, setB, setA); err != nil {
		t.Fatalf("mTLS between a workload of A and one of B over the federated bundles: %v", err)
	}
	// Without federation neither side trusts the other: the handshake is refused.
	if err := handshake(t, bSVID, aSVID, x509bundle.NewSet(ca2.Bundle()), x509bundle.NewSet(ca1.Bundle())); err == nil {
		t.Fatal("mTLS succeeded between the two trust domains without federation")
	}

	// An agent's view: the bundle SDS of one of A's nodes, as agents stream it.
	agentID := spiffeid.RequireFromSegments(tdA, "ns", "sys.agent", "sa", "node-1")
	sds := newSDSWatch(t, ca1, ca1.Nodes[2], ca1.IssueCert(agentID, clustertest.CertOptions{}), "spiffe://b.test", "ALL")
	sds.until(t, "b.test's bundle over SDS", func(got map[string]*tlsv3.Secret) error {
		if n := len(sdsRoots(t, got["spiffe://b.test"])); n != 1 {
			return fmt.Errorf("spiffe://b.test carries %d roots, want 1", n)
		}
		if !allHas(t, got["ALL"], tdB) {
			return fmt.Errorf("ALL does not carry b.test")
		}
		return nil
	})

	// A new root in B: a prepared rotation publishes it in B's bundle; A's leader fetches it
	// (here at once, instead of at the refresh hint) and every node of A serves both roots.
	bc := ca2.Dial(bNode, ptr(ca2.AdminCert()))
	st, err := meshcav1.NewCARotationClient(bc).Prepare(context.Background(), &meshcav1.PrepareRotationRequest{})
	if err != nil {
		t.Fatalf("prepare a rotation in B: %v", err)
	}
	if n := len(st.GetCa().GetRoots()); n != 2 {
		t.Fatalf("B's bundle holds %d roots after prepare, want 2", n)
	}
	start := time.Now()
	a.meshctl(t, "federation", "refresh", tdB.Name())
	sds.until(t, "b.test's new root over SDS", func(got map[string]*tlsv3.Secret) error {
		if n := len(sdsRoots(t, got["spiffe://b.test"])); n != 2 {
			return fmt.Errorf("spiffe://b.test carries %d roots, want 2", n)
		}
		return nil
	})
	t.Logf("a new root of b.test: refresh on a.test to the SDS push of a node of a.test took %s", time.Since(start))
	waitServed(t, ca1, "both of b.test's roots", func(set *x509bundle.Set) error {
		got := federatedRoots(set, tdB)
		if len(got) != 2 {
			return fmt.Errorf("%d roots of b.test, want 2", len(got))
		}
		// Both roots may carry the same NotBefore second (the test prepares at once), so
		// "newest first" can tie: check membership, not position.
		for _, r := range st.GetCa().GetRoots() {
			want := mustParse(t, r.GetDer())
			if !got[0].Equal(want) && !got[1].Equal(want) {
				return fmt.Errorf("b.test's root %s is not served", want.Subject)
			}
		}
		return nil
	})

	// Removing the federation stops trust on every node of A.
	a.meshctl(t, "federation", "remove", tdB.Name())
	waitServed(t, ca1, "no bundle of b.test", func(set *x509bundle.Set) error {
		if set.Has(tdB) {
			return fmt.Errorf("b.test is still served")
		}
		return nil
	})
	sds.until(t, "no bundle of b.test over SDS", func(got map[string]*tlsv3.Secret) error {
		if _, ok := got["spiffe://b.test"]; ok {
			return fmt.Errorf("spiffe://b.test is still pushed")
		}
		if allHas(t, got["ALL"], tdB) {
			return fmt.Errorf("ALL still carries b.test")
		}
		return nil
	})
	setA, err = served(t, ca1, ca1.Nodes[2])
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, bSVID, aSVID, setB, setA); err == nil {
		t.Fatal("A's workload still trusts B's after the federation was removed")
	}
	code, _, errOut := runMeshctl(t, append([]string{"federation", "refresh", tdB.Name()}, a.conn...)...)
	if code != exitError || !strings.Contains(errOut, "not federated") {
		t.Fatalf("refresh of a removed federation: exit %d, %q", code, errOut)
	}
}

func ptr[T any](v T) *T { return &v }

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// sdsWatch is a bundle SDS stream to a CA node, as an agent opens it.
type sdsWatch struct {
	st    secretservice.SecretDiscoveryService_StreamSecretsClient
	names []string
}

func newSDSWatch(t *testing.T, c *clustertest.Cluster, n *clustertest.Node, cert tls.Certificate, names ...string) *sdsWatch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	st, err := secretservice.NewSecretDiscoveryServiceClient(c.Dial(n, &cert)).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	return &sdsWatch{st: st, names: names}
}

// until receives (and acknowledges) pushed answers until one satisfies check; each answer
// holds every current resource of the names asked for.
func (w *sdsWatch) until(t *testing.T, what string, check func(map[string]*tlsv3.Secret) error) {
	t.Helper()
	var last error
	for range 50 {
		resp, err := w.st.Recv()
		if err != nil {
			t.Fatalf("waiting for %s (last: %v): %v", what, last, err)
		}
		got := map[string]*tlsv3.Secret{}
		for _, r := range resp.GetResources() {
			var s tlsv3.Secret
			if err := r.UnmarshalTo(&s); err != nil {
				t.Fatal(err)
			}
			got[s.GetName()] = &s
		}
		if err := w.st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: w.names,
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		if last = check(got); last == nil {
			return
		}
	}
	t.Fatalf("%s: not pushed in 50 answers; last: %v", what, last)
}

// sdsRoots are the roots of a validation context secret (none when s is nil).
func sdsRoots(t *testing.T, s *tlsv3.Secret) []*x509.Certificate {
	t.Helper()
	if s == nil {
		return nil
	}
	certs, err := ca.ParseCertificatesPEM(s.GetValidationContext().GetTrustedCa().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

// allHas reports whether the ALL secret's SPIFFE validator config carries td.
func allHas(t *testing.T, s *tlsv3.Secret, td spiffeid.TrustDomain) bool {
	t.Helper()
	if s == nil {
		return false
	}
	var v tlsv3.SPIFFECertValidatorConfig
	if err := s.GetValidationContext().GetCustomValidatorConfig().GetTypedConfig().UnmarshalTo(&v); err != nil {
		t.Fatal(err)
	}
	for _, d := range v.GetTrustDomains() {
		if d.GetName() == td.Name() {
			return true
		}
	}
	return false
}

func TestFederationCommandLine(t *testing.T) {
	conn := []string{"--addr", "127.0.0.1:1", "--cert", "c", "--key", "k", "--ca-bundle", "b"}
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notPEM, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"add needs the endpoint", []string{"federation", "add", "b.test"}, exitUsage, "--endpoint is required"},
		{"SPIFFE authentication needs the peer's bundle", []string{"federation", "add", "b.test", "--endpoint", "https://b.example/bundle", "--endpoint-spiffe-id", "spiffe://b.test/bundle"}, exitUsage, "--endpoint-spiffe-id needs --bundle"},
		{"add names one trust domain", []string{"federation", "add", "--endpoint", "https://b.example/bundle"}, exitUsage, "expected TRUST-DOMAIN"},
		{"remove names one trust domain", []string{"federation", "remove"}, exitUsage, "expected TRUST-DOMAIN"},
		{"the endpoint CA is for web PKI only", []string{"federation", "add", "b.test", "--endpoint", "https://b.example/bundle", "--endpoint-spiffe-id", "spiffe://b.test/bundle", "--bundle", "b.pem", "--endpoint-ca", "ca.pem"}, exitUsage, "--endpoint-ca is for web PKI"},
		{"an unreadable endpoint CA", []string{"federation", "add", "b.test", "--endpoint", "https://b.example/bundle", "--endpoint-ca", "/nonexistent.pem"}, exitError, "--endpoint-ca"},
		{"an endpoint CA that is not PEM certificates", []string{"federation", "add", "b.test", "--endpoint", "https://b.example/bundle", "--endpoint-ca", notPEM}, exitUsage, "--endpoint-ca " + notPEM + ": want PEM certificates"},
		{"an unreadable bootstrap bundle", []string{"federation", "add", "b.test", "--endpoint", "https://b.example/bundle", "--endpoint-spiffe-id", "spiffe://b.test/bundle", "--bundle", "/nonexistent.pem"}, exitError, "--bundle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := runMeshctl(t, append(tt.args, conn...)...)
			if code != tt.code || !strings.Contains(errOut, tt.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d mentioning %q", code, errOut, tt.code, tt.want)
			}
		})
	}
}
