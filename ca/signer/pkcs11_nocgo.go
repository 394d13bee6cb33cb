//go:build !cgo

package signer

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"io"
)

// PKCS11 is a CA key on a PKCS#11 token. This build has no cgo, so github.com/miekg/pkcs11
// is not linked: the constructors validate the configuration and then fail with
// ErrPKCS11NeedsCgo. meshca-server is built with cgo; the agent and meshctl are not.
type PKCS11 struct {
	cfg PKCS11Config
}

var _ Signer = (*PKCS11)(nil)

// OpenPKCS11 fails with ErrPKCS11NeedsCgo in a build without cgo.
func OpenPKCS11(cfg PKCS11Config) (*PKCS11, error) { return nil, needsCgo(cfg) }

// GeneratePKCS11 fails with ErrPKCS11NeedsCgo in a build without cgo.
func GeneratePKCS11(cfg PKCS11Config) (*PKCS11, error) { return nil, needsCgo(cfg) }

// OpenOrGeneratePKCS11 fails with ErrPKCS11NeedsCgo in a build without cgo.
func OpenOrGeneratePKCS11(cfg PKCS11Config) (*PKCS11, error) { return nil, needsCgo(cfg) }

func needsCgo(cfg PKCS11Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	return fmt.Errorf("pkcs11 key_label %q on token %q: %w", cfg.KeyLabel, cfg.TokenLabel, ErrPKCS11NeedsCgo)
}

// Public returns nil: no key can be opened without cgo.
func (s *PKCS11) Public() crypto.PublicKey { return nil }

// KeyType is empty: no key can be opened without cgo.
func (s *PKCS11) KeyType() KeyType { return "" }

// KeyID is empty: no key can be opened without cgo.
func (s *PKCS11) KeyID() string { return "" }

// SignatureAlgorithm is unknown: no key can be opened without cgo.
func (s *PKCS11) SignatureAlgorithm() x509.SignatureAlgorithm {
	return x509.UnknownSignatureAlgorithm
}

// Label is the configured key label.
func (s *PKCS11) Label() string { return s.cfg.KeyLabel }

// TokenLabel is the configured token label.
func (s *PKCS11) TokenLabel() string { return s.cfg.TokenLabel }

// Sign fails with ErrPKCS11NeedsCgo.
func (s *PKCS11) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, ErrPKCS11NeedsCgo
}

// Close does nothing.
func (s *PKCS11) Close() error { return nil }
