package controlplane

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca/signer"
)

const (
	// builtinSuffix is the DNS suffix the token tests register sys.auth.meshca with.
	builtinSuffix = "meshca.mesh.test"
	// tokenAdmin is the system admin of the token tests.
	tokenAdmin = "spiffe://mesh.test/ns/ops/sa/tokens"
)

// tokenEnv is a one-node server with the built-in provider seeded from the config, the
// services sports.api and news.web granting it launch, and an admin client of its own port.
type tokenEnv struct {
	*testServer
	admin meshcav1.AdminClient
}

func newTokenEnv(t testing.TB) *tokenEnv {
	return newTokenEnvWith(t, nil)
}

// newTokenEnvWith is newTokenEnv with a further change to the config.
func newTokenEnvWith(t testing.TB, mutate func(*Config)) *tokenEnv {
	t.Helper()
	ts := startServer(t, func(c *Config) {
		if mutate != nil {
			defer mutate(c)
		}
		c.Admins = []string{tokenAdmin}
		c.Providers = []ProviderConfig{{Name: BuiltinProvider, DNSSuffix: builtinSuffix}}
		c.Services = []ServiceConfig{
			{Name: "sports.api", LaunchGrants: []string{BuiltinProvider}},
			{Name: "news.web", LaunchGrants: []string{BuiltinProvider}},
		}
	})
	waitFor(t, "the seeded built-in provider and services", func() error {
		st := ts.s.Store().State()
		if _, err := st.Provider(BuiltinProvider); err != nil {
			return err
		}
		_, err := st.Service("news.web")
		return err
	})
	e := &tokenEnv{testServer: ts}
	e.admin = meshcav1.NewAdminClient(dial(t, ts.s.GRPCAddr(), ts.bundlePool(), e.clientCert(tokenAdmin)))
	return e
}

// clientCert mints a client certificate naming id with the cluster's CA key.
func (e *tokenEnv) clientCert(id string) *tls.Certificate {
	e.t.Helper()
	u, err := url.Parse(id)
	if err != nil {
		e.t.Fatal(err)
	}
	key := newKey(e.t)
	leaf := signLeaf(e.t, e.iss, key, &x509.Certificate{
		Subject: pkix.Name{CommonName: "token test"}, URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
}

// ctx is a context bounded by waitTimeout.
func (e *tokenEnv) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	e.t.Cleanup(cancel)
	return ctx
}

// issueToken asks the admin API for a register token.
func (e *tokenEnv) issueToken(domain, service, instanceID string) (string, *meshcav1.Token) {
	e.t.Helper()
	resp, err := e.admin.IssueRegisterToken(e.ctx(), &meshcav1.IssueRegisterTokenRequest{Domain: domain, Service: service, InstanceId: instanceID})
	if err != nil {
		e.t.Fatalf("IssueRegisterToken: %v", err)
	}
	return resp.GetToken(), resp.GetRecord()
}

// registerWithToken registers w through the built-in provider with token.
func (e *tokenEnv) registerWithToken(w *testWorkload, token string) (*meshcav1.IdentityResponse, error) {
	return e.client().Register(e.ctx(), &meshcav1.RegisterRequest{
		Provider: BuiltinProvider, Domain: w.domain, Service: w.service, Csr: w.csr(e.t, nil), AttestationData: []byte(token),
	})
}

// mustRegister registers a new instance id of domain.service with a fresh register token and
// returns the workload and its client certificate.
func (e *tokenEnv) mustRegister(domain, service, id string) (*testWorkload, *meshcav1.IdentityResponse) {
	e.t.Helper()
	token, _ := e.issueToken(domain, service, id)
	w := newWorkload(e.t, domain, service, builtinSuffix, id)
	resp, err := e.registerWithToken(w, token)
	if err != nil {
		e.t.Fatalf("register %s with a token: %v", id, err)
	}
	return w, resp
}

// signRegisterJWT signs claims as a register token would be, with key and header values the
// test chooses (a forged or malformed token).
func signRegisterJWT(t testing.TB, key crypto.Signer, kid, typ string, claims any) string {
	t.Helper()
	alg, err := joseAlgorithm(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	opts := (&jose.SignerOptions{}).WithType(jose.ContentType(typ)).WithHeader(jose.HeaderKey("kid"), kid)
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: cryptosigner.Opaque(key)}, opts)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The register token flow over real gRPC: a token from the admin API registers its instance
// once; a replay, a token bound to another instance or service, an expired token and a
// forged one are each refused with PermissionDenied and a message naming the rule; a token
// refused before its registration committed stays usable.
func TestRegisterTokenFlow(t *testing.T) {
	e := newTokenEnv(t)
	token, rec := e.issueToken("sports", "api", "pod-1")

	t.Run("a token for another instance id is refused and stays usable", func(t *testing.T) {
		other := newWorkload(t, "sports", "api", builtinSuffix, "pod-2")
		_, err := e.registerWithToken(other, token)
		wantStatus(t, err, codes.PermissionDenied, "attestation_data: register token "+rec.GetJti(),
			`is bound to instance "pod-1" of sports.api, not instance "pod-2" of sports.api`)
	})
	t.Run("a token for another service is refused", func(t *testing.T) {
		other := newWorkload(t, "news", "web", builtinSuffix, "pod-1")
		_, err := e.registerWithToken(other, token)
		wantStatus(t, err, codes.PermissionDenied, `is bound to instance "pod-1" of sports.api, not instance "pod-1" of news.web`)
	})
	t.Run("a registration refused by the CSR policy leaves the token usable", func(t *testing.T) {
		w := newWorkload(t, "sports", "api", builtinSuffix, "pod-1")
		_, err := e.client().Register(e.ctx(), &meshcav1.RegisterRequest{
			Provider: BuiltinProvider, Domain: "sports", Service: "api", AttestationData: []byte(token),
			Csr: w.csr(t, func(r *x509.CertificateRequest) { r.DNSNames = append(r.DNSNames, "x.evil.example") }),
		})
		wantStatus(t, err, codes.InvalidArgument, "x.evil.example")
	})
	var first *meshcav1.IdentityResponse
	t.Run("a register token registers its instance", func(t *testing.T) {
		w := newWorkload(t, "sports", "api", builtinSuffix, "pod-1")
		resp, err := e.registerWithToken(w, token)
		ok(t, err)
		first = resp
		leaf := parseLeaf(t, resp)
		if got, want := leaf.DNSNames, []string{"api.sports." + builtinSuffix, "pod-1.instanceid.athenz." + builtinSuffix}; strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("DNS SANs %v, want %v", got, want)
		}
		if resp.GetInstanceId() != "pod-1" || resp.GetSpiffeId() != "spiffe://mesh.test/ns/sports/sa/api" {
			t.Fatalf("instance %q, SPIFFE ID %q", resp.GetInstanceId(), resp.GetSpiffeId())
		}
		used, err := e.s.Store().State().Token(rec.GetJti())
		ok(t, err)
		if !used.GetUsed() {
			t.Fatalf("token record %v is not used after the registration committed", used)
		}
		inst, err := e.s.Store().State().Instance(BuiltinProvider, "sports", "api", "pod-1")
		ok(t, err)
		if inst.GetCurrentSerial() != resp.GetSerial() {
			t.Fatalf("instance serial %s, want %s", inst.GetCurrentSerial(), resp.GetSerial())
		}
	})
	if first == nil {
		t.Fatal("the token did not register its instance")
	}
	t.Run("a replayed register token is refused", func(t *testing.T) {
		w := newWorkload(t, "sports", "api", builtinSuffix, "pod-1")
		_, err := e.registerWithToken(w, token)
		wantStatus(t, err, codes.PermissionDenied, "attestation_data: register token "+rec.GetJti()+" was already used at", "a register token works once")
	})
	t.Run("an expired register token is refused", func(t *testing.T) {
		// A real token whose record the log took while it was valid, signed by the CA.
		past := time.Now().Add(-2 * time.Hour)
		tok := &meshcav1.Token{
			Jti: "expired-token-1", Domain: "sports", Service: "api", InstanceId: "pod-3", IssuedBy: tokenAdmin,
			Issued: past.UnixNano(), Expires: past.Add(time.Hour).UnixNano(),
		}
		e.apply(&meshcav1.Command{Time: past.UnixNano(), Command: &meshcav1.Command_IssueToken{IssueToken: &meshcav1.IssueTokenCommand{Token: tok}}})
		signed, err := e.s.SignRegisterToken(tok)
		ok(t, err)
		_, err = e.registerWithToken(newWorkload(t, "sports", "api", builtinSuffix, "pod-3"), signed)
		wantStatus(t, err, codes.PermissionDenied, "attestation_data: register token expired-token-1 expired at", "ask a domain admin for a new one")
	})
	t.Run("a token signed by another key is refused", func(t *testing.T) {
		_, tok := e.issueToken("sports", "api", "pod-4")
		rec, err := e.s.Store().State().CA()
		ok(t, err)
		forged := signRegisterJWT(t, newKey(t), rec.GetActiveIssuer().GetId(), RegisterTokenType, e.claimsOf(tok))
		_, err = e.registerWithToken(newWorkload(t, "sports", "api", builtinSuffix, "pod-4"), forged)
		wantStatus(t, err, codes.PermissionDenied, "attestation_data: register token signature does not verify with issuer")
	})
	t.Run("something that is not a token is refused", func(t *testing.T) {
		_, err := e.registerWithToken(newWorkload(t, "sports", "api", builtinSuffix, "pod-5"), "doc:pod-5")
		wantStatus(t, err, codes.PermissionDenied, "attestation_data: not a register token")
	})
	t.Run("no token is refused", func(t *testing.T) {
		_, err := e.registerWithToken(newWorkload(t, "sports", "api", builtinSuffix, "pod-5"), "")
		wantStatus(t, err, codes.PermissionDenied, "attestation_data: required: the register token")
	})
	t.Run("the registered certificate refreshes", func(t *testing.T) {
		// The built-in provider's instances refresh like any other provider's.
		w2, resp := e.mustRegister("sports", "api", "pod-6")
		cert := w2.tlsCert(t, resp)
		w2.key = newKey(t)
		next, err := e.clientWith(cert).Refresh(e.ctx(), &meshcav1.RefreshRequest{Csr: w2.csr(t, nil)})
		ok(t, err)
		if next.GetInstanceId() != "pod-6" || next.GetSerial() == resp.GetSerial() {
			t.Fatalf("refresh answered instance %q serial %s", next.GetInstanceId(), next.GetSerial())
		}
	})
}

// claimsOf are the claims the CA signs for a token record.
func (e *tokenEnv) claimsOf(tok *meshcav1.Token) registerTokenClaims {
	aud, _ := ServiceSPIFFEID(e.s.TrustDomain(), BuiltinProvider)
	return registerTokenClaims{
		Claims: jwt.Claims{
			Issuer: e.s.TrustDomain().IDString(), Subject: tok.GetInstanceId(), Audience: jwt.Audience{aud.String()},
			IssuedAt: jwt.NewNumericDate(time.Unix(0, tok.GetIssued())), Expiry: jwt.NewNumericDate(time.Unix(0, tok.GetExpires())),
			ID: tok.GetJti(),
		},
		Domain: tok.GetDomain(), Service: tok.GetService(), InstanceID: tok.GetInstanceId(),
	}
}

// Two registrations racing with one register token get one certificate between them: the
// log consumes the token in the entry that records the certificate.
func TestRegisterTokenRaceIssuesOnce(t *testing.T) {
	e := newTokenEnv(t)
	token, _ := e.issueToken("sports", "api", "race-1")
	const n = 4
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		w := newWorkload(t, "sports", "api", builtinSuffix, "race-1")
		req := &meshcav1.RegisterRequest{Provider: BuiltinProvider, Domain: "sports", Service: "api", Csr: w.csr(t, nil), AttestationData: []byte(token)}
		c := e.client()
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = c.Register(e.ctx(), req)
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		if err == nil {
			won++
			continue
		}
		wantStatus(t, err, codes.PermissionDenied, "was already used at", "a register token works once")
	}
	if won != 1 {
		t.Fatalf("%d of %d racing registrations got a certificate, want exactly 1 (errors %v)", won, n, errs)
	}
}

// verifyRegisterToken is a pure decision over the CA record and a time: each rule refuses
// with a message naming it.
func TestVerifyRegisterTokenRules(t *testing.T) {
	e := newTokenEnv(t)
	rec, err := e.s.Store().State().CA()
	ok(t, err)
	td := e.s.TrustDomain()
	kid := rec.GetActiveIssuer().GetId()
	key := e.iss.Signer()
	now := time.Now()
	base := func() registerTokenClaims {
		return e.claimsOf(&meshcav1.Token{Jti: "j1", Domain: "sports", Service: "api", InstanceId: "pod-1",
			Issued: now.Add(-time.Minute).UnixNano(), Expires: now.Add(time.Hour).UnixNano()})
	}
	otherRoot, err := signer.GenerateSoftware(signer.ECDSAP256)
	ok(t, err)
	otherIssuer := signLeaf(t, e.iss, otherRoot, &x509.Certificate{Subject: pkix.Name{CommonName: "not a CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)})

	tests := []struct {
		name   string
		token  func() string
		rec    func() *meshcav1.CA
		at     time.Time
		reason string
		want   string
	}{
		{name: "a token the CA signed verifies", token: func() string { return signRegisterJWT(t, key, kid, RegisterTokenType, base()) }},
		{name: "an issuer a little behind the signer's clock accepts it", at: now.Add(-time.Minute - RegisterTokenClockSkew + time.Second),
			token: func() string { return signRegisterJWT(t, key, kid, RegisterTokenType, base()) }},
		{name: "a token from the future is refused", at: now.Add(-time.Minute - RegisterTokenClockSkew - 2*time.Second),
			token: func() string { return signRegisterJWT(t, key, kid, RegisterTokenType, base()) }, reason: "token_invalid", want: "is not valid before"},
		{name: "an expired token is refused", at: now.Add(time.Hour),
			token: func() string { return signRegisterJWT(t, key, kid, RegisterTokenType, base()) }, reason: "token_expired", want: "register token j1 expired at"},
		{name: "another type is refused", token: func() string { return signRegisterJWT(t, key, kid, "JWT", base()) }, reason: "token_invalid", want: `token type "JWT" is not "meshca-register+jwt"`},
		{name: "an unknown issuer is refused", token: func() string { return signRegisterJWT(t, key, "no-such-issuer", RegisterTokenType, base()) }, reason: "token_invalid", want: `kid "no-such-issuer" names no issuer of this CA`},
		{name: "another trust domain's token is refused", token: func() string {
			c := base()
			c.Issuer = "spiffe://other.test"
			return signRegisterJWT(t, key, kid, RegisterTokenType, c)
		}, reason: "token_invalid", want: `was issued by "spiffe://other.test", not by this trust domain "spiffe://mesh.test"`},
		{name: "another audience is refused", token: func() string {
			c := base()
			c.Audience = jwt.Audience{"spiffe://mesh.test/ns/sys.auth/sa/k8s"}
			return signRegisterJWT(t, key, kid, RegisterTokenType, c)
		}, reason: "token_invalid", want: `not "spiffe://mesh.test/ns/sys.auth/sa/meshca"`},
		{name: "a token without jti is refused", token: func() string {
			c := base()
			c.ID = ""
			return signRegisterJWT(t, key, kid, RegisterTokenType, c)
		}, reason: "token_invalid", want: "has no jti"},
		{name: "a subject other than the instance is refused", token: func() string {
			c := base()
			c.Subject = "pod-9"
			return signRegisterJWT(t, key, kid, RegisterTokenType, c)
		}, reason: "token_invalid", want: `subject "pod-9" is not its instance id "pod-1"`},
		{name: "a token without expiry is refused", token: func() string {
			c := base()
			c.Expiry = nil
			return signRegisterJWT(t, key, kid, RegisterTokenType, c)
		}, reason: "token_invalid", want: "has no expiry"},
		{name: "a token whose issuer's root left the bundle is refused", token: func() string { return signRegisterJWT(t, key, kid, RegisterTokenType, base()) },
			rec: func() *meshcav1.CA {
				r := proto.Clone(rec).(*meshcav1.CA)
				r.Roots = [][]byte{otherIssuer.Raw}
				return r
			}, reason: "token_invalid", want: "does not chain to the trust bundle"},
		{name: "a tampered token is refused", token: func() string {
			tok := signRegisterJWT(t, key, kid, RegisterTokenType, base())
			parts := strings.Split(tok, ".")
			c := base()
			c.InstanceID, c.Subject = "pod-2", "pod-2"
			forged := strings.Split(signRegisterJWT(t, newKey(t), kid, RegisterTokenType, c), ".")
			return parts[0] + "." + forged[1] + "." + parts[2]
		}, reason: "token_invalid", want: "signature does not verify"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := rec
			if tc.rec != nil {
				r = tc.rec()
			}
			at := now
			if !tc.at.IsZero() {
				at = tc.at
			}
			c, err := verifyRegisterToken(tc.token(), r, td, at)
			if tc.want == "" {
				ok(t, err)
				if c.ID != "j1" || c.InstanceID != "pod-1" {
					t.Fatalf("claims %+v", c)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want %q", tc.want)
			}
			if code, reason := classify(err); code != codes.PermissionDenied || reason != tc.reason {
				t.Fatalf("classified %v/%s, want PermissionDenied/%s (%v)", code, reason, tc.reason, err)
			}
			if !strings.HasPrefix(err.Error(), "attestation_data: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want attestation_data: ...%s", err, tc.want)
			}
		})
	}
}

// The built-in provider is seeded from the config without a confirm endpoint (the CA is the
// provider); every other provider still needs an https one.
func TestConfigSeedsTheBuiltinProviderWithoutAnEndpoint(t *testing.T) {
	builtin := "providers:\n- name: sys.auth.meshca\n  dns_suffix: meshca.mesh.example\n"
	c, err := DecodeConfig(strings.NewReader(strings.Replace(validConfig, "providers:\n", builtin, 1)))
	ok(t, err)
	if p := c.Providers[0]; p.Name != BuiltinProvider || p.ConfirmEndpoint != "" || len(c.Providers) != 2 {
		t.Fatalf("providers %+v", c.Providers)
	}
	_, err = DecodeConfig(strings.NewReader(strings.Replace(validConfig, "providers:\n", builtin+"  confirm_endpoint: https://127.0.0.1:1/confirm\n", 1)))
	if err == nil || !strings.Contains(err.Error(), "providers[0].confirm_endpoint") || !strings.Contains(err.Error(), "confirmed by the CA itself") {
		t.Fatalf("an endpoint for the built-in provider: %v", err)
	}
	_, err = DecodeConfig(strings.NewReader(strings.Replace(validConfig, "  confirm_endpoint: https://127.0.0.1:9443/confirm\n", "", 1)))
	if err == nil || !strings.Contains(err.Error(), "providers[0].confirm_endpoint") {
		t.Fatalf("another provider without an endpoint: %v", err)
	}
}
