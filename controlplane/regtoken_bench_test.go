package controlplane

import (
	"net/http"
	"testing"
	"time"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/sds/agent"
)

// BenchmarkVerifyRegisterToken measures the built-in provider's check of one register token
// (chain of the issuer to the bundle, signature, claims) against the replicated CA record.
func BenchmarkVerifyRegisterToken(b *testing.B) {
	e := newTokenEnv(b)
	rec, err := e.s.Store().State().CA()
	ok(b, err)
	now := time.Now()
	signed, err := e.s.SignRegisterToken(&meshcav1.Token{Jti: "bench", Domain: "sports", Service: "api", InstanceId: "pod-1",
		Issued: now.UnixNano(), Expires: now.Add(time.Hour).UnixNano()})
	ok(b, err)
	td := e.s.TrustDomain()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := verifyRegisterToken(signed, rec, td, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyServiceToken measures the check of one service key token (as the agent
// signs it, ES256) against the service's registered keys.
func BenchmarkVerifyServiceToken(b *testing.B) {
	e := newTokenEnv(b)
	key := newKey(b)
	e.addServiceKey("sports.api", "v1", key)
	svc, err := e.s.Store().State().Service("sports.api")
	ok(b, err)
	now := time.Now()
	tok, err := agent.SignServiceToken(key, agent.ServiceTokenRequest{Domain: "sports", Service: "api", KeyVersion: "v1", InstanceID: "pod-1", TrustDomain: e.s.TrustDomain()}, now)
	ok(b, err)
	td := e.s.TrustDomain()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := verifyServiceToken(tok, svc, td, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExtendRoundTrip measures one extend and its extend-verify over HTTPS on a
// one-node server in this process (a new TLS connection per call, as a client whose
// certificate changes with every extend makes): two log commits and one signature.
func BenchmarkExtendRoundTrip(b *testing.B) {
	e := newTokenEnvWith(b, func(c *Config) {
		c.Limits.IssuePerIdentityPerMinute = 1 << 30
		c.Limits.IssuePerSourcePerMinute = 1 << 30
	})
	w, resp := e.mustRegister("sports", "api", "bench-1")
	cert := w.tlsCert(b, resp)
	id := AuthenticatorID(BuiltinProvider, "sports", "api", "bench-1")
	b.ResetTimer()
	for b.Loop() {
		w.key = newKey(b)
		r := extendOK(b, e.call(cert, http.MethodPost, extendPath(id, "extend"), "application/json", body(FieldClientCertCSR, string(w.csr(b, nil)))))
		next := certOf(b, w, r)
		if a := e.call(next, http.MethodPost, extendPath(id, "extend-verify"), "application/json", body(FieldClientCert, r.ClientCert)); a.status != http.StatusOK {
			b.Fatalf("extend-verify answered %d %+v", a.status, a.Error)
		}
		cert = next
	}
}
