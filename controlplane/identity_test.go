package controlplane

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
)

// identityFixture is a single-node server with providers that behave in every way the
// refusals need, and services granting them launch.
type identityFixture struct {
	*testServer
	main *testProvider
	td   spiffeid.TrustDomain
}

// Providers of the fixture and their DNS suffixes.
const (
	provMain     = "sys.auth.test"
	provAWSEast  = "sys.auth.aws.us-east-1"
	provAWSX     = "sys.auth.awsx"
	provOff      = "sys.auth.off"
	provDown     = "sys.auth.down"
	provRogue    = "sys.auth.rogue"
	provImposter = "sys.auth.imposter"
)

func newIdentityFixture(t *testing.T, mutate func(*Config)) *identityFixture {
	t.Helper()
	main := listenProvider(t)
	ts := startServer(t, func(c *Config) {
		// The main provider is seeded from the config, as an operator would.
		c.Providers = []ProviderConfig{{Name: provMain, DNSSuffix: testSuffix, ConfirmEndpoint: main.url}}
		c.Limits.IssuePerIdentityPerMinute = 5
		if mutate != nil {
			mutate(c)
		}
	})
	f := &identityFixture{testServer: ts, main: main, td: spiffeid.RequireTrustDomainFromString(testTD)}
	waitFor(t, "seeded provider", func() error { _, err := ts.s.Store().State().Provider(provMain); return err })
	main.serve(t, serverSVID(t, ts.iss, f.serviceID(provMain)), bundleSource{ts.s})

	east := listenProvider(t)
	east.serve(t, serverSVID(t, ts.iss, f.serviceID(provAWSEast)), bundleSource{ts.s})
	ts.addProvider(provAWSEast, "use1.aws.mesh.test", east.url)
	ts.addProvider(provAWSX, "awsx.mesh.test", east.url)
	ts.addProvider(provOff, "off.mesh.test", main.url)
	ts.apply(&meshcav1.Command{Command: &meshcav1.Command_SetProviderEnabled{SetProviderEnabled: &meshcav1.SetProviderEnabledCommand{Name: provOff}}})

	// Unreachable: a port that was bound and closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addProvider(provDown, "down.mesh.test", "https://"+ln.Addr().String()+"/confirm")
	ln.Close()

	// Rogue: the right SPIFFE ID, but a certificate from another CA.
	other, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: f.td, RootKey: mustSoftware(t), Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	rogue := listenProvider(t)
	rogue.serve(t, serverSVID(t, other, f.serviceID(provRogue)), bundleSource{ts.s})
	ts.addProvider(provRogue, "rogue.mesh.test", rogue.url)

	// Imposter: a certificate from this CA, but issued to another identity.
	imp := listenProvider(t)
	imp.serve(t, serverSVID(t, ts.iss, f.serviceID(provMain)), bundleSource{ts.s})
	ts.addProvider(provImposter, "imposter.mesh.test", imp.url)

	ts.addService("sports", "api", provMain, provOff, provDown, provRogue, provImposter)
	ts.addService("sports", "web", provMain)
	ts.addService("sports", "nogrant", "sys.auth.other")
	ts.addService("cloud", "app", "sys.auth.aws.*")
	return f
}

func mustSoftware(t testing.TB) *signer.Software {
	t.Helper()
	k, err := signer.GenerateSoftware(signer.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (f *identityFixture) serviceID(identity string) spiffeid.ID {
	id, err := ServiceSPIFFEID(f.td, identity)
	if err != nil {
		panic(err)
	}
	return id
}

// register registers a workload through the main provider and returns its response.
func (f *identityFixture) register(t *testing.T, w *testWorkload) *meshcav1.IdentityResponse {
	t.Helper()
	resp, err := f.client().Register(context.Background(), w.registerReq(t, provMain))
	if err != nil {
		t.Fatalf("register %s: %v", w.id, err)
	}
	return resp
}

func TestRegisterAndRefresh(t *testing.T) {
	f := newIdentityFixture(t, nil)
	ctx := context.Background()
	w := newWorkload(t, "sports", "api", testSuffix, "pod-1.ns.cluster-a")
	req := w.registerReq(t, provMain)
	req.Hostname = "host-1"
	req.ServerAuth = true
	resp, err := f.client().Register(ctx, req)
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	verifyIssued(t, f.testServer, resp, w)
	leaf := parseLeaf(t, resp)
	if got := leaf.ExtKeyUsage; len(got) != 2 {
		t.Errorf("server_auth asked: ext key usages %v, want client and server", got)
	}
	if resp.GetInstanceId() != w.id || resp.GetSerial() != serialOf(leaf) {
		t.Errorf("response instance %q serial %q, want %q %q", resp.GetInstanceId(), resp.GetSerial(), w.id, serialOf(leaf))
	}
	seen := f.main.requests()
	last := seen[len(seen)-1]
	if last.Operation != "register" || last.Provider != provMain || last.Domain != "sports" || last.Service != "api" ||
		last.InstanceID != w.id || string(last.AttestationData) != "doc:"+w.id || last.Hostname != "host-1" ||
		last.ClientAddr != "127.0.0.1" || len(last.SANs.DNS) != 2 || last.TTLSeconds != int64((24*time.Hour)/time.Second) {
		t.Errorf("provider saw %s", mustJSON(last))
	}
	inst, err := f.s.Store().State().Instance(provMain, "sports", "api", w.id)
	if err != nil || inst.GetCurrentSerial() != resp.GetSerial() || inst.GetHostname() != "host-1" {
		t.Fatalf("instance record %v, %v", inst, err)
	}

	// Refresh with the certificate, three times, each with a new key.
	cert := w.tlsCert(t, resp)
	for i := range 3 {
		w.key = newKey(t)
		next, err := f.clientWith(cert).Refresh(ctx, &meshcav1.RefreshRequest{Csr: w.csr(t, nil)})
		if err != nil {
			t.Fatalf("refresh %d: %v", i, err)
		}
		verifyIssued(t, f.testServer, next, w)
		inst, _ := f.s.Store().State().Instance(provMain, "sports", "api", w.id)
		if inst.GetCurrentSerial() != next.GetSerial() || inst.GetPreviousSerial() != serialOf(cert.Leaf) {
			t.Fatalf("refresh %d: instance serials current %s previous %s, want %s %s", i, inst.GetCurrentSerial(), inst.GetPreviousSerial(), next.GetSerial(), serialOf(cert.Leaf))
		}
		cert = w.tlsCert(t, next)
	}
}

// verifyIssued checks an issued certificate: it verifies to the bundle in the response, which
// is the server's, and names the workload.
func verifyIssued(t *testing.T, ts *testServer, resp *meshcav1.IdentityResponse, w *testWorkload) {
	t.Helper()
	certs, err := ca.ParseCertificatesPEM([]byte(resp.GetCertificate() + resp.GetChain()))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := ca.ParseBundlePEM(spiffeid.RequireTrustDomainFromString(testTD), []byte(resp.GetBundle()))
	if err != nil {
		t.Fatal(err)
	}
	if !bundle.Equal(ts.s.Bundle()) {
		t.Fatal("response bundle is not the server's")
	}
	id, _, err := x509svid.Verify(certs, bundle)
	if err != nil {
		t.Fatalf("issued certificate does not verify: %v", err)
	}
	if id != w.names.SPIFFEID || resp.GetSpiffeId() != id.String() {
		t.Fatalf("SPIFFE ID %s (response %s), want %s", id, resp.GetSpiffeId(), w.names.SPIFFEID)
	}
	if certs[0].Subject.CommonName != w.names.CommonName {
		t.Fatalf("CN %q, want %q", certs[0].Subject.CommonName, w.names.CommonName)
	}
}

// TestIdentityRefusals pins down every refusal of the identity API over real gRPC: the code
// and the message, which names the field and the rule.
func TestIdentityRefusals(t *testing.T) {
	f := newIdentityFixture(t, nil)
	ctx := context.Background()
	n := 0
	fresh := func(domain, service, suffix string) *testWorkload {
		n++
		return newWorkload(t, domain, service, suffix, fmt.Sprintf("i-%d.refusals", n))
	}
	register := func(t *testing.T, provider string, w *testWorkload, mutate func(*x509.CertificateRequest)) error {
		req := w.registerReq(t, provider)
		req.Csr = w.csr(t, mutate)
		_, err := f.client().Register(ctx, req)
		return err
	}
	registered := func(t *testing.T) (*testWorkload, *meshcav1.IdentityResponse) {
		w := fresh("sports", "api", testSuffix)
		return w, f.register(t, w)
	}

	cases := []struct {
		name     string
		call     func(t *testing.T) error
		wantCode codes.Code
		wantMsg  string
	}{
		{"unknown provider is refused", func(t *testing.T) error {
			return register(t, "sys.auth.nope", fresh("sports", "api", testSuffix), nil)
		}, codes.NotFound, `provider: "sys.auth.nope" is not a registered provider`},
		{"disabled provider is refused", func(t *testing.T) error {
			return register(t, provOff, fresh("sports", "api", "off.mesh.test"), nil)
		}, codes.PermissionDenied, `provider: "sys.auth.off" is disabled`},
		{"service without a grant matching the provider is refused", func(t *testing.T) error {
			return register(t, provMain, fresh("sports", "nogrant", testSuffix), nil)
		}, codes.PermissionDenied, `provider: service "sports.nogrant" grants launch to no pattern matching "sys.auth.test"`},
		{"wildcard grant sys.auth.aws.* does not admit sys.auth.awsx", func(t *testing.T) error {
			return register(t, provAWSX, fresh("cloud", "app", "awsx.mesh.test"), nil)
		}, codes.PermissionDenied, `provider: service "cloud.app" grants launch to no pattern matching "sys.auth.awsx" (grants: sys.auth.aws.*)`},
		{"unknown service is refused", func(t *testing.T) error {
			return register(t, provMain, fresh("sports", "ghost", testSuffix), nil)
		}, codes.NotFound, `service: "sports.ghost" is not a registered service`},
		{"CSR with a bad signature is refused", func(t *testing.T) error {
			w := fresh("sports", "api", testSuffix)
			req := w.registerReq(t, provMain)
			req.Csr = corruptSignature(t, req.Csr)
			_, err := f.client().Register(ctx, req)
			return err
		}, codes.InvalidArgument, "csr: signature does not verify"},
		{"CSR CN other than the identity is refused", func(t *testing.T) error {
			return register(t, provMain, fresh("sports", "api", testSuffix), func(r *x509.CertificateRequest) { r.Subject.CommonName = "sports.admin" })
		}, codes.InvalidArgument, `csr: subject CN "sports.admin" is not "sports.api"`},
		{"CSR with an extra SAN is refused", func(t *testing.T) error {
			return register(t, provMain, fresh("sports", "api", testSuffix), func(r *x509.CertificateRequest) {
				r.DNSNames = append(r.DNSNames, "extra."+testSuffix)
			})
		}, codes.InvalidArgument, `csr: DNS SAN "extra.test.mesh.test" is neither the service name`},
		{"CSR DNS SAN outside the provider suffix is refused", func(t *testing.T) error {
			return register(t, provMain, fresh("sports", "api", testSuffix), func(r *x509.CertificateRequest) {
				r.DNSNames = append(r.DNSNames, "x.evil.com")
			})
		}, codes.InvalidArgument, `csr: DNS SAN "x.evil.com" is outside provider suffix "test.mesh.test"`},
		{"CSR with another SPIFFE ID is refused", func(t *testing.T) error {
			return register(t, provMain, fresh("sports", "api", testSuffix), func(r *x509.CertificateRequest) {
				r.URIs = []*url.URL{{Scheme: "spiffe", Host: testTD, Path: "/ns/sports/sa/admin"}}
			})
		}, codes.InvalidArgument, `csr: URI SAN "spiffe://mesh.test/ns/sports/sa/admin" is not "spiffe://mesh.test/ns/sports/sa/api"`},
		{"CSR asking for CA:true is refused", func(t *testing.T) error {
			return register(t, provMain, fresh("sports", "api", testSuffix), func(r *x509.CertificateRequest) {
				v, _ := asn1.Marshal(struct{ IsCA bool }{true})
				r.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: v}}
			})
		}, codes.InvalidArgument, "csr: requests a basic constraints extension; a leaf certificate is always CA:FALSE"},
		{"RSA-1024 key is refused", func(t *testing.T) error {
			w := fresh("sports", "api", testSuffix)
			k, err := rsa.GenerateKey(rand.Reader, 1024)
			if err != nil {
				t.Fatal(err)
			}
			w.key = k
			return register(t, provMain, w, nil)
		}, codes.InvalidArgument, "csr: RSA key of 1024 bits is too small (minimum 2048)"},
		{"P-224 key is refused", func(t *testing.T) error {
			w := fresh("sports", "api", testSuffix)
			k, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			w.key = k
			return register(t, provMain, w, nil)
		}, codes.InvalidArgument, "csr: ECDSA curve P-224 is not allowed (want P-256 or P-384)"},
		{"a key used before is refused", func(t *testing.T) error {
			w, _ := registered(t)
			again := fresh("sports", "api", testSuffix)
			again.key = w.key
			return register(t, provMain, again, nil)
		}, codes.AlreadyExists, "csr: public key "},
		{"provider saying no is a refusal with its reason", func(t *testing.T) error {
			w := newWorkload(t, "sports", "api", testSuffix, "deny-1.refusals")
			return register(t, provMain, w, nil)
		}, codes.PermissionDenied, `provider: "sys.auth.test" refused to confirm instance "deny-1.refusals" of sports.api: instance deny-1.refusals was not launched here`},
		{"unreachable provider is unavailable", func(t *testing.T) error {
			return register(t, provDown, fresh("sports", "api", "down.mesh.test"), nil)
		}, codes.Unavailable, `provider: "sys.auth.down" confirm endpoint https://127.0.0.1:`},
		{"provider whose server certificate another CA issued is not trusted", func(t *testing.T) error {
			return register(t, provRogue, fresh("sports", "api", "rogue.mesh.test"), nil)
		}, codes.Unavailable, "did not prove it is the provider: confirm endpoint not trusted: server certificate is not one this CA issued to spiffe://mesh.test/ns/sys.auth/sa/rogue"},
		{"provider presenting another identity's certificate is not trusted", func(t *testing.T) error {
			return register(t, provImposter, fresh("sports", "api", "imposter.mesh.test"), nil)
		}, codes.Unavailable, "server certificate is not one this CA issued to spiffe://mesh.test/ns/sys.auth/sa/imposter"},
		{"refresh without a client certificate is unauthenticated", func(t *testing.T) error {
			w := fresh("sports", "api", testSuffix)
			_, err := f.client().Refresh(ctx, &meshcav1.RefreshRequest{Csr: w.csr(t, nil)})
			return err
		}, codes.Unauthenticated, "client certificate: none presented"},
		{"refresh for another identity than the client certificate's is refused", func(t *testing.T) error {
			w, resp := registered(t)
			other := newWorkload(t, "sports", "web", testSuffix, w.id)
			_, err := f.clientWith(w.tlsCert(t, resp)).Refresh(ctx, &meshcav1.RefreshRequest{Csr: other.csr(t, nil)})
			return err
		}, codes.PermissionDenied, `csr: subject CN "sports.web" is not the client certificate's "sports.api"; a refresh keeps its identity`},
		{"refresh for another instance than the client certificate's is refused", func(t *testing.T) error {
			w, resp := registered(t)
			other := newWorkload(t, "sports", "api", testSuffix, "someone-else")
			_, err := f.clientWith(w.tlsCert(t, resp)).Refresh(ctx, &meshcav1.RefreshRequest{Csr: other.csr(t, nil)})
			return err
		}, codes.PermissionDenied, `is not the client certificate's "i-`},
		{"refresh with an expired certificate is unauthenticated", func(t *testing.T) error {
			w, resp := registered(t)
			expired := expiredCopy(t, f.iss, parseLeaf(t, resp), w)
			w.key = newKey(t)
			_, err := f.clientWith(expired).Refresh(ctx, &meshcav1.RefreshRequest{Csr: w.csr(t, nil)})
			return err
		}, codes.Unauthenticated, "an expired certificate cannot refresh, register again"},
		{"refresh with a certificate another CA issued is unauthenticated", func(t *testing.T) error {
			w, resp := registered(t)
			other, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: f.td, RootKey: mustSoftware(t), Now: time.Now()})
			if err != nil {
				t.Fatal(err)
			}
			forged := reissue(t, other, parseLeaf(t, resp), w, time.Now().Add(time.Hour))
			_, err = f.clientWith(forged).Refresh(ctx, &meshcav1.RefreshRequest{Csr: w.csr(t, nil)})
			return err
		}, codes.Unauthenticated, "does not verify to the trust bundle of mesh.test"},
		{"refresh for a revoked instance is refused", func(t *testing.T) error {
			w, resp := registered(t)
			f.apply(&meshcav1.Command{Command: &meshcav1.Command_Revoke{Revoke: &meshcav1.RevokeCommand{
				Target: &meshcav1.RevokeCommand_Instance{Instance: &meshcav1.InstanceRef{Provider: provMain, Domain: "sports", Service: "api", InstanceId: w.id}},
				Reason: meshcav1.RevocationReason_REVOCATION_REASON_KEY_COMPROMISE,
			}}})
			cert := w.tlsCert(t, resp)
			w.key = newKey(t)
			_, err := f.clientWith(cert).Refresh(ctx, &meshcav1.RefreshRequest{Csr: w.csr(t, nil)})
			if want := "client certificate: serial " + resp.GetSerial() + " is revoked"; err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("error %v does not say %q", err, want)
			}
			return err
		}, codes.PermissionDenied, "is revoked"},
		{"refresh presenting a superseded serial revokes the instance", func(t *testing.T) error {
			w, resp := registered(t)
			first := w.tlsCert(t, resp)
			cert := first
			for range 2 {
				w.key = newKey(t)
				next, err := f.clientWith(cert).Refresh(ctx, &meshcav1.RefreshRequest{Csr: w.csr(t, nil)})
				if err != nil {
					t.Fatal(err)
				}
				cert = w.tlsCert(t, next)
			}
			w.key = newKey(t)
			_, err := f.clientWith(first).Refresh(ctx, &meshcav1.RefreshRequest{Csr: w.csr(t, nil)})
			return err
		}, codes.PermissionDenied, "is neither the current serial"},
		{"a revoked instance id never registers again", func(t *testing.T) error {
			w, _ := registered(t)
			f.apply(&meshcav1.Command{Command: &meshcav1.Command_Revoke{Revoke: &meshcav1.RevokeCommand{
				Target: &meshcav1.RevokeCommand_Instance{Instance: &meshcav1.InstanceRef{Provider: provMain, Domain: "sports", Service: "api", InstanceId: w.id}},
				Reason: meshcav1.RevocationReason_REVOCATION_REASON_KEY_COMPROMISE,
			}}})
			w.key = newKey(t)
			return register(t, provMain, w, nil)
		}, codes.PermissionDenied, "a revoked instance id never registers again"},
		{"an instance id held by another identity of the provider is refused", func(t *testing.T) error {
			w, _ := registered(t)
			return register(t, provMain, newWorkload(t, "sports", "web", testSuffix, w.id), nil)
		}, codes.AlreadyExists, `is already held by "sports.api" under provider "sys.auth.test"; instance ids are unique per provider`},
		{"registering one instance faster than its limit is resource exhausted", func(t *testing.T) error {
			var err error
			for range 6 { // the fixture allows 5 a minute per instance
				w := newWorkload(t, "sports", "api", testSuffix, "busy.refusals")
				if _, err = f.client().Register(ctx, w.registerReq(t, provMain)); err != nil {
					break
				}
			}
			return err
		}, codes.ResourceExhausted, "instance: sys.auth.test/sports.api/busy.refusals asked for more than limits.issue_per_identity_per_minute (5) certificates"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(t)
			st, _ := status.FromError(err)
			if err == nil || st.Code() != tc.wantCode || !strings.Contains(st.Message(), tc.wantMsg) {
				t.Fatalf("got %v (code %v), want %v with a message containing %q", err, st.Code(), tc.wantCode, tc.wantMsg)
			}
		})
	}
}

// corruptSignature flips a bit in a PEM CSR's signature.
func corruptSignature(t *testing.T, csrPEM []byte) []byte {
	t.Helper()
	b, _ := pem.Decode(csrPEM)
	der := append([]byte(nil), b.Bytes...)
	der[len(der)-3] ^= 0x40
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// reissue mints a copy of a workload certificate (same names and key) with iss, valid for two
// minutes until notAfter.
func reissue(t *testing.T, iss *ca.Issuer, leaf *x509.Certificate, w *testWorkload, notAfter time.Time) *tls.Certificate {
	t.Helper()
	c := signLeaf(t, iss, w.key, &x509.Certificate{
		Subject: leaf.Subject, DNSNames: leaf.DNSNames, URIs: leaf.URIs,
		NotBefore: notAfter.Add(-2 * time.Minute), NotAfter: notAfter,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return &tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: w.key, Leaf: c}
}

// expiredCopy mints a copy of a workload certificate with the cluster's CA key that expired a
// minute ago (the CA itself is a few minutes old: its root is backdated by five).
func expiredCopy(t *testing.T, iss *ca.Issuer, leaf *x509.Certificate, w *testWorkload) *tls.Certificate {
	return reissue(t, iss, leaf, w, time.Now().Add(-time.Minute))
}
