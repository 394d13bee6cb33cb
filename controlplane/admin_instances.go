package controlplane

import (
	"context"
	"time"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/raftstore"
)

// Limits of instance listings and register tokens.
const (
	defaultInstancePage = 100
	maxInstancePage     = 1000
	// DefaultRegisterTokenTTL is how long a register token is valid when the request names no
	// lifetime.
	DefaultRegisterTokenTTL = time.Hour
	// MaxRegisterTokenTTL bounds a register token's lifetime.
	MaxRegisterTokenTTL = 7 * 24 * time.Hour
)

// instanceMatches applies a ListInstancesRequest's filters.
func instanceMatches(req *meshcav1.ListInstancesRequest, inst *meshcav1.Instance) bool {
	switch {
	case req.GetProvider() != "" && inst.GetProvider() != req.GetProvider():
		return false
	case req.GetDomain() != "" && inst.GetDomain() != req.GetDomain():
		return false
	case req.GetService() != "" && inst.GetService() != req.GetService():
		return false
	case req.GetRevoked() == meshcav1.RevokedFilter_REVOKED_FILTER_ACTIVE && inst.GetRevoked():
		return false
	case req.GetRevoked() == meshcav1.RevokedFilter_REVOKED_FILTER_REVOKED && !inst.GetRevoked():
		return false
	}
	return true
}

// ListInstances lists, a page at a time, the instances that match the filters and that the
// caller may read. The page token is the last instance's place (provider/instance-id).
func (a *Admin) ListInstances(ctx context.Context, req *meshcav1.ListInstancesRequest) (*meshcav1.ListInstancesResponse, error) {
	st := a.store.State()
	c, err := a.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetService() != "" && req.GetDomain() == "" {
		return nil, refuse(raftstore.ErrInvalidCommand, "domain", "required with service %q (a service label is unique only in its domain)", req.GetService())
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0 || size > maxInstancePage:
		return nil, refuse(raftstore.ErrInvalidCommand, "page_size", "%d is outside 0..%d", size, maxInstancePage)
	case size == 0:
		size = defaultInstancePage
	}
	if req.GetDomain() != "" {
		if err := a.decide(st, c, ActionInstanceRead, inDomain(st, "domain", req.GetDomain(), req.GetDomain())); err != nil {
			return nil, err
		}
	}
	admins := map[string][]string{}
	for _, d := range st.Domains() {
		admins[d.GetName()] = d.GetAdmins()
	}
	out := &meshcav1.ListInstancesResponse{}
	cursor := req.GetPageToken()
	for {
		page, next := st.Instances(cursor, 256)
		for _, inst := range page {
			if !instanceMatches(req, inst) {
				continue
			}
			if !a.allowed(c, ActionInstanceRead, Resource{Domain: inst.GetDomain(), DomainAdmins: admins[inst.GetDomain()]}) {
				continue
			}
			if len(out.Instances) == size {
				// One more match exists: the listing continues after the last one returned.
				last := out.Instances[size-1]
				out.NextPageToken = last.GetProvider() + "/" + last.GetInstanceId()
				return out, nil
			}
			out.Instances = append(out.Instances, inst)
		}
		if next == "" {
			return out, nil
		}
		cursor = next
	}
}

// lookupInstance finds an instance by provider and instance id and authorizes action on it.
func (a *Admin) lookupInstance(ctx context.Context, st *raftstore.State, action Action, provider, id string) (caller, *meshcav1.Instance, error) {
	c, err := a.authenticate(ctx)
	if err != nil {
		return caller{}, nil, err
	}
	if err := required("provider", provider); err != nil {
		return caller{}, nil, err
	}
	if err := required("instance_id", id); err != nil {
		return caller{}, nil, err
	}
	inst, err := st.InstanceByID(provider, id)
	if err != nil {
		return caller{}, nil, notFound("instance_id", "provider %q has no instance %q", provider, id)
	}
	key := raftstore.InstanceKey(inst.GetProvider(), inst.GetDomain(), inst.GetService(), inst.GetInstanceId())
	if err := a.decide(st, c, action, inDomain(st, "instance", key, inst.GetDomain())); err != nil {
		return caller{}, nil, err
	}
	return c, inst, nil
}

// GetInstance returns an instance.
func (a *Admin) GetInstance(ctx context.Context, req *meshcav1.GetInstanceRequest) (*meshcav1.Instance, error) {
	_, inst, err := a.lookupInstance(ctx, a.store.State(), ActionInstanceRead, req.GetProvider(), req.GetInstanceId())
	if err != nil {
		return nil, err
	}
	return inst, nil
}

// RevokeInstance revokes an instance.
func (a *Admin) RevokeInstance(ctx context.Context, req *meshcav1.RevokeInstanceRequest) (*meshcav1.Instance, error) {
	c, inst, err := a.lookupInstance(ctx, a.store.State(), ActionInstanceRevoke, req.GetProvider(), req.GetInstanceId())
	if err != nil {
		return nil, err
	}
	if inst.GetRevoked() {
		return nil, refuse(raftstore.ErrFailedPrecondition, "instance_id", "instance %q of provider %q is already revoked (%s)",
			inst.GetInstanceId(), inst.GetProvider(), inst.GetRevokeReason())
	}
	detail := req.GetDetail()
	if detail == "" {
		detail = "revoked by " + c.SPIFFEID
	}
	out, err := a.commit(ctx, c, "revoke.", &meshcav1.Command{Command: &meshcav1.Command_Revoke{Revoke: &meshcav1.RevokeCommand{
		Target: &meshcav1.RevokeCommand_Instance{Instance: &meshcav1.InstanceRef{
			Provider: inst.GetProvider(), Domain: inst.GetDomain(), Service: inst.GetService(), InstanceId: inst.GetInstanceId(),
		}},
		Reason: req.GetReason(),
		Detail: detail,
	}}})
	if err != nil {
		return nil, err
	}
	return out.GetInstance(), nil
}

// IssueRegisterToken issues a one-time register token: it chooses the jti and the expiry, has
// the token signed, and returns it once the jti is committed.
func (a *Admin) IssueRegisterToken(ctx context.Context, req *meshcav1.IssueRegisterTokenRequest) (*meshcav1.IssueRegisterTokenResponse, error) {
	st := a.store.State()
	identity := raftstore.Identity(req.GetDomain(), req.GetService())
	c, err := a.authorize(ctx, st, ActionTokenIssue, inDomain(st, "service", identity, req.GetDomain()))
	if err != nil {
		return nil, err
	}
	if a.cfg.Tokens == nil {
		return nil, refuse(ErrNotEnabled, "token", "this server has no register token signer")
	}
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	switch {
	case req.GetTtlSeconds() < 0 || ttl > MaxRegisterTokenTTL:
		return nil, refuse(raftstore.ErrInvalidCommand, "ttl_seconds", "%d is outside 0..%d (%s)", req.GetTtlSeconds(), int64(MaxRegisterTokenTTL/time.Second), MaxRegisterTokenTTL)
	case ttl == 0:
		ttl = DefaultRegisterTokenTTL
	}
	if _, err := st.Service(identity); err != nil {
		return nil, notFound("service", "service %q does not exist", identity)
	}
	jti, err := randomID()
	if err != nil {
		return nil, err
	}
	now := a.now()
	tok := &meshcav1.Token{
		Jti: jti, Domain: req.GetDomain(), Service: req.GetService(), InstanceId: req.GetInstanceId(),
		IssuedBy: c.SPIFFEID, Issued: now.UnixNano(), Expires: now.Add(ttl).UnixNano(),
	}
	signed, err := a.cfg.Tokens.SignRegisterToken(tok)
	if err != nil {
		return nil, err
	}
	// The command's time is the token's issue time, so the record and the signed token agree.
	res, err := a.commit(ctx, c, "issue_token.token.", &meshcav1.Command{
		Time:    tok.GetIssued(),
		Command: &meshcav1.Command_IssueToken{IssueToken: &meshcav1.IssueTokenCommand{Token: tok}},
	})
	if err != nil {
		return nil, err
	}
	return &meshcav1.IssueRegisterTokenResponse{Token: signed, Record: res.GetToken()}, nil
}
