package controlplane

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/raftstore"
)

// ErrNotAuthorized is wrapped by every refusal of the admin API's authorization: the caller is
// authenticated but may not do what it asked.
var ErrNotAuthorized = errors.New("not authorized")

// Principal is an authenticated admin API caller, as its client certificate names it.
type Principal struct {
	// SPIFFEID is the certificate's SPIFFE ID, e.g. spiffe://mesh.example/ns/sports/sa/api.
	SPIFFEID string
	// Service is the <domain>.<service> identity the SPIFFE ID names when it is a workload ID
	// of this cluster's trust domain (spiffe://<td>/ns/<domain>/sa/<service>); empty otherwise.
	Service string
}

// NewPrincipal names the caller with SPIFFE ID id; its service principal is set when id is a
// workload ID (spiffe://<td>/ns/<domain>/sa/<service>) in the trust domain td.
func NewPrincipal(id spiffeid.ID, td spiffeid.TrustDomain) Principal {
	p := Principal{SPIFFEID: id.String()}
	if id.MemberOf(td) {
		parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
		if len(parts) == 4 && parts[0] == "ns" && parts[2] == "sa" {
			svc := raftstore.Identity(parts[1], parts[3])
			if _, _, err := raftstore.SplitIdentity(svc); err == nil {
				p.Service = svc
			}
		}
	}
	return p
}

// String is the SPIFFE ID: what refusals and audit records name the caller by.
func (p Principal) String() string { return p.SPIFFEID }

// Is reports whether an entry of an admin list ("spiffe://..." or "<domain>.<service>") names
// the caller.
func (p Principal) Is(entry string) bool {
	return entry != "" && (entry == p.SPIFFEID || entry == p.Service)
}

// in reports whether any entry names the caller.
func (p Principal) in(entries []string) bool { return slices.ContainsFunc(entries, p.Is) }

// Action is something an admin API caller asks to do.
type Action string

// The actions of the admin API. Each has a scope that says who may do it (see Scope).
const (
	ActionDomainCreate   Action = "domain.create"
	ActionDomainUpdate   Action = "domain.update"
	ActionDomainDelete   Action = "domain.delete"
	ActionDomainRead     Action = "domain.read"
	ActionServiceWrite   Action = "service.write"
	ActionServiceRead    Action = "service.read"
	ActionProviderWrite  Action = "provider.write"
	ActionProviderRead   Action = "provider.read"
	ActionInstanceRead   Action = "instance.read"
	ActionInstanceRevoke Action = "instance.revoke"
	ActionTokenIssue     Action = "token.issue"
	ActionCSRSubmit      Action = "csr.submit"
	ActionCSRDecide      Action = "csr.decide"
	ActionCSRRead        Action = "csr.read"
	ActionCARead         Action = "ca.read"
	ActionClusterRead    Action = "cluster.read"
	ActionClusterWrite   Action = "cluster.write"
	ActionEventWatch     Action = "event.watch"
	ActionEventRead      Action = "event.read"
)

// Scope says who may perform an action.
type Scope int

// The scopes, from the narrowest.
const (
	// ScopeSystem: system admins only.
	ScopeSystem Scope = iota + 1
	// ScopeDomain: system admins and the admins of the resource's domain. A resource without a
	// domain (an event about the CA) is ScopeSystem.
	ScopeDomain
	// ScopeOwner: system admins and the principal that created the resource.
	ScopeOwner
	// ScopeAnyAdmin: system admins and the admins of at least one domain.
	ScopeAnyAdmin
	// ScopeAuthenticated: any caller whose certificate this CA issued (public CA material).
	ScopeAuthenticated
)

// actionScopes is the policy: every action and who may perform it.
var actionScopes = map[Action]Scope{
	ActionDomainCreate:   ScopeSystem,
	ActionDomainUpdate:   ScopeDomain,
	ActionDomainDelete:   ScopeSystem,
	ActionDomainRead:     ScopeDomain,
	ActionServiceWrite:   ScopeDomain,
	ActionServiceRead:    ScopeDomain,
	ActionProviderWrite:  ScopeSystem,
	ActionProviderRead:   ScopeAnyAdmin,
	ActionInstanceRead:   ScopeDomain,
	ActionInstanceRevoke: ScopeDomain,
	ActionTokenIssue:     ScopeDomain,
	ActionCSRSubmit:      ScopeAnyAdmin,
	ActionCSRDecide:      ScopeSystem,
	ActionCSRRead:        ScopeOwner,
	ActionCARead:         ScopeAuthenticated,
	ActionClusterRead:    ScopeSystem,
	ActionClusterWrite:   ScopeSystem,
	ActionEventWatch:     ScopeAnyAdmin,
	ActionEventRead:      ScopeDomain,
	ActionCARotate:       ScopeSystem,
}

// ScopeOf returns an action's scope, or 0 for an unknown action (which nobody may perform).
func ScopeOf(a Action) Scope { return actionScopes[a] }

// Resource is what an action is about, with the facts from the replicated state the decision
// needs. The caller looks them up; Authorize only compares values.
type Resource struct {
	// Kind and Name describe the resource in refusals, e.g. "service" "sports.api".
	Kind, Name string
	// Domain is the domain the resource belongs to; empty for cluster-wide resources.
	Domain string
	// DomainAdmins are that domain's admins as its Domain record lists them.
	DomainAdmins []string
	// Owner is the principal that created the resource (a CSR request's submitter).
	Owner string
	// CallerAdminsSomeDomain says whether any Domain record lists the caller as an admin.
	CallerAdminsSomeDomain bool
}

// Decision is the outcome of Authorize: whether the action is allowed and why. The reason
// names the caller and the rule, for the refusal message and the audit log.
type Decision struct {
	Allowed bool
	Reason  string
}

// Err returns nil for an allowed decision and, for a refusal, an error wrapping
// ErrNotAuthorized that gRPC reports as PERMISSION_DENIED with the reason as its message.
func (d Decision) Err() error {
	if d.Allowed {
		return nil
	}
	return &authzError{reason: d.Reason}
}

// authzError is a refused authorization: PERMISSION_DENIED at the gRPC edge.
type authzError struct{ reason string }

func (e *authzError) Error() string { return e.reason }
func (e *authzError) Unwrap() error { return ErrNotAuthorized }

// GRPCStatus makes the refusal a PERMISSION_DENIED status wherever it is returned.
func (e *authzError) GRPCStatus() *status.Status {
	return status.New(codes.PermissionDenied, e.reason)
}

// Authorize decides whether caller may perform action on res, given the system admins of the
// configuration. It is pure: the same values give the same decision on every node.
func Authorize(systemAdmins []string, caller Principal, action Action, res Resource) Decision {
	allow := func(why string) Decision { return Decision{Allowed: true, Reason: why} }
	deny := func(format string, args ...any) Decision {
		return Decision{Reason: fmt.Sprintf("caller %s ", caller) + fmt.Sprintf(format, args...)}
	}
	if caller.SPIFFEID == "" {
		return Decision{Reason: "caller: no SPIFFE ID; the admin API authenticates callers by their client certificate"}
	}
	scope := ScopeOf(action)
	if scope == 0 {
		return deny("asked for %q, which is not an admin action", action)
	}
	if caller.in(systemAdmins) {
		return allow("system admin")
	}
	// what names the action and the resource in a refusal.
	what := func() string {
		if res.Kind == "" {
			return string(action)
		}
		return fmt.Sprintf("%s on %s %q", action, res.Kind, res.Name)
	}
	switch scope {
	case ScopeSystem:
		return deny("is not a system admin (%s needs one)", what())
	case ScopeDomain:
		if res.Domain == "" {
			return deny("is not a system admin (%s concerns no domain, so it needs one)", what())
		}
		if caller.in(res.DomainAdmins) {
			return allow("admin of domain " + res.Domain)
		}
		return deny("is not an admin of domain %s (%s)", res.Domain, what())
	case ScopeOwner:
		if res.Owner != "" && caller.Is(res.Owner) {
			return allow("owner")
		}
		return deny("is neither a system admin nor the submitter of %s", what())
	case ScopeAnyAdmin:
		if res.CallerAdminsSomeDomain {
			return allow("admin of a domain")
		}
		return deny("is neither a system admin nor an admin of any domain (%s)", what())
	case ScopeAuthenticated:
		return allow("authenticated")
	}
	return deny("asked for %q, whose scope is unknown", action)
}

// EventDomain returns the domain an audit event is about, read from its kind and its subject as
// the state machine writes them: configuration changes "domain/<domain>" and
// "service/<domain>.<service>"; instance events (issued, refreshed, revoked, compromise
// detected, extend verified) the instance key "<provider>/<domain>.<service>/<instance-id>";
// token events "<domain>.<service>/<instance-id>". Events about the CA, providers, federation
// and CSR requests, and revocations of single manually approved certificates, concern no
// domain and return "".
func EventDomain(ev *meshcav1.Event) string {
	parts := strings.Split(ev.GetSubject(), "/")
	domainOf := func(identity string) string {
		d, _, err := raftstore.SplitIdentity(identity)
		if err != nil {
			return ""
		}
		return d
	}
	switch ev.GetKind() {
	case meshcav1.EventKind_EVENT_KIND_CONFIG_CHANGED:
		if len(parts) != 2 {
			return ""
		}
		switch parts[0] {
		case "domain":
			return parts[1]
		case "service":
			return domainOf(parts[1])
		}
	case meshcav1.EventKind_EVENT_KIND_ISSUED, meshcav1.EventKind_EVENT_KIND_REFRESHED,
		meshcav1.EventKind_EVENT_KIND_REVOKED, meshcav1.EventKind_EVENT_KIND_COMPROMISE_DETECTED,
		meshcav1.EventKind_EVENT_KIND_EXTEND_VERIFIED:
		if len(parts) == 3 {
			return domainOf(parts[1])
		}
	case meshcav1.EventKind_EVENT_KIND_TOKEN_ISSUED:
		if len(parts) == 2 {
			return domainOf(parts[0])
		}
	}
	return ""
}
