package controlplane

import (
	"context"
	"encoding/pem"
	"time"

	"google.golang.org/grpc/peer"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
)

// maxTTLSeconds bounds ttl_seconds before it is turned into a duration.
const maxTTLSeconds = int64(policy.MaxWorkloadTTL / time.Second)

// identityService is meshca.v1.Identity: transport only; the flows are Server methods.
type identityService struct {
	meshcav1.UnimplementedIdentityServer
	s *Server
}

// ServiceTokenRegister is the hook the service-key-token flow sets to take Register calls
// that carry a service_token; nil answers them Unimplemented.
type ServiceTokenRegister func(ctx context.Context, req *meshcav1.RegisterRequest, clientAddr string) (*Issued, error)

// SetServiceTokenRegister installs the service-key-token flow. Call it from a flow, before
// Run.
func (s *Server) SetServiceTokenRegister(f ServiceTokenRegister) { s.serviceToken = f }

// Register implements meshca.v1.Identity.
func (i *identityService) Register(ctx context.Context, req *meshcav1.RegisterRequest) (*meshcav1.IdentityResponse, error) {
	addr := clientAddr(ctx)
	if req.GetServiceToken() != "" {
		if i.s.serviceToken == nil {
			return nil, refuse(ErrNotEnabled, "service_token", "service key tokens are not enabled on this server")
		}
		iss, err := i.s.serviceToken(ctx, req, addr)
		if err != nil {
			return nil, err
		}
		return identityResponse(iss), nil
	}
	ttl, err := ttlOf(req.GetTtlSeconds())
	if err != nil {
		return nil, err
	}
	iss, err := i.s.register(ctx, registerInput{
		Provider: req.GetProvider(), Domain: req.GetDomain(), Service: req.GetService(),
		AttestationData: req.GetAttestationData(), CSR: req.GetCsr(), TTL: ttl,
		ServerAuth: req.GetServerAuth(), Hostname: req.GetHostname(), ClientAddr: addr,
	})
	if err != nil {
		return nil, err
	}
	return identityResponse(iss), nil
}

// Refresh implements meshca.v1.Identity.
func (i *identityService) Refresh(ctx context.Context, req *meshcav1.RefreshRequest) (*meshcav1.IdentityResponse, error) {
	caller, err := i.s.Authenticate(ctx)
	if err != nil {
		i.s.observe(FlowRefresh, time.Now(), err)
		return nil, err
	}
	ttl, err := ttlOf(req.GetTtlSeconds())
	if err != nil {
		return nil, err
	}
	iss, err := i.s.refresh(ctx, caller.Leaf, req.GetCsr(), RefreshOptions{
		TTL: ttl, ServerAuth: req.GetServerAuth(), AttestationData: req.GetAttestationData(),
		Hostname: req.GetHostname(), ClientAddr: caller.Addr,
	})
	if err != nil {
		return nil, err
	}
	return identityResponse(iss), nil
}

// GetBundle implements meshca.v1.Identity.
func (i *identityService) GetBundle(context.Context, *meshcav1.GetBundleRequest) (*meshcav1.GetBundleResponse, error) {
	st := i.s.fsm.State()
	own, err := i.s.Bundle().Marshal()
	if err != nil {
		return nil, err
	}
	resp := &meshcav1.GetBundleResponse{
		TrustDomain: i.s.td.Name(),
		Bundle:      string(own),
		Federated:   map[string]string{},
		Sequence:    bundleSequence(st),
	}
	for _, b := range i.s.bundles.View(i.s.id).AllBundles() {
		if b.TrustDomain() == i.s.td {
			continue
		}
		pemBytes, err := b.Marshal()
		if err != nil {
			return nil, err
		}
		resp.Federated[b.TrustDomain().Name()] = string(pemBytes)
	}
	return resp, nil
}

// ttlOf turns ttl_seconds into a lifetime.
func ttlOf(sec int64) (time.Duration, error) {
	switch {
	case sec < 0:
		return 0, refuse(policy.ErrLifetime, "ttl_seconds", "%d is negative", sec)
	case sec > maxTTLSeconds:
		return 0, refuse(policy.ErrLifetime, "ttl_seconds", "%d is over the %d-second maximum", sec, maxTTLSeconds)
	}
	return time.Duration(sec) * time.Second, nil
}

// clientAddr is the IP address of a gRPC call's client.
func clientAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return hostOf(p.Addr.String())
	}
	return ""
}

// identityResponse writes an issued certificate as the API answers it.
func identityResponse(iss *Issued) *meshcav1.IdentityResponse {
	return &meshcav1.IdentityResponse{
		Certificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: iss.Chain[0]})),
		Chain:       string(ca.EncodeCertificatesPEM(iss.Chain[1:]...)),
		Bundle:      iss.BundlePEM,
		Serial:      iss.Serial,
		SpiffeId:    iss.SPIFFEID.String(),
		InstanceId:  iss.InstanceID,
		NotAfter:    iss.NotAfter.Unix(),
	}
}
