package launcher

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const (
	testProvider = "sys.auth.example"
	testTD       = "mesh.test"
)

var (
	t0       = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	instance = Instance{Domain: "sports", Service: "api", InstanceID: "pod-1.ns.cluster-a"}
)

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func issueDoc(t testing.TB, provider, audience string, key *ecdsa.PrivateKey, in Instance, at time.Time, ttl time.Duration) string {
	t.Helper()
	iss, err := NewIssuer(provider, audience, key)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := iss.Issue(in, at, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// tamper replaces the document's instance id in its payload and keeps the signature.
func tamper(t *testing.T, doc, from, to string) string {
	t.Helper()
	parts := strings.Split(doc, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(payload), from, to, 1)
	if changed == string(payload) {
		t.Fatalf("payload %s has no %q", payload, from)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(changed))
	return strings.Join(parts, ".")
}

// signedWith signs the document's claims with another algorithm and key, as a forger would.
func signedWith(t *testing.T, alg jose.SignatureAlgorithm, key any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jwt.Signed(s).Claims(jwt.Claims{
		Issuer: testProvider, Audience: jwt.Audience{testTD}, IssuedAt: jwt.NewNumericDate(t0), Expiry: jwt.NewNumericDate(t0.Add(time.Hour)),
	}).Claims(instanceClaims(instance)).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestVerify(t *testing.T) {
	key := newKey(t)
	good := issueDoc(t, testProvider, testTD, key, instance, t0, 5*time.Minute)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		doc     string
		want    Instance
		now     time.Time
		err     error
		errPart string
	}{
		{"a document for exactly the request verifies", good, instance, t0.Add(time.Minute), nil, ""},
		{"a document verifies within the leeway after its expiry", good, instance, t0.Add(5*time.Minute + DefaultLeeway - time.Second), nil, ""},
		{"a document past its expiry and the leeway is expired", good, instance, t0.Add(5*time.Minute + DefaultLeeway + time.Second), ErrExpired, "exp"},
		{"a document issued after now (beyond the leeway) is not yet valid", good, instance, t0.Add(-DefaultLeeway - time.Second), ErrNotYetValid, "iat"},
		{"a changed instance id breaks the signature", tamper(t, good, instance.InstanceID, "pod-2.ns.cluster-a"), Instance{"sports", "api", "pod-2.ns.cluster-a"}, t0, ErrSignature, testProvider},
		{"a document signed with another key is refused", issueDoc(t, testProvider, testTD, newKey(t), instance, t0, time.Hour), instance, t0, ErrSignature, "does not verify"},
		{"a document from another provider is refused", issueDoc(t, "sys.auth.other", testTD, key, instance, t0, time.Hour), instance, t0, ErrWrongIssuer, `iss is "sys.auth.other"`},
		{"a document for another trust domain is refused", issueDoc(t, testProvider, "other.test", key, instance, t0, time.Hour), instance, t0, ErrWrongAudience, "aud"},
		{"another instance id is a mismatch", good, Instance{"sports", "api", "pod-9"}, t0, ErrMismatch, `instance_id is "pod-1.ns.cluster-a", the request says "pod-9"`},
		{"another service is a mismatch", good, Instance{"sports", "db", instance.InstanceID}, t0, ErrMismatch, "service"},
		{"another domain is a mismatch", good, Instance{"weather", "api", instance.InstanceID}, t0, ErrMismatch, "domain"},
		{"an HS256 token is not an ES256 document", signedWith(t, jose.HS256, []byte("0123456789abcdef0123456789abcdef")), instance, t0, ErrMalformed, "ES256"},
		{"an ES384 token is not an ES256 document", signedWith(t, jose.ES384, p384), instance, t0, ErrMalformed, "ES256"},
		{"an unsigned token is refused", "eyJhbGciOiJub25lIn0." + base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"sys.auth.example"}`)) + ".", instance, t0, ErrMalformed, "ES256"},
		{"no document is refused", "", instance, t0, ErrMalformed, "no document"},
		{"garbage is refused", "not a jwt", instance, t0, ErrMalformed, "compact"},
	}
	v, err := NewVerifier(testProvider, testTD, &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := v.Verify([]byte(tc.doc), tc.want, tc.now)
			if tc.err == nil {
				if err != nil {
					t.Fatal(err)
				}
				if doc.Instance != tc.want || doc.Provider != testProvider || doc.Audience != testTD || !doc.Expiry.Equal(t0.Add(5*time.Minute)) || doc.ID == "" {
					t.Fatalf("document = %+v", doc)
				}
				return
			}
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.errPart) {
				t.Fatalf("err = %v, want %v naming %q", err, tc.err, tc.errPart)
			}
		})
	}
}

func TestIssueRefusesIncompleteRequests(t *testing.T) {
	key := newKey(t)
	iss, err := NewIssuer(testProvider, testTD, key)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		in  Instance
		ttl time.Duration
	}{
		"the instance id is required":   {Instance{"sports", "api", ""}, time.Minute},
		"the service is required":       {Instance{"sports", "", "i"}, time.Minute},
		"the lifetime must be positive": {instance, 0},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := iss.Issue(c.in, t0, c.ttl); err == nil {
				t.Fatal("issued")
			}
		})
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := NewIssuer(testProvider, testTD, p384); err == nil {
		t.Fatal("a P-384 key signs ES256 documents")
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "doc-key.pem")
	key := newKey(t)
	if err := WriteKeyFile(path, key); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	back, err := ReadKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Equal(key) {
		t.Fatal("the key read back differs")
	}
	t.Run("an existing key is never replaced", func(t *testing.T) {
		if err := WriteKeyFile(path, newKey(t)); err == nil {
			t.Fatal("replaced the key")
		}
		again, err := ReadKeyFile(path)
		if err != nil || !again.Equal(key) {
			t.Fatalf("key changed: %v", err)
		}
	})
	t.Run("a P-384 key is refused", func(t *testing.T) {
		p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		other := filepath.Join(dir, "p384.pem")
		if err := os.WriteFile(other, pemKey(t, p384), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadKeyFile(other); err == nil || !strings.Contains(err.Error(), "P-256") {
			t.Fatalf("err = %v", err)
		}
	})
}
