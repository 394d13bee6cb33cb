package signer

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// EncryptedPEMType is the PEM block type of a CA private key sealed under a KEK.
//
// The block is self-describing: its headers say the format version, the cipher, the ID of the
// KEK that sealed it, the key type and the GCM nonce; its body is the AES-256-GCM sealed
// PKCS#8 DER of the key. The version, key type and KEK ID are the GCM additional data, so
// none of them can be changed without the open failing.
//
//	-----BEGIN MESHCA ENCRYPTED PRIVATE KEY-----
//	Cipher: AES-256-GCM
//	KEK-ID: 5f0c...
//	Key-Type: ecdsa-p256
//	Nonce: 9a41...
//	Version: 1
//
//	<base64 of ciphertext and tag>
//	-----END MESHCA ENCRYPTED PRIVATE KEY-----
const EncryptedPEMType = "MESHCA ENCRYPTED PRIVATE KEY"

// PEM headers of an EncryptedPEMType block.
const (
	headerVersion = "Version"
	headerCipher  = "Cipher"
	headerKEKID   = "KEK-ID"
	headerKeyType = "Key-Type"
	headerNonce   = "Nonce"

	encryptedVersion = 1
	cipherAES256GCM  = "AES-256-GCM"
)

// ErrWrongKEK is returned when an encrypted key was sealed under a different KEK than the one
// given: the KEK IDs differ.
var ErrWrongKEK = errors.New("key was sealed under a different key-encryption key")

// ErrKeyTampered is returned when an encrypted key's ciphertext, nonce or authenticated
// headers were changed: the AES-GCM open failed under the right KEK.
var ErrKeyTampered = errors.New("encrypted key failed authentication (tampered or corrupt)")

// ErrKeyFormat is returned for a key file that is not in the expected format: no PEM block,
// a wrong block type, a missing or unsupported header.
var ErrKeyFormat = errors.New("malformed key file")

// ErrPlaintextKey is returned when a plaintext private key is given where an encrypted one is
// expected. Plaintext keys are read only by the functions whose names say Plaintext.
var ErrPlaintextKey = errors.New("private key is stored in plaintext")

// ErrEncryptedKey is returned when an encrypted private key is given to a plaintext reader.
var ErrEncryptedKey = errors.New("private key is encrypted")

// MarshalEncrypted seals a private key under kek and returns it as an EncryptedPEMType PEM
// block. key is a *Software or any stdlib private key of a supported type.
func MarshalEncrypted(key crypto.Signer, kek KEK) ([]byte, error) {
	if kek.IsZero() {
		return nil, fmt.Errorf("encrypt key: KEK: %w", ErrKEKMissing)
	}
	key = unwrapSoftware(key)
	kt, err := KeyTypeOf(key.Public())
	if err != nil {
		return nil, fmt.Errorf("encrypt key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encrypt key: marshal PKCS#8: %w", err)
	}
	defer clear(der)
	aead, err := newKEKAEAD(kek)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("encrypt key: nonce: %w", err)
	}
	sealed := aead.Seal(nil, nonce, der, encryptedAAD(encryptedVersion, kt, kek.ID()))
	return pem.EncodeToMemory(&pem.Block{
		Type: EncryptedPEMType,
		Headers: map[string]string{
			headerVersion: strconv.Itoa(encryptedVersion),
			headerCipher:  cipherAES256GCM,
			headerKEKID:   kek.ID(),
			headerKeyType: string(kt),
			headerNonce:   hex.EncodeToString(nonce),
		},
		Bytes: sealed,
	}), nil
}

// ParseEncrypted opens an EncryptedPEMType block with kek. A key sealed under another KEK
// gives ErrWrongKEK; a changed ciphertext or header gives ErrKeyTampered; a plaintext key
// gives ErrPlaintextKey. It never returns a key that did not authenticate.
func ParseEncrypted(data []byte, kek KEK) (*Software, error) {
	if kek.IsZero() {
		return nil, fmt.Errorf("decrypt key: KEK: %w", ErrKEKMissing)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("decrypt key: no PEM block found: %w", ErrKeyFormat)
	}
	if block.Type != EncryptedPEMType {
		if isPlaintextKeyType(block.Type) {
			return nil, fmt.Errorf("decrypt key: PEM block %q: %w; read it with ParsePlaintextPEM if that is intended", block.Type, ErrPlaintextKey)
		}
		return nil, fmt.Errorf("decrypt key: PEM block type %q, want %q: %w", block.Type, EncryptedPEMType, ErrKeyFormat)
	}
	h := block.Headers
	version, err := strconv.Atoi(h[headerVersion])
	if err != nil || version != encryptedVersion {
		return nil, fmt.Errorf("decrypt key: header %s %q: want %d: %w", headerVersion, h[headerVersion], encryptedVersion, ErrKeyFormat)
	}
	if h[headerCipher] != cipherAES256GCM {
		return nil, fmt.Errorf("decrypt key: header %s %q: want %s: %w", headerCipher, h[headerCipher], cipherAES256GCM, ErrKeyFormat)
	}
	kt, err := ParseKeyType(h[headerKeyType])
	if err != nil {
		return nil, fmt.Errorf("decrypt key: header %s: %w: %w", headerKeyType, ErrKeyFormat, err)
	}
	if h[headerKEKID] == "" {
		return nil, fmt.Errorf("decrypt key: header %s is missing: %w", headerKEKID, ErrKeyFormat)
	}
	if h[headerKEKID] != kek.ID() {
		return nil, fmt.Errorf("decrypt key: sealed under KEK %s, given KEK %s: %w", h[headerKEKID], kek.ID(), ErrWrongKEK)
	}
	aead, err := newKEKAEAD(kek)
	if err != nil {
		return nil, err
	}
	nonce, err := hex.DecodeString(h[headerNonce])
	if err != nil || len(nonce) != aead.NonceSize() {
		return nil, fmt.Errorf("decrypt key: header %s: want %d hex bytes: %w", headerNonce, aead.NonceSize(), ErrKeyTampered)
	}
	der, err := aead.Open(nil, nonce, block.Bytes, encryptedAAD(version, kt, kek.ID()))
	if err != nil {
		return nil, fmt.Errorf("decrypt key: %w", ErrKeyTampered)
	}
	defer clear(der)
	parsed, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("decrypt key: PKCS#8: %w: %w", ErrKeyFormat, err)
	}
	key, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("decrypt key: %T is not a signing key: %w", parsed, ErrUnsupportedKey)
	}
	s, err := NewSoftware(key)
	if err != nil {
		return nil, fmt.Errorf("decrypt key: %w", err)
	}
	if s.KeyType() != kt {
		return nil, fmt.Errorf("decrypt key: header %s %s but the key is %s: %w", headerKeyType, kt, s.KeyType(), ErrKeyFormat)
	}
	return s, nil
}

// WriteEncryptedFile seals key under kek and writes it to path with mode 0600, replacing
// any file there atomically.
func WriteEncryptedFile(path string, key crypto.Signer, kek KEK) error {
	data, err := MarshalEncrypted(key, kek)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return writeKeyFile(path, data)
}

// ReadEncryptedFile reads and opens a key written by WriteEncryptedFile.
func ReadEncryptedFile(path string, kek KEK) (*Software, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read encrypted key: %w", err)
	}
	s, err := ParseEncrypted(data, kek)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

func newKEKAEAD(kek KEK) (cipher.AEAD, error) {
	block, err := aes.NewCipher(kek.key[:])
	if err != nil {
		return nil, fmt.Errorf("KEK %s: AES: %w", kek.ID(), err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("KEK %s: GCM: %w", kek.ID(), err)
	}
	return aead, nil
}

// encryptedAAD binds the headers that decide how the plaintext is read to the ciphertext.
func encryptedAAD(version int, kt KeyType, kekID string) []byte {
	return []byte(fmt.Sprintf("%s\x00v%d\x00%s\x00%s", EncryptedPEMType, version, kt, kekID))
}

func unwrapSoftware(key crypto.Signer) crypto.Signer {
	if s, ok := key.(*Software); ok {
		return s.Private()
	}
	return key
}

// writeKeyFile writes a private key file with mode 0600 through a temporary file in the same
// directory, so a reader never sees half a key.
func writeKeyFile(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write key %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		_ = f.Close()
		return fmt.Errorf("write key %s: %w", path, err)
	}
	if _, err = f.Write(data); err != nil {
		_ = f.Close()
		return fmt.Errorf("write key %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("write key %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("write key %s: %w", path, err)
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write key %s: %w", path, err)
	}
	return nil
}
