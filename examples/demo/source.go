package demo

import (
	"context"
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
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

// Source is where a demo workload reads its TLS material at every handshake: its X.509-SVID and
// the bundles it trusts. Both implementations follow the agent's pushes.
type Source interface {
	x509svid.Source
	x509bundle.Source
	// Close stops following the agent.
	Close() error
}

// ErrNoMaterial means the agent has not sent a certificate yet.
var ErrNoMaterial = errors.New("no TLS material from the agent yet")

// SDS resource names the demo subscribes to (the agent's "default" and "ROOTCA").
const (
	nameDefault = "default"
	nameRootCA  = "ROOTCA"
)

// SDSSource follows the agent's SDS over its Unix socket, like Envoy: a state-of-the-world
// stream subscribed to "default" and "ROOTCA", every response acknowledged (or rejected, if it
// cannot be used) and applied at once.
type SDSSource struct {
	socket string
	log    *slog.Logger
	onSVID func(*x509svid.SVID)

	mu     sync.RWMutex
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
	ready  chan struct{}

	cancel context.CancelFunc
	done   chan struct{}
}

var _ Source = (*SDSSource)(nil)

// NewSDSSource connects to the agent's SDS socket and waits, within ctx, for the first
// certificate and bundle. onSVID, when set, is called with every certificate received.
func NewSDSSource(ctx context.Context, socket string, log *slog.Logger, onSVID func(*x509svid.SVID)) (*SDSSource, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("sds socket %s: %w", socket, err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s := &SDSSource{socket: socket, log: log, onSVID: onSVID, ready: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer conn.Close()
		s.run(runCtx, secretservice.NewSecretDiscoveryServiceClient(conn))
	}()
	select {
	case <-s.ready:
		return s, nil
	case <-ctx.Done():
		s.Close()
		return nil, fmt.Errorf("sds socket %s: waiting for the first certificate: %w", socket, ctx.Err())
	}
}

// Close ends the stream.
func (s *SDSSource) Close() error {
	s.cancel()
	<-s.done
	return nil
}

// GetX509SVID implements x509svid.Source: the latest certificate the agent pushed.
func (s *SDSSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.svid == nil {
		return nil, ErrNoMaterial
	}
	return s.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source: the latest ROOTCA, for the own
// trust domain.
func (s *SDSSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.bundle == nil {
		return nil, ErrNoMaterial
	}
	if s.bundle.TrustDomain() != td {
		return nil, fmt.Errorf("no bundle for trust domain %q (ROOTCA is %q)", td, s.bundle.TrustDomain())
	}
	return s.bundle, nil
}

// run keeps a stream open, reconnecting after a second when it breaks.
func (s *SDSSource) run(ctx context.Context, client secretservice.SecretDiscoveryServiceClient) {
	for {
		err := s.stream(ctx, client)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("demo: SDS stream ended; reconnecting", "socket", s.socket, "error", err)
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return
		}
	}
}

func (s *SDSSource) stream(ctx context.Context, client secretservice.SecretDiscoveryServiceClient) error {
	st, err := client.StreamSecrets(ctx, grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	names := []string{nameDefault, nameRootCA}
	if err := st.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "demo"}, TypeUrl: resource.SecretType, ResourceNames: names}); err != nil {
		return err
	}
	accepted := ""
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		next := &discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: names, ResponseNonce: resp.GetNonce()}
		if err := s.apply(resp); err != nil {
			s.log.Error("demo: rejecting an SDS response (NACK)", "version_info", resp.GetVersionInfo(), "error", err)
			next.VersionInfo = accepted
			next.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		} else {
			accepted = resp.GetVersionInfo()
			next.VersionInfo = accepted
		}
		if err := st.Send(next); err != nil {
			return err
		}
	}
}

// apply decodes default and ROOTCA and replaces what handshakes read.
func (s *SDSSource) apply(resp *discovery.DiscoveryResponse) error {
	var svid *x509svid.SVID
	var rootsPEM []byte
	for _, a := range resp.GetResources() {
		sec := &tlsv3.Secret{}
		if err := a.UnmarshalTo(sec); err != nil {
			return err
		}
		switch sec.GetName() {
		case nameDefault:
			tc := sec.GetTlsCertificate()
			v, err := x509svid.Parse(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
			if err != nil {
				return fmt.Errorf("%s: %w", nameDefault, err)
			}
			svid = v
		case nameRootCA:
			rootsPEM = sec.GetValidationContext().GetTrustedCa().GetInlineBytes()
		}
	}
	if svid == nil || rootsPEM == nil {
		return fmt.Errorf("response without %s and %s", nameDefault, nameRootCA)
	}
	// ROOTCA carries no trust domain name: it is the certificate's own.
	bundle, err := x509bundle.Parse(svid.ID.TrustDomain(), rootsPEM)
	if err != nil {
		return fmt.Errorf("%s: %w", nameRootCA, err)
	}
	s.mu.Lock()
	s.svid, s.bundle = svid, bundle
	s.mu.Unlock()
	if s.onSVID != nil {
		s.onSVID(svid)
	}
	select {
	case <-s.ready:
	default:
		close(s.ready)
	}
	return nil
}

// WorkloadAPISource follows the agent's SPIFFE Workload API with go-spiffe's X509Source.
type WorkloadAPISource struct {
	*workloadapi.X509Source
	cancel context.CancelFunc
	done   chan struct{}
}

var _ Source = (*WorkloadAPISource)(nil)

// NewWorkloadAPISource connects to the Workload API at addr ("unix:///path") and waits, within
// ctx, for the first SVID. onSVID, when set, is called with the first SVID and after every
// update.
func NewWorkloadAPISource(ctx context.Context, addr string, onSVID func(*x509svid.SVID)) (*WorkloadAPISource, error) {
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	if err != nil {
		return nil, fmt.Errorf("workload API %s: %w", addr, err)
	}
	watchCtx, cancel := context.WithCancel(context.Background())
	w := &WorkloadAPISource{X509Source: src, cancel: cancel, done: make(chan struct{})}
	report := func() {
		if v, err := src.GetX509SVID(); err == nil && onSVID != nil {
			onSVID(v)
		}
	}
	report()
	go func() {
		defer close(w.done)
		for {
			select {
			case <-src.Updated():
				report()
			case <-watchCtx.Done():
				return
			}
		}
	}()
	return w, nil
}

// Close stops the source.
func (w *WorkloadAPISource) Close() error {
	w.cancel()
	<-w.done
	return w.X509Source.Close()
}
