package controlplane

import (
	"context"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/controlplane/confirm"
	"github.com/meshca/meshca/raftstore"
)

// Confirmation is a provider's answer to a confirm request.
type Confirmation struct {
	// Allowed says whether the instance may have the identity.
	Allowed bool
	// Reason says why not; it is passed on to the client.
	Reason string
	// TTL, when positive, caps the certificate's lifetime.
	TTL time.Duration
	// TokenJTI, when set, is a one-time register token that the registration consumes in the
	// same log entry (the built-in provider's register tokens).
	TokenJTI string
}

// Confirmer asks a provider whether an instance may have the identity it requests. The
// default for every provider calls its confirm endpoint over mutual TLS; a built-in provider
// (sys.auth.meshca, which confirms register tokens locally) is given its own with
// SetConfirmer. An error means no answer was had (wrap ErrProviderUnavailable); a "no" is a
// Confirmation with Allowed false.
type Confirmer interface {
	Confirm(ctx context.Context, p *meshcav1.Provider, req *confirm.Request) (*Confirmation, error)
}

// ConfirmerFunc adapts a function to Confirmer.
type ConfirmerFunc func(ctx context.Context, p *meshcav1.Provider, req *confirm.Request) (*Confirmation, error)

// Confirm implements Confirmer.
func (f ConfirmerFunc) Confirm(ctx context.Context, p *meshcav1.Provider, req *confirm.Request) (*Confirmation, error) {
	return f(ctx, p, req)
}

var _ Confirmer = ConfirmerFunc(nil)

// SetConfirmer makes c confirm the instances of the named provider instead of the provider's
// confirm endpoint. Call it from a flow, before Run.
func (s *Server) SetConfirmer(provider string, c Confirmer) {
	s.confirmersMu.Lock()
	defer s.confirmersMu.Unlock()
	s.confirmers[provider] = c
}

// confirmerFor returns the provider's confirmer.
func (s *Server) confirmerFor(name string) Confirmer {
	s.confirmersMu.RLock()
	defer s.confirmersMu.RUnlock()
	if c, ok := s.confirmers[name]; ok {
		return c
	}
	return httpConfirmer{s}
}

// ServiceSPIFFEID is the SPIFFE ID of a service identity <domain>.<service>:
// spiffe://<trust-domain>/ns/<domain>/sa/<service>.
func ServiceSPIFFEID(td spiffeid.TrustDomain, identity string) (spiffeid.ID, error) {
	domain, service, err := raftstore.SplitIdentity(identity)
	if err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromSegments(td, "ns", domain, "sa", service)
}

// httpConfirmer calls the provider's confirm endpoint, requiring its server certificate to be
// one this CA issued to the provider's own service identity.
type httpConfirmer struct{ s *Server }

// Confirm implements Confirmer.
func (h httpConfirmer) Confirm(ctx context.Context, p *meshcav1.Provider, req *confirm.Request) (*Confirmation, error) {
	id, err := ServiceSPIFFEID(h.s.td, p.GetName())
	if err != nil {
		return nil, refuse(ErrProviderUnavailable, "provider", "%q has no SPIFFE ID: %v", p.GetName(), err)
	}
	resp, err := h.s.confirmClient.Confirm(ctx, p.GetConfirmEndpoint(), id, req)
	if err != nil {
		var rule string
		switch {
		case errors.Is(err, confirm.ErrUntrusted):
			rule = "did not prove it is the provider"
		case errors.Is(err, confirm.ErrMalformed):
			rule = "answered something that is not a confirmation"
		default:
			rule = "could not be reached"
		}
		return nil, refuseAs(providerReason(err), ErrProviderUnavailable, "provider",
			"%q confirm endpoint %s %s: %v", p.GetName(), p.GetConfirmEndpoint(), rule, err)
	}
	return &Confirmation{Allowed: resp.Allowed, Reason: resp.Reason, TTL: time.Duration(resp.TTLSeconds) * time.Second}, nil
}

// providerReason is the metrics reason of a failed confirm call.
func providerReason(err error) string {
	switch {
	case errors.Is(err, confirm.ErrUntrusted):
		return "provider_untrusted"
	case errors.Is(err, confirm.ErrMalformed):
		return "provider_malformed"
	}
	return "provider_unavailable"
}

// confirmWith asks the provider and turns a "no" into a refusal. It returns the lifetime cap
// (0: none) and the register token to consume.
func (s *Server) confirmWith(ctx context.Context, p *meshcav1.Provider, req *confirm.Request) (*Confirmation, error) {
	c, err := s.confirmerFor(p.GetName()).Confirm(ctx, p, req)
	if err != nil {
		if errors.Is(err, ErrProviderUnavailable) || errors.Is(err, ErrProviderDenied) {
			return nil, err
		}
		return nil, refuse(ErrProviderUnavailable, "provider", "%q confirmation failed: %v", p.GetName(), err)
	}
	if !c.Allowed {
		reason := c.Reason
		if reason == "" {
			reason = "no reason given"
		}
		return nil, refuse(ErrProviderDenied, "provider", "%q refused to confirm instance %q of %s: %s",
			p.GetName(), req.InstanceID, raftstore.Identity(req.Domain, req.Service), reason)
	}
	if c.TTL < 0 {
		return nil, refuse(ErrProviderUnavailable, "provider", "%q answered a negative lifetime %s", p.GetName(), c.TTL)
	}
	return c, nil
}
