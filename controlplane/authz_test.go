package controlplane

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

var authzTD = spiffeid.RequireTrustDomainFromString("mesh.example")

func principal(t *testing.T, id string) Principal {
	t.Helper()
	return NewPrincipal(spiffeid.RequireFromString(id), authzTD)
}

func TestNewPrincipal(t *testing.T) {
	tests := []struct {
		name, id, service string
	}{
		{"a workload ID of our trust domain names a service principal", "spiffe://mesh.example/ns/sports/sa/api", "sports.api"},
		{"a dotted domain keeps its dots", "spiffe://mesh.example/ns/sys.auth/sa/k8s", "sys.auth.k8s"},
		{"a workload ID of another trust domain names no service principal", "spiffe://other.example/ns/sports/sa/api", ""},
		{"a non-workload path names no service principal", "spiffe://mesh.example/meshca/server/n1", ""},
		{"a path with extra segments names no service principal", "spiffe://mesh.example/ns/sports/sa/api/x", ""},
		{"an invalid domain label names no service principal", "spiffe://mesh.example/ns/Sports/sa/api", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := principal(t, tt.id)
			if p.SPIFFEID != tt.id || p.Service != tt.service {
				t.Fatalf("NewPrincipal(%s) = %+v, want service %q", tt.id, p, tt.service)
			}
		})
	}
}

func TestAuthorize(t *testing.T) {
	const (
		rootID   = "spiffe://mesh.example/ns/ops/sa/root"
		sportsID = "spiffe://mesh.example/ns/sports/sa/admin"
		newsID   = "spiffe://mesh.example/ns/news/sa/admin"
		nobodyID = "spiffe://mesh.example/ns/sports/sa/api"
		foreign  = "spiffe://other.example/ns/ops/sa/root"
	)
	// System admins are listed once by SPIFFE ID and once by service principal.
	systemAdmins := []string{rootID, "ops.robot"}
	sports := func(kind, name string) Resource {
		return Resource{Kind: kind, Name: name, Domain: "sports", DomainAdmins: []string{sportsID, "sports.ci"}}
	}
	tests := []struct {
		name     string
		caller   string
		action   Action
		res      Resource
		allowed  bool
		contains string
	}{
		{"system admin by SPIFFE ID may delete a domain", rootID, ActionDomainDelete, sports("domain", "sports"), true, "system admin"},
		{"system admin by service principal may write providers", "spiffe://mesh.example/ns/ops/sa/robot", ActionProviderWrite, Resource{Kind: "provider", Name: "sys.auth.k8s"}, true, "system admin"},
		{"system admin may change the cluster", rootID, ActionClusterWrite, Resource{}, true, "system admin"},
		{"system admin may decide CSR requests", rootID, ActionCSRDecide, Resource{Kind: "csr request", Name: "r1", Owner: sportsID}, true, "system admin"},
		{"a system admin's name from another trust domain is not a system admin", foreign, ActionClusterRead, Resource{}, false, "is not a system admin"},

		{"domain admin may manage its own domain's services", sportsID, ActionServiceWrite, sports("service", "sports.api"), true, "admin of domain sports"},
		{"domain admin by service principal may manage its domain's services", "spiffe://mesh.example/ns/sports/sa/ci", ActionServiceWrite, sports("service", "sports.api"), true, "admin of domain sports"},
		{"domain admin may issue register tokens for its domain", sportsID, ActionTokenIssue, sports("service", "sports.api"), true, "admin of domain sports"},
		{"domain admin may revoke its domain's instances", sportsID, ActionInstanceRevoke, sports("instance", "p/sports.api/i"), true, "admin of domain sports"},
		{"domain admin may change its own domain's admins", sportsID, ActionDomainUpdate, sports("domain", "sports"), true, "admin of domain sports"},
		{"domain admin may not manage another domain's services", newsID, ActionServiceWrite, sports("service", "sports.api"), false, "caller " + newsID + " is not an admin of domain sports"},
		{"domain admin may not create domains", sportsID, ActionDomainCreate, Resource{Kind: "domain", Name: "sports2", CallerAdminsSomeDomain: true}, false, "is not a system admin"},
		{"domain admin may not delete its own domain", sportsID, ActionDomainDelete, sports("domain", "sports"), false, "is not a system admin"},
		{"domain admin may not write providers", sportsID, ActionProviderWrite, Resource{Kind: "provider", Name: "sys.auth.k8s", CallerAdminsSomeDomain: true}, false, "is not a system admin"},
		{"domain admin may not decide CSR requests", sportsID, ActionCSRDecide, Resource{Kind: "csr request", Name: "r1", Owner: sportsID, CallerAdminsSomeDomain: true}, false, "is not a system admin"},
		{"domain admin may not read the cluster", sportsID, ActionClusterRead, Resource{CallerAdminsSomeDomain: true}, false, "is not a system admin"},
		{"domain admin may read providers", sportsID, ActionProviderRead, Resource{CallerAdminsSomeDomain: true}, true, "admin of a domain"},
		{"domain admin may submit CSR requests", sportsID, ActionCSRSubmit, Resource{CallerAdminsSomeDomain: true}, true, "admin of a domain"},
		{"domain admin may read events about its domain", sportsID, ActionEventRead, sports("event", "7"), true, "admin of domain sports"},
		{"domain admin may not read events about no domain", sportsID, ActionEventRead, Resource{Kind: "event", Name: "8", CallerAdminsSomeDomain: true}, false, "concerns no domain"},

		{"a workload without an admin role is refused a service write", nobodyID, ActionServiceWrite, sports("service", "sports.api"), false, "is not an admin of domain sports"},
		{"a workload without an admin role may not read providers", nobodyID, ActionProviderRead, Resource{}, false, "nor an admin of any domain"},
		{"a workload without an admin role may not submit CSR requests", nobodyID, ActionCSRSubmit, Resource{}, false, "nor an admin of any domain"},
		{"any authenticated caller may read the CA status", nobodyID, ActionCARead, Resource{}, true, "authenticated"},
		{"the submitter may read its own CSR request", nobodyID, ActionCSRRead, Resource{Kind: "csr request", Name: "r1", Owner: nobodyID}, true, "owner"},
		{"the submitter is matched by service principal too", nobodyID, ActionCSRRead, Resource{Kind: "csr request", Name: "r1", Owner: "sports.api"}, true, "owner"},
		{"another caller may not read a CSR request", newsID, ActionCSRRead, Resource{Kind: "csr request", Name: "r1", Owner: nobodyID}, false, "nor the submitter"},
		{"a resource without an owner is readable by system admins only", newsID, ActionCSRRead, Resource{Kind: "csr request", Name: "r1"}, false, "nor the submitter"},
		{"an empty admin list entry matches nobody", "spiffe://mesh.example/meshca/server/n1", ActionServiceWrite, Resource{Kind: "service", Name: "x.y", Domain: "x", DomainAdmins: []string{""}}, false, "is not an admin of domain x"},
		{"an unknown action is refused even to system admins", rootID, Action("domain.explode"), Resource{}, false, "not an admin action"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Authorize(systemAdmins, principal(t, tt.caller), tt.action, tt.res)
			if d.Allowed != tt.allowed || !strings.Contains(d.Reason, tt.contains) {
				t.Fatalf("Authorize = %+v, want allowed=%v with a reason containing %q", d, tt.allowed, tt.contains)
			}
			err := d.Err()
			if tt.allowed != (err == nil) {
				t.Fatalf("Err() = %v for allowed=%v", err, tt.allowed)
			}
			if err != nil {
				if !errors.Is(err, ErrNotAuthorized) {
					t.Errorf("refusal %v does not wrap ErrNotAuthorized", err)
				}
				if s, _ := status.FromError(err); s.Code() != codes.PermissionDenied || s.Message() != d.Reason {
					t.Errorf("status of the refusal = %v %q, want PermissionDenied %q", s.Code(), s.Message(), d.Reason)
				}
			}
		})
	}
}

func TestAuthorizeRefusesACallerWithoutSPIFFEID(t *testing.T) {
	d := Authorize([]string{""}, Principal{}, ActionCARead, Resource{})
	if d.Allowed || !strings.Contains(d.Reason, "no SPIFFE ID") {
		t.Fatalf("Authorize(no caller) = %+v", d)
	}
	if s, _ := status.FromError(d.Err()); s.Code() != codes.PermissionDenied {
		t.Fatalf("code %v", s.Code())
	}
}

func TestEveryActionHasAScope(t *testing.T) {
	for a, s := range actionScopes {
		if s < ScopeSystem || s > ScopeAuthenticated {
			t.Errorf("action %s has scope %d", a, s)
		}
	}
}

func TestEventDomain(t *testing.T) {
	ev := func(kind meshcav1.EventKind, subject string) *meshcav1.Event {
		return &meshcav1.Event{Kind: kind, Subject: subject}
	}
	tests := []struct {
		name string
		ev   *meshcav1.Event
		want string
	}{
		{"a domain change is about that domain", ev(meshcav1.EventKind_EVENT_KIND_CONFIG_CHANGED, "domain/sys.auth"), "sys.auth"},
		{"a service change is about the service's domain", ev(meshcav1.EventKind_EVENT_KIND_CONFIG_CHANGED, "service/sys.auth.k8s"), "sys.auth"},
		{"a provider change concerns no domain", ev(meshcav1.EventKind_EVENT_KIND_CONFIG_CHANGED, "provider/sys.auth.k8s"), ""},
		{"an issuance is about the instance's domain", ev(meshcav1.EventKind_EVENT_KIND_ISSUED, "sys.auth.k8s/sports.api/pod-1.ns"), "sports"},
		{"a compromise is about the instance's domain", ev(meshcav1.EventKind_EVENT_KIND_COMPROMISE_DETECTED, "sys.auth.k8s/sports.api/pod-1"), "sports"},
		{"a token is about its service's domain", ev(meshcav1.EventKind_EVENT_KIND_TOKEN_ISSUED, "sports.api/pod-1"), "sports"},
		{"a revoked manually approved certificate concerns no domain", ev(meshcav1.EventKind_EVENT_KIND_REVOKED, "sports.api"), ""},
		{"a CSR request id shaped like a token subject concerns no domain", ev(meshcav1.EventKind_EVENT_KIND_CSR_SUBMITTED, "sports.api/pod-1"), ""},
		{"a CA event concerns no domain", ev(meshcav1.EventKind_EVENT_KIND_CA_ROTATED, "ca"), ""},
		{"a malformed instance key concerns no domain", ev(meshcav1.EventKind_EVENT_KIND_ISSUED, "p/Sports.api/i"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := EventDomain(tt.ev); got != tt.want {
				t.Fatalf("EventDomain(%v) = %q, want %q", tt.ev, got, tt.want)
			}
		})
	}
}

// BenchmarkAuthorize measures one decision for a domain admin of a domain with 64 admins
// (the caller listed last) against 16 system admins: the cost every admin call and every
// event of a domain admin's stream pays.
func BenchmarkAuthorize(b *testing.B) {
	var system, admins []string
	for i := range 16 {
		system = append(system, fmt.Sprintf("spiffe://mesh.example/ns/ops/sa/root%d", i))
	}
	for i := range 63 {
		admins = append(admins, fmt.Sprintf("sports.admin%d", i))
	}
	admins = append(admins, "sports.ci")
	caller := NewPrincipal(spiffeid.RequireFromString("spiffe://mesh.example/ns/sports/sa/ci"), authzTD)
	res := Resource{Kind: "service", Name: "sports.api", Domain: "sports", DomainAdmins: admins}
	b.ReportAllocs()
	for b.Loop() {
		if !Authorize(system, caller, ActionServiceWrite, res).Allowed {
			b.Fatal("refused")
		}
	}
}
