package signer

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func validPKCS11Config() PKCS11Config {
	c := DefaultPKCS11Config()
	c.ModulePath = "/usr/lib/softhsm/libsofthsm2.so"
	c.TokenLabel = "meshca"
	c.KeyLabel = "ca-root"
	c.PINFile = "/run/secrets/hsm-pin"
	return c
}

func TestPKCS11ConfigRulesNameTheField(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(c *PKCS11Config)
		field string // "" when valid
	}{
		{"the defaults with a module, labels and a PIN file are valid", func(c *PKCS11Config) {}, ""},
		{"a PIN from the environment is valid", func(c *PKCS11Config) { c.PINFile, c.PINEnv = "", "HSM_PIN" }, ""},
		{"module_path is required", func(c *PKCS11Config) { c.ModulePath = " " }, "module_path"},
		{"token_label is required", func(c *PKCS11Config) { c.TokenLabel = "" }, "token_label"},
		{"token_label fits in 32 bytes", func(c *PKCS11Config) { c.TokenLabel = strings.Repeat("x", 33) }, "token_label"},
		{"key_label is required", func(c *PKCS11Config) { c.KeyLabel = "" }, "key_label"},
		{"a PIN source is required", func(c *PKCS11Config) { c.PINFile = "" }, "pin_file/pin_env"},
		{"only one PIN source", func(c *PKCS11Config) { c.PINEnv = "HSM_PIN" }, "pin_file/pin_env"},
		{"key_type must be known", func(c *PKCS11Config) { c.KeyType = "dsa-1024" }, "key_type"},
		{"key_type may be empty (open by label)", func(c *PKCS11Config) { c.KeyType = "" }, ""},
		{"max_sessions is not negative", func(c *PKCS11Config) { c.MaxSessions = -1 }, "max_sessions"},
		{"max_sessions is bounded", func(c *PKCS11Config) { c.MaxSessions = 100000 }, "max_sessions"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validPKCS11Config()
			tc.edit(&c)
			err := c.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrPKCS11Config) {
				t.Fatalf("err = %v, want ErrPKCS11Config", err)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %q should name %s", err, tc.field)
			}
		})
	}
}

func TestPKCS11PINIsReadFromFileOrEnv(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "pin")
	if err := os.WriteFile(file, []byte("1234 5678\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MESHCA_TEST_HSM_PIN", "from-env")
	tests := []struct {
		name    string
		file    string
		env     string
		want    string
		wantErr error
	}{
		{"a file's trailing newline is not part of the PIN", file, "", "1234 5678", nil},
		{"the environment variable's value is the PIN", "", "MESHCA_TEST_HSM_PIN", "from-env", nil},
		{"an empty file is a missing PIN", empty, "", "", ErrPINMissing},
		{"an absent file is a missing PIN", filepath.Join(dir, "absent"), "", "", ErrPINMissing},
		{"an unset variable is a missing PIN", "", "MESHCA_TEST_HSM_PIN_UNSET", "", ErrPINMissing},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validPKCS11Config()
			c.PINFile, c.PINEnv = tc.file, tc.env
			got, err := c.readPIN()
			if !errors.Is(err, tc.wantErr) || got != tc.want {
				t.Fatalf("readPIN = %q, %v; want %q, %v", got, err, tc.want, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), tc.file+tc.env) {
				t.Errorf("error %q should name where the PIN was looked for", err)
			}
		})
	}
}
