// Package signer holds the CA's private keys behind one interface: a crypto.Signer that also
// says which algorithm it is and which key it is. Keys live in software (encrypted at rest) or
// in an HSM reached over PKCS#11.
package signer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
)

// KeyType names a key algorithm and size that meshca can use for a CA key.
type KeyType string

// The key types a CA key may have.
const (
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
	RSA2048   KeyType = "rsa-2048"
	RSA3072   KeyType = "rsa-3072"
	RSA4096   KeyType = "rsa-4096"
	Ed25519   KeyType = "ed25519"
)

var keyTypes = map[KeyType]bool{ECDSAP256: true, ECDSAP384: true, RSA2048: true, RSA3072: true, RSA4096: true, Ed25519: true}

// ErrUnsupportedKey is returned for a key algorithm or size meshca does not use for CA keys.
var ErrUnsupportedKey = errors.New("unsupported key type")

// ParseKeyType reads a key type name such as "ecdsa-p256".
func ParseKeyType(s string) (KeyType, error) {
	kt := KeyType(strings.ToLower(strings.TrimSpace(s)))
	if !keyTypes[kt] {
		names := make([]string, 0, len(keyTypes))
		for k := range keyTypes {
			names = append(names, string(k))
		}
		sort.Strings(names)
		return "", fmt.Errorf("key type %q: %w (want one of %s)", s, ErrUnsupportedKey, strings.Join(names, ", "))
	}
	return kt, nil
}

// Signer is a CA private key. Sign follows crypto.Signer: ECDSA signatures are ASN.1 DER,
// whatever the key's backend produces natively.
type Signer interface {
	crypto.Signer
	// KeyType is the key's algorithm and size.
	KeyType() KeyType
	// KeyID identifies the key: the hex SHA-256 of its SubjectPublicKeyInfo.
	KeyID() string
	// SignatureAlgorithm is the x509 algorithm certificates signed by this key use.
	SignatureAlgorithm() x509.SignatureAlgorithm
}

// KeyTypeOf tells the key type of a public key, or ErrUnsupportedKey.
func KeyTypeOf(pub crypto.PublicKey) (KeyType, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return ECDSAP256, nil
		case elliptic.P384():
			return ECDSAP384, nil
		}
		return "", fmt.Errorf("ECDSA curve %s: %w", k.Curve.Params().Name, ErrUnsupportedKey)
	case *rsa.PublicKey:
		switch k.N.BitLen() {
		case 2048:
			return RSA2048, nil
		case 3072:
			return RSA3072, nil
		case 4096:
			return RSA4096, nil
		}
		return "", fmt.Errorf("RSA-%d: %w", k.N.BitLen(), ErrUnsupportedKey)
	case ed25519.PublicKey:
		return Ed25519, nil
	}
	return "", fmt.Errorf("%T: %w", pub, ErrUnsupportedKey)
}

// SignatureAlgorithmFor is the x509 signature algorithm meshca uses with a key type:
// ECDSA with SHA-256 (P-256) or SHA-384 (P-384), RSA PKCS#1 v1.5 with SHA-256, pure Ed25519.
func SignatureAlgorithmFor(kt KeyType) x509.SignatureAlgorithm {
	switch kt {
	case ECDSAP256:
		return x509.ECDSAWithSHA256
	case ECDSAP384:
		return x509.ECDSAWithSHA384
	case RSA2048, RSA3072, RSA4096:
		return x509.SHA256WithRSA
	case Ed25519:
		return x509.PureEd25519
	}
	return x509.UnknownSignatureAlgorithm
}

// KeyIDOf is the hex SHA-256 of a public key's SubjectPublicKeyInfo.
func KeyIDOf(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("marshal public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// GenerateKey makes a new private key of the given type in memory.
func GenerateKey(kt KeyType, random io.Reader) (crypto.Signer, error) {
	if random == nil {
		random = rand.Reader
	}
	switch kt {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), random)
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), random)
	case RSA2048:
		return rsa.GenerateKey(random, 2048)
	case RSA3072:
		return rsa.GenerateKey(random, 3072)
	case RSA4096:
		return rsa.GenerateKey(random, 4096)
	case Ed25519:
		_, priv, err := ed25519.GenerateKey(random)
		return priv, err
	}
	return nil, fmt.Errorf("key type %q: %w", kt, ErrUnsupportedKey)
}

// Software is a CA key held in process memory. See the encrypted-at-rest helpers for how it is
// stored.
type Software struct {
	key   crypto.Signer
	kt    KeyType
	keyID string
}

var _ Signer = (*Software)(nil)

// NewSoftware wraps an in-memory private key.
func NewSoftware(key crypto.Signer) (*Software, error) {
	kt, err := KeyTypeOf(key.Public())
	if err != nil {
		return nil, err
	}
	id, err := KeyIDOf(key.Public())
	if err != nil {
		return nil, err
	}
	return &Software{key: key, kt: kt, keyID: id}, nil
}

// GenerateSoftware makes a new software CA key.
func GenerateSoftware(kt KeyType) (*Software, error) {
	key, err := GenerateKey(kt, rand.Reader)
	if err != nil {
		return nil, err
	}
	return NewSoftware(key)
}

// Public returns the public key.
func (s *Software) Public() crypto.PublicKey { return s.key.Public() }

// Sign signs digest with the key.
func (s *Software) Sign(random io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.key.Sign(random, digest, opts)
}

// KeyType is the key's algorithm and size.
func (s *Software) KeyType() KeyType { return s.kt }

// KeyID is the hex SHA-256 of the key's SubjectPublicKeyInfo.
func (s *Software) KeyID() string { return s.keyID }

// SignatureAlgorithm is the x509 algorithm certificates signed by this key use.
func (s *Software) SignatureAlgorithm() x509.SignatureAlgorithm { return SignatureAlgorithmFor(s.kt) }

// Private returns the in-memory private key, for encrypting it at rest.
func (s *Software) Private() crypto.Signer { return s.key }
