package controlplane

import (
	"context"
	"crypto/x509"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/internal/bundletest"
)

var peerTD = spiffeid.RequireTrustDomainFromString("peer.test")

// peerRoot makes a self-signed root of the peer trust domain.
func peerRoot(t *testing.T) *x509.Certificate {
	t.Helper()
	key, err := signer.GenerateSoftware(signer.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: peerTD, RootKey: key, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return iss.Certificate()
}

// peerBundle is a SPIFFE bundle of the peer with roots and, when hint > 0, a refresh hint.
func peerBundle(t *testing.T, hint time.Duration, seq uint64, roots ...*x509.Certificate) *spiffebundle.Bundle {
	t.Helper()
	b := spiffebundle.New(peerTD)
	for _, r := range roots {
		b.AddX509Authority(r)
	}
	if hint > 0 {
		b.SetRefreshHint(hint)
	}
	b.SetSequenceNumber(seq)
	return b
}

func marshalBundle(t *testing.T, b *spiffebundle.Bundle) []byte {
	t.Helper()
	raw, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestRefreshIntervalFollowsTheHintWithinBounds(t *testing.T) {
	root := peerRoot(t)
	tests := []struct {
		name   string
		bundle []byte
		want   time.Duration
	}{
		{"a hint inside the bounds is taken as it is", marshalBundle(t, peerBundle(t, 2*time.Minute, 1, root)), 2 * time.Minute},
		{"a hint below the minimum is raised to it", marshalBundle(t, peerBundle(t, time.Second, 1, root)), FederationMinRefresh},
		{"a hint above the maximum is cut to it", marshalBundle(t, peerBundle(t, 24*time.Hour, 1, root)), FederationMaxRefresh},
		{"a bundle without a hint gets the default", marshalBundle(t, peerBundle(t, 0, 1, root)), FederationDefaultRefresh},
		{"a bundle that does not parse gets the default", []byte("{"), FederationDefaultRefresh},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &meshcav1.Federation{TrustDomain: peerTD.Name(), Bundle: tt.bundle}
			if got := RefreshInterval(rec); got != tt.want {
				t.Fatalf("RefreshInterval = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestRefreshDue(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rec := &meshcav1.Federation{TrustDomain: peerTD.Name(), Bundle: marshalBundle(t, peerBundle(t, time.Minute, 1, peerRoot(t))), LastRefresh: t0.UnixNano()}
	tests := []struct {
		name    string
		retryAt time.Time
		want    time.Time
	}{
		{"due one interval after the last stored refresh", time.Time{}, t0.Add(time.Minute)},
		{"a later retry time of the loop wins", t0.Add(5 * time.Minute), t0.Add(5 * time.Minute)},
		{"an earlier retry time does not bring it forward", t0.Add(time.Second), t0.Add(time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RefreshDue(rec, tt.retryAt); !got.Equal(tt.want) {
				t.Fatalf("RefreshDue = %s, want %s", got, tt.want)
			}
		})
	}
}

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) set(t time.Time) { c.mu.Lock(); defer c.mu.Unlock(); c.now = t }

// The leader's loop fetches a federated bundle when its refresh hint says so, commits a
// changed bundle through the log and leaves an unchanged one alone.
func TestRefreshLoopFetchesOnTheHintAndCommitsChanges(t *testing.T) {
	e := newAdminEnv(t)
	s := e.s
	oldRoot, newRoot := peerRoot(t), peerRoot(t)
	t0 := time.Now().Truncate(time.Second)
	clock := &fakeClock{now: t0}
	stored := &meshcav1.Federation{TrustDomain: peerTD.Name(), Endpoint: "https://127.0.0.1:1/bundle",
		Bundle: marshalBundle(t, peerBundle(t, time.Minute, 1, oldRoot)), Sequence: 1}
	if _, err := s.Apply(e.ctx(), &meshcav1.Command{Time: t0.UnixNano(), Command: &meshcav1.Command_PutFederation{PutFederation: &meshcav1.PutFederationCommand{Federation: stored}}}); err != nil {
		t.Fatal(err)
	}
	admin, err := NewAdmin(AdminConfig{TrustDomain: s.TrustDomain(), SystemAdmins: s.SystemAdmins(), Auth: s, Store: s.Store(),
		Applier: s, Cluster: s.Node(), CA: s, Now: clock.Now, Logger: s.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	serve := peerBundle(t, time.Minute, 2, newRoot, oldRoot)
	fetches := 0
	fetch := func(_ context.Context, rec *meshcav1.Federation) (*spiffebundle.Bundle, error) {
		mu.Lock()
		defer mu.Unlock()
		fetches++
		return serve, nil
	}
	f := NewFederationService(admin, fetch, func() bool { return true })
	fetched := func() int { mu.Lock(); defer mu.Unlock(); return fetches }

	clock.set(t0.Add(30 * time.Second))
	if wait := f.refreshDue(e.ctx()); fetched() != 0 || wait != 30*time.Second {
		t.Fatalf("before the hint: %d fetches, next in %s; want none, next in 30s", fetched(), wait)
	}
	clock.set(t0.Add(61 * time.Second))
	f.refreshDue(e.ctx())
	rec, err := s.Store().State().Federation(peerTD.Name())
	if err != nil {
		t.Fatal(err)
	}
	if fetched() != 1 || rec.GetSequence() != 2 || len(federationInfo(rec).GetRootSha256()) != 2 {
		t.Fatalf("after the hint: %d fetches, stored sequence %d with %d roots; want 1 fetch, sequence 2, 2 roots", fetched(), rec.GetSequence(), len(federationInfo(rec).GetRootSha256()))
	}
	if got := time.Unix(0, rec.GetLastRefresh()); !got.Equal(t0.Add(61 * time.Second)) {
		t.Fatalf("last refresh %s, want the leader's clock %s", got, t0.Add(61*time.Second))
	}

	// The same roots again (a newer sequence only): fetched on the hint, not written.
	mu.Lock()
	serve = peerBundle(t, time.Minute, 3, newRoot, oldRoot)
	mu.Unlock()
	applied := s.Store().State().AppliedIndex()
	clock.set(t0.Add(122 * time.Second))
	f.refreshDue(e.ctx())
	if fetched() != 2 {
		t.Fatalf("%d fetches, want 2", fetched())
	}
	if got := s.Store().State().AppliedIndex(); got != applied {
		t.Fatalf("an unchanged bundle was written to the log (applied index %d -> %d)", applied, got)
	}
	// Not due again until a hint after that fetch.
	clock.set(t0.Add(150 * time.Second))
	f.refreshDue(e.ctx())
	if fetched() != 2 {
		t.Fatalf("fetched again before the hint: %d fetches", fetched())
	}
}

func TestFederationAPIRefusals(t *testing.T) {
	e := newAdminEnv(t)
	client := func(id string) meshcav1.FederationAdminClient {
		return meshcav1.NewFederationAdminClient(dial(t, e.s.GRPCAddr(), e.roots, e.clientCert(id)))
	}
	root := client(rootAdmin)
	tests := []struct {
		name  string
		c     meshcav1.FederationAdminClient
		req   *meshcav1.AddFederationRequest
		code  codes.Code
		parts []string
	}{
		{"only system admins add federations", client(plainCaller), &meshcav1.AddFederationRequest{TrustDomain: "peer.test", Endpoint: "https://127.0.0.1:1/bundle"}, codes.PermissionDenied, []string{"system admin"}},
		{"the own trust domain is not federated", root, &meshcav1.AddFederationRequest{TrustDomain: "mesh.test", Endpoint: "https://127.0.0.1:1/bundle"}, codes.InvalidArgument, []string{"trust_domain", "own trust domain"}},
		{"the endpoint is https", root, &meshcav1.AddFederationRequest{TrustDomain: "peer.test", Endpoint: "http://127.0.0.1:1/bundle"}, codes.InvalidArgument, []string{"endpoint", "https://"}},
		{"SPIFFE authentication needs a bootstrap bundle", root, &meshcav1.AddFederationRequest{TrustDomain: "peer.test", Endpoint: "https://127.0.0.1:1/bundle", EndpointSpiffeId: "spiffe://peer.test/bundle"}, codes.InvalidArgument, []string{"bootstrap_bundle", "required"}},
		{"a bootstrap bundle must parse", root, &meshcav1.AddFederationRequest{TrustDomain: "peer.test", Endpoint: "https://127.0.0.1:1/bundle", EndpointSpiffeId: "spiffe://peer.test/bundle", BootstrapBundle: []byte("junk")}, codes.InvalidArgument, []string{"bootstrap_bundle"}},
		{"an endpoint CA must be PEM certificates", root, &meshcav1.AddFederationRequest{TrustDomain: "peer.test", Endpoint: "https://127.0.0.1:1/bundle", EndpointCa: []byte("junk")}, codes.InvalidArgument, []string{"endpoint_ca", "want PEM certificates"}},
		{"an endpoint CA is for web PKI only", root, &meshcav1.AddFederationRequest{TrustDomain: "peer.test", Endpoint: "https://127.0.0.1:1/bundle", EndpointSpiffeId: "spiffe://peer.test/bundle", BootstrapBundle: marshalBundle(t, peerBundle(t, 0, 1, peerRoot(t))), EndpointCa: []byte("junk")}, codes.InvalidArgument, []string{"endpoint_ca", "not allowed with endpoint_spiffe_id"}},
		{"an unreachable endpoint is unavailable", root, &meshcav1.AddFederationRequest{TrustDomain: "peer.test", Endpoint: "https://127.0.0.1:1/bundle"}, codes.Unavailable, []string{"bundle fetch failed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.c.AddFederation(e.ctx(), tt.req)
			wantStatus(t, err, tt.code, tt.parts...)
		})
	}
	if _, err := root.RemoveFederation(e.ctx(), &meshcav1.RemoveFederationRequest{TrustDomain: "peer.test"}); err == nil {
		t.Fatal("removing a federation that does not exist succeeded")
	} else {
		wantStatus(t, err, codes.NotFound, "not federated")
	}
	if _, err := root.RefreshFederation(e.ctx(), &meshcav1.RefreshFederationRequest{TrustDomain: "peer.test"}); err == nil {
		t.Fatal("refreshing a federation that does not exist succeeded")
	} else {
		wantStatus(t, err, codes.NotFound, "not federated")
	}
	if _, err := client(plainCaller).ListFederations(e.ctx(), &meshcav1.ListFederationsRequest{}); err != nil {
		t.Fatalf("an authenticated caller may list federations: %v", err)
	}
}

// A web-PKI bundle endpoint under a private CA: without endpoint_ca the node refuses it
// (the system roots do not know that CA), with it the bundle is fetched, and the CA is kept
// in the replicated record so later refreshes trust only it.
func TestFederationEndpointUnderItsOwnCA(t *testing.T) {
	e := newAdminEnv(t)
	root := meshcav1.NewFederationAdminClient(dial(t, e.s.GRPCAddr(), e.roots, e.clientCert(rootAdmin)))
	peer := peerRoot(t)
	url, endpointCA := bundletest.ServeUnderPrivateCA(t, peerTD, peerBundle(t, time.Minute, 7, peer))

	_, err := root.AddFederation(e.ctx(), &meshcav1.AddFederationRequest{TrustDomain: peerTD.Name(), Endpoint: url})
	wantStatus(t, err, codes.Unavailable, "bundle fetch failed", "web PKI with the system roots", "set endpoint_ca", "certificate signed by unknown authority")

	// Another CA than the endpoint's is no better than the system roots.
	_, otherCA := bundletest.ServeUnderPrivateCA(t, peerTD, peerBundle(t, time.Minute, 1, peer))
	_, err = root.AddFederation(e.ctx(), &meshcav1.AddFederationRequest{TrustDomain: peerTD.Name(), Endpoint: url, EndpointCa: otherCA})
	wantStatus(t, err, codes.Unavailable, "web PKI with endpoint_ca only", "certificate signed by unknown authority")

	info, err := root.AddFederation(e.ctx(), &meshcav1.AddFederationRequest{TrustDomain: peerTD.Name(), Endpoint: url, EndpointCa: endpointCA})
	if err != nil {
		t.Fatalf("AddFederation with the endpoint's CA: %v", err)
	}
	if info.GetSequence() != 7 || len(info.GetRootSha256()) != 1 || string(info.GetEndpointCa()) != string(endpointCA) {
		t.Fatalf("stored sequence %d, %d roots, endpoint CA %q; want 7, 1 root, the given CA", info.GetSequence(), len(info.GetRootSha256()), info.GetEndpointCa())
	}
	rec, err := e.s.Store().State().Federation(peerTD.Name())
	if err != nil || string(rec.GetEndpointCa()) != string(endpointCA) {
		t.Fatalf("the replicated record lost the endpoint CA: %v", err)
	}
	// A refresh starts from the replicated record, so it works only if the CA was kept.
	if _, err := root.RefreshFederation(e.ctx(), &meshcav1.RefreshFederationRequest{TrustDomain: peerTD.Name()}); err != nil {
		t.Fatalf("RefreshFederation: %v", err)
	}
}
