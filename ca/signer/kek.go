package signer

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// KEKSize is the length in bytes of a key-encryption key: an AES-256 key.
const KEKSize = 32

// ErrKEKMissing is returned when the file or environment variable that should hold the
// key-encryption key is absent or empty.
var ErrKEKMissing = errors.New("key-encryption key is missing")

// ErrKEKMalformed is returned when a key-encryption key is not 32 raw bytes, 64 hex
// characters, or base64 of 32 bytes.
var ErrKEKMalformed = errors.New("key-encryption key is malformed")

// KEK is a key-encryption key: the AES-256 key that seals CA private keys at rest.
// Its ID is a fingerprint that is safe to store beside the sealed key, so that decrypting
// with a different KEK is reported as such instead of as corruption.
type KEK struct {
	key [KEKSize]byte
	id  string
}

// NewKEK makes a KEK from exactly 32 raw bytes.
func NewKEK(raw []byte) (KEK, error) {
	if len(raw) != KEKSize {
		return KEK{}, fmt.Errorf("KEK: %d raw bytes, want %d: %w", len(raw), KEKSize, ErrKEKMalformed)
	}
	var k KEK
	copy(k.key[:], raw)
	// Domain-separated so the ID can never equal a hash of the key used anywhere else.
	h := sha256.New()
	h.Write([]byte("meshca kek id v1\x00"))
	h.Write(k.key[:])
	k.id = hex.EncodeToString(h.Sum(nil)[:16])
	return k, nil
}

// ParseKEK reads a KEK in any of the accepted encodings: exactly 32 raw bytes, 64 hex
// characters, or standard or URL-safe base64 (padded or not) of 32 bytes. Surrounding
// whitespace is ignored in the text forms. The error says which encoding was recognised and
// what was wrong with it.
//
// 32 bytes that are all printable ASCII are read as text, not as a raw key: that is a 32-digit
// hex or 32-character base64 string (a 16- or 24-byte key, a mistake worth reporting), while
// 32 random bytes are all printable with probability below 2^-45.
func ParseKEK(data []byte) (KEK, error) {
	if len(data) == KEKSize && !isPrintableASCII(data) {
		return NewKEK(data)
	}
	text := string(bytes.TrimSpace(data))
	if text == "" {
		return KEK{}, fmt.Errorf("KEK is empty: %w", ErrKEKMissing)
	}
	var hexErr error
	if isHex(text) {
		if len(text) == 2*KEKSize {
			raw, err := hex.DecodeString(text)
			if err != nil {
				return KEK{}, fmt.Errorf("KEK hex: %w: %w", ErrKEKMalformed, err)
			}
			return NewKEK(raw)
		}
		hexErr = fmt.Errorf("KEK looks like hex but has %d characters, want %d (%d bytes): %w",
			len(text), 2*KEKSize, KEKSize, ErrKEKMalformed)
	}
	if raw, ok := decodeBase64(text); ok {
		if len(raw) == KEKSize {
			return NewKEK(raw)
		}
		if hexErr != nil {
			return KEK{}, hexErr
		}
		return KEK{}, fmt.Errorf("KEK base64 decodes to %d bytes, want %d: %w", len(raw), KEKSize, ErrKEKMalformed)
	}
	if hexErr != nil {
		return KEK{}, hexErr
	}
	if len(data) == KEKSize {
		return KEK{}, fmt.Errorf("KEK is %d printable characters, which are read as text (a raw KEK is random bytes), and the text is neither %d hex characters nor base64 of %d bytes: %w",
			KEKSize, 2*KEKSize, KEKSize, ErrKEKMalformed)
	}
	return KEK{}, fmt.Errorf("KEK is not %d raw bytes (got %d), not %d hex characters and not base64 of %d bytes: %w",
		KEKSize, len(data), 2*KEKSize, KEKSize, ErrKEKMalformed)
}

// KEKFromFile reads a KEK from a file (see ParseKEK for the accepted encodings).
func KEKFromFile(path string) (KEK, error) {
	if path == "" {
		return KEK{}, fmt.Errorf("KEK file: path is empty: %w", ErrKEKMissing)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return KEK{}, fmt.Errorf("KEK file %s: %w: %w", path, ErrKEKMissing, err)
		}
		return KEK{}, fmt.Errorf("KEK file %s: %w", path, err)
	}
	k, err := ParseKEK(data)
	if err != nil {
		return KEK{}, fmt.Errorf("KEK file %s: %w", path, err)
	}
	return k, nil
}

// KEKFromEnv reads a KEK from an environment variable (see ParseKEK for the accepted
// encodings; raw bytes are possible but text is the practical choice).
func KEKFromEnv(name string) (KEK, error) {
	if name == "" {
		return KEK{}, fmt.Errorf("KEK environment variable: name is empty: %w", ErrKEKMissing)
	}
	v, ok := os.LookupEnv(name)
	if !ok || v == "" {
		return KEK{}, fmt.Errorf("KEK environment variable %s is unset or empty: %w", name, ErrKEKMissing)
	}
	k, err := ParseKEK([]byte(v))
	if err != nil {
		return KEK{}, fmt.Errorf("KEK environment variable %s: %w", name, err)
	}
	return k, nil
}

// ID is the KEK's fingerprint: 32 hex characters, stored with every key it seals.
func (k KEK) ID() string { return k.id }

// IsZero reports whether k was never set.
func (k KEK) IsZero() bool { return k.id == "" }

// String names the KEK by its ID; it never prints the key.
func (k KEK) String() string { return "KEK " + k.id }

// GoString keeps the key out of %#v output.
func (k KEK) GoString() string { return "signer.KEK{id:" + k.id + "}" }

func isPrintableASCII(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

func decodeBase64(s string) ([]byte, bool) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if raw, err := enc.Strict().DecodeString(s); err == nil {
			return raw, true
		}
	}
	// Some tools wrap long base64 lines; a KEK is short, but accept that too.
	if strings.ContainsAny(s, "\r\n") {
		return decodeBase64(strings.Join(strings.Fields(s), ""))
	}
	return nil, false
}
