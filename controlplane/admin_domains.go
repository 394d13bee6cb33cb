package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/raftstore"
)

// checkAdminEntries refuses admin list entries that are neither SPIFFE IDs nor service
// principals, naming the field.
func checkAdminEntries(field string, admins []string) error {
	for i, e := range admins {
		if err := checkPrincipalEntry(e); err != nil {
			return refuse(raftstore.ErrInvalidCommand, fmt.Sprintf("%s[%d]", field, i), "%v", err)
		}
	}
	return nil
}

// PutDomain creates or replaces a domain. A system admin may create one; a domain's admins may
// only replace it, so their upsert is applied as an update.
func (a *Admin) PutDomain(ctx context.Context, req *meshcav1.PutDomainRequest) (*meshcav1.Domain, error) {
	st := a.store.State()
	d := req.GetDomain()
	c, err := a.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	res := inDomain(st, "domain", d.GetName(), d.GetName())
	mode := req.GetMode()
	switch mode {
	case meshcav1.PutMode_PUT_MODE_CREATE:
		err = a.decide(st, c, ActionDomainCreate, res)
	case meshcav1.PutMode_PUT_MODE_UPDATE:
		err = a.decide(st, c, ActionDomainUpdate, res)
	default:
		if !a.allowed(c, ActionDomainCreate, res) {
			err = a.decide(st, c, ActionDomainUpdate, res)
			mode = meshcav1.PutMode_PUT_MODE_UPDATE
		}
	}
	if err != nil {
		return nil, err
	}
	if err := checkAdminEntries("domain.admins", d.GetAdmins()); err != nil {
		return nil, err
	}
	out, err := a.commit(ctx, c, "put_domain.", &meshcav1.Command{Command: &meshcav1.Command_PutDomain{
		PutDomain: &meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: d.GetName(), Admins: d.GetAdmins()}, Mode: mode},
	}})
	if err != nil {
		return nil, err
	}
	return out.GetDomain(), nil
}

// GetDomain returns a domain.
func (a *Admin) GetDomain(ctx context.Context, req *meshcav1.GetDomainRequest) (*meshcav1.Domain, error) {
	st := a.store.State()
	if _, err := a.authorize(ctx, st, ActionDomainRead, inDomain(st, "domain", req.GetName(), req.GetName())); err != nil {
		return nil, err
	}
	d, err := st.Domain(req.GetName())
	if err != nil {
		return nil, notFound("name", "domain %q does not exist", req.GetName())
	}
	return d, nil
}

// ListDomains lists the domains the caller may read.
func (a *Admin) ListDomains(ctx context.Context, _ *meshcav1.ListDomainsRequest) (*meshcav1.ListDomainsResponse, error) {
	st := a.store.State()
	c, err := a.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	out := &meshcav1.ListDomainsResponse{}
	for _, d := range st.Domains() {
		if a.allowed(c, ActionDomainRead, Resource{Kind: "domain", Name: d.GetName(), Domain: d.GetName(), DomainAdmins: d.GetAdmins()}) {
			out.Domains = append(out.Domains, d)
		}
	}
	return out, nil
}

// DeleteDomain deletes a domain without services.
func (a *Admin) DeleteDomain(ctx context.Context, req *meshcav1.DeleteDomainRequest) (*meshcav1.DeleteDomainResponse, error) {
	st := a.store.State()
	c, err := a.authorize(ctx, st, ActionDomainDelete, inDomain(st, "domain", req.GetName(), req.GetName()))
	if err != nil {
		return nil, err
	}
	if _, err := a.commit(ctx, c, "delete_domain.", &meshcav1.Command{Command: &meshcav1.Command_DeleteDomain{
		DeleteDomain: &meshcav1.DeleteDomainCommand{Name: req.GetName()},
	}}); err != nil {
		return nil, err
	}
	return &meshcav1.DeleteDomainResponse{}, nil
}

// AddDomainAdmins adds principals to a domain's admins.
func (a *Admin) AddDomainAdmins(ctx context.Context, req *meshcav1.DomainAdminsRequest) (*meshcav1.Domain, error) {
	return a.changeDomainAdmins(ctx, req, &meshcav1.ChangeDomainAdminsCommand{Name: req.GetName(), Add: req.GetAdmins()})
}

// RemoveDomainAdmins removes principals from a domain's admins.
func (a *Admin) RemoveDomainAdmins(ctx context.Context, req *meshcav1.DomainAdminsRequest) (*meshcav1.Domain, error) {
	return a.changeDomainAdmins(ctx, req, &meshcav1.ChangeDomainAdminsCommand{Name: req.GetName(), Remove: req.GetAdmins()})
}

// changeDomainAdmins commits change. The state machine applies it to the admins as they are
// at apply time, so of two concurrent changes to one domain's admins neither is lost.
func (a *Admin) changeDomainAdmins(ctx context.Context, req *meshcav1.DomainAdminsRequest, change *meshcav1.ChangeDomainAdminsCommand) (*meshcav1.Domain, error) {
	st := a.store.State()
	c, err := a.authorize(ctx, st, ActionDomainUpdate, inDomain(st, "domain", req.GetName(), req.GetName()))
	if err != nil {
		return nil, err
	}
	if len(req.GetAdmins()) == 0 {
		return nil, required("admins", "")
	}
	if err := checkAdminEntries("admins", req.GetAdmins()); err != nil {
		return nil, err
	}
	if _, err := st.Domain(req.GetName()); err != nil {
		return nil, notFound("name", "domain %q does not exist", req.GetName())
	}
	out, err := a.commit(ctx, c, "change_domain_admins.", &meshcav1.Command{Command: &meshcav1.Command_ChangeDomainAdmins{ChangeDomainAdmins: change}})
	if err != nil {
		return nil, err
	}
	return out.GetDomain(), nil
}

// checkGrant checks a launch grant pattern's syntax and, for an exact pattern, that it names
// a registered provider (a typo would otherwise grant nothing, silently).
func checkGrant(st *raftstore.State, field, pattern string) error {
	if err := raftstore.ValidateGrantPattern(pattern); err != nil {
		return refuse(raftstore.ErrInvalidGrant, field, "%v", err)
	}
	if len(pattern) > 2 && pattern[len(pattern)-2:] == ".*" {
		return nil
	}
	if _, err := st.Provider(pattern); errors.Is(err, raftstore.ErrNotFound) {
		return refuse(raftstore.ErrFailedPrecondition, field, "provider %q is not registered; register it first, or grant a wildcard pattern such as %q", pattern, pattern+".*")
	}
	return nil
}

// checkServiceKey checks that a key to register is a DER SubjectPublicKeyInfo.
func checkServiceKey(field string, k *meshcav1.ServiceKey) error {
	if k == nil {
		return required(field, "")
	}
	if _, err := x509.ParsePKIXPublicKey(k.GetPublicKey()); err != nil {
		return refuse(raftstore.ErrInvalidCommand, field+".public_key", "not a DER SubjectPublicKeyInfo: %v", err)
	}
	return nil
}

// PutService creates or replaces a service.
func (a *Admin) PutService(ctx context.Context, req *meshcav1.PutServiceRequest) (*meshcav1.Service, error) {
	st := a.store.State()
	svc := req.GetService()
	res := inDomain(st, "service", raftstore.Identity(svc.GetDomain(), svc.GetName()), svc.GetDomain())
	c, err := a.authorize(ctx, st, ActionServiceWrite, res)
	if err != nil {
		return nil, err
	}
	for i, k := range svc.GetKeys() {
		if err := checkServiceKey(fmt.Sprintf("service.keys[%d]", i), k); err != nil {
			return nil, err
		}
	}
	for i, g := range svc.GetLaunchGrants() {
		if err := checkGrant(st, fmt.Sprintf("service.launch_grants[%d]", i), g); err != nil {
			return nil, err
		}
	}
	out, err := a.commit(ctx, c, "put_service.", &meshcav1.Command{Command: &meshcav1.Command_PutService{
		PutService: &meshcav1.PutServiceCommand{Service: &meshcav1.Service{
			Domain: svc.GetDomain(), Name: svc.GetName(), Keys: svc.GetKeys(), LaunchGrants: svc.GetLaunchGrants(),
		}, Mode: req.GetMode()},
	}})
	if err != nil {
		return nil, err
	}
	return out.GetService(), nil
}

// GetService returns a service.
func (a *Admin) GetService(ctx context.Context, req *meshcav1.GetServiceRequest) (*meshcav1.Service, error) {
	st := a.store.State()
	if _, err := a.authorize(ctx, st, ActionServiceRead, serviceResource(st, req.GetIdentity())); err != nil {
		return nil, err
	}
	svc, err := st.Service(req.GetIdentity())
	if err != nil {
		return nil, notFound("identity", "service %q does not exist", req.GetIdentity())
	}
	return svc, nil
}

// ListServices lists the services of a domain, or every service the caller may read.
func (a *Admin) ListServices(ctx context.Context, req *meshcav1.ListServicesRequest) (*meshcav1.ListServicesResponse, error) {
	st := a.store.State()
	c, err := a.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetDomain() != "" {
		if err := a.decide(st, c, ActionServiceRead, inDomain(st, "domain", req.GetDomain(), req.GetDomain())); err != nil {
			return nil, err
		}
	}
	admins := map[string][]string{}
	for _, d := range st.Domains() {
		admins[d.GetName()] = d.GetAdmins()
	}
	out := &meshcav1.ListServicesResponse{}
	for _, svc := range st.Services(req.GetDomain()) {
		res := Resource{Domain: svc.GetDomain(), DomainAdmins: admins[svc.GetDomain()]}
		if a.allowed(c, ActionServiceRead, res) {
			out.Services = append(out.Services, svc)
		}
	}
	return out, nil
}

// DeleteService deletes a service.
func (a *Admin) DeleteService(ctx context.Context, req *meshcav1.DeleteServiceRequest) (*meshcav1.DeleteServiceResponse, error) {
	st := a.store.State()
	c, err := a.authorize(ctx, st, ActionServiceWrite, serviceResource(st, req.GetIdentity()))
	if err != nil {
		return nil, err
	}
	if _, err := a.commit(ctx, c, "delete_service.", &meshcav1.Command{Command: &meshcav1.Command_DeleteService{
		DeleteService: &meshcav1.DeleteServiceCommand{Identity: req.GetIdentity()},
	}}); err != nil {
		return nil, err
	}
	return &meshcav1.DeleteServiceResponse{}, nil
}

// AddServiceKey registers a public key under a new key version.
func (a *Admin) AddServiceKey(ctx context.Context, req *meshcav1.AddServiceKeyRequest) (*meshcav1.Service, error) {
	st := a.store.State()
	c, err := a.authorize(ctx, st, ActionServiceWrite, serviceResource(st, req.GetIdentity()))
	if err != nil {
		return nil, err
	}
	if err := checkServiceKey("key", req.GetKey()); err != nil {
		return nil, err
	}
	out, err := a.commit(ctx, c, "add_service_key.", &meshcav1.Command{Command: &meshcav1.Command_AddServiceKey{
		AddServiceKey: &meshcav1.AddServiceKeyCommand{Identity: req.GetIdentity(), Key: &meshcav1.ServiceKey{
			Version: req.GetKey().GetVersion(), PublicKey: req.GetKey().GetPublicKey(),
		}},
	}})
	if err != nil {
		return nil, err
	}
	return out.GetService(), nil
}

// RemoveServiceKey removes a key version.
func (a *Admin) RemoveServiceKey(ctx context.Context, req *meshcav1.RemoveServiceKeyRequest) (*meshcav1.Service, error) {
	st := a.store.State()
	c, err := a.authorize(ctx, st, ActionServiceWrite, serviceResource(st, req.GetIdentity()))
	if err != nil {
		return nil, err
	}
	out, err := a.commit(ctx, c, "remove_service_key.", &meshcav1.Command{Command: &meshcav1.Command_RemoveServiceKey{
		RemoveServiceKey: &meshcav1.RemoveServiceKeyCommand{Identity: req.GetIdentity(), Version: req.GetVersion()},
	}})
	if err != nil {
		return nil, err
	}
	return out.GetService(), nil
}

// AddLaunchGrant lets the providers matching a pattern launch the service.
func (a *Admin) AddLaunchGrant(ctx context.Context, req *meshcav1.LaunchGrantRequest) (*meshcav1.Service, error) {
	st := a.store.State()
	c, err := a.authorize(ctx, st, ActionServiceWrite, serviceResource(st, req.GetIdentity()))
	if err != nil {
		return nil, err
	}
	if err := checkGrant(st, "pattern", req.GetPattern()); err != nil {
		return nil, err
	}
	out, err := a.commit(ctx, c, "add_launch_grant.", &meshcav1.Command{Command: &meshcav1.Command_AddLaunchGrant{
		AddLaunchGrant: &meshcav1.AddLaunchGrantCommand{Identity: req.GetIdentity(), Pattern: req.GetPattern()},
	}})
	if err != nil {
		return nil, err
	}
	return out.GetService(), nil
}

// RemoveLaunchGrant withdraws a launch grant.
func (a *Admin) RemoveLaunchGrant(ctx context.Context, req *meshcav1.LaunchGrantRequest) (*meshcav1.Service, error) {
	st := a.store.State()
	c, err := a.authorize(ctx, st, ActionServiceWrite, serviceResource(st, req.GetIdentity()))
	if err != nil {
		return nil, err
	}
	out, err := a.commit(ctx, c, "remove_launch_grant.", &meshcav1.Command{Command: &meshcav1.Command_RemoveLaunchGrant{
		RemoveLaunchGrant: &meshcav1.RemoveLaunchGrantCommand{Identity: req.GetIdentity(), Pattern: req.GetPattern()},
	}})
	if err != nil {
		return nil, err
	}
	return out.GetService(), nil
}

// checkConfirmEndpoint refuses a confirm endpoint that is not an https URL with a host; an
// empty one is allowed (the built-in provider confirms in process).
func checkConfirmEndpoint(field, endpoint string) error {
	if endpoint == "" {
		return nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return refuse(raftstore.ErrInvalidCommand, field, "%q must be an https:// URL with a host: the CA calls it over mutual TLS", endpoint)
	}
	return nil
}

// PutProvider creates or replaces a provider.
func (a *Admin) PutProvider(ctx context.Context, req *meshcav1.PutProviderRequest) (*meshcav1.Provider, error) {
	st := a.store.State()
	p := req.GetProvider()
	c, err := a.authorize(ctx, st, ActionProviderWrite, Resource{Kind: "provider", Name: p.GetName()})
	if err != nil {
		return nil, err
	}
	if err := checkConfirmEndpoint("provider.confirm_endpoint", p.GetConfirmEndpoint()); err != nil {
		return nil, err
	}
	out, err := a.commit(ctx, c, "put_provider.", &meshcav1.Command{Command: &meshcav1.Command_PutProvider{
		PutProvider: &meshcav1.PutProviderCommand{Provider: &meshcav1.Provider{
			Name: p.GetName(), DnsSuffix: p.GetDnsSuffix(), ConfirmEndpoint: p.GetConfirmEndpoint(),
			Enabled: p.GetEnabled(), RefreshNeedsConfirmation: p.GetRefreshNeedsConfirmation(),
		}, Mode: req.GetMode()},
	}})
	if err != nil {
		return nil, err
	}
	return out.GetProvider(), nil
}

// GetProvider returns a provider.
func (a *Admin) GetProvider(ctx context.Context, req *meshcav1.GetProviderRequest) (*meshcav1.Provider, error) {
	st := a.store.State()
	if _, err := a.authorize(ctx, st, ActionProviderRead, Resource{Kind: "provider", Name: req.GetName()}); err != nil {
		return nil, err
	}
	p, err := st.Provider(req.GetName())
	if err != nil {
		return nil, notFound("name", "provider %q does not exist", req.GetName())
	}
	return p, nil
}

// ListProviders lists every provider.
func (a *Admin) ListProviders(ctx context.Context, _ *meshcav1.ListProvidersRequest) (*meshcav1.ListProvidersResponse, error) {
	st := a.store.State()
	if _, err := a.authorize(ctx, st, ActionProviderRead, Resource{Kind: "providers", Name: "*"}); err != nil {
		return nil, err
	}
	return &meshcav1.ListProvidersResponse{Providers: st.Providers()}, nil
}

// DeleteProvider deletes a provider.
func (a *Admin) DeleteProvider(ctx context.Context, req *meshcav1.DeleteProviderRequest) (*meshcav1.DeleteProviderResponse, error) {
	st := a.store.State()
	c, err := a.authorize(ctx, st, ActionProviderWrite, Resource{Kind: "provider", Name: req.GetName()})
	if err != nil {
		return nil, err
	}
	if _, err := a.commit(ctx, c, "delete_provider.", &meshcav1.Command{Command: &meshcav1.Command_DeleteProvider{
		DeleteProvider: &meshcav1.DeleteProviderCommand{Name: req.GetName()},
	}}); err != nil {
		return nil, err
	}
	return &meshcav1.DeleteProviderResponse{}, nil
}

// SetProviderEnabled enables or disables a provider.
func (a *Admin) SetProviderEnabled(ctx context.Context, req *meshcav1.SetProviderEnabledRequest) (*meshcav1.Provider, error) {
	st := a.store.State()
	c, err := a.authorize(ctx, st, ActionProviderWrite, Resource{Kind: "provider", Name: req.GetName()})
	if err != nil {
		return nil, err
	}
	out, err := a.commit(ctx, c, "set_provider_enabled.", &meshcav1.Command{Command: &meshcav1.Command_SetProviderEnabled{
		SetProviderEnabled: &meshcav1.SetProviderEnabledCommand{Name: req.GetName(), Enabled: req.GetEnabled()},
	}})
	if err != nil {
		return nil, err
	}
	return out.GetProvider(), nil
}
