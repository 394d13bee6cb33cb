package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"io"
	"log/slog"
	"math/big"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/sds"
)

// newIssuer makes a self-signed issuer of the test cluster's trust domain.
func (c *testCluster) newIssuer() *ca.Issuer {
	c.t.Helper()
	key, err := signer.GenerateSoftware(signer.ECDSAP256)
	if err != nil {
		c.t.Fatal(err)
	}
	iss, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: c.td, RootKey: key, Now: c.now().Add(-time.Hour)})
	if err != nil {
		c.t.Fatal(err)
	}
	return iss
}

// serveNotice streams the issuer notice for the cluster's issuer, named id, beside the bundles.
func (c *testCluster) serveNotice(id string, reissue bool) {
	c.t.Helper()
	c.mu.Lock()
	iss := c.issuer
	c.mu.Unlock()
	n := &meshcav1.IssuerNotice{IssuerId: id, IssuerCertificate: iss.Certificate().Raw}
	if reissue {
		n.ReissueRequested = c.now().UnixNano()
	}
	raw, err := proto.Marshal(n)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.bundles.SetGeneric(sds.NameIssuerNotice, raw); err != nil {
		c.t.Fatal(err)
	}
}

// rotate does what prepare and activate do to the cluster: the new root joins the streamed
// bundle, signing switches to it, and the notice names it, asking for reissue or not.
func (c *testCluster) rotate(id string, reissue bool) *ca.Issuer {
	c.t.Helper()
	iss := c.newIssuer()
	bundle := c.publishRoot(iss.Certificate())
	pc := policy.DefaultConfig()
	pc.DefaultTTL = clusterTTL
	auth, err := ca.New(ca.Config{TrustDomain: c.td, Issuer: iss, Policy: pc, TrustedRoots: bundle.X509Authorities()})
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.authority, c.issuer = auth, iss
	c.mu.Unlock()
	c.serveNotice(id, reissue)
	return iss
}

// TestReissueReplacesEveryCertificateOfAFormerIssuerAtOnce: a rotation without reissue leaves
// the certificate to its schedule; one with reissue has it replaced within the reissue jitter,
// once, and the replacement is back on the normal schedule.
func TestReissueReplacesEveryCertificateOfAFormerIssuerAtOnce(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	cluster.serveNotice("issuer-1", false)
	cfg := testConfig(t, cluster, shortDir(t))
	a := startAgent(t, cfg, clock)
	poll(t, "a registration", func() bool { return a.servedSerial(idAPI) != "" })
	first := a.servedSerial(idAPI)
	poll(t, "a plan with the first notice", logged(a, "issuer=issuer-1 reissue=false"))

	t.Run("without reissue the certificate keeps its schedule", func(t *testing.T) {
		cluster.rotate("issuer-2", false)
		poll(t, "a plan with the notice of issuer-2", logged(a, "issuer=issuer-2 reissue=false"))
		// The loop waits for the normal refresh, half the lifetime away, not for a reissue.
		at := clock.waitForTimerAfter(t, time.Minute)
		if d := at.Sub(clock.Now()); d < clusterTTL/4 {
			t.Fatalf("next attempt in %s, want the normal refresh (about %s)", d, clusterTTL/2)
		}
		if n := len(cluster.callsOf("Refresh")); n != 0 || a.servedSerial(idAPI) != first {
			t.Fatalf("%d refreshes after a rotation without reissue; serving %s, want %s", n, a.servedSerial(idAPI), first)
		}
	})

	t.Run("with reissue the certificate is replaced within the jitter", func(t *testing.T) {
		iss := cluster.rotate("issuer-3", true)
		jitter := cfg.Refresh.ReissueJitter.D()
		poll(t, "a timer within the reissue jitter", func() bool {
			if len(cluster.callsOf("Refresh")) > 0 {
				return true // the draw was (close to) zero: no timer
			}
			now := clock.Now()
			for _, d := range clock.deadlines() {
				if d.Sub(now) <= jitter {
					return logged(a, "issuer=issuer-3 reissue=true")()
				}
			}
			return false
		})
		// Nothing waits longer than the jitter bound: moving the clock by it brings the refresh.
		clock.Advance(jitter)
		poll(t, "the reissue", func() bool { return len(cluster.okCalls("Refresh")) == 1 })
		if got := cluster.okCalls("Refresh")[0].serial; got != first {
			t.Fatalf("the reissue presented %s, want the held %s", got, first)
		}
		poll(t, "the new certificate served", func() bool { return a.servedSerial(idAPI) != first })
		leaf := a.agent.store.View(idAPI).SVID.Certificates[0]
		if !signedBy(leaf, iss.Certificate()) {
			t.Fatalf("the certificate served after the reissue was signed by %s, not the active issuer", leaf.Issuer)
		}
		// Counted once the new certificate is served.
		poll(t, "the reissue counted", func() bool {
			return testutil.ToFloat64(a.agent.metrics.reissues.WithLabelValues("sports.api")) == 1
		})
		// The replacement is the active issuer's: it waits for its normal refresh again.
		poll(t, "a plan for the new certificate", func() bool {
			return strings.Count(a.logs.String(), "issuer=issuer-3 reissue=false") > 0
		})
		clock.waitForTimerAfter(t, clusterTTL/4)
		if n := len(cluster.callsOf("Refresh")); n != 1 {
			t.Fatalf("%d refreshes, want the one reissue", n)
		}
	})
}

func TestReissueTime(t *testing.T) {
	heard := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s := schedule{reissueJitter: 4 * time.Second, backoff: backoff{initial: time.Second, max: 30 * time.Second}}
	cases := []struct {
		rule  string
		r     float64
		tries int
		last  time.Time
		want  time.Time
	}{
		{"the lowest draw replaces at once", 0, 0, time.Time{}, heard},
		{"a draw spreads it over the jitter", 0.5, 0, time.Time{}, heard.Add(2 * time.Second)},
		{"no draw goes past the jitter bound", 0.999, 0, time.Time{}, heard.Add(time.Duration(0.999 * float64(4*time.Second)))},
		{"a second try for the same request waits the backoff after the first", 0, 1, heard.Add(time.Second), heard.Add(2 * time.Second)},
		{"the backoff doubles with the tries", 0, 3, heard.Add(time.Second), heard.Add(5 * time.Second)},
		{"a backoff that ended before the draw leaves the draw", 0.75, 1, heard.Add(-time.Minute), heard.Add(3 * time.Second)},
	}
	for _, tc := range cases {
		t.Run(tc.rule, func(t *testing.T) {
			if got := s.reissueAt(heard, tc.r, tc.tries, tc.last); !got.Equal(tc.want) {
				t.Fatalf("reissueAt = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestIssuerNoticeAsks(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 0)
	leaf := issueLeaf(t, cluster)
	active := cluster.issuer.Certificate()
	other := cluster.newIssuer().Certificate()
	cases := []struct {
		rule   string
		notice *issuerNotice
		want   bool
	}{
		{"no notice asks nothing", nil, false},
		{"a rotation without reissue asks nothing", &issuerNotice{id: "i", issuer: other}, false},
		{"a reissue asks for a certificate another issuer signed", &issuerNotice{id: "i", issuer: other, requested: 1}, true},
		{"a reissue does not ask for a certificate the active issuer signed", &issuerNotice{id: "i", issuer: active, requested: 1}, false},
	}
	for _, tc := range cases {
		t.Run(tc.rule, func(t *testing.T) {
			if got := tc.notice.asks(leaf); got != tc.want {
				t.Fatalf("asks = %v, want %v", got, tc.want)
			}
		})
	}
}

// issueLeaf is a leaf certificate signed by the test cluster's issuer.
func issueLeaf(t *testing.T, c *testCluster) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: c.now().Add(-time.Minute), NotAfter: c.now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.issuer.Certificate(), key.Public(), c.issuer.Signer())
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// noticeResponse is a bundle stream response with the own bundle and a notice.
func noticeResponse(t *testing.T, c *testCluster, n *meshcav1.IssuerNotice) *discovery.DiscoveryResponse {
	t.Helper()
	raw, err := proto.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	inline := func(b []byte) *core.DataSource {
		return &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: b}}
	}
	return &discovery.DiscoveryResponse{TypeUrl: resource.SecretType, VersionInfo: "v", Resources: []*anypb.Any{
		anySecret(t, &tlsv3.Secret{Name: sds.NameRootCA, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(c.bundlePEM()),
		}}}),
		anySecret(t, &tlsv3.Secret{Name: sds.NameIssuerNotice, Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{Secret: inline(raw)}}}),
	}}
}

// TestABadIssuerNoticeIsRejected: the bundle stream NACKs a response whose notice does not
// decode or names an issuer outside the trust bundle, and applies nothing from it.
func TestABadIssuerNoticeIsRejected(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	a, err := New(testConfig(t, cluster, shortDir(t)), Options{Clock: clock, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	b := newBundleStream(a)
	good := &meshcav1.IssuerNotice{IssuerId: "issuer-1", IssuerCertificate: cluster.issuer.Certificate().Raw, ReissueRequested: 1}
	cases := []struct {
		rule   string
		notice func() *meshcav1.IssuerNotice
		want   string
	}{
		{"the issuer id is required", func() *meshcav1.IssuerNotice {
			n := proto.Clone(good).(*meshcav1.IssuerNotice)
			n.IssuerId = ""
			return n
		}, "issuer_id: empty"},
		{"the issuer certificate must parse", func() *meshcav1.IssuerNotice {
			n := proto.Clone(good).(*meshcav1.IssuerNotice)
			n.IssuerCertificate = []byte("not DER")
			return n
		}, "issuer_certificate"},
		{"the issuer must be a CA", func() *meshcav1.IssuerNotice {
			n := proto.Clone(good).(*meshcav1.IssuerNotice)
			n.IssuerCertificate = issueLeaf(t, cluster).Raw
			return n
		}, "not a CA certificate"},
		{"the issuer must chain to the trust bundle", func() *meshcav1.IssuerNotice {
			n := proto.Clone(good).(*meshcav1.IssuerNotice)
			n.IssuerCertificate = cluster.newIssuer().Certificate().Raw
			return n
		}, "issuer_certificate"},
	}
	for _, tc := range cases {
		t.Run(tc.rule, func(t *testing.T) {
			err := b.apply(noticeResponse(t, cluster, tc.notice()))
			if err == nil || !strings.Contains(err.Error(), sds.NameIssuerNotice) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("apply = %v, want a refusal naming %s and %q", err, sds.NameIssuerNotice, tc.want)
			}
			if n, _ := a.issuer.current(); n != nil {
				t.Fatalf("a rejected notice was kept: %+v", n)
			}
		})
	}
	t.Run("a good notice is kept, and a resend keeps when it was first heard", func(t *testing.T) {
		if err := b.apply(noticeResponse(t, cluster, good)); err != nil {
			t.Fatal(err)
		}
		n, _ := a.issuer.current()
		if n == nil || n.id != "issuer-1" || n.requested != 1 || !n.heard.Equal(clock.Now()) {
			t.Fatalf("notice kept: %+v", n)
		}
		clock.Advance(time.Minute)
		if err := b.apply(noticeResponse(t, cluster, good)); err != nil {
			t.Fatal(err)
		}
		if again, _ := a.issuer.current(); again != n {
			t.Fatalf("a resend replaced the notice heard at %s with one heard at %s", n.heard, again.heard)
		}
	})
}

func TestReissueJitterIsFiveSecondsUnlessSet(t *testing.T) {
	for _, tc := range []struct {
		rule, line string
		want       time.Duration
	}{
		{"left out, it is the default", "", DefaultReissueJitter},
		{"0s turns it off", "  reissue_jitter: 0s\n", 0},
		{"a value is kept", "  reissue_jitter: 2s\n", 2 * time.Second},
	} {
		t.Run(tc.rule, func(t *testing.T) {
			c, err := DecodeConfig(strings.NewReader(strings.Replace(validConfig, "  backoff_max: 1m\n", "  backoff_max: 1m\n"+tc.line, 1)))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Refresh.ReissueJitter.D(); got != tc.want {
				t.Fatalf("refresh.reissue_jitter %s, want %s", got, tc.want)
			}
		})
	}
}
