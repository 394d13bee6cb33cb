package controlplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/raftstore"
)

// Bounds of a federated bundle's refresh: the peer's refresh hint, cut to this range, is how
// long the leader waits after a refresh before it fetches the bundle again. A bundle without a
// hint is refreshed every FederationDefaultRefresh; a failed fetch is retried after
// FederationMinRefresh.
const (
	FederationMinRefresh     = 30 * time.Second
	FederationMaxRefresh     = time.Hour
	FederationDefaultRefresh = 5 * time.Minute
	// federationFetchTimeout bounds one fetch of a peer's bundle.
	federationFetchTimeout = 30 * time.Second
	// federationLeaderCheck is how often a follower looks whether it became the leader.
	federationLeaderCheck = 5 * time.Second
)

// ErrFederationFetch means a peer's bundle could not be fetched or authenticated. It is a
// kind of unavailability: the call may succeed later.
var ErrFederationFetch = fmt.Errorf("federation: bundle fetch failed: %w", raftstore.ErrUnavailable)

// BundleFetcher fetches a peer's bundle from the endpoint rec names, authenticating the
// endpoint with SPIFFE authentication against rec's current bundle when rec names an endpoint
// SPIFFE ID, with web PKI otherwise: against rec's endpoint CA certificates only when it has
// them, the system roots when not.
type BundleFetcher func(ctx context.Context, rec *meshcav1.Federation) (*spiffebundle.Bundle, error)

// FetchFederatedBundle is the BundleFetcher of go-spiffe's federation client.
func FetchFederatedBundle(ctx context.Context, rec *meshcav1.Federation) (*spiffebundle.Bundle, error) {
	td, err := spiffeid.TrustDomainFromString(rec.GetTrustDomain())
	if err != nil {
		return nil, fmt.Errorf("trust_domain: %w", err)
	}
	var opts []federation.FetchOption
	if rec.GetEndpointSpiffeId() != "" {
		id, err := spiffeid.FromString(rec.GetEndpointSpiffeId())
		if err != nil {
			return nil, fmt.Errorf("endpoint_spiffe_id: %w", err)
		}
		current, err := spiffebundle.Parse(td, rec.GetBundle())
		if err != nil {
			return nil, fmt.Errorf("bundle: %w", err)
		}
		opts = append(opts, federation.WithSPIFFEAuth(current, id))
	}
	// With web PKI the endpoint is checked against the federation's own CA certificates when
	// it has them (an endpoint under a private CA), against the system roots otherwise.
	auth := "web PKI with the system roots; set endpoint_ca for an endpoint under a private CA"
	if len(rec.GetEndpointCa()) > 0 && rec.GetEndpointSpiffeId() == "" {
		pool, err := endpointCAPool(rec.GetEndpointCa())
		if err != nil {
			return nil, fmt.Errorf("endpoint_ca: %w", err)
		}
		opts = append(opts, federation.WithWebPKIRoots(pool))
		auth = "web PKI with endpoint_ca only"
	} else if rec.GetEndpointSpiffeId() != "" {
		auth = "SPIFFE authentication as " + rec.GetEndpointSpiffeId()
	}
	ctx, cancel := context.WithTimeout(ctx, federationFetchTimeout)
	defer cancel()
	b, err := federation.FetchBundle(ctx, td, rec.GetEndpoint(), opts...)
	if err != nil {
		return nil, fmt.Errorf("endpoint %s (%s): %w: %w", rec.GetEndpoint(), auth, ErrFederationFetch, err)
	}
	if len(b.X509Authorities()) == 0 {
		return nil, fmt.Errorf("endpoint %s: %w: the bundle has no X.509 authorities", rec.GetEndpoint(), ErrFederationFetch)
	}
	return b, nil
}

// endpointCAPool reads a federation's endpoint CA: PEM certificates and nothing else.
func endpointCAPool(data []byte) (*x509.CertPool, error) {
	certs, err := ca.ParseCertificatesPEM(data)
	if err != nil {
		return nil, fmt.Errorf("want PEM certificates: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// FederationService implements the meshca.v1.FederationAdmin gRPC service and the leader's refresh
// of federated bundles.
type FederationService struct {
	meshcav1.UnimplementedFederationAdminServer

	admin    *Admin
	td       spiffeid.TrustDomain
	fetch    BundleFetcher
	isLeader func() bool

	mu        sync.Mutex
	nextFetch map[string]time.Time // trust domain -> when this node's refresh loop fetches it next
}

// NewFederationService returns the service; it authenticates, authorizes and commits through
// admin (changes need a system admin, reads any certificate this CA issued).
func NewFederationService(admin *Admin, fetch BundleFetcher, isLeader func() bool) *FederationService {
	return &FederationService{admin: admin, td: admin.cfg.TrustDomain, fetch: fetch, isLeader: isLeader, nextFetch: map[string]time.Time{}}
}

// Register adds the service to a gRPC server.
func (f *FederationService) Register(s grpc.ServiceRegistrar) {
	meshcav1.RegisterFederationAdminServer(s, f)
}

// federationFlow wires the federation API and the leader's refresh loop into a server.
func federationFlow(s *Server) error {
	a, err := NewAdmin(AdminConfig{
		TrustDomain: s.TrustDomain(), SystemAdmins: s.SystemAdmins(), Auth: s, Store: s.Store(),
		Applier: s, Cluster: s.Node(), CA: s, Now: s.Now, Logger: s.Logger(),
	})
	if err != nil {
		return err
	}
	f := NewFederationService(a, FetchFederatedBundle, s.Node().IsLeader)
	f.Register(s.GRPCServer())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.RefreshLoop(ctx)
	}()
	s.OnStop(func() {
		cancel()
		<-done
		a.Close()
	})
	return nil
}

// AddFederation fetches the peer's bundle and stores the federation.
func (f *FederationService) AddFederation(ctx context.Context, req *meshcav1.AddFederationRequest) (*meshcav1.FederationInfo, error) {
	st := f.admin.store.State()
	c, err := f.admin.authorize(ctx, st, ActionClusterWrite, Resource{Kind: "federation", Name: req.GetTrustDomain()})
	if err != nil {
		return nil, err
	}
	rec, err := f.newRecord(req)
	if err != nil {
		return nil, err
	}
	b, err := f.fetch(ctx, rec)
	if err != nil {
		return nil, err
	}
	return f.put(ctx, c, rec, b)
}

// newRecord checks an add request and returns the federation it describes, with the bootstrap
// bundle (if any) as its current bundle.
func (f *FederationService) newRecord(req *meshcav1.AddFederationRequest) (*meshcav1.Federation, error) {
	td, err := spiffeid.TrustDomainFromString(req.GetTrustDomain())
	if err != nil {
		return nil, refuse(raftstore.ErrInvalidCommand, "trust_domain", "%q is not a trust domain name: %v", req.GetTrustDomain(), err)
	}
	if td == f.td {
		return nil, refuse(raftstore.ErrInvalidCommand, "trust_domain", "%q is this cluster's own trust domain", td.Name())
	}
	u, err := url.Parse(req.GetEndpoint())
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, refuse(raftstore.ErrInvalidCommand, "endpoint", "%q is not an https:// URL", req.GetEndpoint())
	}
	rec := &meshcav1.Federation{TrustDomain: td.Name(), Endpoint: req.GetEndpoint(), EndpointSpiffeId: req.GetEndpointSpiffeId()}
	if req.GetEndpointSpiffeId() != "" {
		if _, err := spiffeid.FromString(req.GetEndpointSpiffeId()); err != nil {
			return nil, refuse(raftstore.ErrInvalidCommand, "endpoint_spiffe_id", "%q is not a SPIFFE ID: %v", req.GetEndpointSpiffeId(), err)
		}
		if len(req.GetBootstrapBundle()) == 0 {
			return nil, refuse(raftstore.ErrInvalidCommand, "bootstrap_bundle", "required with endpoint_spiffe_id: the endpoint's certificate is verified against the peer's bundle")
		}
	}
	if len(req.GetEndpointCa()) > 0 {
		if req.GetEndpointSpiffeId() != "" {
			return nil, refuse(raftstore.ErrInvalidCommand, "endpoint_ca", "not allowed with endpoint_spiffe_id: SPIFFE authentication verifies the endpoint against the peer's bundle")
		}
		if _, err := endpointCAPool(req.GetEndpointCa()); err != nil {
			return nil, refuse(raftstore.ErrInvalidCommand, "endpoint_ca", "%v", err)
		}
		rec.EndpointCa = req.GetEndpointCa()
	}
	if len(req.GetBootstrapBundle()) > 0 {
		b, err := parsePeerBundle(td, req.GetBootstrapBundle())
		if err != nil {
			return nil, refuse(raftstore.ErrInvalidCommand, "bootstrap_bundle", "%v", err)
		}
		if rec.Bundle, err = b.Marshal(); err != nil {
			return nil, fmt.Errorf("bootstrap_bundle: %w", err)
		}
	}
	return rec, nil
}

// parsePeerBundle reads a peer's bundle as a SPIFFE bundle (JWKS JSON) or as PEM roots.
func parsePeerBundle(td spiffeid.TrustDomain, data []byte) (*spiffebundle.Bundle, error) {
	if b, err := spiffebundle.Parse(td, data); err == nil {
		if len(b.X509Authorities()) == 0 {
			return nil, fmt.Errorf("the SPIFFE bundle has no X.509 authorities")
		}
		return b, nil
	}
	xb, err := ca.ParseBundlePEM(td, data)
	if err != nil {
		return nil, fmt.Errorf("neither a SPIFFE bundle (JWKS) nor PEM certificates: %w", err)
	}
	return spiffebundle.FromX509Bundle(xb), nil
}

// put stores rec with bundle b (its bytes and sequence number) through the log.
func (f *FederationService) put(ctx context.Context, c caller, rec *meshcav1.Federation, b *spiffebundle.Bundle) (*meshcav1.FederationInfo, error) {
	raw, err := b.Marshal()
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	seq, _ := b.SequenceNumber()
	cmd := &meshcav1.Command{Command: &meshcav1.Command_PutFederation{PutFederation: &meshcav1.PutFederationCommand{
		Federation: &meshcav1.Federation{
			TrustDomain: rec.GetTrustDomain(), Bundle: raw, Endpoint: rec.GetEndpoint(),
			EndpointSpiffeId: rec.GetEndpointSpiffeId(), EndpointCa: rec.GetEndpointCa(), Sequence: seq,
		},
	}}}
	res, err := f.admin.commit(ctx, c, "put_federation.federation.", cmd)
	if err != nil {
		return nil, err
	}
	return federationInfo(res.GetFederation()), nil
}

// ListFederations lists every federated trust domain.
func (f *FederationService) ListFederations(ctx context.Context, _ *meshcav1.ListFederationsRequest) (*meshcav1.ListFederationsResponse, error) {
	st := f.admin.store.State()
	if _, err := f.admin.authorize(ctx, st, ActionCARead, Resource{Kind: "federation", Name: "*"}); err != nil {
		return nil, err
	}
	out := &meshcav1.ListFederationsResponse{}
	for _, rec := range st.Federations() {
		out.Federations = append(out.Federations, federationInfo(rec))
	}
	return out, nil
}

// RefreshFederation fetches a peer's bundle now and stores it.
func (f *FederationService) RefreshFederation(ctx context.Context, req *meshcav1.RefreshFederationRequest) (*meshcav1.FederationInfo, error) {
	st := f.admin.store.State()
	c, err := f.admin.authorize(ctx, st, ActionClusterWrite, Resource{Kind: "federation", Name: req.GetTrustDomain()})
	if err != nil {
		return nil, err
	}
	rec, err := st.Federation(req.GetTrustDomain())
	if err != nil {
		return nil, notFound("trust_domain", "%q is not federated", req.GetTrustDomain())
	}
	b, err := f.fetch(ctx, rec)
	if err != nil {
		return nil, err
	}
	return f.put(ctx, c, rec, b)
}

// RemoveFederation stops trusting a foreign trust domain.
func (f *FederationService) RemoveFederation(ctx context.Context, req *meshcav1.RemoveFederationRequest) (*meshcav1.RemoveFederationResponse, error) {
	st := f.admin.store.State()
	c, err := f.admin.authorize(ctx, st, ActionClusterWrite, Resource{Kind: "federation", Name: req.GetTrustDomain()})
	if err != nil {
		return nil, err
	}
	if err := required("trust_domain", req.GetTrustDomain()); err != nil {
		return nil, err
	}
	cmd := &meshcav1.Command{Command: &meshcav1.Command_RemoveFederation{RemoveFederation: &meshcav1.RemoveFederationCommand{TrustDomain: req.GetTrustDomain()}}}
	if _, err := f.admin.commit(ctx, c, "remove_federation.", cmd); err != nil {
		return nil, err
	}
	return &meshcav1.RemoveFederationResponse{}, nil
}

// federationInfo describes a stored federation.
func federationInfo(rec *meshcav1.Federation) *meshcav1.FederationInfo {
	out := &meshcav1.FederationInfo{
		TrustDomain: rec.GetTrustDomain(), Endpoint: rec.GetEndpoint(), EndpointSpiffeId: rec.GetEndpointSpiffeId(),
		Sequence: rec.GetSequence(), LastRefresh: time.Unix(0, rec.GetLastRefresh()).Unix(), Bundle: rec.GetBundle(),
		EndpointCa: rec.GetEndpointCa(),
	}
	td, err := spiffeid.TrustDomainFromString(rec.GetTrustDomain())
	if err != nil {
		return out
	}
	b, err := spiffebundle.Parse(td, rec.GetBundle())
	if err != nil {
		return out
	}
	if hint, ok := b.RefreshHint(); ok {
		out.RefreshHintSeconds = int64(hint / time.Second)
	}
	for _, c := range b.X509Authorities() {
		sum := sha256.Sum256(c.Raw)
		out.RootSha256 = append(out.RootSha256, hex.EncodeToString(sum[:]))
	}
	return out
}

// RefreshInterval is how long after a refresh a federated bundle is fetched again: the
// bundle's refresh hint cut to [FederationMinRefresh, FederationMaxRefresh], or
// FederationDefaultRefresh when the bundle has none (or does not parse).
func RefreshInterval(rec *meshcav1.Federation) time.Duration {
	td, err := spiffeid.TrustDomainFromString(rec.GetTrustDomain())
	if err != nil {
		return FederationDefaultRefresh
	}
	b, err := spiffebundle.Parse(td, rec.GetBundle())
	if err != nil {
		return FederationDefaultRefresh
	}
	hint, ok := b.RefreshHint()
	if !ok || hint <= 0 {
		return FederationDefaultRefresh
	}
	return min(max(hint, FederationMinRefresh), FederationMaxRefresh)
}

// RefreshDue is when a federated bundle is due for its next fetch: its refresh interval after
// its last stored refresh, or retryAt when that is later (the loop's own schedule after a fetch
// that changed nothing or failed).
func RefreshDue(rec *meshcav1.Federation, retryAt time.Time) time.Time {
	due := time.Unix(0, rec.GetLastRefresh()).Add(RefreshInterval(rec))
	if retryAt.After(due) {
		return retryAt
	}
	return due
}

// RefreshLoop runs until ctx ends. While this node leads, it fetches every federated bundle
// that is due (RefreshDue) and commits it when its roots or refresh hint changed; an unchanged
// bundle is not written again, so two federated clusters do not echo each other's refreshes
// through their logs.
func (f *FederationService) RefreshLoop(ctx context.Context) {
	for {
		changed := f.admin.store.FSM().Changed()
		wait := federationLeaderCheck
		if f.isLeader() {
			wait = f.refreshDue(ctx)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// refreshDue refreshes the due federations and returns how long until the next one is due.
func (f *FederationService) refreshDue(ctx context.Context) time.Duration {
	now := f.admin.now()
	next := FederationMaxRefresh
	recs := f.admin.store.State().Federations()
	f.mu.Lock()
	defer f.mu.Unlock()
	live := map[string]bool{}
	for _, rec := range recs {
		td := rec.GetTrustDomain()
		live[td] = true
		due := RefreshDue(rec, f.nextFetch[td])
		if now.Before(due) {
			next = min(next, due.Sub(now))
			continue
		}
		interval := RefreshInterval(rec)
		if err := f.refreshOne(ctx, rec); err != nil {
			f.admin.log.Warn("federated bundle refresh failed; retrying", "trust_domain", td, "error", err)
			interval = FederationMinRefresh
		}
		f.nextFetch[td] = now.Add(interval)
		next = min(next, interval)
	}
	for td := range f.nextFetch {
		if !live[td] {
			delete(f.nextFetch, td)
		}
	}
	return max(next, time.Second)
}

// refreshOne fetches one peer's bundle and commits it when it changed.
func (f *FederationService) refreshOne(ctx context.Context, rec *meshcav1.Federation) error {
	b, err := f.fetch(ctx, rec)
	if err != nil {
		return err
	}
	if !bundleChanged(rec, b) {
		return nil
	}
	raw, err := b.Marshal()
	if err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	seq, _ := b.SequenceNumber()
	_, err = f.admin.apply.Apply(ctx, &meshcav1.Command{
		Id: raftstore.NewCommandID(), Time: f.admin.now().UnixNano(),
		Command: &meshcav1.Command_PutFederation{PutFederation: &meshcav1.PutFederationCommand{Federation: &meshcav1.Federation{
			TrustDomain: rec.GetTrustDomain(), Bundle: raw, Endpoint: rec.GetEndpoint(),
			EndpointSpiffeId: rec.GetEndpointSpiffeId(), EndpointCa: rec.GetEndpointCa(), Sequence: seq,
		}}},
	})
	if err != nil {
		return err
	}
	f.admin.log.Info("federated bundle updated", "trust_domain", rec.GetTrustDomain(), "roots", len(b.X509Authorities()), "sequence", seq)
	return nil
}

// bundleChanged reports whether fetched differs from the stored bundle in what trust depends
// on: its X.509 roots or its refresh hint.
func bundleChanged(rec *meshcav1.Federation, fetched *spiffebundle.Bundle) bool {
	td, err := spiffeid.TrustDomainFromString(rec.GetTrustDomain())
	if err != nil {
		return true
	}
	stored, err := spiffebundle.Parse(td, rec.GetBundle())
	if err != nil {
		return true
	}
	a, b := stored.X509Authorities(), fetched.X509Authorities()
	if len(a) != len(b) {
		return true
	}
	for i := range a {
		if !bytes.Equal(a[i].Raw, b[i].Raw) {
			return true
		}
	}
	ha, oka := stored.RefreshHint()
	hb, okb := fetched.RefreshHint()
	return ha != hb || oka != okb
}
