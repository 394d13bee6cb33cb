package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/examples/provider/launcher"
)

// TestIssuedDocumentVerifies runs keygen and issue as the agent's document command does and
// verifies what issue printed with the provider's key.
func TestIssuedDocumentVerifies(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "doc-key.pem")
	if err := run(context.Background(), []string{"keygen", "-key", keyFile}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var out bytes.Buffer
	err := issue([]string{"-key", keyFile, "-trust-domain", "mesh.test", "-domain", "demo", "-service", "client", "-instance", "demo-client-1", "-ttl", "2m"}, &out, io.Discard, now)
	if err != nil {
		t.Fatal(err)
	}
	key, err := launcher.ReadKeyFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	v, err := launcher.NewVerifier(DefaultProvider, "mesh.test", &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	want := launcher.Instance{Domain: "demo", Service: "client", InstanceID: "demo-client-1"}
	doc, err := v.Verify(bytes.TrimSpace(out.Bytes()), want, now)
	if err != nil {
		t.Fatal(err)
	}
	if got := doc.Expiry.Sub(doc.IssuedAt); got != 2*time.Minute {
		t.Fatalf("document valid for %s, want 2m", got)
	}
	t.Run("keygen never replaces a key", func(t *testing.T) {
		if err := run(context.Background(), []string{"keygen", "-key", keyFile}, io.Discard, io.Discard); err == nil {
			t.Fatal("replaced the key")
		}
	})
	t.Run("issue -out writes the document to a file", func(t *testing.T) {
		path := filepath.Join(dir, "doc.jwt")
		err := run(context.Background(), []string{"issue", "-key", keyFile, "-trust-domain", "mesh.test", "-domain", "demo", "-service", "client", "-instance", "demo-client-1", "-out", path}, io.Discard, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
	})
}

func TestCommandLineErrors(t *testing.T) {
	for name, c := range map[string]struct {
		args []string
		part string
	}{
		"a subcommand is required":              {nil, "a subcommand is required"},
		"an unknown subcommand is named":        {[]string{"launch"}, `unknown subcommand "launch"`},
		"issue needs the instance":              {[]string{"issue", "-key", "k", "-trust-domain", "td", "-domain", "d", "-service", "s"}, "-instance is required"},
		"issue needs a positive lifetime":       {[]string{"issue", "-key", "k", "-trust-domain", "td", "-domain", "d", "-service", "s", "-instance", "i", "-ttl", "0s"}, "-ttl 0s must be positive"},
		"serve needs its certificate":           {[]string{"serve", "-key", "k", "-trust-domain", "td"}, "-tls-cert is required"},
		"serve caps lifetimes in whole seconds": {[]string{"serve", "-key", "k", "-trust-domain", "td", "-tls-cert", "c", "-tls-key", "k", "-tls-bundle", "b", "-max-ttl", "1500ms"}, "-max-ttl"},
		"positional arguments are refused":      {[]string{"keygen", "-key", "k", "extra"}, `unexpected argument "extra"`},
	} {
		t.Run(name, func(t *testing.T) {
			err := run(context.Background(), c.args, io.Discard, io.Discard)
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), c.part) {
				t.Fatalf("err = %v, want a usage error naming %q", err, c.part)
			}
		})
	}
}
