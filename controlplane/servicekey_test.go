package controlplane

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/sds/agent"
)

// addServiceKey registers key's public key for domain.service under version, through the
// admin API.
func (e *tokenEnv) addServiceKey(identity, version string, key crypto.Signer) {
	e.t.Helper()
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	ok(e.t, err)
	_, err = e.admin.AddServiceKey(e.ctx(), &meshcav1.AddServiceKeyRequest{Identity: identity, Key: &meshcav1.ServiceKey{Version: version, PublicKey: der}})
	ok(e.t, err)
}

// serviceToken signs a service key token as the agent does.
func (e *tokenEnv) serviceToken(key crypto.Signer, domain, service, version, instanceID string, at time.Time) string {
	e.t.Helper()
	tok, err := agent.SignServiceToken(key, agent.ServiceTokenRequest{
		Domain: domain, Service: service, KeyVersion: version, InstanceID: instanceID, TrustDomain: e.s.TrustDomain(),
	}, at)
	ok(e.t, err)
	return tok
}

// registerWithServiceToken registers w with a service key token, as the agent does.
func (e *tokenEnv) registerWithServiceToken(w *testWorkload, token string) (*meshcav1.IdentityResponse, error) {
	return e.client().Register(e.ctx(), &meshcav1.RegisterRequest{
		Provider: BuiltinProvider, Domain: w.domain, Service: w.service, Csr: w.csr(e.t, nil), ServiceToken: token,
	})
}

// The service key token flow over real gRPC, with tokens the agent signs: every key type
// the CA accepts registers; a replayed nonce, an unknown key version, a token too old, one
// for another instance, another service or another trust domain, and one signed by a key
// that is not the registered one are each refused with PermissionDenied and a message naming
// the rule.
func TestServiceKeyTokenFlow(t *testing.T) {
	e := newTokenEnv(t)
	p256 := newKey(t)
	e.addServiceKey("sports.api", "v1", p256)
	now := time.Now()

	t.Run("a service key token of each key type registers an instance", func(t *testing.T) {
		p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		ok(t, err)
		rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
		ok(t, err)
		_, edKey, err := ed25519.GenerateKey(rand.Reader)
		ok(t, err)
		for i, k := range []struct {
			version string
			key     crypto.Signer
		}{{"v1", p256}, {"p384", p384}, {"rsa", rsaKey}, {"ed", edKey}} {
			if k.version != "v1" {
				e.addServiceKey("sports.api", k.version, k.key)
			}
			id := "sk-" + k.version
			w := newWorkload(t, "sports", "api", builtinSuffix, id)
			resp, err := e.registerWithServiceToken(w, e.serviceToken(k.key, "sports", "api", k.version, id, now))
			if err != nil {
				t.Fatalf("key %d (%s): %v", i, k.version, err)
			}
			if resp.GetInstanceId() != id || !strings.HasSuffix(parseLeaf(t, resp).DNSNames[1], ".instanceid.athenz."+builtinSuffix) {
				t.Fatalf("registered %q with names %v", resp.GetInstanceId(), parseLeaf(t, resp).DNSNames)
			}
		}
	})
	t.Run("a replayed nonce is refused", func(t *testing.T) {
		token := e.serviceToken(p256, "sports", "api", "v1", "replay-1", now)
		_, err := e.registerWithServiceToken(newWorkload(t, "sports", "api", builtinSuffix, "replay-1"), token)
		ok(t, err)
		_, err = e.registerWithServiceToken(newWorkload(t, "sports", "api", builtinSuffix, "replay-1"), token)
		wantStatus(t, err, codes.PermissionDenied, "service_token: nonce ", `was already used for "sports.api"`, "a replayed token is refused")
	})
	t.Run("an unknown key version is refused naming it", func(t *testing.T) {
		token := e.serviceToken(p256, "sports", "api", "v9", "kv-1", now)
		_, err := e.registerWithServiceToken(newWorkload(t, "sports", "api", builtinSuffix, "kv-1"), token)
		wantStatus(t, err, codes.PermissionDenied, `service_token: key version "v9" is not registered for service "sports.api" (registered: ed, p384, rsa, v1)`)
	})
	t.Run("a token signed by another key under a registered version is refused", func(t *testing.T) {
		token := e.serviceToken(newKey(t), "sports", "api", "v1", "kv-2", now)
		_, err := e.registerWithServiceToken(newWorkload(t, "sports", "api", builtinSuffix, "kv-2"), token)
		wantStatus(t, err, codes.PermissionDenied, `service_token: signature does not verify with key version "v1" of "sports.api"`)
	})
	t.Run("a token too old is refused", func(t *testing.T) {
		token := e.serviceToken(p256, "sports", "api", "v1", "old-1", now.Add(-10*time.Minute))
		_, err := e.registerWithServiceToken(newWorkload(t, "sports", "api", builtinSuffix, "old-1"), token)
		wantStatus(t, err, codes.PermissionDenied, "service_token: issued at", "a service key token is accepted for at most 5m0s after it is signed")
	})
	t.Run("a token from the future is refused", func(t *testing.T) {
		token := e.serviceToken(p256, "sports", "api", "v1", "future-1", now.Add(5*time.Minute))
		_, err := e.registerWithServiceToken(newWorkload(t, "sports", "api", builtinSuffix, "future-1"), token)
		wantStatus(t, err, codes.PermissionDenied, "service_token: issued at", "in the future")
	})
	t.Run("a token for another instance id is refused", func(t *testing.T) {
		token := e.serviceToken(p256, "sports", "api", "v1", "inst-1", now)
		_, err := e.registerWithServiceToken(newWorkload(t, "sports", "api", builtinSuffix, "inst-2"), token)
		wantStatus(t, err, codes.PermissionDenied, `service_token: is signed for instance "inst-1", but the CSR names instance "inst-2"`)
	})
	t.Run("a token for another service is refused", func(t *testing.T) {
		e.addServiceKey("news.web", "v1", p256)
		token := e.serviceToken(p256, "sports", "api", "v1", "svc-1", now)
		_, err := e.registerWithServiceToken(newWorkload(t, "news", "web", builtinSuffix, "svc-1"), token)
		wantStatus(t, err, codes.PermissionDenied, `service_token: names service "sports.api" (iss "sports.api"), not "news.web"`)
	})
	t.Run("a token for another trust domain is refused", func(t *testing.T) {
		tok, err := agent.SignServiceToken(p256, agent.ServiceTokenRequest{Domain: "sports", Service: "api", KeyVersion: "v1", InstanceID: "td-1",
			TrustDomain: mustTD(t, "other.test")}, now)
		ok(t, err)
		_, err = e.registerWithServiceToken(newWorkload(t, "sports", "api", builtinSuffix, "td-1"), tok)
		wantStatus(t, err, codes.PermissionDenied, `service_token: is for audience [spiffe://other.test], not this trust domain "spiffe://mesh.test"`)
	})
	t.Run("a token claiming a long life is refused", func(t *testing.T) {
		c := serviceTokenClaims{Claims: jwt.Claims{Issuer: "sports.api", Subject: "long-1", Audience: jwt.Audience{"spiffe://mesh.test"},
			IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(time.Hour)), ID: "n-long-1"},
			Domain: "sports", Service: "api", KeyVersion: "v1"}
		_, err := e.registerWithServiceToken(newWorkload(t, "sports", "api", builtinSuffix, "long-1"), signRegisterJWT(t, p256, "v1", "JWT", c))
		wantStatus(t, err, codes.PermissionDenied, "service_token: lives 1h0m0s", "at most 5m0s")
	})
	t.Run("a token naming another provider is refused", func(t *testing.T) {
		w := newWorkload(t, "sports", "api", builtinSuffix, "prov-1")
		_, err := e.client().Register(e.ctx(), &meshcav1.RegisterRequest{Provider: "sys.auth.k8s", Domain: "sports", Service: "api", Csr: w.csr(t, nil),
			ServiceToken: e.serviceToken(p256, "sports", "api", "v1", "prov-1", now)})
		wantStatus(t, err, codes.InvalidArgument, `provider: "sys.auth.k8s": a service key token is confirmed by sys.auth.meshca`)
	})
	t.Run("a refusal after the token verified spends no nonce", func(t *testing.T) {
		token := e.serviceToken(p256, "sports", "api", "v1", "policy-1", now)
		w := newWorkload(t, "sports", "api", builtinSuffix, "policy-1")
		_, err := e.client().Register(e.ctx(), &meshcav1.RegisterRequest{Provider: BuiltinProvider, Domain: "sports", Service: "api", ServiceToken: token,
			Csr: w.csr(t, func(r *x509.CertificateRequest) { r.DNSNames = append(r.DNSNames, "x.evil.example") })})
		wantStatus(t, err, codes.InvalidArgument, "x.evil.example")
		_, err = e.registerWithServiceToken(w, token)
		ok(t, err)
	})
}

func mustTD(t testing.TB, name string) spiffeid.TrustDomain {
	t.Helper()
	td, err := spiffeid.TrustDomainFromString(name)
	ok(t, err)
	return td
}

// Registrations racing with one service key token get one certificate between them: the log
// records the nonce once.
func TestServiceKeyTokenRaceIssuesOnce(t *testing.T) {
	e := newTokenEnv(t)
	key := newKey(t)
	e.addServiceKey("sports.api", "v1", key)
	token := e.serviceToken(key, "sports", "api", "v1", "race-1", time.Now())
	const n = 4
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		w := newWorkload(t, "sports", "api", builtinSuffix, "race-1")
		req := &meshcav1.RegisterRequest{Provider: BuiltinProvider, Domain: "sports", Service: "api", Csr: w.csr(t, nil), ServiceToken: token}
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
		wantStatus(t, err, codes.PermissionDenied, "service_token: nonce ", `was already used for "sports.api"`, "a replayed token is refused")
	}
	if won != 1 {
		t.Fatalf("%d of %d racing registrations got a certificate, want exactly 1 (errors %v)", won, n, errs)
	}
}
