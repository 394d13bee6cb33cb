package controlplane

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/controlplane/confirm"
)

func wantStatusCode(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, _ := status.FromError(err)
	if err == nil || st.Code() != code || !strings.Contains(st.Message(), msg) {
		t.Fatalf("got %v, want %v with a message containing %q", err, code, msg)
	}
}

// TestProviderAnswers pins down how the CA acts on what a provider answers and on the
// providers a grant admits.
func TestProviderAnswers(t *testing.T) {
	f := newIdentityFixture(t, nil)
	ctx := context.Background()

	t.Run("wildcard grant sys.auth.aws.* admits sys.auth.aws.us-east-1", func(t *testing.T) {
		w := newWorkload(t, "cloud", "app", "use1.aws.mesh.test", "vm-1.us-east-1")
		resp, err := f.client().Register(ctx, w.registerReq(t, provAWSEast))
		if err != nil {
			t.Fatal(err)
		}
		verifyIssued(t, f.testServer, resp, w)
	})
	t.Run("provider may shorten the lifetime", func(t *testing.T) {
		f.main.setDecide(func(*confirm.Request) (int, string) { return 200, `{"allowed": true, "ttl_seconds": 600}` })
		defer f.main.setDecide(nil)
		w := newWorkload(t, "sports", "api", testSuffix, "short.answers")
		resp, err := f.client().Register(ctx, w.registerReq(t, provMain))
		if err != nil {
			t.Fatal(err)
		}
		leaf := parseLeaf(t, resp)
		// NotBefore is backdated by the policy's one minute.
		if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 11*time.Minute {
			t.Fatalf("lifetime %s, want the provider's 10m plus the 1m backdate", got)
		}
	})
	t.Run("provider cannot lengthen the lifetime", func(t *testing.T) {
		f.main.setDecide(func(*confirm.Request) (int, string) { return 200, `{"allowed": true, "ttl_seconds": 7200}` })
		defer f.main.setDecide(nil)
		w := newWorkload(t, "sports", "api", testSuffix, "long.answers")
		req := w.registerReq(t, provMain)
		req.TtlSeconds = 1800
		resp, err := f.client().Register(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if leaf := parseLeaf(t, resp); leaf.NotAfter.Sub(leaf.NotBefore) != 31*time.Minute {
			t.Fatalf("lifetime %s, want the requested 30m plus the 1m backdate", leaf.NotAfter.Sub(leaf.NotBefore))
		}
	})
	t.Run("malformed provider answer is unavailable, not a yes", func(t *testing.T) {
		f.main.setDecide(func(*confirm.Request) (int, string) { return 200, `{"allowed": true, "admin": true}` })
		defer f.main.setDecide(nil)
		w := newWorkload(t, "sports", "api", testSuffix, "odd.answers")
		_, err := f.client().Register(ctx, w.registerReq(t, provMain))
		wantStatusCode(t, err, codes.Unavailable, `answered something that is not a confirmation: malformed confirm message: response: json: unknown field "admin"`)
	})
	t.Run("provider HTTP error is unavailable", func(t *testing.T) {
		f.main.setDecide(func(*confirm.Request) (int, string) { return 500, `down for maintenance` })
		defer f.main.setDecide(nil)
		w := newWorkload(t, "sports", "api", testSuffix, "err.answers")
		_, err := f.client().Register(ctx, w.registerReq(t, provMain))
		wantStatusCode(t, err, codes.Unavailable, `could not be reached: confirm endpoint unreachable: HTTP 500`)
	})
	t.Run("nothing is committed for a refused instance", func(t *testing.T) {
		if _, err := f.s.Store().State().Instance(provMain, "sports", "api", "odd.answers"); err == nil {
			t.Fatal("an instance the provider did not confirm was recorded")
		}
	})
}

// TestRefreshConfirmation pins down the provider flag that makes refreshes confirmed too.
func TestRefreshConfirmation(t *testing.T) {
	f := newIdentityFixture(t, nil)
	ctx := context.Background()
	w := newWorkload(t, "sports", "api", testSuffix, "pod-r.confirm")
	cert := w.tlsCert(t, f.register(t, w))

	before := len(f.main.requests())
	w.key = newKey(t)
	next, err := f.clientWith(cert).Refresh(ctx, &meshcav1.RefreshRequest{Csr: w.csr(t, nil)})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(f.main.requests()); got != before {
		t.Fatalf("provider was asked %d times about a refresh it does not confirm", got-before)
	}
	cert = w.tlsCert(t, next)

	f.apply(&meshcav1.Command{Command: &meshcav1.Command_PutProvider{PutProvider: &meshcav1.PutProviderCommand{
		Provider: &meshcav1.Provider{Name: provMain, DnsSuffix: testSuffix, ConfirmEndpoint: f.main.url, Enabled: true, RefreshNeedsConfirmation: true},
	}}})
	w.key = newKey(t)
	next, err = f.clientWith(cert).Refresh(ctx, &meshcav1.RefreshRequest{Csr: w.csr(t, nil), AttestationData: []byte("doc:" + w.id)})
	if err != nil {
		t.Fatal(err)
	}
	reqs := f.main.requests()
	if last := reqs[len(reqs)-1]; last.Operation != confirm.OperationRefresh || last.InstanceID != w.id {
		t.Fatalf("provider saw %s, want a refresh of %s", mustJSON(last), w.id)
	}
	cert = w.tlsCert(t, next)

	w.key = newKey(t)
	_, err = f.clientWith(cert).Refresh(ctx, &meshcav1.RefreshRequest{Csr: w.csr(t, nil), AttestationData: []byte("stale")})
	wantStatusCode(t, err, codes.PermissionDenied, `provider: "sys.auth.test" refused to confirm instance "pod-r.confirm" of sports.api: identity document does not match`)

	// A disabled provider's instances no longer refresh.
	f.apply(&meshcav1.Command{Command: &meshcav1.Command_SetProviderEnabled{SetProviderEnabled: &meshcav1.SetProviderEnabledCommand{Name: provMain}}})
	_, err = f.clientWith(cert).Refresh(ctx, &meshcav1.RefreshRequest{Csr: w.csr(t, nil), AttestationData: []byte("doc:" + w.id)})
	wantStatusCode(t, err, codes.PermissionDenied, `provider: "sys.auth.test" is disabled`)
}

// TestRefreshAfterGrantWithdrawn pins down that a refresh needs the launch grant still in
// place.
func TestRefreshAfterGrantWithdrawn(t *testing.T) {
	f := newIdentityFixture(t, nil)
	w := newWorkload(t, "sports", "web", testSuffix, "pod-g.grant")
	cert := w.tlsCert(t, f.register(t, w))
	f.apply(&meshcav1.Command{Command: &meshcav1.Command_RemoveLaunchGrant{RemoveLaunchGrant: &meshcav1.RemoveLaunchGrantCommand{Identity: "sports.web", Pattern: provMain}}})
	w.key = newKey(t)
	_, err := f.clientWith(cert).Refresh(context.Background(), &meshcav1.RefreshRequest{Csr: w.csr(t, nil)})
	wantStatusCode(t, err, codes.PermissionDenied, `provider: service "sports.web" grants launch to no pattern matching "sys.auth.test"`)
}

// TestSourceRateLimit pins down the per-source-address limit: one address cannot issue more
// than its share, whatever instances it names.
func TestSourceRateLimit(t *testing.T) {
	f := newIdentityFixture(t, func(c *Config) { c.Limits.IssuePerSourcePerMinute = 2 })
	ctx := context.Background()
	for i := range 2 {
		w := newWorkload(t, "sports", "api", testSuffix, "src-"+string(rune('a'+i))+".limits")
		if _, err := f.client().Register(ctx, w.registerReq(t, provMain)); err != nil {
			t.Fatal(err)
		}
	}
	w := newWorkload(t, "sports", "api", testSuffix, "src-c.limits")
	_, err := f.client().Register(ctx, w.registerReq(t, provMain))
	wantStatusCode(t, err, codes.ResourceExhausted, "client address: 127.0.0.1 asked for more than limits.issue_per_source_per_minute (2) certificates")
	if _, err := f.s.Store().State().Instance(provMain, "sports", "api", "src-c.limits"); err == nil {
		t.Fatal("a rate-limited request reached the log")
	}
}

func TestGetBundle(t *testing.T) {
	f := newIdentityFixture(t, nil)
	resp, err := f.client().GetBundle(context.Background(), &meshcav1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := ca.ParseBundlePEM(f.td, []byte(resp.GetBundle()))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetTrustDomain() != testTD || !b.Equal(f.s.Bundle()) || resp.GetSequence() == 0 || len(resp.GetFederated()) != 0 {
		t.Fatalf("bundle response %v", resp)
	}
	// A federated trust domain shows up with its roots.
	other, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("other.test"), RootKey: mustSoftware(t), Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	jwks := federatedJWKS(t, "other.test", other)
	f.apply(&meshcav1.Command{Command: &meshcav1.Command_PutFederation{PutFederation: &meshcav1.PutFederationCommand{
		Federation: &meshcav1.Federation{TrustDomain: "other.test", Bundle: jwks, Sequence: 1},
	}}})
	waitFor(t, "federated bundle", func() error {
		resp, err = f.client().GetBundle(context.Background(), &meshcav1.GetBundleRequest{})
		if err != nil {
			return err
		}
		if _, ok := resp.GetFederated()["other.test"]; !ok {
			return errEmpty
		}
		return nil
	})
	fb, err := ca.ParseBundlePEM(spiffeid.RequireTrustDomainFromString("other.test"), []byte(resp.GetFederated()["other.test"]))
	if err != nil || !fb.X509Authorities()[0].Equal(other.Roots()[0]) {
		t.Fatalf("federated bundle %v: %v", fb, err)
	}
}

// TestRefreshRetryWithPreviousSerial pins down the one retry a client that lost a refresh's
// answer gets: presenting the previous serial again with the key of the unanswered
// certificate is accepted once; presenting it a second time revokes the instance.
func TestRefreshRetryWithPreviousSerial(t *testing.T) {
	f := newIdentityFixture(t, nil)
	ctx := context.Background()
	w := newWorkload(t, "sports", "api", testSuffix, "pod-retry")
	old := w.tlsCert(t, f.register(t, w))
	w.key = newKey(t)
	csr := w.csr(t, nil)
	if _, err := f.clientWith(old).Refresh(ctx, &meshcav1.RefreshRequest{Csr: csr}); err != nil {
		t.Fatal(err)
	}
	// The answer was lost: the client asks again with the old certificate and the same key.
	retried, err := f.clientWith(old).Refresh(ctx, &meshcav1.RefreshRequest{Csr: w.csr(t, nil)})
	if err != nil {
		t.Fatalf("retry with the previous serial: %v", err)
	}
	inst, _ := f.s.Store().State().Instance(provMain, "sports", "api", w.id)
	if inst.GetCurrentSerial() != retried.GetSerial() || inst.GetRevoked() {
		t.Fatalf("instance after the retry: %v", inst)
	}
	_, err = f.clientWith(old).Refresh(ctx, &meshcav1.RefreshRequest{Csr: w.csr(t, nil)})
	wantStatusCode(t, err, codes.PermissionDenied, "was already presented once")
}
