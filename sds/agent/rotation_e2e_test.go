package agent

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/examples/demo"
	"github.com/meshca/meshca/internal/clustertest"
	"github.com/meshca/meshca/internal/testenv"
	"github.com/meshca/meshca/sds"
)

// rootSums is the hex SHA-256 of each root a ROOTCA secret holds, in order.
func rootSums(t *testing.T, s *tlsv3.Secret) []string {
	t.Helper()
	var out []string
	for _, r := range rootsOf(t, s) {
		sum := sha256.Sum256(r.Raw)
		out = append(out, hex.EncodeToString(sum[:]))
	}
	return out
}

// TestCARotationWithoutAFailedHandshake rotates the CA of a real three-node cluster while the
// demo workloads talk mutual TLS through an agent: prepare pushes ROOTCA with both roots to an
// SDS stream that only watches; activate makes the certificates the agent serves chain to the
// new root; once the old issuer's last certificate expired, retire drops the old root and
// ROOTCA holds the new root alone; and no handshake fails at any step.
//
// The refusal of a retire before that date, naming it, is proven on real processes by
// TestRetireOnRealProcesses: this test's 6-second certificates may expire before it could ask.
func TestCARotationWithoutAFailedHandshake(t *testing.T) {
	testenv.SkipIfShort(t, "starts a real three-node cluster")
	c := startRealCluster(t)
	dir := shortDir(t)
	cfg := realConfig(t, c, dir, "1.rot")
	startAgent(t, cfg, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*clustertest.WaitTimeout)
	defer cancel()

	// The demo workloads, as runDemo starts them, left running across the rotation.
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	td := c.TrustDomain().Name()
	srv, err := demo.NewServer(ctx, demo.ServerConfig{
		Listen: "127.0.0.1:0", Logger: logger, AllowedPeer: "spiffe://" + td + "/ns/demo/sa/client",
		Source: demo.SourceConfig{Kind: demo.SourceSDS, SDSSocket: cfg.Identities[1].Socket},
	})
	if err != nil {
		t.Fatal(err)
	}
	srvCtx, stopSrv := context.WithCancel(ctx)
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(srvCtx) }()
	cl, err := demo.NewClient(ctx, demo.ClientConfig{
		URL: "https://" + srv.Addr() + "/hello", ServerID: "spiffe://" + td + "/ns/demo/sa/server", Logger: logger,
		Source: demo.SourceConfig{Kind: demo.SourceWorkloadAPI, WorkloadAPIAddr: "unix://" + cfg.Identities[2].Socket},
	})
	if err != nil {
		t.Fatal(err)
	}
	clCtx, stopClient := context.WithCancel(ctx)
	clDone := make(chan error, 1)
	go func() { clDone <- cl.Run(clCtx) }()
	stopDemo := func() {
		stopClient()
		<-clDone
		_ = cl.Close()
		stopSrv()
		if err := <-srvDone; err != nil {
			t.Errorf("demo server: %v", err)
		}
	}
	defer func() {
		if clCtx.Err() == nil {
			stopDemo()
		}
	}()
	// demoProgress waits until both demo workloads rotated their certificate n more times
	// and the client made requests since, failing on the first failed handshake.
	demoProgress := func(what string, n int64) {
		t.Helper()
		cs0, ss0 := cl.Stats(), srv.Stats()
		clustertest.Poll(t, what, func() error {
			cs, ss := cl.Stats(), srv.Stats()
			if cs.HandshakeFailures > 0 || ss.HandshakeFailures > 0 || cs.Failures > 0 {
				t.Fatalf("%s: failed handshakes: client %d, server %d; failed requests %d\n%s", what, cs.HandshakeFailures, ss.HandshakeFailures, cs.Failures, logs)
			}
			if cs.Rotations < cs0.Rotations+n || ss.Rotations < ss0.Rotations+n || cs.Requests <= cs0.Requests {
				return fmt.Errorf("client %+v, server %+v", cs, ss)
			}
			return nil
		})
	}
	demoProgress("the demo talks before the rotation", 1)

	e := openEnvoy(t, cfg.SDSSocket, sds.NameDefault, sds.NameRootCA)
	first := e.recv()
	oldRoots := rootSums(t, first[sds.NameRootCA])
	if len(oldRoots) != 1 {
		t.Fatalf("ROOTCA before the rotation holds %d roots, want 1", len(oldRoots))
	}
	admin := c.AdminCert()
	rot := meshcav1.NewCARotationClient(c.Dial(c.Followers()[0], &admin))

	start := time.Now()
	prepared, err := rot.Prepare(ctx, &meshcav1.PrepareRotationRequest{})
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	newRoot := prepared.GetCa().GetNextIssuer().GetRootSha256()
	if newRoot == "" || newRoot == oldRoots[0] {
		t.Fatalf("prepare answered next issuer root %q (old root %s)", newRoot, oldRoots[0])
	}
	t.Run("prepare: ROOTCA is pushed with the new root and the old one", func(t *testing.T) {
		got := e.recvUntil("ROOTCA with both roots", func(m map[string]*tlsv3.Secret) bool {
			return m[sds.NameRootCA] != nil && len(rootSums(t, m[sds.NameRootCA])) == 2
		})
		t.Logf("prepare call to ROOTCA with both roots on the Envoy stream: %s", time.Since(start))
		roots := strings.Join(rootSums(t, got[sds.NameRootCA]), ",")
		if !strings.Contains(roots, newRoot) || !strings.Contains(roots, oldRoots[0]) {
			t.Fatalf("ROOTCA %s, want %s and %s", roots, newRoot, oldRoots[0])
		}
	})
	demoProgress("the demo talks with both roots trusted", 1)

	activated := time.Now()
	if _, err := rot.Activate(ctx, &meshcav1.ActivateRotationRequest{}); err != nil {
		t.Fatalf("activate: %v", err)
	}
	t.Run("activate: the certificates served chain to the new root, not the old", func(t *testing.T) {
		got := e.recvUntil("a certificate under the new root", func(m map[string]*tlsv3.Secret) bool {
			if m[sds.NameDefault] == nil || m[sds.NameRootCA] == nil {
				return false
			}
			chain := certOf(t, m[sds.NameDefault])
			for _, r := range rootsOf(t, m[sds.NameRootCA]) {
				sum := sha256.Sum256(r.Raw)
				if hex.EncodeToString(sum[:]) == newRoot {
					return verifyChain(chain, []*x509.Certificate{r}, time.Now()) == nil
				}
			}
			return false
		})
		t.Logf("activate call to the first certificate under the new root on the Envoy stream: %s", time.Since(activated))
		chain := certOf(t, got[sds.NameDefault])
		for _, r := range rootsOf(t, got[sds.NameRootCA]) {
			sum := sha256.Sum256(r.Raw)
			err := verifyChain(chain, []*x509.Certificate{r}, time.Now())
			if hex.EncodeToString(sum[:]) == oldRoots[0] && err == nil {
				t.Fatal("a certificate issued after activate still chains to the old root")
			}
		}
	})
	demoProgress("the demo talks with certificates of the new issuer", 2)

	t.Run("retire: once the old issuer's last certificate expired, ROOTCA holds the new root alone", func(t *testing.T) {
		st, err := rot.Status(ctx, &meshcav1.RotationStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(st.GetRetirableRoots()) != 1 || st.GetRetirableRoots()[0].GetSha256() != oldRoots[0] {
			t.Fatalf("retirable roots %v, want the old root %s", st.GetRetirableRoots(), oldRoots[0])
		}
		at := time.Unix(st.GetRetirableRoots()[0].GetRetireAfter(), 0)
		clustertest.Poll(t, "the date retire becomes possible", func() error {
			if now := time.Now(); now.Before(at) {
				return fmt.Errorf("now %s, retire possible at %s", now.UTC(), at.UTC())
			}
			return nil
		})
		if _, err := rot.Retire(ctx, &meshcav1.RetireRotationRequest{RootSha256: oldRoots[0]}); err != nil {
			t.Fatalf("retire after %s: %v", at.UTC(), err)
		}
		got := e.recvUntil("ROOTCA with the new root alone", func(m map[string]*tlsv3.Secret) bool {
			return m[sds.NameRootCA] != nil && len(rootSums(t, m[sds.NameRootCA])) == 1
		})
		t.Logf("prepare call to ROOTCA with the new root alone on the Envoy stream: %s", time.Since(start))
		if roots := rootSums(t, got[sds.NameRootCA]); roots[0] != newRoot {
			t.Fatalf("ROOTCA holds %s after retire, want the new root %s", roots[0], newRoot)
		}
	})
	demoProgress("the demo talks after the old root is retired", 1)

	stopDemo()
	cs, ss := cl.Stats(), srv.Stats()
	t.Logf("client %+v", cs)
	t.Logf("server %+v", ss)
	if cs.HandshakeFailures != 0 || ss.HandshakeFailures != 0 || cs.Failures != 0 {
		t.Fatalf("failed handshakes: client %d, server %d; failed requests %d\n%s", cs.HandshakeFailures, ss.HandshakeFailures, cs.Failures, logs)
	}
}
