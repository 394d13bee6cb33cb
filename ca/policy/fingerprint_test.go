package policy_test

import (
	"errors"
	"math/big"
	"strings"
	"testing"

	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
)

func TestFingerprint(t *testing.T) {
	for _, kind := range []string{"p256", "p384", "rsa2048", "ed25519"} {
		t.Run(kind+" CSR fingerprint is the SHA-256 of its SPKI and equals the signer key id", func(t *testing.T) {
			key := testKey(t, kind)
			csr := makeCSR(t, goodCSRTemplate(), key)
			fromCSR := policy.FingerprintSPKI(csr.RawSubjectPublicKeyInfo)
			fromKey, err := policy.FingerprintOf(key.Public())
			if err != nil {
				t.Fatal(err)
			}
			if fromCSR != fromKey {
				t.Errorf("CSR %s != key %s", fromCSR, fromKey)
			}
			id, err := signer.KeyIDOf(key.Public())
			if err != nil {
				t.Fatal(err)
			}
			if fromKey.String() != id {
				t.Errorf("fingerprint %s != signer.KeyIDOf %s", fromKey, id)
			}
			back, err := policy.ParseFingerprint(fromKey.String())
			if err != nil || back != fromKey {
				t.Errorf("ParseFingerprint round trip: %v %v", back, err)
			}
		})
	}
	a, _ := policy.FingerprintOf(testKey(t, "p256").Public())
	b, _ := policy.FingerprintOf(testKey(t, "p256-b").Public())
	if a == b {
		t.Error("two keys share a fingerprint")
	}
	for _, bad := range []string{"", "zz", strings.Repeat("a", 63), strings.Repeat("a", 66)} {
		if _, err := policy.ParseFingerprint(bad); err == nil {
			t.Errorf("ParseFingerprint(%q) accepted", bad)
		}
	}
	if _, err := policy.FingerprintOf(struct{}{}); err == nil {
		t.Error("FingerprintOf accepted a non-key")
	}
}

func TestCheckKeyReuse(t *testing.T) {
	fp, _ := policy.FingerprintOf(testKey(t, "p256").Public())
	cases := []struct {
		name  string
		first *big.Int
		force bool
		want  error
	}{
		{"a new key is allowed", nil, false, nil},
		{"a reused key is refused", big.NewInt(0xabc), false, policy.ErrKeyReused},
		{"a reused key is allowed with force_issue", big.NewInt(0xabc), true, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := policy.CheckKeyReuse(fp, tc.first, tc.force)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if err != nil && !strings.Contains(err.Error(), "csr: public key sha256:"+fp.String()+" was already used for certificate serial abc") {
				t.Errorf("error %q does not name the key and serial", err)
			}
		})
	}
}
