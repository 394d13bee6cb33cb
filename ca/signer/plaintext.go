package signer

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

// PEM block types of plaintext private keys: PKCS#8 (what meshca writes), and PKCS#1 RSA
// and SEC 1 EC keys, which other tools write (an Istio cacerts ca-key.pem is often one).
const (
	PlaintextPKCS8PEMType = "PRIVATE KEY"
	plaintextPKCS1PEMType = "RSA PRIVATE KEY"
	plaintextSEC1PEMType  = "EC PRIVATE KEY"
)

func isPlaintextKeyType(t string) bool {
	return t == PlaintextPKCS8PEMType || t == plaintextPKCS1PEMType || t == plaintextSEC1PEMType
}

// MarshalPlaintextPEM writes a private key unencrypted, as a PKCS#8 "PRIVATE KEY" PEM block.
// Use it only where a plaintext key is really wanted (exporting to a tool that needs one);
// MarshalEncrypted is the normal way to store a CA key.
func MarshalPlaintextPEM(key crypto.Signer) ([]byte, error) {
	key = unwrapSoftware(key)
	if _, err := KeyTypeOf(key.Public()); err != nil {
		return nil, fmt.Errorf("marshal plaintext key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal plaintext key: PKCS#8: %w", err)
	}
	defer clear(der)
	return pem.EncodeToMemory(&pem.Block{Type: PlaintextPKCS8PEMType, Bytes: der}), nil
}

// ParsePlaintextPEM reads an unencrypted private key: a PKCS#8 "PRIVATE KEY", a PKCS#1
// "RSA PRIVATE KEY" or a SEC 1 "EC PRIVATE KEY" block. An encrypted meshca key gives
// ErrEncryptedKey; legacy PEM encryption (Proc-Type headers) gives ErrKeyFormat.
func ParsePlaintextPEM(data []byte) (*Software, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("plaintext key: no PEM block found: %w", ErrKeyFormat)
	}
	if block.Type == EncryptedPEMType {
		return nil, fmt.Errorf("plaintext key: PEM block %q: %w; read it with ParseEncrypted", block.Type, ErrEncryptedKey)
	}
	if _, ok := block.Headers["Proc-Type"]; ok {
		return nil, fmt.Errorf("plaintext key: PEM block %q uses legacy PEM encryption (Proc-Type header), which meshca does not read: %w", block.Type, ErrKeyFormat)
	}
	var (
		parsed any
		err    error
	)
	switch block.Type {
	case PlaintextPKCS8PEMType:
		parsed, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case plaintextPKCS1PEMType:
		parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case plaintextSEC1PEMType:
		parsed, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("plaintext key: PEM block type %q, want %q, %q or %q: %w",
			block.Type, PlaintextPKCS8PEMType, plaintextPKCS1PEMType, plaintextSEC1PEMType, ErrKeyFormat)
	}
	if err != nil {
		return nil, fmt.Errorf("plaintext key: PEM block %q: %w: %w", block.Type, ErrKeyFormat, err)
	}
	key, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("plaintext key: %T is not a signing key: %w", parsed, ErrUnsupportedKey)
	}
	s, err := NewSoftware(key)
	if err != nil {
		return nil, fmt.Errorf("plaintext key: %w", err)
	}
	return s, nil
}

// WritePlaintextFile writes key unencrypted (PKCS#8 PEM) to path with mode 0600, replacing
// any file there atomically.
func WritePlaintextFile(path string, key crypto.Signer) error {
	data, err := MarshalPlaintextPEM(key)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return writeKeyFile(path, data)
}

// ReadPlaintextFile reads an unencrypted private key file (see ParsePlaintextPEM).
func ReadPlaintextFile(path string) (*Software, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read plaintext key: %w", err)
	}
	s, err := ParsePlaintextPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}
