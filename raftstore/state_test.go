package raftstore

import (
	"errors"
	"fmt"
	"testing"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

func TestStateListsAreSortedAndPaged(t *testing.T) {
	fx := newFSMFixture(t).setup()
	for _, d := range []string{"sports.sub", "sportsx", "sports-b"} {
		fx.must(&meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: d}})
		fx.must(&meshcav1.PutServiceCommand{Service: &meshcav1.Service{Domain: d, Name: "api"}})
	}
	fx.must(&meshcav1.PutServiceCommand{Service: &meshcav1.Service{Domain: fxDomain, Name: "web"}})
	for i := 5; i >= 1; i-- {
		fx.must(fx.register(fmt.Sprintf("pod-%d", i), fmt.Sprintf("a%d", i), fmt.Sprintf("k%d", i)))
	}
	s := fx.state()

	var names []string
	for _, svc := range s.Services(fxDomain) {
		names = append(names, Identity(svc.GetDomain(), svc.GetName()))
	}
	if fmt.Sprint(names) != "[sports.api sports.web]" {
		t.Fatalf("Services(sports) = %v: a domain's services exclude its subdomains' and its look-alikes'", names)
	}
	if n := len(s.Services("")); n != 5 {
		t.Fatalf("Services(\"\") lists %d services, want 5", n)
	}
	var doms []string
	for _, d := range s.Domains() {
		doms = append(doms, d.GetName())
	}
	if fmt.Sprint(doms) != "[sports sports-b sports.sub sportsx]" {
		t.Fatalf("Domains() = %v, want sorted by name", doms)
	}

	var got []string
	cursor := ""
	for pages := 0; ; pages++ {
		page, next := s.Instances(cursor, 2)
		for _, inst := range page {
			got = append(got, inst.GetInstanceId())
		}
		if next == "" {
			break
		}
		if pages > 5 {
			t.Fatal("paging never ends")
		}
		cursor = next
	}
	if fmt.Sprint(got) != "[pod-1 pod-2 pod-3 pod-4 pod-5]" {
		t.Fatalf("instances paged as %v, want each once in order", got)
	}
	if all, next := s.Instances("", 0); len(all) != 5 || next != "" {
		t.Fatalf("Instances(\"\", 0) = %d, %q", len(all), next)
	}

	if _, err := s.Instance(fxProvider, fxDomain, "web", "pod-1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an instance under another identity: %v, want ErrNotFound", err)
	}
	if _, err := s.Cert("dead"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown cert: %v", err)
	}
	if _, err := newFSMFixture(t).state().CA(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("CA before it is set: %v", err)
	}

	fx.must(&meshcav1.SubmitCSRCommand{Id: "r2", Csr: []byte("x"), Submitter: "user.a"})
	fx.must(&meshcav1.SubmitCSRCommand{Id: "r1", Csr: []byte("x"), Submitter: "user.a"})
	fx.must(&meshcav1.DenyCSRCommand{Id: "r2", Approver: "user.b"})
	pending := fx.state().CSRRequests(meshcav1.CSRState_CSR_STATE_PENDING)
	if len(pending) != 1 || pending[0].GetId() != "r1" || len(fx.state().CSRRequests(meshcav1.CSRState_CSR_STATE_UNSPECIFIED)) != 2 {
		t.Fatalf("pending requests = %v", pending)
	}
}

func TestNameRules(t *testing.T) {
	tests := []struct {
		name  string
		check func() error
		valid bool
	}{
		{"a dotted domain is valid", func() error { return validateDottedName("sys.auth") }, true},
		{"a domain with an empty label is invalid", func() error { return validateDottedName("sys..auth") }, false},
		{"an uppercase domain is invalid", func() error { return validateDottedName("Sports") }, false},
		{"an identity splits at its last dot", func() error {
			d, s, err := SplitIdentity("sys.auth.k8s")
			if err == nil && (d != "sys.auth" || s != "k8s") {
				return fmt.Errorf("split into %q %q", d, s)
			}
			return err
		}, true},
		{"an identity needs a domain", func() error { _, _, err := SplitIdentity("api"); return err }, false},
		{"a DNS instance id with dots is valid", func() error { return validateDNSName("pod-1.ns.cluster-a") }, true},
		{"a DNS label ending in a hyphen is invalid", func() error { return validateDNSName("pod-.ns") }, false},
		{"an underscore is no DNS character", func() error { return validateDNSName("pod_1") }, false},
		{"a serial is lowercase hex", func() error { return validateSerial("7fa3") }, true},
		{"a serial with a leading zero is invalid", func() error { return validateSerial("07fa3") }, false},
		{"an uppercase serial is invalid", func() error { return validateSerial("7FA3") }, false},
		{"a serial of 41 digits is invalid", func() error { return validateSerial("1" + fmt.Sprintf("%040d", 0)) }, false},
		{"an id of printable ASCII is valid", func() error { return validateID("a-b_c:1/2") }, true},
		{"an id with a space is invalid", func() error { return validateID("a b") }, false},
		{"a canonical trust domain is valid", func() error { return validateTrustDomain("mesh.example") }, true},
		{"a trust domain as a SPIFFE URI is not canonical", func() error { return validateTrustDomain("spiffe://mesh.example") }, false},
		{"DNS suffixes nest when one ends the other at a dot", func() error {
			if !dnsNamesNest("k8s.mesh.example", "mesh.example") || dnsNamesNest("xmesh.example", "mesh.example") {
				return errors.New("nesting misjudged")
			}
			return nil
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.check(); (err == nil) != tt.valid {
				t.Fatalf("got %v, want valid=%v", err, tt.valid)
			}
		})
	}
}
