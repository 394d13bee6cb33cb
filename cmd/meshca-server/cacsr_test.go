package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/clustertest"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Main(m)) }

// TestCACSRCommandLineRefusals pins that a bad `meshca-server ca csr` line is refused before
// any token is touched, with an error naming the flag and the rule.
func TestCACSRCommandLineRefusals(t *testing.T) {
	dir := t.TempDir()
	pin := filepath.Join(dir, "pin")
	if err := os.WriteFile(pin, []byte("1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := func(over ...string) []string {
		flags := map[string]string{
			"--pkcs11-module": filepath.Join(dir, "module.so"), "--token-label": "tok", "--key-label": "meshca-int",
			"--pin-file": pin, "--trust-domain": "mesh.test", "--out": filepath.Join(dir, "csr.pem"),
		}
		for i := 0; i < len(over); i += 2 {
			if over[i+1] == "" {
				delete(flags, over[i])
			} else {
				flags[over[i]] = over[i+1]
			}
		}
		args := []string{"csr"}
		for k, v := range flags {
			args = append(args, k+"="+v)
		}
		return args
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"a command is required", nil, "ca csr"},
		{"an unknown command is refused", []string{"sign"}, "ca csr"},
		{"--out is required", good("--out", ""), "--out is required"},
		{"--trust-domain is required", good("--trust-domain", ""), "--trust-domain is required"},
		{"the trust domain must be a SPIFFE trust domain", good("--trust-domain", "Mesh Test"), `--trust-domain "Mesh Test"`},
		{"the key type must be one meshca uses", good("--key-type", "dsa-1024"), "--key-type"},
		{"the module is required", good("--pkcs11-module", ""), "module_path: required"},
		{"the token label is required", good("--token-label", ""), "token_label: required"},
		{"the key label is required", good("--key-label", ""), "key_label: required"},
		{"a PIN source is required", good("--pin-file", ""), "pin_file/pin_env: one is required"},
		{"only one PIN source", good("--pin-env", "MESHCA_PIN"), "pin_file/pin_env: set exactly one"},
		{"no arguments", append(good(), "extra"), "takes no arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := runCA(tc.args, &stdout, &stderr)
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want a usage error containing %q", err, tc.want)
			}
			if _, statErr := os.Stat(filepath.Join(dir, "csr.pem")); statErr == nil {
				t.Fatal("a refused command line wrote the CSR")
			}
		})
	}
}
