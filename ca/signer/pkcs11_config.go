package signer

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// ErrPKCS11NeedsCgo is returned by the PKCS#11 constructors of a binary built without cgo.
var ErrPKCS11NeedsCgo = errors.New("PKCS#11 needs a cgo build of meshca-server")

// ErrPKCS11Config is returned for a PKCS11Config that breaks a rule; the message names the
// field.
var ErrPKCS11Config = errors.New("invalid PKCS#11 configuration")

// ErrPINMissing is returned when the PIN file or environment variable is absent or empty.
var ErrPINMissing = errors.New("PKCS#11 PIN is missing")

// ErrPINIncorrect is returned when the token refuses the PIN (incorrect, invalid or locked).
var ErrPINIncorrect = errors.New("PKCS#11 token refused the PIN")

// ErrTokenNotFound is returned when no token, or more than one, has the configured label.
var ErrTokenNotFound = errors.New("PKCS#11 token not found")

// ErrKeyNotFound is returned when no private key on the token has the configured label, or
// its public key is missing.
var ErrKeyNotFound = errors.New("PKCS#11 key not found")

// ErrKeyAmbiguous is returned when more than one private key on the token has the label.
var ErrKeyAmbiguous = errors.New("PKCS#11 key label matches more than one key")

// ErrKeyExists is returned when asked to generate a key under a label that is already used.
var ErrKeyExists = errors.New("PKCS#11 key label is already used")

// ErrKeyExportable is returned when the key found by label could leave the token: it is not
// CKA_SENSITIVE or it is CKA_EXTRACTABLE. meshca uses only keys that cannot.
var ErrKeyExportable = errors.New("PKCS#11 key can leave the token")

// ErrBadTokenSignature is returned when a signature made by the token does not verify in
// software against the key's public key. The signature is never returned.
var ErrBadTokenSignature = errors.New("signature from the token failed software verification")

// ErrSignerClosed is returned by Sign after Close.
var ErrSignerClosed = errors.New("signer is closed")

// DefaultPKCS11MaxSessions is how many sessions a PKCS#11 signer keeps open at most when
// PKCS11Config.MaxSessions is zero.
const DefaultPKCS11MaxSessions = 8

// maxPKCS11Sessions bounds PKCS11Config.MaxSessions; tokens have session limits far below.
const maxPKCS11Sessions = 256

// PKCS11Config says where a CA key lives in an HSM. The PIN is never part of the
// configuration: it is read from PINFile or from the environment variable PINEnv (exactly one).
type PKCS11Config struct {
	// ModulePath is the PKCS#11 module (shared library), e.g. /usr/lib/softhsm/libsofthsm2.so.
	ModulePath string `yaml:"module_path"`
	// TokenLabel selects the token (at most 32 bytes, as PKCS#11 stores it).
	TokenLabel string `yaml:"token_label"`
	// KeyLabel is the CKA_LABEL of the key pair.
	KeyLabel string `yaml:"key_label"`
	// PINFile is a file holding the user PIN (a trailing newline is ignored).
	PINFile string `yaml:"pin_file"`
	// PINEnv is an environment variable holding the user PIN.
	PINEnv string `yaml:"pin_env"`
	// KeyType is required to generate a key; when opening an existing key it is optional and,
	// if set, must match the key found.
	KeyType KeyType `yaml:"key_type"`
	// MaxSessions bounds the session pool: PKCS#11 sessions are not safe for concurrent use,
	// so at most this many Sign calls run on the token at once. Zero means
	// DefaultPKCS11MaxSessions.
	MaxSessions int `yaml:"max_sessions"`
	// Logger receives a warning when a lost session is replaced. Nil means slog.Default().
	Logger *slog.Logger `yaml:"-"`
}

// DefaultPKCS11Config is a configuration with the defaults filled in; the caller sets the
// module, labels and PIN source.
func DefaultPKCS11Config() PKCS11Config {
	return PKCS11Config{KeyType: ECDSAP256, MaxSessions: DefaultPKCS11MaxSessions}
}

// Validate checks the configuration's rules; each error names the field.
func (c PKCS11Config) Validate() error {
	var errs []error
	bad := func(field, rule string, args ...any) {
		errs = append(errs, fmt.Errorf("pkcs11 %s: %s: %w", field, fmt.Sprintf(rule, args...), ErrPKCS11Config))
	}
	if strings.TrimSpace(c.ModulePath) == "" {
		bad("module_path", "required")
	}
	switch {
	case c.TokenLabel == "":
		bad("token_label", "required")
	case len(c.TokenLabel) > 32:
		bad("token_label", "%d bytes, at most 32", len(c.TokenLabel))
	}
	if c.KeyLabel == "" {
		bad("key_label", "required")
	}
	switch {
	case c.PINFile == "" && c.PINEnv == "":
		bad("pin_file/pin_env", "one is required (the PIN is never written in the configuration)")
	case c.PINFile != "" && c.PINEnv != "":
		bad("pin_file/pin_env", "set exactly one, not both")
	}
	if c.KeyType != "" {
		if _, err := ParseKeyType(string(c.KeyType)); err != nil {
			errs = append(errs, fmt.Errorf("pkcs11 key_type: %w: %w", ErrPKCS11Config, err))
		}
	}
	if c.MaxSessions < 0 || c.MaxSessions > maxPKCS11Sessions {
		bad("max_sessions", "%d, want 1..%d (0 for the default %d)", c.MaxSessions, maxPKCS11Sessions, DefaultPKCS11MaxSessions)
	}
	return errors.Join(errs...)
}

// maxSessions is MaxSessions with the default applied.
func (c PKCS11Config) maxSessions() int {
	if c.MaxSessions == 0 {
		return DefaultPKCS11MaxSessions
	}
	return c.MaxSessions
}

func (c PKCS11Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.Default()
	}
	return c.Logger
}

// pinSource names where the PIN comes from, for messages; never the PIN itself.
func (c PKCS11Config) pinSource() string {
	if c.PINFile != "" {
		return "pin_file " + c.PINFile
	}
	return "pin_env " + c.PINEnv
}

// readPIN reads the user PIN from the configured file or environment variable.
func (c PKCS11Config) readPIN() (string, error) {
	if c.PINFile != "" {
		data, err := os.ReadFile(c.PINFile)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return "", fmt.Errorf("pkcs11 pin_file %s: %w: %w", c.PINFile, ErrPINMissing, err)
			}
			return "", fmt.Errorf("pkcs11 pin_file %s: %w", c.PINFile, err)
		}
		pin := strings.TrimRight(string(data), "\r\n")
		if pin == "" {
			return "", fmt.Errorf("pkcs11 pin_file %s is empty: %w", c.PINFile, ErrPINMissing)
		}
		return pin, nil
	}
	pin, ok := os.LookupEnv(c.PINEnv)
	if !ok || pin == "" {
		return "", fmt.Errorf("pkcs11 pin_env %s is unset or empty: %w", c.PINEnv, ErrPINMissing)
	}
	return pin, nil
}
