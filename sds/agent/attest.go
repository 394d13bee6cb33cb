package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca/signer"
)

// ErrAttestation means the agent could not produce its proof of identity (a document file that
// cannot be read, a command that fails, a key that does not load).
var ErrAttestation = errors.New("attestation failed")

// ErrAttestationSpent means the attestation method cannot prove the identity again: its
// register token was used already (they work once). The agent waits for a new token file.
var ErrAttestationSpent = errors.New("register token already used")

// maxAttestationSize bounds an identity document or token the agent reads.
const maxAttestationSize = 64 << 10

// attestation is the proof a RegisterRequest carries.
type attestation struct {
	provider     string
	data         []byte
	serviceToken string
	// tokenDigest is set for a register token: recorded as spent once the CA accepted it.
	tokenDigest string
}

// attestor produces the proof of one identity for a registration. st is the identity's state,
// which says which register tokens were spent.
type attestor interface {
	attest(ctx context.Context, now time.Time, st identityState) (attestation, error)
}

func newAttestor(a AttestationConfig, id IdentityConfig, td spiffeid.TrustDomain) attestor {
	switch {
	case a.IdentityDocument != nil:
		return &documentAttestor{provider: a.Provider, doc: *a.IdentityDocument}
	case a.ServiceKey != nil:
		return &serviceKeyAttestor{
			provider: a.Provider, keyFile: a.ServiceKey.KeyFile,
			req: ServiceTokenRequest{Domain: id.Domain, Service: id.Service, KeyVersion: a.ServiceKey.KeyVersion, InstanceID: id.InstanceID, TrustDomain: td},
		}
	default:
		return &registerTokenAttestor{provider: a.Provider, file: a.RegisterTokenFile}
	}
}

// documentAttestor passes the provider's identity document, read from a file or a command's
// standard output every time (providers replace their documents), trailing whitespace removed.
type documentAttestor struct {
	provider string
	doc      DocumentConfig
}

func (d *documentAttestor) attest(ctx context.Context, _ time.Time, _ identityState) (attestation, error) {
	var data []byte
	var err error
	if d.doc.File != "" {
		data, err = readBounded(d.doc.File)
		if err != nil {
			return attestation{}, fmt.Errorf("identity_document.file: %w: %w", ErrAttestation, err)
		}
	} else {
		data, err = runDocumentCommand(ctx, d.doc.Command, d.doc.Timeout.D())
		if err != nil {
			return attestation{}, fmt.Errorf("identity_document.command %q: %w: %w", d.doc.Command[0], ErrAttestation, err)
		}
	}
	data = bytes.TrimRight(data, " \t\r\n")
	if len(data) == 0 {
		return attestation{}, fmt.Errorf("identity_document: %w: the document is empty", ErrAttestation)
	}
	return attestation{provider: d.provider, data: data}, nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxAttestationSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxAttestationSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxAttestationSize)
	}
	return data, nil
}

// boundedBuffer keeps the first max bytes written to it and remembers that more came.
type boundedBuffer struct {
	buf      bytes.Buffer
	max      int
	overflow bool
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.buf.Len(); room < len(p) {
		b.overflow = true
		b.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return b.buf.Write(p)
}

func runDocumentCommand(ctx context.Context, argv []string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	stdout := &boundedBuffer{max: maxAttestationSize}
	stderr := &boundedBuffer{max: 4 << 10}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// A child that keeps the output open after the command is killed does not hold us up.
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("did not finish within %s: %w", timeout, err)
		}
		return nil, fmt.Errorf("%w (stderr: %q)", err, bytes.TrimSpace(stderr.buf.Bytes()))
	}
	if stdout.overflow {
		return nil, fmt.Errorf("wrote more than %d bytes", maxAttestationSize)
	}
	return stdout.buf.Bytes(), nil
}

// registerTokenAttestor passes a one-time register token from a file. A token this identity
// registered with once is never presented again: the file must hold a new one.
type registerTokenAttestor struct {
	provider string
	file     string
}

func (r *registerTokenAttestor) attest(_ context.Context, _ time.Time, st identityState) (attestation, error) {
	data, err := readBounded(r.file)
	if err != nil {
		return attestation{}, fmt.Errorf("register_token_file: %w: %w", ErrAttestation, err)
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return attestation{}, fmt.Errorf("register_token_file %s: %w: the file is empty", r.file, ErrAttestation)
	}
	digest := tokenDigest(data)
	if st.spent(digest) {
		return attestation{}, fmt.Errorf("register_token_file %s: %w: put a new token there to register again", r.file, ErrAttestationSpent)
	}
	return attestation{provider: r.provider, data: data, tokenDigest: digest}, nil
}

func tokenDigest(token []byte) string {
	sum := sha256.Sum256(token)
	return hex.EncodeToString(sum[:])
}

// serviceKeyAttestor signs a fresh service key token for every registration.
type serviceKeyAttestor struct {
	provider string
	keyFile  string
	req      ServiceTokenRequest
}

func (s *serviceKeyAttestor) attest(_ context.Context, now time.Time, _ identityState) (attestation, error) {
	key, err := signer.ReadPlaintextFile(s.keyFile)
	if err != nil {
		return attestation{}, fmt.Errorf("service_key.key_file: %w: %w", ErrAttestation, err)
	}
	tok, err := SignServiceToken(key, s.req, now)
	if err != nil {
		return attestation{}, fmt.Errorf("service_key: %w: %w", ErrAttestation, err)
	}
	return attestation{provider: s.provider, serviceToken: tok}, nil
}

// ServiceTokenTTL is how long a service key token is valid after it is signed.
const ServiceTokenTTL = 5 * time.Minute

// ServiceTokenRequest is what a service key token says.
type ServiceTokenRequest struct {
	Domain, Service string
	// KeyVersion is the version the signing key's public key is registered under.
	KeyVersion string
	// InstanceID is the instance registering.
	InstanceID string
	// TrustDomain is the cluster the token is meant for.
	TrustDomain spiffeid.TrustDomain
}

// ServiceTokenClaims are the claims of a service key token. The token is a compact JWS (JWT)
// whose header carries "kid" = key version and "typ" = "JWT", signed with ES256 (P-256),
// ES384 (P-384), RS256 (RSA) or EdDSA (Ed25519) by the service's private key. The registered
// claims are: iss = "<domain>.<service>", sub = the instance id, aud = ["spiffe://<trust-domain>"],
// iat = signing time, exp = iat + ServiceTokenTTL, jti = a random 128-bit nonce (hex) that the
// CA refuses to see twice. The private claims repeat domain, service and key version so the CA
// reads them without splitting iss.
type ServiceTokenClaims struct {
	jwt.Claims
	Domain     string `json:"domain"`
	Service    string `json:"service"`
	KeyVersion string `json:"key_version"`
}

// SignServiceToken signs a service key token (see ServiceTokenClaims) at now.
func SignServiceToken(key crypto.Signer, req ServiceTokenRequest, now time.Time) (string, error) {
	alg, err := joseAlgorithm(key.Public())
	if err != nil {
		return "", err
	}
	if req.Domain == "" || req.Service == "" || req.KeyVersion == "" || req.TrustDomain.IsZero() {
		return "", errors.New("service token: domain, service, key version and trust domain are required")
	}
	opts := (&jose.SignerOptions{}).WithType("JWT").WithHeader(jose.HeaderKey("kid"), req.KeyVersion)
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: cryptosigner.Opaque(key)}, opts)
	if err != nil {
		return "", fmt.Errorf("service token: %w", err)
	}
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", fmt.Errorf("service token: nonce: %w", err)
	}
	claims := ServiceTokenClaims{
		Claims: jwt.Claims{
			Issuer:   req.Domain + "." + req.Service,
			Subject:  req.InstanceID,
			Audience: jwt.Audience{req.TrustDomain.IDString()},
			IssuedAt: jwt.NewNumericDate(now),
			Expiry:   jwt.NewNumericDate(now.Add(ServiceTokenTTL)),
			ID:       hex.EncodeToString(nonce[:]),
		},
		Domain: req.Domain, Service: req.Service, KeyVersion: req.KeyVersion,
	}
	tok, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		return "", fmt.Errorf("service token: signing: %w", err)
	}
	return tok, nil
}

func joseAlgorithm(pub crypto.PublicKey) (jose.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		}
		return "", fmt.Errorf("service key: ECDSA curve %s: want P-256 or P-384", k.Curve.Params().Name)
	case *rsa.PublicKey:
		return jose.RS256, nil
	case ed25519.PublicKey:
		return jose.EdDSA, nil
	}
	return "", fmt.Errorf("service key: %T: want ECDSA, RSA or Ed25519", pub)
}
