package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBadCommandLinesAndConfigsExitTwoWithTheReason(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("trust_domain: mesh.example\nservers: [\"127.0.0.1:1\"]\nstate_dri: /x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no config", nil, "-config is required"},
		{"a stray argument", []string{"-config", bad, "extra"}, "no arguments are taken"},
		{"an unknown flag", []string{"-confg", bad}, "flag provided but not defined: -confg"},
		{"a bad log level", []string{"-config", bad, "-log-level", "loud"}, "-log-level"},
		{"a bad log format", []string{"-config", bad, "-log-format", "xml"}, `-log-format: "xml" is not text or json`},
		{"a missing config file", []string{"-config", filepath.Join(dir, "none.yaml")}, "no such file"},
		{"a config with an unknown key", []string{"-config", bad}, `unknown key "state_dri"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := run(context.Background(), tc.args, &stderr); code != 2 {
				t.Fatalf("exit %d, want 2 (stderr %q)", code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("stderr %q does not say %q", stderr.String(), tc.want)
			}
		})
	}
}
