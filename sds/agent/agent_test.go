package agent

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/sds"
)

// testStart is where the fake clocks start: now, so the node certificates (valid for a year
// around it) and the CA (made an hour before it) fit whatever the tests do.
func testStart() time.Time { return time.Now().UTC().Truncate(time.Second) }

func TestAgentRegistersAndServesDefaultAndROOTCAThatVerify(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	dir := shortDir(t)
	cfg := testConfig(t, cluster, dir)
	a := startAgent(t, cfg, clock)

	e := openEnvoy(t, cfg.SDSSocket, sds.NameDefault, sds.NameRootCA)
	got := e.recv()
	if len(got) != 2 || got[sds.NameDefault] == nil || got[sds.NameRootCA] == nil {
		t.Fatalf("response holds %d secrets, want exactly default and ROOTCA", len(got))
	}
	chain := certOf(t, got[sds.NameDefault])
	if err := verifyChain(chain, rootsOf(t, got[sds.NameRootCA]), clock.Now()); err != nil {
		t.Fatalf("default does not verify to ROOTCA: %v", err)
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil || id != idAPI {
		t.Fatalf("SPIFFE ID %v (%v), want %s", id, err, idAPI)
	}
	wantDNS := []string{"api.sports." + testProviderSuffix, "pod-1.instanceid.athenz." + testProviderSuffix}
	if strings.Join(chain[0].DNSNames, ",") != strings.Join(wantDNS, ",") {
		t.Errorf("DNS SANs %v, want %v", chain[0].DNSNames, wantDNS)
	}
	if chain[0].Subject.CommonName != "sports.api" {
		t.Errorf("CN %q", chain[0].Subject.CommonName)
	}
	regs := cluster.okCalls("Register")
	if len(regs) != 1 || regs[0].provider != testProvider || regs[0].issued != chain[0].SerialNumber.Text(16) {
		t.Fatalf("registrations %+v, want one via %s issuing the served serial", regs, testProvider)
	}
	if n := len(cluster.callsOf("Refresh")); n != 0 {
		t.Errorf("%d refreshes before any was due", n)
	}

	t.Run("the state dir is 0700 and the state file 0600", func(t *testing.T) {
		assertMode(t, cfg.StateDir, 0o700)
		assertMode(t, filepath.Join(cfg.StateDir, "sports.api.json"), 0o600)
	})
	t.Run("the admin socket lists what is served and is ready", func(t *testing.T) {
		poll(t, "a ready agent", func() bool { code, _ := adminGet(t, cfg.AdminSocket, ReadyPath); return code == http.StatusOK })
		inv := inventory(t, cfg.AdminSocket)
		if len(inv.Identities) != 1 || inv.Identities[0].SPIFFEID != idAPI.String() || inv.Identities[0].Serial != chain[0].SerialNumber.Text(16) {
			t.Fatalf("inventory identities %+v", inv.Identities)
		}
		if len(inv.Bundles) != 1 || inv.Bundles[0].TrustDomain != "mesh.example" || len(inv.Bundles[0].Roots) != 1 {
			t.Fatalf("inventory bundles %+v", inv.Bundles)
		}
	})
	t.Run("metrics report the expiry and the registration", func(t *testing.T) {
		_, body := adminGet(t, cfg.AdminSocket, MetricsPath)
		parser := expfmt.NewTextParser(model.UTF8Validation)
		families, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		exp := families["meshca_agent_cert_expiry_seconds"]
		if exp == nil || len(exp.Metric) != 1 {
			t.Fatalf("meshca_agent_cert_expiry_seconds missing:\n%s", body)
		}
		left := time.Duration(exp.Metric[0].GetGauge().GetValue() * float64(time.Second))
		if want := chain[0].NotAfter.Sub(clock.Now()); left != want {
			t.Errorf("expiry %s, want %s", left, want)
		}
		rot := families["meshca_agent_rotations_total"]
		if rot == nil || rot.Metric[0].GetCounter().GetValue() != 1 {
			t.Errorf("meshca_agent_rotations_total: %v", rot)
		}
		if families["meshca_sds_streams_open"] == nil {
			t.Errorf("the sds metrics are not on the agent's registry")
		}
	})
	a.stop()
	for _, sock := range []string{cfg.SDSSocket, cfg.WorkloadAPISocket, cfg.AdminSocket} {
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Errorf("socket %s left behind after stop: %v", sock, err)
		}
	}
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Fatalf("%s: mode %04o, want %04o", path, got, want)
	}
}

// advanceToRefresh moves the clock to the identity's next refresh (the timer the loop waits on,
// at least a minute ahead, so not a backoff) and waits for the refresh to be answered.
func advanceToRefresh(t *testing.T, clock *fakeClock, cluster *testCluster) {
	t.Helper()
	before := len(cluster.okCalls("Refresh"))
	at := clock.waitForTimerAfter(t, time.Minute)
	clock.Advance(at.Sub(clock.Now()))
	poll(t, "a refresh", func() bool { return len(cluster.okCalls("Refresh")) > before })
}

func TestRotationsArePushedOnTheSameStreamWithANewKeyEachTime(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	cfg := testConfig(t, cluster, shortDir(t))
	startAgent(t, cfg, clock)

	e := openEnvoy(t, cfg.SDSSocket, sds.NameDefault, sds.NameRootCA)
	first := e.recv()
	serials := []string{serialOf(t, first[sds.NameDefault])}
	keys := map[string]bool{string(first[sds.NameDefault].GetTlsCertificate().GetPrivateKey().GetInlineBytes()): true}
	for i := range 3 {
		registeredAt := clock.Now()
		advanceToRefresh(t, clock, cluster)
		// Refreshed between 40% and 60% of the lifetime (fraction 0.5, jitter 0.1).
		if d := clock.Now().Sub(registeredAt); d < 24*time.Minute-time.Second || d > 36*time.Minute+time.Second {
			t.Errorf("rotation %d after %s, want between 40%% and 60%% of %s", i+1, d, clusterTTL)
		}
		got := e.recvUntil("a new certificate", func(m map[string]*tlsv3.Secret) bool {
			return m[sds.NameDefault] != nil && serialOf(t, m[sds.NameDefault]) != serials[len(serials)-1]
		})
		s := serialOf(t, got[sds.NameDefault])
		if err := verifyChain(certOf(t, got[sds.NameDefault]), rootsOf(t, got[sds.NameRootCA]), clock.Now()); err != nil {
			t.Fatalf("rotation %d does not verify: %v", i+1, err)
		}
		key := string(got[sds.NameDefault].GetTlsCertificate().GetPrivateKey().GetInlineBytes())
		if keys[key] {
			t.Fatalf("rotation %d reused a key", i+1)
		}
		keys[key] = true
		refreshes := cluster.okCalls("Refresh")
		last := refreshes[len(refreshes)-1]
		if last.serial != serials[len(serials)-1] || last.issued != s {
			t.Fatalf("refresh %d presented %s and issued %s; want the served %s replaced by %s", i+1, last.serial, last.issued, serials[len(serials)-1], s)
		}
		serials = append(serials, s)
	}
	if n := len(cluster.callsOf("Register")); n != 1 {
		t.Errorf("%d registrations, want 1 (rotations refresh)", n)
	}
}
