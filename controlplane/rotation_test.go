package controlplane

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// testClock is the server's clock in the rotation tests: real time moved by an offset, so a
// test jumps past a certificate's expiry instead of sleeping until it.
type testClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

// moveTo moves the clock so that it reads at least t.
func (c *testClock) moveTo(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := time.Until(t); d > c.offset {
		c.offset = d
	}
}

// startClockedServer is startServer with an injected clock.
func startClockedServer(t *testing.T, clk *testClock, admins ...string) *Server {
	t.Helper()
	dir := t.TempDir()
	raw := make([]byte, 32)
	rand.Read(raw)
	kekPath := filepath.Join(dir, "kek")
	if err := os.WriteFile(kekPath, []byte(hex.EncodeToString(raw)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &Config{
		NodeID: "n1", DataDir: filepath.Join(dir, "data"), TrustDomain: testTD, Admins: admins,
		Listen: ListenConfig{GRPC: "127.0.0.1:0", Cluster: "127.0.0.1:0", HTTP: "127.0.0.1:0"},
		CA:     CAConfig{Mode: CAModeSelfSigned, Dir: filepath.Join(dir, "ca"), KEKFile: kekPath},
		Raft:   RaftConfig{Bootstrap: true, Peers: []PeerConfig{{ID: "n1", Address: "127.0.0.1:0"}}},
	}
	cfg.setDefaults()
	s, err := New(cfg, Options{Logger: testLogger(), Now: clk.Now})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitFor(t, "server ready", func() error { return s.Ready() })
	return s
}

// rotationClient dials s as id with a client certificate from the CA's active issuer (valid a
// day, so the test clock may move), trusting the current bundle at the test clock.
func rotationClient(t *testing.T, s *Server, clk *testClock, id string) meshcav1.CARotationClient {
	t.Helper()
	auth, _, err := s.Authority()
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(id)
	key := newKey(t)
	leaf := signLeaf(t, auth.Issuer(), key, &x509.Certificate{
		Subject: pkix.Name{CommonName: "rotation test"}, URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	pool := x509.NewCertPool()
	for _, c := range s.Bundle().X509Authorities() {
		pool.AddCert(c)
	}
	chain := [][]byte{leaf.Raw}
	for _, c := range auth.Issuer().Chain() {
		if !c.Equal(auth.Issuer().Certificate()) {
			chain = append(chain, c.Raw)
		}
	}
	cfg := &tls.Config{
		RootCAs: pool, MinVersion: tls.VersionTLS12, Time: clk.Now,
		Certificates: []tls.Certificate{{Certificate: chain, PrivateKey: key, Leaf: leaf}},
	}
	cc, err := grpc.NewClient(s.GRPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return meshcav1.NewCARotationClient(cc)
}

// bundleSums is the hex SHA-256 of every root the node's bundle holds.
func bundleSums(s *Server) []string {
	var out []string
	for _, c := range s.Bundle().X509Authorities() {
		sum := sha256.Sum256(c.Raw)
		out = append(out, hex.EncodeToString(sum[:]))
	}
	return out
}

// TestRotationStepsFollowTheirPreconditions walks one rotation on a one-node cluster: prepare
// publishes a second root beside the first, activate switches signing to it, retire is refused
// with the date it becomes possible while a certificate of the old issuer is valid and accepted
// once the clock passed it, leaving only the new root.
func TestRotationStepsFollowTheirPreconditions(t *testing.T) {
	clk := &testClock{}
	s := startClockedServer(t, clk, rootAdmin)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	admin := rotationClient(t, s, clk, rootAdmin)

	t.Run("a caller who is not a system admin may not rotate", func(t *testing.T) {
		_, err := rotationClient(t, s, clk, plainCaller).Prepare(ctx, &meshcav1.PrepareRotationRequest{})
		wantStatus(t, err, codes.PermissionDenied, "system admin")
	})
	t.Run("activate before prepare is refused", func(t *testing.T) {
		_, err := admin.Activate(ctx, &meshcav1.ActivateRotationRequest{})
		wantStatus(t, err, codes.FailedPrecondition, "no rotation is prepared")
	})
	t.Run("retire with a single root is refused", func(t *testing.T) {
		_, err := admin.Retire(ctx, &meshcav1.RetireRotationRequest{})
		wantStatus(t, err, codes.FailedPrecondition, "no root can be retired")
	})

	_, oldIssuer, err := s.Authority()
	if err != nil {
		t.Fatal(err)
	}
	oldRoot := hex.EncodeToString(oldIssuer.GetRootSha256())
	// A workload certificate of the old issuer, valid 20 s from now at the server's clock.
	ts := &testServer{t: t, s: s}
	ts.addProvider("sys.auth.k8s", "k8s.mesh.test", "https://127.0.0.1:1/confirm")
	ts.addService("sports", "api", "sys.auth.k8s")
	spki := make([]byte, 32)
	rand.Read(spki)
	lastExpiry := clk.Now().Add(20 * time.Second)
	ts.apply(&meshcav1.Command{Command: &meshcav1.Command_RecordRegister{RecordRegister: &meshcav1.RecordRegisterCommand{
		Provider: "sys.auth.k8s", Domain: "sports", Service: "api", InstanceId: "i-1", ClientAddr: "127.0.0.1",
		Cert: &meshcav1.Cert{
			Serial: newSerialHex(t), NotBefore: clk.Now().Add(-time.Minute).UnixNano(), NotAfter: lastExpiry.UnixNano(),
			SpkiSha256: spki, Purposes: []meshcav1.Purpose{meshcav1.Purpose_PURPOSE_CLIENT_AUTH}, IssuerId: oldIssuer.GetId(),
		},
	}}})

	prepared, err := admin.Prepare(ctx, &meshcav1.PrepareRotationRequest{})
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if got := prepared.GetCa().GetRotationState(); got != meshcav1.CARotationState_CA_ROTATION_STATE_PREPARED {
		t.Fatalf("after prepare the rotation state is %v", got)
	}
	next := prepared.GetCa().GetNextIssuer()
	newRoot := next.GetRootSha256()
	if newRoot == oldRoot || prepared.GetCa().GetRoots()[0].GetSha256() != newRoot {
		t.Fatalf("prepare: the new root %s is not at the front of the bundle %v", newRoot, prepared.GetCa().GetRoots())
	}
	waitFor(t, "the bundle holds both roots", func() error {
		if got := bundleSums(s); len(got) != 2 || !strings.Contains(strings.Join(got, ","), newRoot) || !strings.Contains(strings.Join(got, ","), oldRoot) {
			return fmt.Errorf("bundle roots %v, want %s and %s", got, newRoot, oldRoot)
		}
		return nil
	})
	if _, is, _ := s.Authority(); is.GetId() != oldIssuer.GetId() {
		t.Fatalf("prepare switched signing to %s already", is.GetId())
	}
	t.Run("a second prepare is refused while one is prepared", func(t *testing.T) {
		_, err := admin.Prepare(ctx, &meshcav1.PrepareRotationRequest{})
		wantStatus(t, err, codes.FailedPrecondition, "already prepared")
	})

	if _, err := admin.Activate(ctx, &meshcav1.ActivateRotationRequest{IssuerId: next.GetId()}); err != nil {
		t.Fatalf("Activate: %v", err)
	}
	waitFor(t, "signing switched to the new issuer", func() error {
		auth, is, err := s.Authority()
		if err != nil {
			return err
		}
		if is.GetId() != next.GetId() {
			return fmt.Errorf("active issuer %s, want %s", is.GetId(), next.GetId())
		}
		// A certificate the node signs now chains to the new root, not to the old one.
		leaf := signLeaf(t, auth.Issuer(), newKey(t), &x509.Certificate{
			NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Minute),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		})
		for _, r := range prepared.GetCa().GetRoots() {
			pool := x509.NewCertPool()
			c, err := x509.ParseCertificate(r.GetDer())
			if err != nil {
				return err
			}
			pool.AddCert(c)
			_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			if chains := err == nil; chains != (r.GetSha256() == newRoot) {
				return fmt.Errorf("a new certificate chains to root %s: %v (new root %s)", r.GetSha256(), err, newRoot)
			}
		}
		return nil
	})

	status, err := admin.Status(ctx, &meshcav1.RotationStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(status.GetRetirableRoots()) != 1 || status.GetRetirableRoots()[0].GetSha256() != oldRoot {
		t.Fatalf("status: retirable roots %v, want only the old root %s", status.GetRetirableRoots(), oldRoot)
	}
	retireAfter := time.Unix(status.GetRetirableRoots()[0].GetRetireAfter(), 0)
	if retireAfter.Before(lastExpiry) {
		t.Fatalf("status: retire possible at %s, before the old issuer's last certificate expires at %s", retireAfter, lastExpiry)
	}

	t.Run("retire is refused while a certificate of the old root is valid, naming the date", func(t *testing.T) {
		_, err := admin.Retire(ctx, &meshcav1.RetireRotationRequest{RootSha256: oldRoot})
		wantStatus(t, err, codes.FailedPrecondition, "retire becomes possible at "+retireAfter.UTC().Format(time.RFC3339))
	})
	t.Run("the active issuer's root cannot be retired", func(t *testing.T) {
		_, err := admin.Retire(ctx, &meshcav1.RetireRotationRequest{RootSha256: newRoot})
		wantStatus(t, err, codes.FailedPrecondition, "only retired issuers chain to")
	})

	clk.moveTo(retireAfter)
	// The old root leaves the bundle: reconnect with a certificate of the new issuer.
	admin = rotationClient(t, s, clk, rootAdmin)
	retired, err := admin.Retire(ctx, &meshcav1.RetireRotationRequest{})
	if err != nil {
		t.Fatalf("Retire after %s: %v", retireAfter, err)
	}
	if roots := retired.GetCa().GetRoots(); len(roots) != 1 || roots[0].GetSha256() != newRoot {
		t.Fatalf("after retire the bundle is %v, want only %s", roots, newRoot)
	}
	waitFor(t, "the bundle holds only the new root", func() error {
		if got := bundleSums(s); len(got) != 1 || got[0] != newRoot {
			return fmt.Errorf("bundle roots %v, want only %s", got, newRoot)
		}
		return nil
	})
}
