package launcher

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Outcomes of Verify that callers branch on. Every error Verify returns wraps exactly one.
var (
	// ErrMalformed means the document is not a compact ES256 JWT with the claims this provider
	// writes.
	ErrMalformed = errors.New("identity document malformed")
	// ErrSignature means the signature does not verify with the provider's key: the document
	// was altered or another key signed it.
	ErrSignature = errors.New("identity document signature invalid")
	// ErrExpired means the document's expiry has passed.
	ErrExpired = errors.New("identity document expired")
	// ErrNotYetValid means the document was issued in the future (beyond the leeway).
	ErrNotYetValid = errors.New("identity document not yet valid")
	// ErrWrongIssuer means another provider issued the document.
	ErrWrongIssuer = errors.New("identity document from another provider")
	// ErrWrongAudience means the document is for another trust domain.
	ErrWrongAudience = errors.New("identity document for another trust domain")
	// ErrMismatch means the document names another domain, service or instance than the
	// request.
	ErrMismatch = errors.New("identity document does not match the request")
)

// DefaultDocumentTTL is how long an identity document is valid unless the issuer says
// otherwise: long enough to register, short enough that a copied document is soon worthless.
const DefaultDocumentTTL = 5 * time.Minute

// DefaultLeeway is the clock skew Verify allows on the document's times.
const DefaultLeeway = 30 * time.Second

// Instance names one launched instance: the identity <domain>.<service> it runs as and its id
// in the provider's namespace.
type Instance struct {
	Domain     string
	Service    string
	InstanceID string
}

// Document is what an identity document says.
type Document struct {
	// Provider issued it ("iss"), e.g. sys.auth.example.
	Provider string
	// Audience is the trust domain it is for ("aud").
	Audience string
	// Instance is the instance it vouches for.
	Instance
	// ID is its unique id ("jti").
	ID string
	// IssuedAt and Expiry bound its validity ("iat", "nbf" and "exp").
	IssuedAt, Expiry time.Time
}

// instanceClaims are the document's own claims besides the registered JWT ones.
type instanceClaims struct {
	Domain     string `json:"domain"`
	Service    string `json:"service"`
	InstanceID string `json:"instance_id"`
}

// Issuer signs identity documents with the provider's key.
type Issuer struct {
	provider string
	audience string
	signer   jose.Signer
}

// NewIssuer returns an Issuer that signs for provider (the provider's service identity), for
// the trust domain audience, with key (a P-256 key: the documents are ES256).
func NewIssuer(provider, audience string, key *ecdsa.PrivateKey) (*Issuer, error) {
	if provider == "" {
		return nil, errors.New("issuer: provider is required")
	}
	if audience == "" {
		return nil, errors.New("issuer: audience (the trust domain) is required")
	}
	if key == nil || key.Curve != elliptic.P256() {
		return nil, errors.New("issuer: key must be an ECDSA P-256 key (ES256)")
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("issuer: %w", err)
	}
	return &Issuer{provider: provider, audience: audience, signer: s}, nil
}

// Issue signs a document for in, valid from now for ttl, and returns it in compact form.
func (i *Issuer) Issue(in Instance, now time.Time, ttl time.Duration) (string, error) {
	if in.Domain == "" || in.Service == "" || in.InstanceID == "" {
		return "", fmt.Errorf("issue: domain, service and instance id are required (got %q, %q, %q)", in.Domain, in.Service, in.InstanceID)
	}
	if ttl <= 0 {
		return "", fmt.Errorf("issue: ttl %s must be positive", ttl)
	}
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", fmt.Errorf("issue: %w", err)
	}
	std := jwt.Claims{
		Issuer:    i.provider,
		Subject:   in.Domain + "." + in.Service + "/" + in.InstanceID,
		Audience:  jwt.Audience{i.audience},
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now),
		Expiry:    jwt.NewNumericDate(now.Add(ttl)),
		ID:        hex.EncodeToString(jti[:]),
	}
	raw, err := jwt.Signed(i.signer).Claims(std).Claims(instanceClaims(in)).Serialize()
	if err != nil {
		return "", fmt.Errorf("issue: %w", err)
	}
	return raw, nil
}

// Verifier checks identity documents against the provider's public key.
type Verifier struct {
	provider string
	audience string
	key      *ecdsa.PublicKey
	// Leeway is the clock skew allowed on the document's times (DefaultLeeway).
	Leeway time.Duration
}

// NewVerifier returns a Verifier of the documents provider signs with key for the trust
// domain audience.
func NewVerifier(provider, audience string, key *ecdsa.PublicKey) (*Verifier, error) {
	if provider == "" || audience == "" {
		return nil, errors.New("verifier: provider and audience are required")
	}
	if key == nil || key.Curve != elliptic.P256() {
		return nil, errors.New("verifier: key must be an ECDSA P-256 public key (ES256)")
	}
	return &Verifier{provider: provider, audience: audience, key: key, Leeway: DefaultLeeway}, nil
}

// Verify checks that raw is a document this provider signed for this trust domain, valid at
// now, about want, and returns what it says. Every error wraps one of the package's sentinel
// errors and names the claim and the rule.
func (v *Verifier) Verify(raw []byte, want Instance, now time.Time) (*Document, error) {
	if now.IsZero() {
		return nil, errors.New("verify: the time is required")
	}
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: no document", ErrMalformed)
	}
	tok, err := jwt.ParseSigned(string(raw), []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return nil, fmt.Errorf("%w: not a compact ES256 JWT: %w", ErrMalformed, err)
	}
	var std jwt.Claims
	var own instanceClaims
	if err := tok.Claims(v.key, &std, &own); err != nil {
		if errors.Is(err, jose.ErrCryptoFailure) {
			return nil, fmt.Errorf("%w: does not verify with the key of %s", ErrSignature, v.provider)
		}
		return nil, fmt.Errorf("%w: claims: %w", ErrMalformed, err)
	}
	if std.Expiry == nil || std.IssuedAt == nil {
		return nil, fmt.Errorf("%w: exp and iat are required", ErrMalformed)
	}
	err = std.ValidateWithLeeway(jwt.Expected{Issuer: v.provider, AnyAudience: jwt.Audience{v.audience}, Time: now}, v.Leeway)
	switch {
	case errors.Is(err, jwt.ErrInvalidIssuer):
		return nil, fmt.Errorf("%w: iss is %q, want %q", ErrWrongIssuer, std.Issuer, v.provider)
	case errors.Is(err, jwt.ErrInvalidAudience):
		return nil, fmt.Errorf("%w: aud is %q, want %q", ErrWrongAudience, []string(std.Audience), v.audience)
	case errors.Is(err, jwt.ErrExpired):
		return nil, fmt.Errorf("%w: exp %s is before %s", ErrExpired, std.Expiry.Time().UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	case errors.Is(err, jwt.ErrNotValidYet), errors.Is(err, jwt.ErrIssuedInTheFuture):
		return nil, fmt.Errorf("%w: iat %s is after %s", ErrNotYetValid, std.IssuedAt.Time().UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	for _, c := range []struct{ claim, got, want string }{
		{"domain", own.Domain, want.Domain},
		{"service", own.Service, want.Service},
		{"instance_id", own.InstanceID, want.InstanceID},
	} {
		if c.got != c.want {
			return nil, fmt.Errorf("%w: %s is %q, the request says %q", ErrMismatch, c.claim, c.got, c.want)
		}
	}
	return &Document{
		Provider: std.Issuer, Audience: v.audience, Instance: Instance(own), ID: std.ID,
		IssuedAt: std.IssuedAt.Time(), Expiry: std.Expiry.Time(),
	}, nil
}

// GenerateKey makes a new document key (ECDSA P-256).
func GenerateKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// WriteKeyFile writes key to path as PKCS#8 PEM, readable by its owner only. It refuses to
// replace an existing file: a new key would invalidate every document already handed out.
func WriteKeyFile(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("key %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("key %s: %w", path, err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return fmt.Errorf("key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("key %s: %w", path, err)
	}
	return nil
}

// ReadKeyFile reads a document key written by WriteKeyFile (a PKCS#8 or SEC 1 PEM P-256 key).
func ReadKeyFile(path string) (*ecdsa.PrivateKey, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		return nil, fmt.Errorf("key %s: no PEM block", path)
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("key %s: PEM block %q is not a private key", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("key %s: must be an ECDSA P-256 key (ES256)", path)
	}
	return ec, nil
}
