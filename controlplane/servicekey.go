package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/controlplane/confirm"
	"github.com/meshca/meshca/raftstore"
)

// FlowServiceToken is the flow label of registrations proven with a service key token.
const FlowServiceToken = "service_token"

// Bounds of a service key token.
const (
	// ServiceTokenMaxAge is how long after its iat a service key token is accepted, and the
	// longest lifetime (exp - iat) it may claim.
	ServiceTokenMaxAge = 5 * time.Minute
	// ServiceTokenClockSkew is the allowance for the caller's clock: iat may be this far in
	// the future, and the age and expiry bounds are stretched by it.
	ServiceTokenClockSkew = 30 * time.Second
	// maxServiceNonceLen bounds a token's nonce (jti), as the log does.
	maxServiceNonceLen = 256
)

// ErrServiceTokenInvalid is wrapped by every refusal of a service key token: not a JWS, an
// unknown key version, a signature that does not verify, claims that do not match the
// request, a token too old or too long-lived. A replayed nonce also wraps raftstore's
// ErrNonceReused. Every one of them also wraps ErrProviderDenied (PermissionDenied).
var ErrServiceTokenInvalid = errors.New("service key token invalid")

// serviceTokenClaims are the claims of a service key token, as the agent signs them
// (sds/agent.ServiceTokenClaims): a compact JWS whose header carries "kid" = the key version
// and whose signature is the service's private key's. iss is "<domain>.<service>", sub the
// instance id, aud ["spiffe://<trust-domain>"], iat the signing time, exp at most
// ServiceTokenMaxAge later, jti a nonce the CA refuses to see twice; domain, service and
// key_version repeat the binding.
type serviceTokenClaims struct {
	jwt.Claims
	Domain     string `json:"domain"`
	Service    string `json:"service"`
	KeyVersion string `json:"key_version"`
}

// verifiedServiceToken is a service key token whose signature and claims verified, awaiting
// the registration's instance id and its nonce's entry in the log.
type verifiedServiceToken struct {
	claims *serviceTokenClaims
	// acceptUntil is past the last time any node would still accept the token: its nonce
	// must be remembered until then.
	acceptUntil time.Time
}

// serviceTokenKey is the context key of a verified service key token.
type serviceTokenKey struct{}

// withServiceToken passes a verified service key token to the built-in provider's
// confirmer, which the register core calls once every other check has passed.
func withServiceToken(ctx context.Context, v *verifiedServiceToken) context.Context {
	return context.WithValue(ctx, serviceTokenKey{}, v)
}

// serviceTokenFrom returns the verified service key token the context carries.
func serviceTokenFrom(ctx context.Context) (*verifiedServiceToken, bool) {
	v, ok := ctx.Value(serviceTokenKey{}).(*verifiedServiceToken)
	return v, ok && v != nil
}

// serviceDenied is a refusal of a service key token.
func serviceDenied(reason, format string, args ...any) error {
	return builtinDenied(reason, ErrServiceTokenInvalid, "service_token", format, args...)
}

// verifyServiceToken checks a service key token for domain.service against the service's
// registered keys at now: the key version the header's kid names must be registered, the
// signature must verify with that key under the algorithm of its type, the claims must name
// this service, its key version and this trust domain, carry a nonce, be issued no later
// than ServiceTokenClockSkew from now and no earlier than ServiceTokenMaxAge (plus the skew)
// ago, claim a lifetime of at most ServiceTokenMaxAge and not be expired. It is a pure
// decision: the caller passes the service record and the time.
func verifyServiceToken(raw string, svc *meshcav1.Service, td spiffeid.TrustDomain, now time.Time) (*verifiedServiceToken, error) {
	identity := raftstore.Identity(svc.GetDomain(), svc.GetName())
	tok, err := jwt.ParseSigned(raw, tokenAlgorithms)
	if err != nil {
		return nil, serviceDenied("service_token_invalid", "not a signed JWT: %v", err)
	}
	if len(tok.Headers) != 1 {
		return nil, serviceDenied("service_token_invalid", "carries %d signatures; want one", len(tok.Headers))
	}
	h := tok.Headers[0]
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); typ != "" && typ != "JWT" {
		return nil, serviceDenied("service_token_invalid", "token type %q is not JWT", typ)
	}
	if h.KeyID == "" {
		return nil, serviceDenied("service_token_invalid", "the header has no kid: it must name the key version that signed it")
	}
	var key *meshcav1.ServiceKey
	versions := make([]string, 0, len(svc.GetKeys()))
	for _, k := range svc.GetKeys() {
		versions = append(versions, k.GetVersion())
		if k.GetVersion() == h.KeyID {
			key = k
		}
	}
	if key == nil {
		registered := "none"
		if len(versions) > 0 {
			registered = strings.Join(versions, ", ")
		}
		return nil, serviceDenied("key_version_unknown", "key version %q is not registered for service %q (registered: %s)", h.KeyID, identity, registered)
	}
	pub, err := x509.ParsePKIXPublicKey(key.GetPublicKey())
	if err != nil {
		return nil, serviceDenied("service_token_invalid", "key version %q of %q does not parse: %v", h.KeyID, identity, err)
	}
	alg, err := joseAlgorithm(pub)
	if err != nil {
		return nil, serviceDenied("service_token_invalid", "key version %q of %q: %v", h.KeyID, identity, err)
	}
	if h.Algorithm != string(alg) {
		return nil, serviceDenied("service_token_invalid", "signed with %s; key version %q of %q signs with %s", h.Algorithm, h.KeyID, identity, alg)
	}
	var c serviceTokenClaims
	if err := tok.Claims(pub, &c); err != nil {
		return nil, serviceDenied("service_token_invalid", "signature does not verify with key version %q of %q: %v", h.KeyID, identity, err)
	}
	switch {
	case c.Domain != svc.GetDomain() || c.Service != svc.GetName() || c.Issuer != identity:
		return nil, serviceDenied("service_token_invalid", "names service %q (iss %q), not %q", raftstore.Identity(c.Domain, c.Service), c.Issuer, identity)
	case c.KeyVersion != h.KeyID:
		return nil, serviceDenied("service_token_invalid", "claims key version %q but is signed by key version %q", c.KeyVersion, h.KeyID)
	case !c.Audience.Contains(td.IDString()):
		return nil, serviceDenied("service_token_invalid", "is for audience %v, not this trust domain %q", []string(c.Audience), td.IDString())
	case c.ID == "":
		return nil, serviceDenied("service_token_invalid", "has no jti: it must carry a fresh nonce")
	case len(c.ID) > maxServiceNonceLen:
		return nil, serviceDenied("service_token_invalid", "jti is %d bytes; at most %d", len(c.ID), maxServiceNonceLen)
	case c.Subject == "":
		return nil, serviceDenied("service_token_invalid", "has no sub: it must name the instance id that registers")
	case c.IssuedAt == nil:
		return nil, serviceDenied("service_token_invalid", "has no iat: its age cannot be bounded")
	case c.Expiry == nil:
		return nil, serviceDenied("service_token_invalid", "has no exp")
	}
	iat, exp := c.IssuedAt.Time(), c.Expiry.Time()
	stamp := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	switch {
	case iat.After(now.Add(ServiceTokenClockSkew)):
		return nil, serviceDenied("service_token_invalid", "issued at %s, in the future (now %s, allowed clock skew %s)", stamp(iat), stamp(now), ServiceTokenClockSkew)
	case now.Sub(iat) > ServiceTokenMaxAge+ServiceTokenClockSkew:
		return nil, serviceDenied("token_too_old", "issued at %s, %s ago; a service key token is accepted for at most %s after it is signed (clock skew %s): sign a fresh one",
			stamp(iat), now.Sub(iat).Round(time.Second), ServiceTokenMaxAge, ServiceTokenClockSkew)
	case exp.Sub(iat) > ServiceTokenMaxAge:
		return nil, serviceDenied("service_token_invalid", "lives %s (iat %s, exp %s); at most %s", exp.Sub(iat), stamp(iat), stamp(exp), ServiceTokenMaxAge)
	case !now.Before(exp.Add(ServiceTokenClockSkew)):
		return nil, serviceDenied("token_expired", "expired at %s (now %s, clock skew %s)", stamp(exp), stamp(now), ServiceTokenClockSkew)
	}
	until := iat.Add(ServiceTokenMaxAge)
	if exp.Before(until) {
		until = exp
	}
	// Another node, whose clock may be ServiceTokenClockSkew behind, accepts it that long more.
	until = until.Add(2 * ServiceTokenClockSkew)
	return &verifiedServiceToken{claims: &c, acceptUntil: until}, nil
}

// registerWithServiceToken is flow 3: a Register that carries a service key token. The token
// is verified first; then the registration goes through the register core with the built-in
// provider, whose confirmer (called after every other check passed: rate limits, launch
// grant, CSR policy, key reuse) holds the token to the CSR's instance id and records the
// nonce in the log.
//
// Instance ids: the CSR names the instance id under the built-in provider's DNS suffix like
// every registration, and the token's sub must be that id. A holder of the service's key
// speaks for the service, so it may register any instance id of it and register an existing
// one again (the new certificate supersedes the old); the log still refuses an id held by
// another service under sys.auth.meshca and a revoked id.
//
// A nonce is recorded (UseNonceCommand) before the certificate is: a registration the log
// refuses after that (a revoked instance id, a race) has spent its token, and the caller
// signs a fresh one, which costs it nothing. The nonce is kept until the token could no
// longer be accepted anyway, then pruned with the other expired records.
func (s *Server) registerWithServiceToken(ctx context.Context, req *meshcav1.RegisterRequest, clientAddr string) (*Issued, error) {
	start := time.Now()
	ttl, v, err := s.checkServiceToken(req)
	if err != nil {
		s.observe(FlowServiceToken, start, err)
		return nil, err
	}
	return s.register(withServiceToken(ctx, v), registerInput{
		Provider: BuiltinProvider, Domain: req.GetDomain(), Service: req.GetService(),
		CSR: req.GetCsr(), TTL: ttl, ServerAuth: req.GetServerAuth(), Hostname: req.GetHostname(),
		ClientAddr: clientAddr, Flow: FlowServiceToken,
	})
}

// checkServiceToken checks the parts of a service-token Register the register core does not:
// the provider, the request's shape and the token against the service's keys.
func (s *Server) checkServiceToken(req *meshcav1.RegisterRequest) (time.Duration, *verifiedServiceToken, error) {
	switch {
	case req.GetProvider() != "" && req.GetProvider() != BuiltinProvider:
		return 0, nil, refuse(policy.ErrInvalidRequest, "provider", "%q: a service key token is confirmed by %s; name it or leave provider empty", req.GetProvider(), BuiltinProvider)
	case len(req.GetAttestationData()) > 0:
		return 0, nil, refuse(policy.ErrInvalidRequest, "attestation_data", "must be empty with a service_token: the token is the proof")
	case req.GetDomain() == "":
		return 0, nil, refuse(policy.ErrInvalidRequest, "domain", "required")
	case req.GetService() == "":
		return 0, nil, refuse(policy.ErrInvalidRequest, "service", "required")
	}
	ttl, err := ttlOf(req.GetTtlSeconds())
	if err != nil {
		return 0, nil, err
	}
	identity := raftstore.Identity(req.GetDomain(), req.GetService())
	svc, err := s.fsm.State().Service(identity)
	if err != nil {
		return 0, nil, refuseAs("service_unknown", raftstore.ErrNotFound, "service", "%q is not a registered service", identity)
	}
	v, err := verifyServiceToken(req.GetServiceToken(), svc, s.td, s.now())
	if err != nil {
		return 0, nil, err
	}
	return ttl, v, nil
}

// confirmServiceToken is the built-in provider's answer to a registration proven with a
// service key token: the token's sub must be the instance id the CSR names, and its nonce is
// recorded in the log, which refuses a nonce it has seen.
func (s *Server) confirmServiceToken(ctx context.Context, v *verifiedServiceToken, req *confirm.Request) (*Confirmation, error) {
	c := v.claims
	if c.Subject != req.InstanceID {
		return nil, builtinDenied("token_binding", fmt.Errorf("%w: %w", ErrServiceTokenInvalid, raftstore.ErrLaunchNotAuthorized), "service_token",
			"is signed for instance %q, but the CSR names instance %q", c.Subject, req.InstanceID)
	}
	scope := raftstore.Identity(c.Domain, c.Service)
	if n, err := s.fsm.State().Nonce(scope, c.ID); err == nil {
		// The log decides at commit; this refuses a replay without a log entry.
		return nil, builtinDenied("nonce_reused", fmt.Errorf("%w: %w", ErrServiceTokenInvalid, raftstore.ErrNonceReused), "service_token",
			"nonce %q was already used for %q at %s; a replayed token is refused, sign a fresh one",
			c.ID, scope, time.Unix(0, n.GetUsed()).UTC().Format(time.RFC3339))
	}
	_, err := s.Apply(ctx, &meshcav1.Command{Time: s.now().UnixNano(), Command: &meshcav1.Command_UseNonce{UseNonce: &meshcav1.UseNonceCommand{
		Scope: scope, Nonce: c.ID, Expires: v.acceptUntil.UnixNano(),
	}}})
	switch {
	case errors.Is(err, raftstore.ErrNonceReused):
		return nil, builtinDenied("nonce_reused", fmt.Errorf("%w: %w", ErrServiceTokenInvalid, err), "service_token",
			"nonce %q: %v; sign a fresh token", c.ID, err)
	case err != nil:
		return nil, refuseAs("provider_unavailable", fmt.Errorf("%w: %w", ErrProviderUnavailable, err), "service_token", "the nonce could not be recorded: %v", err)
	}
	return &Confirmation{Allowed: true}, nil
}

// serviceKeyFlow takes the Register calls that carry a service_token.
func serviceKeyFlow(s *Server) error {
	s.SetServiceTokenRegister(s.registerWithServiceToken)
	return nil
}
