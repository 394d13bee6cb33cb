package controlplane

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// Every mutation of the admin API refused to a caller that is an admin of nothing, with
// PERMISSION_DENIED naming the caller and the rule, and nothing reaches the log.
func TestAdminRefusesEveryMutationToANonAdmin(t *testing.T) {
	e := newAdminEnv(t)
	e.seed()
	e.register("sports", "api", "pod-1")
	root := e.as(rootAdmin)
	csr, err := root.SubmitCSR(e.ctx(), &meshcav1.SubmitCSRRequest{Csr: newCSR(t, "web.example"), Spec: []byte(`{"common_name":"web.example"}`)})
	ok(t, err)
	c := e.as(plainCaller)
	ctx := e.ctx()
	pub := publicKeyDER(t)
	mutations := []struct {
		name string
		call func() error
		want string
	}{
		{"create a domain", func() error {
			_, err := c.PutDomain(ctx, &meshcav1.PutDomainRequest{Domain: &meshcav1.Domain{Name: "evil"}, Mode: meshcav1.PutMode_PUT_MODE_CREATE})
			return err
		}, "is not a system admin"},
		{"upsert a domain", func() error {
			_, err := c.PutDomain(ctx, &meshcav1.PutDomainRequest{Domain: &meshcav1.Domain{Name: "sports", Admins: []string{plainCaller}}})
			return err
		}, "is not an admin of domain sports"},
		{"delete a domain", func() error {
			_, err := c.DeleteDomain(ctx, &meshcav1.DeleteDomainRequest{Name: "news"})
			return err
		}, "is not a system admin"},
		{"add domain admins", func() error {
			_, err := c.AddDomainAdmins(ctx, &meshcav1.DomainAdminsRequest{Name: "sports", Admins: []string{plainCaller}})
			return err
		}, "is not an admin of domain sports"},
		{"remove domain admins", func() error {
			_, err := c.RemoveDomainAdmins(ctx, &meshcav1.DomainAdminsRequest{Name: "sports", Admins: []string{sportsAdmin}})
			return err
		}, "is not an admin of domain sports"},
		{"put a service", func() error {
			_, err := c.PutService(ctx, &meshcav1.PutServiceRequest{Service: &meshcav1.Service{Domain: "sports", Name: "db"}})
			return err
		}, "is not an admin of domain sports"},
		{"delete a service", func() error {
			_, err := c.DeleteService(ctx, &meshcav1.DeleteServiceRequest{Identity: "sports.api"})
			return err
		}, "is not an admin of domain sports"},
		{"add a service key", func() error {
			_, err := c.AddServiceKey(ctx, &meshcav1.AddServiceKeyRequest{Identity: "sports.api", Key: &meshcav1.ServiceKey{Version: "v1", PublicKey: pub}})
			return err
		}, "is not an admin of domain sports"},
		{"remove a service key", func() error {
			_, err := c.RemoveServiceKey(ctx, &meshcav1.RemoveServiceKeyRequest{Identity: "sports.api", Version: "v1"})
			return err
		}, "is not an admin of domain sports"},
		{"add a launch grant", func() error {
			_, err := c.AddLaunchGrant(ctx, &meshcav1.LaunchGrantRequest{Identity: "sports.api", Pattern: "sys.auth.*"})
			return err
		}, "is not an admin of domain sports"},
		{"remove a launch grant", func() error {
			_, err := c.RemoveLaunchGrant(ctx, &meshcav1.LaunchGrantRequest{Identity: "sports.api", Pattern: "sys.auth.k8s"})
			return err
		}, "is not an admin of domain sports"},
		{"put a provider", func() error {
			_, err := c.PutProvider(ctx, &meshcav1.PutProviderRequest{Provider: &meshcav1.Provider{Name: "sys.auth.evil", DnsSuffix: "evil.example"}})
			return err
		}, "is not a system admin"},
		{"delete a provider", func() error {
			_, err := c.DeleteProvider(ctx, &meshcav1.DeleteProviderRequest{Name: "sys.auth.k8s"})
			return err
		}, "is not a system admin"},
		{"disable a provider", func() error {
			_, err := c.SetProviderEnabled(ctx, &meshcav1.SetProviderEnabledRequest{Name: "sys.auth.k8s"})
			return err
		}, "is not a system admin"},
		{"revoke an instance", func() error {
			_, err := c.RevokeInstance(ctx, &meshcav1.RevokeInstanceRequest{Provider: "sys.auth.k8s", InstanceId: "pod-1"})
			return err
		}, "is not an admin of domain sports"},
		{"issue a register token", func() error {
			_, err := c.IssueRegisterToken(ctx, &meshcav1.IssueRegisterTokenRequest{Domain: "sports", Service: "api", InstanceId: "pod-2"})
			return err
		}, "is not an admin of domain sports"},
		{"submit a CSR", func() error {
			_, err := c.SubmitCSR(ctx, &meshcav1.SubmitCSRRequest{Csr: newCSR(t, "x.example"), Spec: []byte(`{"common_name":"x.example"}`)})
			return err
		}, "nor an admin of any domain"},
		{"approve a CSR", func() error {
			_, err := c.ApproveCSR(ctx, &meshcav1.ApproveCSRRequest{Id: csr.GetId()})
			return err
		}, "is not a system admin"},
		{"deny a CSR", func() error {
			_, err := c.DenyCSR(ctx, &meshcav1.DenyCSRRequest{Id: csr.GetId(), Reason: "no"})
			return err
		}, "is not a system admin"},
		{"join a node", func() error {
			_, err := c.JoinNode(ctx, &meshcav1.JoinNodeRequest{Id: "n9", Address: "127.0.0.1:1"})
			return err
		}, "is not a system admin"},
		{"remove a node", func() error {
			_, err := c.RemoveNode(ctx, &meshcav1.RemoveNodeRequest{Id: "n1"})
			return err
		}, "is not a system admin"},
		{"transfer leadership", func() error {
			_, err := c.TransferLeader(ctx, &meshcav1.TransferLeaderRequest{})
			return err
		}, "is not a system admin"},
		{"take a snapshot", func() error {
			_, err := c.TakeSnapshot(ctx, &meshcav1.TakeSnapshotRequest{})
			return err
		}, "is not a system admin"},
	}
	before := e.s.Store().State().AppliedIndex()
	for _, m := range mutations {
		t.Run(m.name, func(t *testing.T) {
			wantStatus(t, m.call(), codes.PermissionDenied, "caller "+plainCaller+" ", m.want)
		})
	}
	if after := e.s.Store().State().AppliedIndex(); after != before {
		t.Fatalf("refused calls changed the log: applied index %d → %d", before, after)
	}
	if e.tokens.count() != 0 {
		t.Fatalf("a refused token request was signed: %v", e.tokens.signed)
	}
}

// A domain admin manages its own domain's services, keys, grants, instances and tokens, and
// is refused on another domain's.
func TestAdminDomainAdminManagesOnlyItsOwnDomain(t *testing.T) {
	e := newAdminEnv(t)
	e.seed()
	e.register("sports", "api", "pod-1")
	e.register("news", "web", "pod-9")
	s := e.as(sportsAdmin)
	ctx := e.ctx()

	svc, err := s.PutService(ctx, &meshcav1.PutServiceRequest{Service: &meshcav1.Service{Domain: "sports", Name: "db"}, Mode: meshcav1.PutMode_PUT_MODE_CREATE})
	ok(t, err)
	if svc.GetDomain() != "sports" || svc.GetCreated() == 0 {
		t.Fatalf("PutService = %v", svc)
	}
	svc, err = s.AddServiceKey(ctx, &meshcav1.AddServiceKeyRequest{Identity: "sports.db", Key: &meshcav1.ServiceKey{Version: "v1", PublicKey: publicKeyDER(t)}})
	ok(t, err)
	if len(svc.GetKeys()) != 1 || svc.GetKeys()[0].GetVersion() != "v1" {
		t.Fatalf("AddServiceKey = %v", svc)
	}
	svc, err = s.AddLaunchGrant(ctx, &meshcav1.LaunchGrantRequest{Identity: "sports.db", Pattern: "sys.auth.aws.*"})
	ok(t, err)
	svc, err = s.AddLaunchGrant(ctx, &meshcav1.LaunchGrantRequest{Identity: "sports.db", Pattern: "sys.auth.k8s"})
	ok(t, err)
	if strings.Join(svc.GetLaunchGrants(), ",") != "sys.auth.aws.*,sys.auth.k8s" {
		t.Fatalf("grants = %v", svc.GetLaunchGrants())
	}
	svc, err = s.RemoveLaunchGrant(ctx, &meshcav1.LaunchGrantRequest{Identity: "sports.db", Pattern: "sys.auth.aws.*"})
	ok(t, err)
	svc, err = s.RemoveServiceKey(ctx, &meshcav1.RemoveServiceKeyRequest{Identity: "sports.db", Version: "v1"})
	ok(t, err)
	if len(svc.GetKeys()) != 0 || strings.Join(svc.GetLaunchGrants(), ",") != "sys.auth.k8s" {
		t.Fatalf("after removals: %v", svc)
	}
	tok, err := s.IssueRegisterToken(ctx, &meshcav1.IssueRegisterTokenRequest{Domain: "sports", Service: "db", InstanceId: "vm-7.example", TtlSeconds: 600})
	ok(t, err)
	if rec, err := e.s.Store().State().Token(tok.GetRecord().GetJti()); err != nil || rec.GetInstanceId() != "vm-7.example" || rec.GetIssuedBy() != sportsAdmin {
		t.Fatalf("token record %v, %v", rec, err)
	}
	if tok.GetToken() != "test-token."+tok.GetRecord().GetJti() {
		t.Fatalf("token %q is not the signer's for jti %s", tok.GetToken(), tok.GetRecord().GetJti())
	}
	if got := tok.GetRecord().GetExpires() - tok.GetRecord().GetIssued(); got != int64(600*time.Second) {
		t.Fatalf("token lifetime %v, want 10m", time.Duration(got))
	}
	inst, err := s.GetInstance(ctx, &meshcav1.GetInstanceRequest{Provider: "sys.auth.k8s", InstanceId: "pod-1"})
	ok(t, err)
	if inst.GetDomain() != "sports" {
		t.Fatalf("GetInstance = %v", inst)
	}
	list, err := s.ListInstances(ctx, &meshcav1.ListInstancesRequest{})
	ok(t, err)
	if len(list.GetInstances()) != 1 || list.GetInstances()[0].GetInstanceId() != "pod-1" {
		t.Fatalf("the sports admin lists %v, want only its pod-1", list.GetInstances())
	}
	doms, err := s.ListDomains(ctx, &meshcav1.ListDomainsRequest{})
	ok(t, err)
	if len(doms.GetDomains()) != 1 || doms.GetDomains()[0].GetName() != "sports" {
		t.Fatalf("the sports admin lists domains %v", doms.GetDomains())
	}
	svcs, err := s.ListServices(ctx, &meshcav1.ListServicesRequest{})
	ok(t, err)
	for _, x := range svcs.GetServices() {
		if x.GetDomain() != "sports" {
			t.Fatalf("the sports admin lists service %s.%s", x.GetDomain(), x.GetName())
		}
	}
	dom, err := s.AddDomainAdmins(ctx, &meshcav1.DomainAdminsRequest{Name: "sports", Admins: []string{"sports.ci"}})
	ok(t, err)
	if strings.Join(dom.GetAdmins(), ",") != sportsAdmin+",sports.ci" {
		t.Fatalf("admins %v", dom.GetAdmins())
	}
	inst, err = s.RevokeInstance(ctx, &meshcav1.RevokeInstanceRequest{Provider: "sys.auth.k8s", InstanceId: "pod-1", Reason: meshcav1.RevocationReason_REVOCATION_REASON_KEY_COMPROMISE})
	ok(t, err)
	if !inst.GetRevoked() || !strings.Contains(inst.GetRevokeReason(), "revoked by "+sportsAdmin) {
		t.Fatalf("RevokeInstance = %v", inst)
	}

	// The other domain.
	const other = "caller " + sportsAdmin + " is not an admin of domain news"
	for name, call := range map[string]func() error{
		"put a service": func() error {
			_, err := s.PutService(ctx, &meshcav1.PutServiceRequest{Service: &meshcav1.Service{Domain: "news", Name: "api"}})
			return err
		},
		"add a grant": func() error {
			_, err := s.AddLaunchGrant(ctx, &meshcav1.LaunchGrantRequest{Identity: "news.web", Pattern: "sys.auth.k8s"})
			return err
		},
		"issue a token": func() error {
			_, err := s.IssueRegisterToken(ctx, &meshcav1.IssueRegisterTokenRequest{Domain: "news", Service: "web", InstanceId: "x"})
			return err
		},
		"revoke an instance": func() error {
			_, err := s.RevokeInstance(ctx, &meshcav1.RevokeInstanceRequest{Provider: "sys.auth.k8s", InstanceId: "pod-9"})
			return err
		},
		"read an instance": func() error {
			_, err := s.GetInstance(ctx, &meshcav1.GetInstanceRequest{Provider: "sys.auth.k8s", InstanceId: "pod-9"})
			return err
		},
		"list a domain's services": func() error {
			_, err := s.ListServices(ctx, &meshcav1.ListServicesRequest{Domain: "news"})
			return err
		},
		"read the domain": func() error {
			_, err := s.GetDomain(ctx, &meshcav1.GetDomainRequest{Name: "news"})
			return err
		},
	} {
		t.Run("refused: "+name, func(t *testing.T) { wantStatus(t, call(), codes.PermissionDenied, other) })
	}
	if inst, err := e.s.Store().State().InstanceByID("sys.auth.k8s", "pod-9"); err != nil || inst.GetRevoked() {
		t.Fatalf("news instance after refusals: %v, %v", inst, err)
	}
}

// Refusals decided by the admin API and by the state machine name the request field and the
// rule.
func TestAdminRefusalsNameTheFieldAndTheRule(t *testing.T) {
	e := newAdminEnv(t)
	e.seed()
	r := e.as(rootAdmin)
	ctx := e.ctx()
	tests := []struct {
		name  string
		call  func() error
		code  codes.Code
		parts []string
	}{
		{"an invalid domain name", func() error {
			_, err := r.PutDomain(ctx, &meshcav1.PutDomainRequest{Domain: &meshcav1.Domain{Name: "Sports"}})
			return err
		}, codes.InvalidArgument, []string{"domain.name: ", `label "Sports"`}},
		{"an admin entry that is no principal", func() error {
			_, err := r.PutDomain(ctx, &meshcav1.PutDomainRequest{Domain: &meshcav1.Domain{Name: "weather", Admins: []string{"bob"}}})
			return err
		}, codes.InvalidArgument, []string{"domain.admins[0]: ", `"bob" is neither a SPIFFE ID nor a <domain>.<service> principal`}},
		{"a domain created twice", func() error {
			_, err := r.PutDomain(ctx, &meshcav1.PutDomainRequest{Domain: &meshcav1.Domain{Name: "sports"}, Mode: meshcav1.PutMode_PUT_MODE_CREATE})
			return err
		}, codes.AlreadyExists, []string{"domain", "sports"}},
		{"a domain with services deleted", func() error {
			_, err := r.DeleteDomain(ctx, &meshcav1.DeleteDomainRequest{Name: "sports"})
			return err
		}, codes.FailedPrecondition, []string{"name: ", "still has 1 services"}},
		{"a service in an unknown domain", func() error {
			_, err := r.PutService(ctx, &meshcav1.PutServiceRequest{Service: &meshcav1.Service{Domain: "nowhere", Name: "x"}})
			return err
		}, codes.NotFound, []string{"service.domain: ", `"nowhere" does not exist`}},
		{"a grant pattern with bad syntax", func() error {
			_, err := r.AddLaunchGrant(ctx, &meshcav1.LaunchGrantRequest{Identity: "sports.api", Pattern: "*"})
			return err
		}, codes.InvalidArgument, []string{"pattern: ", "wildcard must follow a provider name"}},
		{"a grant to an unknown provider", func() error {
			_, err := r.AddLaunchGrant(ctx, &meshcav1.LaunchGrantRequest{Identity: "sports.api", Pattern: "sys.auth.nope"})
			return err
		}, codes.FailedPrecondition, []string{"pattern: ", `provider "sys.auth.nope" is not registered`}},
		{"a service put with a grant to an unknown provider", func() error {
			_, err := r.PutService(ctx, &meshcav1.PutServiceRequest{Service: &meshcav1.Service{Domain: "sports", Name: "x", LaunchGrants: []string{"sys.auth.k8s", "sys.auth.nope"}}})
			return err
		}, codes.FailedPrecondition, []string{"service.launch_grants[1]: ", `"sys.auth.nope" is not registered`}},
		{"a service key that is no public key", func() error {
			_, err := r.AddServiceKey(ctx, &meshcav1.AddServiceKeyRequest{Identity: "sports.api", Key: &meshcav1.ServiceKey{Version: "v1", PublicKey: []byte("nope")}})
			return err
		}, codes.InvalidArgument, []string{"key.public_key: not a DER SubjectPublicKeyInfo"}},
		{"a provider whose DNS suffix nests with another's", func() error {
			_, err := r.PutProvider(ctx, &meshcav1.PutProviderRequest{Provider: &meshcav1.Provider{Name: "sys.auth.k8s2", DnsSuffix: "k8s.mesh.test"}})
			return err
		}, codes.AlreadyExists, []string{"provider.dns_suffix: ", `"sys.auth.k8s"`}},
		{"a provider with a plain-HTTP confirm endpoint", func() error {
			_, err := r.PutProvider(ctx, &meshcav1.PutProviderRequest{Provider: &meshcav1.Provider{Name: "sys.auth.gcp", DnsSuffix: "gcp.example", ConfirmEndpoint: "http://gcp.example/confirm"}})
			return err
		}, codes.InvalidArgument, []string{"provider.confirm_endpoint: ", "must be an https:// URL"}},
		{"an unknown provider read", func() error {
			_, err := r.GetProvider(ctx, &meshcav1.GetProviderRequest{Name: "sys.auth.nope"})
			return err
		}, codes.NotFound, []string{"name: ", `provider "sys.auth.nope" does not exist`}},
		{"an unknown provider enabled", func() error {
			_, err := r.SetProviderEnabled(ctx, &meshcav1.SetProviderEnabledRequest{Name: "sys.auth.nope", Enabled: true})
			return err
		}, codes.NotFound, []string{"name: ", `"sys.auth.nope" does not exist`}},
		{"an unknown instance", func() error {
			_, err := r.RevokeInstance(ctx, &meshcav1.RevokeInstanceRequest{Provider: "sys.auth.k8s", InstanceId: "ghost"})
			return err
		}, codes.NotFound, []string{"instance_id: ", `has no instance "ghost"`}},
		{"a token for an unknown service", func() error {
			_, err := r.IssueRegisterToken(ctx, &meshcav1.IssueRegisterTokenRequest{Domain: "sports", Service: "nope", InstanceId: "x"})
			return err
		}, codes.NotFound, []string{"service: ", `"sports.nope" does not exist`}},
		{"a token with an invalid instance id", func() error {
			_, err := r.IssueRegisterToken(ctx, &meshcav1.IssueRegisterTokenRequest{Domain: "sports", Service: "api", InstanceId: "Pod_1"})
			return err
		}, codes.InvalidArgument, []string{"instance_id: invalid name", "Pod_1"}},
		{"a token that lives too long", func() error {
			_, err := r.IssueRegisterToken(ctx, &meshcav1.IssueRegisterTokenRequest{Domain: "sports", Service: "api", InstanceId: "x", TtlSeconds: 8 * 24 * 3600})
			return err
		}, codes.InvalidArgument, []string{"ttl_seconds: "}},
		{"a service filter without a domain", func() error {
			_, err := r.ListInstances(ctx, &meshcav1.ListInstancesRequest{Service: "api"})
			return err
		}, codes.InvalidArgument, []string{"domain: required with service"}},
		{"a CSR spec with an unknown key", func() error {
			_, err := r.SubmitCSR(ctx, &meshcav1.SubmitCSRRequest{Csr: newCSR(t, "a.example"), Spec: []byte(`{"common_name":"a.example","lifetim":3}`)})
			return err
		}, codes.InvalidArgument, []string{"spec", "lifetim"}},
		{"a CSR that is no CSR", func() error {
			_, err := r.SubmitCSR(ctx, &meshcav1.SubmitCSRRequest{Csr: []byte("hello"), Spec: []byte(`{"common_name":"a.example"}`)})
			return err
		}, codes.InvalidArgument, []string{"csr: "}},
		{"a node joined without an address", func() error {
			_, err := r.JoinNode(ctx, &meshcav1.JoinNodeRequest{Id: "n2"})
			return err
		}, codes.InvalidArgument, []string{"address: required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { wantStatus(t, tt.call(), tt.code, tt.parts...) })
	}
}

// A caller without a client certificate, or with one the CA did not issue, is not
// authenticated; a revoked one is refused.
func TestAdminAuthenticatesCallersByClientCertificate(t *testing.T) {
	e := newAdminEnv(t)
	ctx := e.ctx()
	_, err := e.dialAdmin(e.addr2, nil).ListDomains(ctx, &meshcav1.ListDomainsRequest{})
	wantStatus(t, err, codes.Unauthenticated, "client certificate")

	// A certificate for a system admin's SPIFFE ID, self-signed: not ours.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: bigSerial(t, "1234"), Subject: pkix.Name{CommonName: "forged"},
		URIs: e.clientCert(rootAdmin).Leaf.URIs, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	ok(t, err)
	forged := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	_, err = e.dialAdmin(e.addr2, forged).ListDomains(ctx, &meshcav1.ListDomainsRequest{})
	wantStatus(t, err, codes.Unauthenticated, "does not verify to the trust bundle")

	// A system admin's certificate, revoked.
	cert := e.clientCert(rootAdmin)
	c := e.dialAdmin(e.addr2, cert)
	if _, err := c.ListDomains(ctx, &meshcav1.ListDomainsRequest{}); err != nil {
		t.Fatal(err)
	}
	// The log knows the certificate's serial (as an instance's), and the instance is revoked.
	e.seed()
	serial := cert.Leaf.SerialNumber.Text(16)
	e.registerSerial("sports", "api", "adm-1", serial)
	if _, err := e.as(rootAdmin).RevokeInstance(ctx, &meshcav1.RevokeInstanceRequest{Provider: "sys.auth.k8s", InstanceId: "adm-1"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.ListDomains(ctx, &meshcav1.ListDomainsRequest{})
	wantStatus(t, err, codes.PermissionDenied, "serial "+serial+" is revoked")
}

// newCSR makes a PEM CSR for a fresh P-256 key with common name and DNS name cn.
func newCSR(t testing.TB, cn string) []byte {
	t.Helper()
	return csrFor(t, newKey(t), cn)
}

// csrFor makes a PEM CSR for key with common name and DNS name cn.
func csrFor(t testing.TB, key crypto.Signer, cn string) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, DNSNames: []string{cn}}, key)
	ok(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// publicKeyDER is a fresh P-256 public key as a DER SubjectPublicKeyInfo.
func publicKeyDER(t testing.TB) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ok(t, err)
	v, err := x509.MarshalPKIXPublicKey(key.Public())
	ok(t, err)
	return v
}

// The server wires the admin API into its own gRPC port, with the system admins of its config.
func TestAdminIsServedOnTheServerPort(t *testing.T) {
	e := newAdminEnv(t)
	c := e.dialAdmin(e.s.GRPCAddr(), e.clientCert(robotAdmin))
	ctx := e.ctx()
	providers, err := c.ListProviders(ctx, &meshcav1.ListProvidersRequest{})
	ok(t, err)
	if len(providers.GetProviders()) != 1 || providers.GetProviders()[0].GetName() != "sys.auth.k8s" {
		t.Fatalf("providers %v", providers.GetProviders())
	}
	if _, err := c.PutDomain(ctx, &meshcav1.PutDomainRequest{Domain: &meshcav1.Domain{Name: "sports", Admins: []string{sportsAdmin}}}); err != nil {
		t.Fatal(err)
	}
	_, err = e.dialAdmin(e.s.GRPCAddr(), e.clientCert(newsAdmin)).DeleteDomain(ctx, &meshcav1.DeleteDomainRequest{Name: "sports"})
	wantStatus(t, err, codes.PermissionDenied, "caller "+newsAdmin+" is not a system admin")
}

// ListInstances pages through the instances that match its filters, each exactly once; a
// revoked instance cannot be revoked again.
func TestAdminListInstancesPagesThroughTheMatches(t *testing.T) {
	e := newAdminEnv(t)
	e.seed()
	for _, id := range []string{"a-1", "a-2", "a-3", "a-4", "a-5"} {
		e.register("sports", "api", id)
	}
	e.register("news", "web", "n-1")
	root := e.as(rootAdmin)
	ctx := e.ctx()
	if _, err := root.RevokeInstance(ctx, &meshcav1.RevokeInstanceRequest{Provider: "sys.auth.k8s", InstanceId: "a-3"}); err != nil {
		t.Fatal(err)
	}
	_, err := root.RevokeInstance(ctx, &meshcav1.RevokeInstanceRequest{Provider: "sys.auth.k8s", InstanceId: "a-3"})
	wantStatus(t, err, codes.FailedPrecondition, "instance_id: ", `instance "a-3" of provider "sys.auth.k8s" is already revoked`)

	list := func(req *meshcav1.ListInstancesRequest) (ids []string, pages int) {
		t.Helper()
		for {
			page, err := root.ListInstances(ctx, req)
			ok(t, err)
			pages++
			for _, i := range page.GetInstances() {
				ids = append(ids, i.GetInstanceId())
			}
			if page.GetNextPageToken() == "" {
				return ids, pages
			}
			req.PageToken = page.GetNextPageToken()
		}
	}
	ids, pages := list(&meshcav1.ListInstancesRequest{Domain: "sports", Service: "api", PageSize: 2})
	if strings.Join(ids, ",") != "a-1,a-2,a-3,a-4,a-5" || pages != 3 {
		t.Fatalf("sports.api instances %v in %d pages, want a-1..a-5 in 3", ids, pages)
	}
	ids, _ = list(&meshcav1.ListInstancesRequest{Revoked: meshcav1.RevokedFilter_REVOKED_FILTER_ACTIVE, PageSize: 2})
	if strings.Join(ids, ",") != "a-1,a-2,a-4,a-5,n-1" {
		t.Fatalf("active instances %v", ids)
	}
	ids, _ = list(&meshcav1.ListInstancesRequest{Revoked: meshcav1.RevokedFilter_REVOKED_FILTER_REVOKED})
	if strings.Join(ids, ",") != "a-3" {
		t.Fatalf("revoked instances %v", ids)
	}
	ids, _ = list(&meshcav1.ListInstancesRequest{Provider: "sys.auth.other"})
	if len(ids) != 0 {
		t.Fatalf("another provider's instances %v", ids)
	}
	_, err = root.ListInstances(ctx, &meshcav1.ListInstancesRequest{PageSize: 5000})
	wantStatus(t, err, codes.InvalidArgument, "page_size: 5000 is outside 0..1000")
}
