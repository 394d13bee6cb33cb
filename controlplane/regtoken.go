package controlplane

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/controlplane/confirm"
	"github.com/meshca/meshca/raftstore"
)

// BuiltinProvider is the provider the CA is itself: it confirms instance register tokens
// (DESIGN.md §4 item 4) and service key tokens (item 3) locally instead of calling a confirm
// endpoint. Like every provider it must be registered (seed it in the config's providers
// with a dns_suffix and no confirm_endpoint, or put it with the admin API), and a service
// must grant it launch before its instances can register through it.
const BuiltinProvider = "sys.auth.meshca"

// RegisterTokenType is the "typ" header of a register token. It keeps a register token from
// being taken for any other JWT (a service key token is "JWT").
const RegisterTokenType = "meshca-register+jwt"

// RegisterTokenClockSkew is how far in the future a register token's iat or nbf may be:
// the node that issued it may run a little ahead of the node that checks it. Expiry is
// checked without allowance: the log refuses an expired token at the commit's time anyway.
const RegisterTokenClockSkew = 30 * time.Second

// ErrRegisterTokenInvalid is wrapped by every refusal of a register token that does not
// verify: not a register token, not signed by an issuer of this CA, for another trust
// domain, or with claims missing or malformed. An expired token wraps raftstore's
// ErrTokenExpired, a used one ErrTokenUsed, one bound to another instance
// ErrLaunchNotAuthorized; every one of them also wraps ErrProviderDenied.
var ErrRegisterTokenInvalid = errors.New("register token invalid")

// registerTokenClaims are the claims of a register token: a compact JWS signed by the CA's
// active issuer key (ES256 for P-256, ES384 for P-384, RS256 for RSA, EdDSA for Ed25519)
// with the header "kid" = the issuer's id and "typ" = RegisterTokenType. iss is the trust
// domain's SPIFFE ID (spiffe://<td>), aud the built-in provider's
// (spiffe://<td>/ns/sys.auth/sa/meshca), sub and instance_id the instance id the token is
// bound to, jti the id of its Token record in the log, iat/nbf its issue time and exp its
// expiry.
type registerTokenClaims struct {
	jwt.Claims
	Domain     string `json:"domain"`
	Service    string `json:"service"`
	InstanceID string `json:"instance_id"`
}

// SignRegisterToken signs a register token carrying tok's jti, binding, issue time and
// expiry with the key of the CA's active issuer. It implements TokenIssuer: the admin API
// records the Token in the log and hands the string to the caller.
func (s *Server) SignRegisterToken(tok *meshcav1.Token) (string, error) {
	switch {
	case tok.GetJti() == "":
		return "", refuse(raftstore.ErrInvalidCommand, "token.jti", "required")
	case tok.GetDomain() == "" || tok.GetService() == "":
		return "", refuse(raftstore.ErrInvalidCommand, "token", "domain and service are required")
	case tok.GetInstanceId() == "":
		return "", refuse(raftstore.ErrInvalidCommand, "token.instance_id", "required: a register token is bound to one instance")
	case tok.GetExpires() <= tok.GetIssued():
		return "", refuse(raftstore.ErrInvalidCommand, "token.expires", "%d is not after the issue time %d", tok.GetExpires(), tok.GetIssued())
	}
	auth, issuer, err := s.Authority()
	if err != nil {
		return "", err
	}
	aud, err := ServiceSPIFFEID(s.td, BuiltinProvider)
	if err != nil {
		return "", err
	}
	key := auth.Issuer().Signer()
	alg, err := joseAlgorithm(key.Public())
	if err != nil {
		return "", fmt.Errorf("register token: CA key: %w", err)
	}
	opts := (&jose.SignerOptions{}).WithType(RegisterTokenType).WithHeader(jose.HeaderKey("kid"), issuer.GetId())
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: cryptosigner.Opaque(key)}, opts)
	if err != nil {
		return "", fmt.Errorf("register token: %w", err)
	}
	issued := time.Unix(0, tok.GetIssued())
	claims := registerTokenClaims{
		Claims: jwt.Claims{
			Issuer:    s.td.IDString(),
			Subject:   tok.GetInstanceId(),
			Audience:  jwt.Audience{aud.String()},
			IssuedAt:  jwt.NewNumericDate(issued),
			NotBefore: jwt.NewNumericDate(issued),
			Expiry:    jwt.NewNumericDate(time.Unix(0, tok.GetExpires())),
			ID:        tok.GetJti(),
		},
		Domain: tok.GetDomain(), Service: tok.GetService(), InstanceID: tok.GetInstanceId(),
	}
	out, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		return "", fmt.Errorf("register token: signing: %w", err)
	}
	return out, nil
}

var _ TokenIssuer = (*Server)(nil)

// tokenAlgorithms are the JWS algorithms the CA signs and accepts tokens with.
var tokenAlgorithms = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256, jose.EdDSA}

// joseAlgorithm is the JWS algorithm of a public key: the only one a token signed by its
// private key is accepted with, so no token can choose a weaker or confusable algorithm.
func joseAlgorithm(pub crypto.PublicKey) (jose.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		}
		return "", fmt.Errorf("ECDSA curve %s: want P-256 or P-384", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return "", fmt.Errorf("RSA key of %d bits: want at least 2048", k.N.BitLen())
		}
		return jose.RS256, nil
	case ed25519.PublicKey:
		return jose.EdDSA, nil
	}
	return "", fmt.Errorf("%T: want an ECDSA P-256/P-384, RSA or Ed25519 key", pub)
}

// builtinDenied is a refusal of the built-in provider: it wraps ErrProviderDenied, so the
// register core passes it on unchanged (PermissionDenied), and cause, the sentinel a caller
// branches on.
func builtinDenied(reason string, cause error, field, format string, args ...any) error {
	return refuseAs(reason, fmt.Errorf("%w: %w", ErrProviderDenied, cause), field, format, args...)
}

// issuerCert finds the issuer a token's kid names among the CA record's issuers (active,
// next, retired) and checks that its certificate chains to the record's roots at now: a
// token signed by an issuer whose root left the bundle no longer verifies.
func issuerCert(rec *meshcav1.CA, kid string, now time.Time) (*x509.Certificate, error) {
	var found *meshcav1.Issuer
	for _, is := range append([]*meshcav1.Issuer{rec.GetActiveIssuer(), rec.GetNextIssuer()}, rec.GetRetiredIssuers()...) {
		if is != nil && is.GetId() == kid {
			found = is
			break
		}
	}
	if found == nil || len(found.GetChain()) == 0 {
		return nil, fmt.Errorf("kid %q names no issuer of this CA", kid)
	}
	certs := make([]*x509.Certificate, len(found.GetChain()))
	for i, der := range found.GetChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("issuer %q: chain[%d]: %w", kid, i, err)
		}
		certs[i] = c
	}
	roots := x509.NewCertPool()
	for _, der := range rec.GetRoots() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("CA record: root: %w", err)
		}
		roots.AddCert(c)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("issuer %q does not chain to the trust bundle at %s: %w", kid, now.UTC().Format(time.RFC3339), err)
	}
	if !certs[0].IsCA {
		return nil, fmt.Errorf("issuer %q is not a CA certificate", kid)
	}
	return certs[0], nil
}

// verifyRegisterToken checks a register token against the cluster's CA record at now: the
// signature of an issuer of this CA whose certificate chains to the bundle, with the
// algorithm of that issuer's key; the type; issuer and audience of this trust domain; an id,
// a binding and an expiry; not expired and not issued in the future. It is a pure decision:
// the caller passes the state and the time. Every refusal names attestation_data.
func verifyRegisterToken(raw string, rec *meshcav1.CA, td spiffeid.TrustDomain, now time.Time) (*registerTokenClaims, error) {
	const field = "attestation_data"
	invalid := func(format string, args ...any) error {
		return builtinDenied("token_invalid", ErrRegisterTokenInvalid, field, format, args...)
	}
	if raw == "" {
		return nil, invalid("required: the register token a domain admin issued for this instance (meshctl token issue)")
	}
	tok, err := jwt.ParseSigned(raw, tokenAlgorithms)
	if err != nil {
		return nil, invalid("not a register token (a JWS signed by this CA): %v", err)
	}
	if len(tok.Headers) != 1 {
		return nil, invalid("register token carries %d signatures; want one", len(tok.Headers))
	}
	h := tok.Headers[0]
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); typ != RegisterTokenType {
		return nil, invalid("token type %q is not %q", typ, RegisterTokenType)
	}
	cert, err := issuerCert(rec, h.KeyID, now)
	if err != nil {
		return nil, invalid("register token is not signed by this CA: %v", err)
	}
	alg, err := joseAlgorithm(cert.PublicKey)
	if err != nil {
		return nil, invalid("issuer %q: %v", h.KeyID, err)
	}
	if h.Algorithm != string(alg) {
		return nil, invalid("register token is signed with %s; issuer %q signs with %s", h.Algorithm, h.KeyID, alg)
	}
	var c registerTokenClaims
	if err := tok.Claims(cert.PublicKey, &c); err != nil {
		return nil, invalid("register token signature does not verify with issuer %q: %v", h.KeyID, err)
	}
	aud, err := ServiceSPIFFEID(td, BuiltinProvider)
	if err != nil {
		return nil, err
	}
	switch {
	case c.Issuer != td.IDString():
		return nil, invalid("register token was issued by %q, not by this trust domain %q", c.Issuer, td.IDString())
	case !c.Audience.Contains(aud.String()):
		return nil, invalid("register token is for audience %v, not %q", []string(c.Audience), aud.String())
	case c.ID == "":
		return nil, invalid("register token has no jti")
	case c.Domain == "" || c.Service == "" || c.InstanceID == "":
		return nil, invalid("register token does not name its domain, service and instance id")
	case c.Subject != c.InstanceID:
		return nil, invalid("register token subject %q is not its instance id %q", c.Subject, c.InstanceID)
	case c.Expiry == nil:
		return nil, invalid("register token %s has no expiry", c.ID)
	}
	if exp := c.Expiry.Time(); !now.Before(exp) {
		return nil, builtinDenied("token_expired", raftstore.ErrTokenExpired, field,
			"register token %s expired at %s (now %s); ask a domain admin for a new one",
			c.ID, exp.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	for _, t := range []*jwt.NumericDate{c.IssuedAt, c.NotBefore} {
		if t != nil && t.Time().After(now.Add(RegisterTokenClockSkew)) {
			return nil, invalid("register token %s is not valid before %s (now %s)", c.ID, t.Time().UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		}
	}
	return &c, nil
}

// builtinConfirmer is the built-in provider sys.auth.meshca: it confirms a registration
// carrying a register token (attestation_data) or a service key token the service-token
// flow verified (see servicekey.go) without calling out.
type builtinConfirmer struct{ s *Server }

// Confirm implements Confirmer.
//
// A register token is verified here (signature, type, issuer, audience, expiry), its binding
// is held to the request (domain, service and the instance id the CSR names), and a token
// the local state already records as used is refused early. Its jti is not consumed here:
// the Confirmation names it and the register core's RecordRegister command consumes it in
// the same log entry that records the certificate. So a token is spent exactly when a
// certificate is committed for it: a registration refused anywhere before that commit (the
// CSR, a reused key, a launch grant, a revoked instance id, a commit that never happened)
// leaves the token usable for a corrected retry, and two registrations racing with one
// token get one certificate between them (the log refuses the second with TOKEN_USED). The
// price is the lost answer: a client whose registration committed but who never saw the
// answer cannot use the token again and needs a new one from a domain admin; registering the
// same instance id with it supersedes the unanswered certificate.
//
// A refresh of an instance this provider launched, where the provider is set to confirm
// refreshes, is allowed: the client certificate proves the instance.
func (b builtinConfirmer) Confirm(ctx context.Context, p *meshcav1.Provider, req *confirm.Request) (*Confirmation, error) {
	if req.Operation == confirm.OperationRefresh {
		return &Confirmation{Allowed: true}, nil
	}
	if st, ok := serviceTokenFrom(ctx); ok {
		return b.s.confirmServiceToken(ctx, st, req)
	}
	now := b.s.now()
	state := b.s.fsm.State()
	rec, err := state.CA()
	if err != nil {
		return nil, refuse(ErrNotReady, "ca", "the CA record has not reached node %s yet; retry shortly", b.s.cfg.NodeID)
	}
	c, err := verifyRegisterToken(string(req.AttestationData), rec, b.s.td, now)
	if err != nil {
		return nil, err
	}
	if err := checkTokenBinding(c, req); err != nil {
		return nil, err
	}
	if t, err := state.Token(c.ID); err == nil {
		// The log decides at commit; this refuses a replay without a log entry. A token not
		// yet replicated here is left to the log.
		if t.GetUsed() {
			return nil, builtinDenied("token_used", raftstore.ErrTokenUsed, "attestation_data",
				"register token %s was already used at %s; a register token works once, ask a domain admin for a new one",
				c.ID, time.Unix(0, t.GetUsedTime()).UTC().Format(time.RFC3339))
		}
		if t.GetDomain() != c.Domain || t.GetService() != c.Service || t.GetInstanceId() != c.InstanceID {
			return nil, builtinDenied("token_invalid", ErrRegisterTokenInvalid, "attestation_data",
				"register token %s does not match its record in the log", c.ID)
		}
	}
	return &Confirmation{Allowed: true, TokenJTI: c.ID}, nil
}

// checkTokenBinding holds a register token's binding to the registration it is presented
// with.
func checkTokenBinding(c *registerTokenClaims, req *confirm.Request) error {
	if c.Domain != req.Domain || c.Service != req.Service || c.InstanceID != req.InstanceID {
		return builtinDenied("token_binding", raftstore.ErrLaunchNotAuthorized, "attestation_data",
			"register token %s is bound to instance %q of %s, not instance %q of %s",
			c.ID, c.InstanceID, raftstore.Identity(c.Domain, c.Service), req.InstanceID, raftstore.Identity(req.Domain, req.Service))
	}
	return nil
}

// registerTokenFlow makes the CA the built-in provider sys.auth.meshca. The server signs
// register tokens for the admin API through SignRegisterToken.
func registerTokenFlow(s *Server) error {
	s.SetConfirmer(BuiltinProvider, builtinConfirmer{s})
	return nil
}
