package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/internal/clustertest"
)

// runMeshctl runs one meshctl command line in process and returns its exit code and output.
func runMeshctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	a := newApp(&stdout, &stderr, func(string) string { return "" })
	a.configDir = func() (string, error) { return "", errors.New("no config dir in tests") }
	code := a.run(context.Background(), args)
	return code, stdout.String(), stderr.String()
}

// mustMeshctl runs a command line that must succeed.
func mustMeshctl(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := runMeshctl(t, args...)
	if code != exitOK {
		t.Fatalf("meshctl %s: exit %d\n%s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// writeKEK writes a random KEK file.
func writeKEK(t *testing.T, path string) {
	t.Helper()
	raw := make([]byte, signer.KEKSize)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(hex.EncodeToString(raw)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// offlineMesh is an offline root with one cacerts folder per cluster.
type offlineMesh struct {
	rootDir, kek string
	cacerts      []string
}

// newOfflineMesh makes a sealed root for td and signs one intermediate per cluster, each key
// made with intermediate-csr where "the cluster" lives.
func newOfflineMesh(t *testing.T, td string, clusters int) offlineMesh {
	t.Helper()
	dir := t.TempDir()
	m := offlineMesh{rootDir: filepath.Join(dir, "root"), kek: filepath.Join(dir, "kek")}
	writeKEK(t, m.kek)
	mustMeshctl(t, "ca", "init-root", "--out", m.rootDir, "--trust-domain", td, "--kek-file", m.kek)
	for i := range clusters {
		req := filepath.Join(dir, "req", string(rune('a'+i)))
		out := filepath.Join(dir, "cacerts", string(rune('a'+i)))
		mustMeshctl(t, "ca", "intermediate-csr", "--out", req, "--trust-domain", td, "--key-type", "ecdsa-p384")
		mustMeshctl(t, "ca", "sign-intermediate", "--root", m.rootDir, "--kek-file", m.kek,
			"--csr", filepath.Join(req, intermediateCSRFile), "--key", filepath.Join(req, ca.CAKeyFile), "--out", out)
		m.cacerts = append(m.cacerts, out)
	}
	return m
}

func TestOfflineRootLayout(t *testing.T) {
	m := newOfflineMesh(t, "mesh.test", 2)
	now := time.Now()
	root := readCert(t, filepath.Join(m.rootDir, offlineRootCertFile))
	if fi, err := os.Stat(filepath.Join(m.rootDir, offlineRootSealedKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("sealed root key: %v, %v; want a 0600 file", fi, err)
	}
	if _, err := os.Stat(filepath.Join(m.rootDir, offlineRootPlainKeyFile)); err == nil {
		t.Fatal("a plaintext root key was written beside the sealed one")
	}
	var serials []*big.Int
	for _, dir := range m.cacerts {
		iss, err := ca.LoadCACerts(dir, nil, now)
		if err != nil {
			t.Fatalf("the cacerts layout in %s does not load: %v", dir, err)
		}
		c := iss.Certificate()
		if !c.IsCA || !c.MaxPathLenZero || c.MaxPathLen != 0 {
			t.Fatalf("intermediate: CA %v, max path len %d (zero %v); want a CA that signs leaves only", c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
		}
		if got := c.NotAfter.Sub(now); got > ca.DefaultIntermediateTTL || got < ca.DefaultIntermediateTTL-time.Hour {
			t.Fatalf("intermediate lifetime %s, want about %s", got, ca.DefaultIntermediateTTL)
		}
		if err := c.CheckSignatureFrom(root); err != nil {
			t.Fatalf("intermediate is not signed by the root: %v", err)
		}
		if fi, err := os.Stat(filepath.Join(dir, ca.CAKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("ca-key.pem: %v, %v; want a 0600 file", fi, err)
		}
		serials = append(serials, c.SerialNumber)
	}
	if serials[0].Cmp(serials[1]) == 0 {
		t.Fatal("two intermediates share a serial")
	}
}

func TestOfflineRootRefusals(t *testing.T) {
	m := newOfflineMesh(t, "mesh.test", 1)
	dir := t.TempDir()
	otherReq := filepath.Join(dir, "other")
	mustMeshctl(t, "ca", "intermediate-csr", "--out", otherReq, "--trust-domain", "mesh.test")
	req := filepath.Join(dir, "req")
	mustMeshctl(t, "ca", "intermediate-csr", "--out", req, "--trust-domain", "mesh.test")
	otherKEK := filepath.Join(dir, "kek2")
	writeKEK(t, otherKEK)
	workloadCSR := filepath.Join(dir, "workload.csr")
	writeCSR(t, workloadCSR, "spiffe://mesh.test/ns/a/sa/b")
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"init-root needs a sealed or an explicitly plaintext key", []string{"ca", "init-root", "--out", filepath.Join(dir, "r1"), "--trust-domain", "mesh.test"}, exitUsage, "exactly one of --kek-file and --insecure-plaintext-key"},
		{"init-root never overwrites a root", []string{"ca", "init-root", "--out", m.rootDir, "--trust-domain", "mesh.test", "--kek-file", m.kek}, exitError, "a root is never overwritten"},
		{"intermediate-csr never overwrites a key", []string{"ca", "intermediate-csr", "--out", req, "--trust-domain", "mesh.test"}, exitError, "never overwritten"},
		{"a sealed root needs its KEK", []string{"ca", "sign-intermediate", "--root", m.rootDir, "--csr", filepath.Join(req, intermediateCSRFile), "--out", filepath.Join(dir, "o1")}, exitError, "--kek-file"},
		{"a wrong KEK does not open the root", []string{"ca", "sign-intermediate", "--root", m.rootDir, "--kek-file", otherKEK, "--csr", filepath.Join(req, intermediateCSRFile), "--out", filepath.Join(dir, "o2")}, exitError, "--root"},
		{"the key must be the CSR's", []string{"ca", "sign-intermediate", "--root", m.rootDir, "--kek-file", m.kek, "--csr", filepath.Join(req, intermediateCSRFile), "--key", filepath.Join(otherReq, ca.CAKeyFile), "--out", filepath.Join(dir, "o3")}, exitError, "not the key of the CSR"},
		{"an intermediate names a trust domain, not a workload", []string{"ca", "sign-intermediate", "--root", m.rootDir, "--kek-file", m.kek, "--csr", workloadCSR, "--out", filepath.Join(dir, "o4")}, exitError, "not a trust domain ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := runMeshctl(t, tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d mentioning %q", code, errOut, tt.code, tt.want)
			}
		})
	}
}

func TestOfflineRootPlaintextKeySigns(t *testing.T) {
	dir := t.TempDir()
	rootDir := filepath.Join(dir, "root")
	mustMeshctl(t, "ca", "init-root", "--out", rootDir, "--trust-domain", "mesh.test", "--insecure-plaintext-key", "--key-type", "rsa-2048")
	req := filepath.Join(dir, "req")
	mustMeshctl(t, "ca", "intermediate-csr", "--out", req, "--trust-domain", "mesh.test")
	out := filepath.Join(dir, "cacerts")
	// Without --key the cluster keeps its key where it made it: no ca-key.pem is written.
	mustMeshctl(t, "ca", "sign-intermediate", "--root", rootDir, "--csr", filepath.Join(req, intermediateCSRFile), "--out", out)
	if _, err := os.Stat(filepath.Join(out, ca.CAKeyFile)); err == nil {
		t.Fatal("ca-key.pem written without --key")
	}
	key, err := signer.ReadPlaintextFile(filepath.Join(req, ca.CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.LoadCACerts(out, key, time.Now()); err != nil {
		t.Fatalf("the cacerts layout with the cluster's own key does not load: %v", err)
	}
}

// TestClustersUnderOneOfflineRoot starts two clusters in cacerts mode, each with its own
// intermediate under one offline root, and proves that each trusts the other's certificates
// with nothing but its own bundle: the node certificates the clusters issued themselves verify
// across, and workloads holding certificates of cluster A and of cluster B complete mTLS.
func TestClustersUnderOneOfflineRoot(t *testing.T) {
	const td = "mesh.test"
	m := newOfflineMesh(t, td, 2)
	var clusters []*clustertest.Cluster
	for _, dir := range m.cacerts {
		c := clustertest.Start(t, clustertest.Options{Nodes: 1, TrustDomain: td, Tune: func(_ int, cfg *controlplane.Config) {
			// The cluster's CA folder becomes a cacerts folder with this cluster's intermediate.
			copyDir(t, dir, cfg.CA.Dir)
			cfg.CA.Mode = controlplane.CAModeCACerts
		}})
		clusters = append(clusters, c)
	}
	bundleOf := func(dir string) *x509bundle.Bundle {
		b, err := ca.ParseBundlePEM(spiffeid.RequireTrustDomainFromString(td), mustRead(t, filepath.Join(dir, ca.RootCertFile)))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	intermediates := map[string]bool{}
	for i, c := range clusters {
		other := m.cacerts[1-i]
		chain := peerChain(t, c.Nodes[0].HTTPAddr)
		id, _, err := x509svid.Verify(chain, bundleOf(other))
		if err != nil {
			t.Fatalf("cluster %d's node certificate does not verify with the other cluster's bundle: %v", i, err)
		}
		if want := spiffeid.RequireFromSegments(spiffeid.RequireTrustDomainFromString(td), "meshca", "server", c.Nodes[0].ID); id != want {
			t.Fatalf("node certificate %s, want %s", id, want)
		}
		if len(chain) < 2 || !chain[1].Equal(readCert(t, filepath.Join(m.cacerts[i], ca.CACertFile))) {
			t.Fatalf("cluster %d's node certificate is not issued by its own intermediate", i)
		}
		intermediates[string(chain[1].Raw)] = true
	}
	if len(intermediates) != 2 {
		t.Fatal("both clusters signed with the same intermediate")
	}

	// A workload of cluster A (server) and one of cluster B (client), each certificate from its
	// own cluster's intermediate, each side trusting only its own cluster's bundle.
	td0 := spiffeid.RequireTrustDomainFromString(td)
	aID := spiffeid.RequireFromSegments(td0, "ns", "sports", "sa", "api")
	bID := spiffeid.RequireFromSegments(td0, "ns", "news", "sa", "web")
	aSVID := workloadSVID(t, m.cacerts[0], aID)
	bSVID := workloadSVID(t, m.cacerts[1], bID)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(aSVID, bundleOf(m.cacerts[0]), tlsconfig.AuthorizeID(bID)))
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
		buf := make([]byte, 5)
		if _, err := io.ReadFull(conn, buf); err != nil {
			served <- err
			return
		}
		_, err = conn.Write(buf)
		served <- err
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), tlsconfig.MTLSClientConfig(bSVID, bundleOf(m.cacerts[1]), tlsconfig.AuthorizeID(aID)))
	if err != nil {
		t.Fatalf("mTLS from cluster B's workload to cluster A's: %v", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	echo := make([]byte, 5)
	if _, err := io.ReadFull(conn, echo); err != nil || string(echo) != "hello" {
		t.Fatalf("echo %q, %v", echo, err)
	}
	if err := <-served; err != nil {
		t.Fatalf("cluster A's workload: %v", err)
	}
}

// peerChain is the certificate chain a TLS server at addr presents.
func peerChain(t *testing.T, addr string) []*x509.Certificate {
	t.Helper()
	// Verification is the test's own, with x509svid against a chosen bundle.
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates
}

// workloadSVID is a workload certificate for id signed by the intermediate of a cacerts folder.
func workloadSVID(t *testing.T, cacerts string, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	iss, err := ca.LoadCACerts(cacerts, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := ca.NewSerial(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: id.Path()},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		URIs:        []*url.URL{id.URL()},
	}
	der, err := signer.CreateCertificate(rand.Reader, tmpl, iss.Certificate(), key.Public(), iss.Signer())
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: append([]*x509.Certificate{leaf}, iss.Chain()...), PrivateKey: key}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.WriteFile(filepath.Join(to, e.Name()), mustRead(t, filepath.Join(from, e.Name())), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	certs, err := ca.ParseCertificatesPEM(mustRead(t, path))
	if err != nil || len(certs) == 0 {
		t.Fatalf("%s: %v", path, err)
	}
	return certs[0]
}

// writeCSR writes a CSR whose one URI SAN is uri.
func writeCSR(t *testing.T, path, uri string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
