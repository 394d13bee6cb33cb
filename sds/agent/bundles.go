package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/sds"
)

// bundleNames are what the agent subscribes to on a CA node: its own trust bundle, the SPIFFE
// validator config that carries every trusted and federated bundle by trust domain name (so the
// agent learns of a new federated trust domain without knowing its name in advance), and the
// cluster's issuer notice (whether certificates of a former issuer are to be replaced now).
var bundleNames = []string{sds.NameRootCA, sds.NameAll, sds.NameIssuerNotice}

// agentNodeID is the node id the agent sends; a CA node identifies the agent by its client
// certificate, not by this.
const agentNodeID = "meshca-agent"

// bundleStream keeps the agent's trust bundles in step with the cluster: an SDS v3 (state of
// the world) stream to a CA node over mTLS, subscribed to bundleNames, every response applied to
// the store and acknowledged. When the stream breaks it moves to the next node at once; after a
// whole round of nodes failed it backs off. It needs a client certificate, so it starts once any
// identity holds one.
type bundleStream struct {
	a   *Agent
	log *slog.Logger

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newBundleStream(a *Agent) *bundleStream {
	return &bundleStream{a: a, log: a.log.With("component", "bundle-stream"), conns: map[string]*grpc.ClientConn{}}
}

func (b *bundleStream) run(ctx context.Context) error {
	defer b.closeConns()
	servers := b.a.cfg.Servers
	node, failures := 0, 0
	for {
		if !b.waitForClientCert(ctx) {
			return nil
		}
		addr := servers[node]
		applied, err := b.streamOnce(ctx, addr)
		if ctx.Err() != nil {
			return nil
		}
		if applied {
			failures = 0
		}
		failures++
		b.a.metrics.bundleStreamFailures.Inc()
		b.log.Warn("agent: bundle stream from CA node ended; moving to the next node", "node", addr, "error", err)
		node = (node + 1) % len(servers)
		if failures%len(servers) == 0 {
			if !sleep(ctx, b.a.clock, b.a.sched.backoff.after(failures/len(servers))) {
				return nil
			}
		}
	}
}

// waitForClientCert waits until some identity holds a certificate to authenticate with.
func (b *bundleStream) waitForClientCert(ctx context.Context) bool {
	for {
		changed := b.a.store.Changed()
		if b.clientCert() != nil {
			return true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return false
		}
	}
}

// clientCert is the certificate of the first identity (in config order) that holds one.
func (b *bundleStream) clientCert() *tls.Certificate {
	for _, l := range b.a.identities {
		if v := b.a.store.View(l.id); v.SVID != nil {
			return tlsCertificate(v.SVID)
		}
	}
	return nil
}

func (b *bundleStream) conn(addr string) (*grpc.ClientConn, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c, ok := b.conns[addr]; ok {
		return c, nil
	}
	getCert := func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if c := b.clientCert(); c != nil {
			return c, nil
		}
		return nil, errors.New("no identity holds a certificate yet")
	}
	c, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(b.a.nodeAuth.tlsConfig(getCert))),
		// A CA node that vanishes without closing the connection is noticed, at the pace
		// gRPC servers accept pings by default.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 5 * time.Minute, Timeout: 20 * time.Second}),
	)
	if err != nil {
		return nil, err
	}
	b.conns[addr] = c
	return c, nil
}

func (b *bundleStream) closeConns() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for addr, c := range b.conns {
		_ = c.Close()
		delete(b.conns, addr)
	}
}

// streamOnce runs one stream until it breaks. applied reports whether any response was applied.
func (b *bundleStream) streamOnce(ctx context.Context, addr string) (applied bool, err error) {
	conn, err := b.conn(addr)
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := secretservice.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		return false, err
	}
	req := &discovery.DiscoveryRequest{
		Node:          &core.Node{Id: agentNodeID},
		TypeUrl:       resource.SecretType,
		ResourceNames: bundleNames,
	}
	if err := st.Send(req); err != nil {
		return false, err
	}
	accepted := ""
	for {
		resp, err := st.Recv()
		if err != nil {
			return applied, err
		}
		next := &discovery.DiscoveryRequest{
			TypeUrl:       resource.SecretType,
			ResourceNames: bundleNames,
			ResponseNonce: resp.GetNonce(),
		}
		if err := b.apply(resp); err != nil {
			// NACK: keep the last accepted version, say why, and keep the stream.
			b.a.metrics.bundleNACKs.Inc()
			b.log.Error("agent: rejecting bundles from CA node (NACK)", "node", addr, "version_info", resp.GetVersionInfo(), "error", err)
			next.VersionInfo = accepted
			next.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		} else {
			applied = true
			accepted = resp.GetVersionInfo()
			next.VersionInfo = accepted
		}
		if err := st.Send(next); err != nil {
			return applied, err
		}
	}
}

// apply decodes a response completely, then updates the store: the own bundle from ROOTCA, the
// federated ones from ALL (a federated trust domain no longer in ALL is removed). Nothing is
// applied from a response that does not decode.
func (b *bundleStream) apply(resp *discovery.DiscoveryResponse) error {
	own, federated, err := decodeBundles(b.a.td, resp)
	if err != nil {
		return err
	}
	notice, err := decodeIssuerNotice(resp)
	if err != nil {
		return err
	}
	if notice != nil {
		trust := own
		if trust == nil {
			if trust, err = b.a.bundleSource().GetX509BundleForTrustDomain(b.a.td); err != nil {
				return fmt.Errorf("%s: %w", sds.NameIssuerNotice, err)
			}
		}
		// An issuer outside the bundle would make every certificate look like one to replace.
		if err := chainsTo(notice.issuer, trust.X509Authorities(), b.a.clock.Now()); err != nil {
			return fmt.Errorf("%s: issuer_certificate: %w", sds.NameIssuerNotice, err)
		}
	}
	b.a.streamed.Store(true)
	changed := false
	if own != nil {
		c, err := b.a.setBundle(own)
		if err != nil {
			return err
		}
		changed = changed || c
	}
	if federated != nil {
		for _, fb := range federated {
			c, err := b.a.setBundle(fb)
			if err != nil {
				return err
			}
			changed = changed || c
		}
		for _, held := range b.a.heldBundles() {
			td := held.TrustDomain()
			if _, ok := federated[td]; !ok && td != b.a.td {
				b.a.store.RemoveBundle(td)
				changed = true
				b.log.Info("agent: federated trust domain removed", "trust_domain", td.Name())
			}
		}
	}
	if changed {
		b.a.metrics.bundleUpdates.Inc()
		b.log.Info("agent: trust bundles updated from the cluster", "version_info", resp.GetVersionInfo())
	}
	if notice != nil {
		notice.heard = b.a.clock.Now()
		if b.a.issuer.set(notice) {
			b.log.Info("agent: the cluster's issuer notice changed", "issuer", notice.id, "reissue_requested", notice.requested != 0)
		}
	}
	return nil
}

// decodeBundles reads ROOTCA (own bundle) and ALL (every bundle by trust domain) from a
// response. federated is nil when ALL was not in the response.
func decodeBundles(own spiffeid.TrustDomain, resp *discovery.DiscoveryResponse) (*x509bundle.Bundle, map[spiffeid.TrustDomain]*x509bundle.Bundle, error) {
	if resp.GetTypeUrl() != resource.SecretType {
		return nil, nil, fmt.Errorf("type_url %q: want %q", resp.GetTypeUrl(), resource.SecretType)
	}
	var ownBundle *x509bundle.Bundle
	var federated map[spiffeid.TrustDomain]*x509bundle.Bundle
	for i, a := range resp.GetResources() {
		s := &tlsv3.Secret{}
		if err := a.UnmarshalTo(s); err != nil {
			return nil, nil, fmt.Errorf("resources[%d]: %w", i, err)
		}
		switch s.GetName() {
		case sds.NameRootCA:
			pem := s.GetValidationContext().GetTrustedCa().GetInlineBytes()
			b, err := ca.ParseBundlePEM(own, pem)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: trusted_ca: %w", sds.NameRootCA, err)
			}
			ownBundle = b
		case sds.NameAll:
			cfg := s.GetValidationContext().GetCustomValidatorConfig()
			if cfg.GetName() != sds.SPIFFEValidatorName {
				return nil, nil, fmt.Errorf("%s: custom_validator_config %q: want %q", sds.NameAll, cfg.GetName(), sds.SPIFFEValidatorName)
			}
			spiffe := &tlsv3.SPIFFECertValidatorConfig{}
			if err := cfg.GetTypedConfig().UnmarshalTo(spiffe); err != nil {
				return nil, nil, fmt.Errorf("%s: typed_config: %w", sds.NameAll, err)
			}
			federated = map[spiffeid.TrustDomain]*x509bundle.Bundle{}
			for j, tdb := range spiffe.GetTrustDomains() {
				td, err := spiffeid.TrustDomainFromString(tdb.GetName())
				if err != nil {
					return nil, nil, fmt.Errorf("%s: trust_domains[%d].name %q: %w", sds.NameAll, j, tdb.GetName(), err)
				}
				b, err := ca.ParseBundlePEM(td, tdb.GetTrustBundle().GetInlineBytes())
				if err != nil {
					return nil, nil, fmt.Errorf("%s: trust_domains[%d] (%s): %w", sds.NameAll, j, td.Name(), err)
				}
				if td == own {
					if ownBundle == nil {
						ownBundle = b
					}
					continue
				}
				federated[td] = b
			}
		case sds.NameIssuerNotice:
			// Read by decodeIssuerNotice.
		default:
			return nil, nil, fmt.Errorf("resources[%d]: secret %q was not asked for", i, s.GetName())
		}
	}
	return ownBundle, federated, nil
}
