package signer

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"math/big"
	"testing"
)

func TestECDSARawSignatureBecomesDER(t *testing.T) {
	key := testKeys()[ECDSAP256].Private().(*ecdsa.PrivateKey)
	d := sha256.Sum256([]byte("raw to der"))
	der, err := ecdsa.SignASN1(rand.Reader, key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	var rs struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &rs); err != nil {
		t.Fatal(err)
	}
	// What a token returns: r and s left-padded to the curve size, concatenated.
	raw := make([]byte, 64)
	rs.R.FillBytes(raw[:32])
	rs.S.FillBytes(raw[32:])

	got, err := ecdsaRawToDER(raw, 32)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, der) {
		t.Fatalf("DER %x, want %x", got, der)
	}
	if !ecdsa.VerifyASN1(&key.PublicKey, d[:], got) {
		t.Fatal("converted signature does not verify")
	}

	tests := []struct {
		name string
		raw  []byte
	}{
		{"r||s of the wrong length is refused", raw[:63]},
		{"a zero r is refused", append(make([]byte, 32), raw[32:]...)},
		{"a zero s is refused", append(bytes.Clone(raw[:32]), make([]byte, 32)...)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ecdsaRawToDER(tc.raw, 32); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

func TestPKCS1DigestInfoIsTheRFC8017Encoding(t *testing.T) {
	// The DigestInfo prefixes listed in RFC 8017 §9.2, note 1.
	tests := []struct {
		h      crypto.Hash
		prefix string
	}{
		{crypto.SHA224, "302d300d06096086480165030402040500041c"},
		{crypto.SHA256, "3031300d060960864801650304020105000420"},
		{crypto.SHA384, "3041300d060960864801650304020205000430"},
		{crypto.SHA512, "3051300d060960864801650304020305000440"},
	}
	for _, tc := range tests {
		t.Run(tc.h.String(), func(t *testing.T) {
			digest := bytes.Repeat([]byte{0x5a}, tc.h.Size())
			got, err := pkcs1DigestInfo(tc.h, digest)
			if err != nil {
				t.Fatal(err)
			}
			if want := tc.prefix + hex.EncodeToString(digest); hex.EncodeToString(got) != want {
				t.Fatalf("DigestInfo %x, want %s", got, want)
			}
		})
	}
	if _, err := pkcs1DigestInfo(crypto.SHA256, make([]byte, 20)); err == nil {
		t.Error("a digest of the wrong length was accepted")
	}
	if _, err := pkcs1DigestInfo(crypto.MD5, make([]byte, 16)); !errors.Is(err, ErrUnsupportedKey) {
		t.Errorf("MD5: err = %v, want ErrUnsupportedKey", err)
	}
}

func TestPSSSaltLengthFollowsTheStdlibMeaning(t *testing.T) {
	pub := &testKeys()[RSA2048].Private().(*rsa.PrivateKey).PublicKey
	tests := []struct {
		name string
		salt int
		want int
		ok   bool
	}{
		{"auto means the longest salt that fits", rsa.PSSSaltLengthAuto, 256 - 32 - 2, true},
		{"equals-hash means the hash length", rsa.PSSSaltLengthEqualsHash, 32, true},
		{"an explicit length is kept", 20, 20, true},
		{"a length that does not fit is refused", 256, 0, false},
		{"a negative length other than the constants is refused", -7, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pssSaltLength(pub, crypto.SHA256, &rsa.PSSOptions{SaltLength: tc.salt})
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("pssSaltLength = %d, %v; want %d, ok=%t", got, err, tc.want, tc.ok)
			}
		})
	}
}

func TestSoftwareVerificationCatchesAWrongSignature(t *testing.T) {
	d := sha256.Sum256([]byte("verify"))
	for _, kt := range allKeyTypes {
		t.Run(string(kt), func(t *testing.T) {
			key := testKeys()[kt]
			other := testKeys()[ECDSAP256]
			if kt == ECDSAP256 {
				other = testKeys()[ECDSAP384]
			}
			var opts crypto.SignerOpts = crypto.SHA256
			input := d[:]
			if kt == Ed25519 {
				opts, input = crypto.Hash(0), []byte("verify")
			}
			sig, err := key.Sign(rand.Reader, input, opts)
			if err != nil {
				t.Fatal(err)
			}
			if err := verifySignature(key.Public(), input, sig, opts); err != nil {
				t.Fatalf("a good signature failed: %v", err)
			}
			bad := bytes.Clone(sig)
			bad[len(bad)-1] ^= 1
			if err := verifySignature(key.Public(), input, bad, opts); !errors.Is(err, ErrBadTokenSignature) {
				t.Fatalf("a changed signature: err = %v, want ErrBadTokenSignature", err)
			}
			if kt != Ed25519 {
				if err := verifySignature(other.Public(), input, sig, opts); err == nil {
					t.Fatal("a signature verified against another key")
				}
			}
		})
	}
	// RSA-PSS is checked with the salt length asked for, not whatever the token chose.
	key := testKeys()[RSA2048]
	sig, err := key.Sign(rand.Reader, d[:], &rsa.PSSOptions{SaltLength: 20, Hash: crypto.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	if err := verifySignature(key.Public(), d[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}); !errors.Is(err, ErrBadTokenSignature) {
		t.Fatalf("PSS with another salt length: err = %v, want ErrBadTokenSignature", err)
	}
}

func TestCheckDigestMatchesTheSignerContract(t *testing.T) {
	d := sha256.Sum256(nil)
	tests := []struct {
		name   string
		kt     KeyType
		digest []byte
		opts   crypto.SignerOpts
		ok     bool
	}{
		{"ECDSA with a SHA-256 digest", ECDSAP256, d[:], crypto.SHA256, true},
		{"ECDSA digest of the wrong length", ECDSAP256, d[:31], crypto.SHA256, false},
		{"ECDSA without a hash", ECDSAP384, d[:], crypto.Hash(0), false},
		{"RSA PKCS#1 v1.5 of a raw digest (hash 0) as rsa.SignPKCS1v15 allows", RSA2048, d[:], crypto.Hash(0), true},
		{"RSA-PSS without a hash", RSA2048, d[:], &rsa.PSSOptions{}, false},
		{"pure Ed25519 signs any message", Ed25519, []byte("any length message"), crypto.Hash(0), true},
		{"Ed25519ph is not offered", Ed25519, d[:], crypto.SHA512, false},
		{"Ed25519ctx is not offered", Ed25519, d[:], &ed25519.Options{Context: "ctx"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkDigest(tc.kt, tc.digest, tc.opts)
			if (err == nil) != tc.ok {
				t.Fatalf("checkDigest = %v, want ok=%t", err, tc.ok)
			}
		})
	}
}
