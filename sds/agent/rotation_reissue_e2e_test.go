package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/internal/clustertest"
	"github.com/meshca/meshca/sds"
)

// rootOf is the root a status names by its hex SHA-256.
func rootOf(t *testing.T, st *meshcav1.RotationStatus, sum string) *x509.Certificate {
	t.Helper()
	for _, r := range st.GetCa().GetRoots() {
		if r.GetSha256() == sum {
			c, err := x509.ParseCertificate(r.GetDer())
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
	}
	t.Fatalf("root %s is not in the status's bundle", sum)
	return nil
}

// underRoot reports the first identity of r whose served certificate does not chain to root.
func underRoot(r *runningAgent, root *x509.Certificate) error {
	for _, l := range r.agent.identities {
		v := r.agent.store.View(l.id)
		if v.SVID == nil {
			return fmt.Errorf("%s: no certificate served", l.cfg.Name)
		}
		if err := verifyChain(v.SVID.Certificates, []*x509.Certificate{root}, time.Now()); err != nil {
			return fmt.Errorf("%s: serial %s does not chain to the new root: %w", l.cfg.Name, v.SVID.Certificates[0].SerialNumber.Text(16), err)
		}
	}
	return nil
}

// servedSerials is the serial each identity of r is served now, by identity name.
func servedSerials(r *runningAgent) map[string]string {
	out := map[string]string{}
	for _, l := range r.agent.identities {
		out[l.cfg.Name] = r.servedSerial(l.id)
	}
	return out
}

// prepareOnEnvoy prepares a rotation and waits until the agent pushes ROOTCA with both roots,
// so its identities and the CA nodes trust the new root before anything is signed with it.
func prepareOnEnvoy(ctx context.Context, t *testing.T, rot meshcav1.CARotationClient, e *envoy) *meshcav1.RotationStatus {
	t.Helper()
	prepared, err := rot.Prepare(ctx, &meshcav1.PrepareRotationRequest{})
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	newRoot := prepared.GetCa().GetNextIssuer().GetRootSha256()
	e.recvUntil("ROOTCA with the new root", func(m map[string]*tlsv3.Secret) bool {
		return m[sds.NameRootCA] != nil && strings.Contains(strings.Join(rootSums(t, m[sds.NameRootCA]), ","), newRoot)
	})
	return prepared
}

// plannedLine is the agent's debug line for an identity's next attempt under an issuer notice.
var plannedLine = regexp.MustCompile(`msg="agent: next attempt planned" identity=(\S+) .* issuer=(\S+) reissue=(true|false) in=(\S+)`)

// TestReissueOnRealProcesses rotates the CA of three real meshca-server processes twice under an
// agent whose certificates live an hour: an activate without reissue leaves every identity on
// its normal schedule (its next refresh still tens of minutes away), and `activate --reissue`
// has every identity the agent serves chain to the new issuer within the test's wait, each
// replaced exactly once.
func TestReissueOnRealProcesses(t *testing.T) {
	c := startRealCluster(t)
	dir := shortDir(t)
	cfg := realConfig(t, c, dir, "1.reissue")
	cfg.TTL = NewDuration(time.Hour)
	a := startAgent(t, cfg, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*clustertest.WaitTimeout)
	defer cancel()
	clustertest.Poll(t, "every identity served", func() error {
		for name, s := range servedSerials(a) {
			if s == "" {
				return fmt.Errorf("%s: nothing served yet", name)
			}
		}
		return nil
	})
	before := servedSerials(a)
	e := openEnvoy(t, cfg.SDSSocket, sds.NameRootCA)
	e.recv()
	admin := c.AdminCert()
	rot := meshcav1.NewCARotationClient(c.Dial(c.Followers()[0], &admin))

	t.Run("activate without reissue leaves every certificate to its schedule", func(t *testing.T) {
		next := prepareOnEnvoy(ctx, t, rot, e).GetCa().GetNextIssuer().GetId()
		st, err := rot.Activate(ctx, &meshcav1.ActivateRotationRequest{IssuerId: next})
		if err != nil {
			t.Fatalf("activate: %v", err)
		}
		if st.GetReissue() != nil {
			t.Fatalf("an activate without reissue reports %v", st.GetReissue())
		}
		// Every identity plans again under the new issuer's notice: a normal refresh, far off.
		clustertest.Poll(t, "every identity planned under issuer "+next, func() error {
			planned := map[string]string{}
			for _, m := range plannedLine.FindAllStringSubmatch(a.logs.String(), -1) {
				if m[2] == next {
					planned[m[1]] = m[3] + " " + m[4]
				}
			}
			for _, l := range a.agent.identities {
				p, ok := planned[l.cfg.Name]
				if !ok {
					return fmt.Errorf("%s has not planned under issuer %s", l.cfg.Name, next)
				}
				f := strings.Fields(p)
				in, err := time.ParseDuration(f[1])
				if err != nil {
					t.Fatal(err)
				}
				if f[0] != "false" || in < 10*time.Minute {
					t.Fatalf("%s planned its next attempt reissue=%s in %s, want its normal refresh (half of %s)", l.cfg.Name, f[0], in, cfg.TTL.D())
				}
			}
			return nil
		})
		if got := servedSerials(a); fmt.Sprint(got) != fmt.Sprint(before) {
			t.Fatalf("serials changed after an activate without reissue: %v, were %v", got, before)
		}
	})

	t.Run("activate --reissue: every identity chains to the new issuer long before its renewal", func(t *testing.T) {
		prepared := prepareOnEnvoy(ctx, t, rot, e)
		next := prepared.GetCa().GetNextIssuer()
		newRoot := rootOf(t, prepared, next.GetRootSha256())
		activated := time.Now()
		st, err := rot.Activate(ctx, &meshcav1.ActivateRotationRequest{IssuerId: next.GetId(), Reissue: true})
		if err != nil {
			t.Fatalf("activate --reissue: %v", err)
		}
		if st.GetReissue().GetIssuerId() != next.GetId() {
			t.Fatalf("status after activate --reissue: reissue %v, want issuer %s", st.GetReissue(), next.GetId())
		}
		clustertest.Poll(t, "every identity under the new root", func() error { return underRoot(a, newRoot) })
		t.Logf("activate --reissue to every identity under the new root: %s", time.Since(activated))
		for name, s := range servedSerials(a) {
			if s == before[name] {
				t.Fatalf("%s still serves %s", name, s)
			}
		}
		// One replacement per identity: none after the activate without reissue, none twice.
		clustertest.Poll(t, "the reissues counted", func() error {
			for _, l := range a.agent.identities {
				if n := agentCounter(t, a, "meshca_agent_reissues_total", l.cfg.Name); n != 1 {
					return fmt.Errorf("%s: %v reissues, want 1", l.cfg.Name, n)
				}
			}
			return nil
		})
		if n := agentCount(t, a, "meshca_agent_rotations_total", "refresh"); n != float64(len(a.agent.identities)) {
			t.Fatalf("%v refreshes, want one reissue per identity (%d): nothing else was due", n, len(a.agent.identities))
		}
	})
}

// agentCounter is the value of a counter of r labelled with identity.
func agentCounter(t *testing.T, r *runningAgent, name, identity string) float64 {
	t.Helper()
	families, err := r.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "identity" && l.GetValue() == identity {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestRetireOnRealProcesses rotates the CA of three real meshca-server processes under an agent
// with 20-second certificates: after `activate --reissue`, retire is refused while the last
// certificate the old issuer signed is valid, naming the second it expires, and accepted from
// that second on; the agent then serves a ROOTCA that holds only the new root.
func TestRetireOnRealProcesses(t *testing.T) {
	const ttl = 20 * time.Second
	c := startRealCluster(t)
	dir := shortDir(t)
	cfg := realConfig(t, c, dir, "1.retire")
	cfg.TTL = NewDuration(ttl)
	a := startAgent(t, cfg, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*clustertest.WaitTimeout)
	defer cancel()
	e := openEnvoy(t, cfg.SDSSocket, sds.NameDefault, sds.NameRootCA)
	oldRoots := rootSums(t, e.recv()[sds.NameRootCA])
	if len(oldRoots) != 1 {
		t.Fatalf("ROOTCA before the rotation holds %d roots, want 1", len(oldRoots))
	}
	admin := c.AdminCert()
	rot := meshcav1.NewCARotationClient(c.Dial(c.Followers()[0], &admin))

	prepared := prepareOnEnvoy(ctx, t, rot, e)
	next := prepared.GetCa().GetNextIssuer()
	newRoot := rootOf(t, prepared, next.GetRootSha256())
	if _, err := rot.Activate(ctx, &meshcav1.ActivateRotationRequest{IssuerId: next.GetId(), Reissue: true}); err != nil {
		t.Fatalf("activate --reissue: %v", err)
	}
	activated := time.Now()
	clustertest.Poll(t, "every identity under the new root", func() error { return underRoot(a, newRoot) })

	st, err := rot.Status(ctx, &meshcav1.RotationStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetRetirableRoots()) != 1 || st.GetRetirableRoots()[0].GetSha256() != oldRoots[0] {
		t.Fatalf("retirable roots %v, want the old root %s", st.GetRetirableRoots(), oldRoots[0])
	}
	at := time.Unix(st.GetRetirableRoots()[0].GetRetireAfter(), 0)
	// The bound is the old issuer's last expiry to the second: a certificate signed up to the
	// activate lives ttl, so the bound cannot be an hour away.
	if limit := activated.Add(ttl + 10*time.Second); at.After(limit) {
		t.Fatalf("retire possible at %s, later than the activate plus one certificate lifetime (%s): the bound is not exact", at.UTC(), limit.UTC())
	}

	t.Run("retire is refused before the old issuer's last certificate expires, naming the date", func(t *testing.T) {
		if !time.Now().Before(at) {
			t.Fatalf("the old issuer's last certificate expired at %s, before this step; the refusal cannot be shown", at)
		}
		_, err := rot.Retire(ctx, &meshcav1.RetireRotationRequest{RootSha256: oldRoots[0]})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "retire becomes possible at "+at.UTC().Format(time.RFC3339)) {
			t.Fatalf("retire before %s: %v", at.UTC(), err)
		}
	})

	t.Run("retire is accepted from that date, and the bundle holds only the new root", func(t *testing.T) {
		clustertest.Poll(t, "the date retire becomes possible", func() error {
			if now := time.Now(); now.Before(at) {
				return fmt.Errorf("now %s, retire possible at %s", now.UTC(), at.UTC())
			}
			return nil
		})
		retired, err := rot.Retire(ctx, &meshcav1.RetireRotationRequest{RootSha256: oldRoots[0]})
		if err != nil {
			t.Fatalf("retire at %s, after %s: %v", time.Now().UTC(), at.UTC(), err)
		}
		t.Logf("retire accepted %s after the activate", time.Since(activated))
		if roots := retired.GetCa().GetRoots(); len(roots) != 1 || roots[0].GetSha256() != next.GetRootSha256() {
			t.Fatalf("after retire the CA's bundle is %v, want only %s", roots, next.GetRootSha256())
		}
		got := e.recvUntil("ROOTCA with the new root alone", func(m map[string]*tlsv3.Secret) bool {
			return m[sds.NameRootCA] != nil && len(rootSums(t, m[sds.NameRootCA])) == 1
		})
		if sums := rootSums(t, got[sds.NameRootCA]); sums[0] != next.GetRootSha256() {
			t.Fatalf("ROOTCA holds %s, want the new root %s", sums[0], next.GetRootSha256())
		}
		// The agent's certificates go on verifying under the bundle it serves.
		if err := verifyChain(certOf(t, got[sds.NameDefault]), rootsOf(t, got[sds.NameRootCA]), time.Now()); err != nil {
			t.Fatalf("the certificate served beside the new bundle does not verify: %v", err)
		}
	})
}
