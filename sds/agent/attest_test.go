package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca/signer"
)

func TestIdentityDocumentsComeFromAFileOrACommand(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "doc"), []byte("eyJhbGciOi.doc\r\n\n"), 0o600)
	write(t, filepath.Join(dir, "empty"), []byte(" \n"), 0o600)
	cases := []struct {
		name    string
		doc     DocumentConfig
		want    string
		wantErr string
	}{
		{"a file is read and its trailing newline dropped", DocumentConfig{File: filepath.Join(dir, "doc")}, "eyJhbGciOi.doc", ""},
		{"a command's standard output is the document", DocumentConfig{Command: []string{"/bin/sh", "-c", "echo doc-from-command"}}, "doc-from-command", ""},
		{"a missing file is an attestation error", DocumentConfig{File: filepath.Join(dir, "missing")}, "", "identity_document.file"},
		{"an empty document is refused", DocumentConfig{File: filepath.Join(dir, "empty")}, "", "the document is empty"},
		{"a failing command reports its stderr", DocumentConfig{Command: []string{"/bin/sh", "-c", "echo no credentials >&2; exit 3"}}, "", "no credentials"},
		{"a command that hangs is stopped at its timeout", DocumentConfig{Command: []string{"/bin/sh", "-c", "exec sleep 60"}, Timeout: NewDuration(50 * time.Millisecond)}, "", "did not finish within 50ms"},
		{"a command that writes too much is refused", DocumentConfig{Command: []string{"/bin/sh", "-c", "head -c 70000 /dev/zero"}}, "", "more than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.doc.Timeout.D() == 0 {
				tc.doc.Timeout = NewDuration(waitFor)
			}
			d := &documentAttestor{provider: "sys.auth.k8s", doc: tc.doc}
			att, err := d.attest(context.Background(), time.Now(), identityState{})
			if tc.wantErr != "" {
				if !errors.Is(err, ErrAttestation) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want ErrAttestation mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(att.data) != tc.want || att.provider != "sys.auth.k8s" || att.serviceToken != "" {
				t.Fatalf("attestation %+v, want document %q", att, tc.want)
			}
		})
	}
}

func TestARegisterTokenIsSpentOnceRecorded(t *testing.T) {
	file := filepath.Join(t.TempDir(), "token")
	write(t, file, []byte("  token-1\n"), 0o600)
	r := &registerTokenAttestor{provider: BuiltinProvider, file: file}
	att, err := r.attest(context.Background(), time.Now(), identityState{})
	if err != nil {
		t.Fatal(err)
	}
	if string(att.data) != "token-1" || att.tokenDigest != tokenDigest([]byte("token-1")) {
		t.Fatalf("attestation %+v", att)
	}
	_, err = r.attest(context.Background(), time.Now(), identityState{SpentTokens: []string{att.tokenDigest}})
	if !errors.Is(err, ErrAttestationSpent) || !strings.Contains(err.Error(), file) {
		t.Fatalf("a spent token: %v, want ErrAttestationSpent naming the file", err)
	}
}

func TestServiceKeyTokensCarryTheAgreedClaims(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	req := ServiceTokenRequest{Domain: "sports", Service: "api", KeyVersion: "7", InstanceID: "pod-1", TrustDomain: spiffeid.RequireTrustDomainFromString("mesh.example")}
	cases := []struct {
		name string
		key  crypto.Signer
		alg  jose.SignatureAlgorithm
	}{
		{"a P-256 key signs ES256", p256, jose.ES256},
		{"a P-384 key signs ES384", p384, jose.ES384},
		{"an RSA key signs RS256", rsaKey, jose.RS256},
		{"an Ed25519 key signs EdDSA", edKey, jose.EdDSA},
	}
	nonces := map[string]bool{}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The key file path a config names goes through the signer package's reader.
			path := filepath.Join(t.TempDir(), "key.pem")
			if err := signer.WritePlaintextFile(path, tc.key); err != nil {
				t.Fatal(err)
			}
			s := &serviceKeyAttestor{provider: BuiltinProvider, keyFile: path, req: req}
			att, err := s.attest(context.Background(), now, identityState{})
			if err != nil {
				t.Fatal(err)
			}
			tok, err := jwt.ParseSigned(att.serviceToken, []jose.SignatureAlgorithm{tc.alg})
			if err != nil {
				t.Fatal(err)
			}
			h := tok.Headers[0]
			if h.KeyID != "7" || h.Algorithm != string(tc.alg) || h.ExtraHeaders[jose.HeaderType] != "JWT" {
				t.Fatalf("header %+v", h)
			}
			var c ServiceTokenClaims
			if err := tok.Claims(tc.key.Public(), &c); err != nil {
				t.Fatalf("signature: %v", err)
			}
			if err := c.Validate(jwt.Expected{Issuer: "sports.api", Subject: "pod-1", AnyAudience: jwt.Audience{"spiffe://mesh.example"}, Time: now}); err != nil {
				t.Fatal(err)
			}
			if c.Domain != "sports" || c.Service != "api" || c.KeyVersion != "7" {
				t.Fatalf("private claims %+v", c)
			}
			if c.Expiry.Time().Sub(c.IssuedAt.Time()) != ServiceTokenTTL {
				t.Fatalf("valid for %s, want %s", c.Expiry.Time().Sub(c.IssuedAt.Time()), ServiceTokenTTL)
			}
			if len(c.ID) != 32 || nonces[c.ID] {
				t.Fatalf("nonce %q is not a fresh 128-bit hex value", c.ID)
			}
			nonces[c.ID] = true
		})
	}
	t.Run("a P-521 key is refused", func(t *testing.T) {
		if _, err := SignServiceToken(p521, req, now); err == nil || !strings.Contains(err.Error(), "P-256 or P-384") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("a missing key file is an attestation error", func(t *testing.T) {
		s := &serviceKeyAttestor{provider: BuiltinProvider, keyFile: filepath.Join(t.TempDir(), "none"), req: req}
		if _, err := s.attest(context.Background(), now, identityState{}); !errors.Is(err, ErrAttestation) {
			t.Fatalf("got %v", err)
		}
	})
}
