package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc/codes"

	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/sds"
)

func TestRestartServesTheStoredCertificateAndRefreshesInsteadOfRegistering(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	cfg := testConfig(t, cluster, shortDir(t))
	first := startAgent(t, cfg, clock)
	poll(t, "a registration", func() bool { return first.servedSerial(idAPI) != "" })
	stored := first.servedSerial(idAPI)
	first.stop()

	second := startAgent(t, cfg, clock)
	// Served at once from the state dir, before any call to the CA.
	e := openEnvoy(t, cfg.SDSSocket, sds.NameDefault, sds.NameRootCA)
	if got := serialOf(t, e.recv()[sds.NameDefault]); got != stored {
		t.Fatalf("after restart the agent serves %s, want the stored %s", got, stored)
	}
	if n := len(cluster.callsOf("Register")); n != 1 {
		t.Fatalf("%d registrations after restart, want 1", n)
	}
	advanceToRefresh(t, clock, cluster)
	refreshes := cluster.okCalls("Refresh")
	if len(refreshes) != 1 || refreshes[0].serial != stored {
		t.Fatalf("refreshes %+v, want one presenting the stored serial %s", refreshes, stored)
	}
	poll(t, "the refreshed certificate served", func() bool { return second.servedSerial(idAPI) == refreshes[0].issued })
	if n := len(cluster.callsOf("Register")); n != 1 {
		t.Fatalf("%d registrations, want 1: a restart refreshes", n)
	}
}

func TestAnExpiredCertificateReattests(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	cfg := testConfig(t, cluster, shortDir(t))
	first := startAgent(t, cfg, clock)
	poll(t, "a registration", func() bool { return first.servedSerial(idAPI) != "" })
	stored := first.servedSerial(idAPI)
	first.stop()

	// The host was down for longer than the certificate's lifetime.
	clock.Advance(clusterTTL + time.Minute)
	second := startAgent(t, cfg, clock)
	poll(t, "a second registration", func() bool { return len(cluster.okCalls("Register")) == 2 })
	if n := len(cluster.callsOf("Refresh")); n != 0 {
		t.Fatalf("%d refreshes with an expired certificate", n)
	}
	poll(t, "the new certificate served", func() bool {
		s := second.servedSerial(idAPI)
		return s != "" && s != stored
	})
}

func TestFailoverToTheNextCANode(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 3)
	cfg := testConfig(t, cluster, shortDir(t))
	cluster.nodes[0].down()
	a := startAgent(t, cfg, clock)
	poll(t, "a registration", func() bool { return a.servedSerial(idAPI) != "" })
	if regs := cluster.okCalls("Register"); len(regs) != 1 || regs[0].node != "n2" {
		t.Fatalf("registrations %+v, want one answered by n2 while n1 is down", regs)
	}
	if !strings.Contains(a.logs.String(), "CA node failed, trying the next") {
		t.Errorf("the failover is not logged")
	}

	t.Run("a refresh moves on when the node that answered last goes down", func(t *testing.T) {
		cluster.nodes[1].down()
		advanceToRefresh(t, clock, cluster)
		if r := cluster.okCalls("Refresh"); r[len(r)-1].node != "n3" {
			t.Fatalf("refresh answered by %s, want n3", r[len(r)-1].node)
		}
	})
	t.Run("the bundle stream moves to a live node too", func(t *testing.T) {
		e := openEnvoy(t, cfg.SDSSocket, sds.NameRootCA)
		e.recv()
		// n1 and n2 are down: only a stream from n3 can bring the new root.
		rotated := cluster.publishRoot(cluster.newRoot())
		e.recvUntil("the new root", func(m map[string]*tlsv3.Secret) bool {
			return m[sds.NameRootCA] != nil && len(rootsOf(t, m[sds.NameRootCA])) == len(rotated.X509Authorities())
		})
	})
}

func TestARevokedInstanceStopsServingItsCertificateAndReattests(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	cfg := testConfig(t, cluster, shortDir(t))
	a := startAgent(t, cfg, clock)
	poll(t, "a registration", func() bool { return a.servedSerial(idAPI) != "" })

	cluster.revoke(testProvider, "sports", "api", "pod-1")
	at := clock.waitForTimerAfter(t, time.Minute)
	clock.Advance(at.Sub(clock.Now()))
	poll(t, "the refusal", func() bool { return len(cluster.callsOf("Refresh")) == 1 })
	if c := cluster.callsOf("Refresh")[0]; c.code != codes.PermissionDenied {
		t.Fatalf("refresh answered %s, want PermissionDenied", c.code)
	}
	poll(t, "the stale certificate withdrawn", func() bool { return a.servedSerial(idAPI) == "" })
	poll(t, "a loud log line", logged(a, `level=ERROR msg="agent: CA refused to refresh`))
	st, err := a.agent.state.load("sports.api")
	if err != nil || st.Cert != nil {
		t.Fatalf("state after the refusal: %+v %v; want the certificate dropped", st.Cert, err)
	}
	// The identity document can attest again: the agent tries (this CA refuses a revoked id).
	poll(t, "a new registration attempt", func() bool {
		clock.Advance(time.Second)
		return len(cluster.callsOf("Register")) >= 2
	})
	if a.servedSerial(idAPI) != "" {
		t.Fatal("a refused registration served something")
	}
}

func TestARegisterTokenIsPresentedOnlyOnce(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	dir := shortDir(t)
	cfg := testConfig(t, cluster, dir)
	tokenFile := filepath.Join(dir, "token")
	write(t, tokenFile, []byte(cluster.issueRegisterToken("pod-1")+"\n"), 0o600)
	cfg.Identities[0].ProviderDNSSuffix = builtinSuffix
	cfg.Identities[0].Attestation = AttestationConfig{RegisterTokenFile: tokenFile}
	cfg.SetDefaults()

	a := startAgent(t, cfg, clock)
	poll(t, "a registration", func() bool { return a.servedSerial(idAPI) != "" })
	if regs := cluster.okCalls("Register"); len(regs) != 1 || regs[0].provider != BuiltinProvider {
		t.Fatalf("registrations %+v, want one confirmed by %s", regs, BuiltinProvider)
	}
	a.stop()

	// The certificate expires while the host is down; the token in the file was used.
	clock.Advance(clusterTTL + time.Minute)
	b := startAgent(t, cfg, clock)
	poll(t, "the spent token noticed", logged(b, "register token already used"))
	clock.Advance(cfg.Refresh.BackoffMax.D())
	clock.waitForTimerAfter(t, time.Second)
	if n := len(cluster.callsOf("Register")); n != 1 {
		t.Fatalf("%d registrations: a used register token was presented again", n)
	}

	t.Run("a new token in the file registers", func(t *testing.T) {
		write(t, tokenFile, []byte(cluster.issueRegisterToken("pod-1")), 0o600)
		poll(t, "a registration with the new token", func() bool {
			clock.Advance(time.Second)
			return len(cluster.okCalls("Register")) == 2
		})
		poll(t, "the new certificate served", func() bool { return b.servedSerial(idAPI) != "" })
	})
}

func TestARevokedInstanceWithASpentRegisterTokenStaysEmpty(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	dir := shortDir(t)
	cfg := testConfig(t, cluster, dir)
	tokenFile := filepath.Join(dir, "token")
	write(t, tokenFile, []byte(cluster.issueRegisterToken("pod-1")), 0o600)
	cfg.Identities[0].ProviderDNSSuffix = builtinSuffix
	cfg.Identities[0].Attestation = AttestationConfig{RegisterTokenFile: tokenFile}
	cfg.SetDefaults()
	a := startAgent(t, cfg, clock)
	poll(t, "a registration", func() bool { return a.servedSerial(idAPI) != "" })

	cluster.revoke(BuiltinProvider, "sports", "api", "pod-1")
	at := clock.waitForTimerAfter(t, time.Minute)
	clock.Advance(at.Sub(clock.Now()))
	poll(t, "the stale certificate withdrawn", func() bool { return a.servedSerial(idAPI) == "" })
	// The retry after the refusal finds the token spent.
	clock.waitForTimerAfter(t, time.Second)
	clock.Advance(cfg.Refresh.BackoffInitial.D())
	poll(t, "the spent token noticed", logged(a, "register token already used"))
	for range 3 {
		clock.Advance(cfg.Refresh.BackoffMax.D())
		clock.waitForTimerAfter(t, time.Second)
	}
	if n := len(cluster.callsOf("Register")); n != 1 {
		t.Fatalf("%d registrations: the spent token was presented again", n)
	}
	if n := len(a.agent.Inventory().Identities); n != 0 {
		t.Fatalf("the agent serves %d identities after the revocation", n)
	}
}

func TestAServiceKeyTokenRegisters(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	dir := shortDir(t)
	cfg := testConfig(t, cluster, dir)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "service.key")
	if err := signer.WritePlaintextFile(keyFile, key); err != nil {
		t.Fatal(err)
	}
	cluster.addServiceKey("sports", "api", "3", key.Public())
	cfg.Identities[0].ProviderDNSSuffix = builtinSuffix
	cfg.Identities[0].Attestation = AttestationConfig{ServiceKey: &ServiceKeyConfig{KeyFile: keyFile, KeyVersion: "3"}}
	cfg.SetDefaults()

	a := startAgent(t, cfg, clock)
	poll(t, "a registration", func() bool { return a.servedSerial(idAPI) != "" })
	if regs := cluster.okCalls("Register"); len(regs) != 1 || regs[0].provider != BuiltinProvider {
		t.Fatalf("registrations %+v", regs)
	}
}

func TestAStateDirOpenToOthersIsRefused(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	cases := []struct {
		name    string
		prepare func(t *testing.T, cfg *Config)
	}{
		{"a state dir readable by its group", func(t *testing.T, cfg *Config) {
			if err := os.Mkdir(cfg.StateDir, 0o750); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(cfg.StateDir, 0o750); err != nil {
				t.Fatal(err)
			}
		}},
		{"a state file readable by others", func(t *testing.T, cfg *Config) {
			if err := os.Mkdir(cfg.StateDir, 0o700); err != nil {
				t.Fatal(err)
			}
			write(t, filepath.Join(cfg.StateDir, "sports.api.json"), []byte("{}"), 0o644)
			if err := os.Chmod(filepath.Join(cfg.StateDir, "sports.api.json"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, cluster, shortDir(t))
			tc.prepare(t, cfg)
			_, err := New(cfg, Options{Clock: clock})
			if !errors.Is(err, ErrStatePermissions) || !strings.Contains(err.Error(), cfg.StateDir) {
				t.Fatalf("got %v, want ErrStatePermissions naming the path", err)
			}
		})
	}
	t.Run("a missing state dir is created 0700", func(t *testing.T) {
		cfg := testConfig(t, cluster, shortDir(t))
		cfg.StateDir = filepath.Join(cfg.StateDir, "nested", "state")
		if _, err := New(cfg, Options{Clock: clock}); err != nil {
			t.Fatal(err)
		}
		assertMode(t, cfg.StateDir, 0o700)
	})
	t.Run("a corrupt state file costs a registration, not the agent", func(t *testing.T) {
		cfg := testConfig(t, cluster, shortDir(t))
		if err := os.Mkdir(cfg.StateDir, 0o700); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(cfg.StateDir, "sports.api.json"), []byte(`{"cert": 7}`), 0o600)
		logs := &lockedBuffer{}
		a, err := New(cfg, Options{Clock: clock, Logger: slog.New(slog.NewTextHandler(logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs.String(), "state file is corrupt") {
			t.Errorf("the corrupt file is not logged: %s", logs)
		}
		if a.identities[0].cur != nil {
			t.Fatal("a corrupt state file yielded a certificate")
		}
	})
}

func TestTheStateIsReplacedAtomicallyAndRoundTrips(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	cfg := testConfig(t, cluster, shortDir(t))
	a := startAgent(t, cfg, clock)
	poll(t, "a registration", func() bool { return a.servedSerial(idAPI) != "" })
	advanceToRefresh(t, clock, cluster)
	poll(t, "the refresh stored", func() bool {
		st, err := a.agent.state.load("sports.api")
		return err == nil && st.Cert != nil && st.Cert.Serial == a.servedSerial(idAPI) && len(cluster.okCalls("Refresh")) == 1 &&
			st.Cert.Serial == cluster.okCalls("Refresh")[0].issued
	})
	left, err := filepath.Glob(filepath.Join(cfg.StateDir, ".*.tmp"))
	if err != nil || len(left) != 0 {
		t.Fatalf("temporary files left in the state dir: %v %v", left, err)
	}
	st, err := a.agent.state.load("sports.api")
	if err != nil {
		t.Fatal(err)
	}
	cur, err := st.Cert.decode(idAPI, "pod-1")
	if err != nil {
		t.Fatal(err)
	}
	if cur.serial != a.servedSerial(idAPI) || !cur.received.Equal(clock.Now()) {
		t.Fatalf("decoded serial %s received %s; want %s at %s", cur.serial, cur.received, a.servedSerial(idAPI), clock.Now())
	}
	if _, err := st.Cert.decode(idAPI, "pod-2"); !errors.Is(err, errOtherIdentity) {
		t.Fatalf("a certificate of another instance decoded: %v", err)
	}
}
