package signer

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var allKeyTypes = []KeyType{ECDSAP256, ECDSAP384, RSA2048, RSA3072, RSA4096, Ed25519}

// testKeys generates one software key per type for the whole test binary: RSA-4096
// generation is slow enough that doing it per test would dominate the run.
var testKeys = sync.OnceValue(func() map[KeyType]*Software {
	keys := make(map[KeyType]*Software, len(allKeyTypes))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, kt := range allKeyTypes {
		wg.Go(func() {
			s, err := GenerateSoftware(kt)
			if err != nil {
				panic(err)
			}
			mu.Lock()
			keys[kt] = s
			mu.Unlock()
		})
	}
	wg.Wait()
	return keys
})

func testKEK(t testing.TB) KEK {
	t.Helper()
	raw := make([]byte, KEKSize)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	k, err := NewKEK(raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// signAndVerify signs a fixed message the way x509 would for the key type and checks the
// signature with the stdlib against pub.
func signAndVerify(t *testing.T, s crypto.Signer, kt KeyType, pub crypto.PublicKey) {
	t.Helper()
	msg := []byte("meshca test message " + string(kt))
	switch kt {
	case Ed25519:
		sig, err := s.Sign(rand.Reader, msg, crypto.Hash(0))
		if err != nil {
			t.Fatalf("sign: %v", err)
		}
		if !ed25519.Verify(pub.(ed25519.PublicKey), msg, sig) {
			t.Fatal("Ed25519 signature does not verify")
		}
	case ECDSAP384:
		d := sha512.Sum384(msg)
		sig, err := s.Sign(rand.Reader, d[:], crypto.SHA384)
		if err != nil {
			t.Fatalf("sign: %v", err)
		}
		if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], sig) {
			t.Fatal("ECDSA signature does not verify")
		}
	case ECDSAP256:
		d := sha256.Sum256(msg)
		sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
		if err != nil {
			t.Fatalf("sign: %v", err)
		}
		if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], sig) {
			t.Fatal("ECDSA signature does not verify")
		}
	default:
		d := sha256.Sum256(msg)
		sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
		if err != nil {
			t.Fatalf("sign: %v", err)
		}
		if err := rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), crypto.SHA256, d[:], sig); err != nil {
			t.Fatalf("RSA signature does not verify: %v", err)
		}
	}
}

func TestEncryptedKeyRoundTripsForEveryKeyType(t *testing.T) {
	kek := testKEK(t)
	for _, kt := range allKeyTypes {
		t.Run(string(kt), func(t *testing.T) {
			orig := testKeys()[kt]
			data, err := MarshalEncrypted(orig, kek)
			if err != nil {
				t.Fatalf("MarshalEncrypted: %v", err)
			}
			block, _ := pem.Decode(data)
			if block == nil || block.Type != EncryptedPEMType {
				t.Fatalf("output is not a %q PEM block:\n%s", EncryptedPEMType, data)
			}
			if got := block.Headers["Key-Type"]; got != string(kt) {
				t.Errorf("Key-Type header = %q, want %q", got, kt)
			}
			if got := block.Headers["KEK-ID"]; got != kek.ID() {
				t.Errorf("KEK-ID header = %q, want %q", got, kek.ID())
			}
			der, err := x509.MarshalPKCS8PrivateKey(orig.Private())
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(data, der) || bytes.Contains(block.Bytes, der) {
				t.Fatal("the sealed block contains the plaintext PKCS#8")
			}
			got, err := ParseEncrypted(data, kek)
			if err != nil {
				t.Fatalf("ParseEncrypted: %v", err)
			}
			if got.KeyType() != kt || got.KeyID() != orig.KeyID() {
				t.Fatalf("got %s %s, want %s %s", got.KeyType(), got.KeyID(), kt, orig.KeyID())
			}
			signAndVerify(t, got, kt, orig.Public())
		})
	}
}

func TestEncryptingTwiceUsesFreshNonces(t *testing.T) {
	kek := testKEK(t)
	key := testKeys()[ECDSAP256]
	a, err := MarshalEncrypted(key, kek)
	if err != nil {
		t.Fatal(err)
	}
	b, err := MarshalEncrypted(key, kek)
	if err != nil {
		t.Fatal(err)
	}
	ba, _ := pem.Decode(a)
	bb, _ := pem.Decode(b)
	if ba.Headers["Nonce"] == bb.Headers["Nonce"] || bytes.Equal(ba.Bytes, bb.Bytes) {
		t.Fatal("two encryptions of the same key share a nonce or ciphertext")
	}
}

func TestWrongKEKIsReportedAsWrongKEK(t *testing.T) {
	right, wrong := testKEK(t), testKEK(t)
	for _, kt := range allKeyTypes {
		t.Run(string(kt), func(t *testing.T) {
			data, err := MarshalEncrypted(testKeys()[kt], right)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseEncrypted(data, wrong)
			if !errors.Is(err, ErrWrongKEK) {
				t.Fatalf("err = %v, want ErrWrongKEK", err)
			}
			if got != nil {
				t.Fatal("a key was returned with the wrong KEK")
			}
			if !strings.Contains(err.Error(), right.ID()) || !strings.Contains(err.Error(), wrong.ID()) {
				t.Errorf("error %q should name both KEK IDs", err)
			}
		})
	}
}

// rewriteBlock decodes an encrypted PEM, lets edit change it, and re-encodes it.
func rewriteBlock(t *testing.T, data []byte, edit func(b *pem.Block)) []byte {
	t.Helper()
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatal("no PEM block")
	}
	b.Bytes = bytes.Clone(b.Bytes)
	edit(b)
	return pem.EncodeToMemory(b)
}

func TestTamperedEncryptedKeyIsRefused(t *testing.T) {
	kek := testKEK(t)
	data, err := MarshalEncrypted(testKeys()[ECDSAP256], kek)
	if err != nil {
		t.Fatal(err)
	}
	otherNonce := make([]byte, 12)
	if _, err := rand.Read(otherNonce); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		edit func(b *pem.Block)
		want error
	}{
		{"a flipped ciphertext bit fails authentication", func(b *pem.Block) { b.Bytes[len(b.Bytes)/2] ^= 0x01 }, ErrKeyTampered},
		{"a flipped tag bit fails authentication", func(b *pem.Block) { b.Bytes[len(b.Bytes)-1] ^= 0x80 }, ErrKeyTampered},
		{"a truncated ciphertext fails authentication", func(b *pem.Block) { b.Bytes = b.Bytes[:len(b.Bytes)-20] }, ErrKeyTampered},
		{"a changed nonce fails authentication", func(b *pem.Block) { b.Headers["Nonce"] = hex.EncodeToString(otherNonce) }, ErrKeyTampered},
		{"a short nonce is refused", func(b *pem.Block) { b.Headers["Nonce"] = "00ff" }, ErrKeyTampered},
		{"a changed key type fails authentication (it is additional data)", func(b *pem.Block) { b.Headers["Key-Type"] = string(ECDSAP384) }, ErrKeyTampered},
		{"an unknown key type is a format error", func(b *pem.Block) { b.Headers["Key-Type"] = "dsa-1024" }, ErrKeyFormat},
		{"an unknown version is a format error", func(b *pem.Block) { b.Headers["Version"] = "2" }, ErrKeyFormat},
		{"an unknown cipher is a format error", func(b *pem.Block) { b.Headers["Cipher"] = "AES-128-CBC" }, ErrKeyFormat},
		{"a missing KEK ID is a format error", func(b *pem.Block) { delete(b.Headers, "KEK-ID") }, ErrKeyFormat},
		{"a changed KEK ID reads as a different KEK", func(b *pem.Block) { b.Headers["KEK-ID"] = strings.Repeat("0", 32) }, ErrWrongKEK},
		{"another block type is a format error", func(b *pem.Block) { b.Type = "CERTIFICATE" }, ErrKeyFormat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseEncrypted(rewriteBlock(t, data, tc.edit), kek)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if got != nil {
				t.Fatal("a key was returned from a tampered file")
			}
		})
	}
	if _, err := ParseEncrypted([]byte("not pem at all"), kek); !errors.Is(err, ErrKeyFormat) {
		t.Errorf("garbage input: err = %v, want ErrKeyFormat", err)
	}
}

func TestParseKEKAcceptsRawHexAndBase64(t *testing.T) {
	raw := make([]byte, KEKSize)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	want, err := NewKEK(raw)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   []byte
	}{
		{"32 raw bytes", raw},
		{"64 lowercase hex characters", []byte(hex.EncodeToString(raw))},
		{"hex with a trailing newline and upper case", []byte(strings.ToUpper(hex.EncodeToString(raw)) + "\n")},
		{"standard base64 with padding", []byte(base64.StdEncoding.EncodeToString(raw) + "\n")},
		{"URL-safe base64 without padding", []byte(base64.RawURLEncoding.EncodeToString(raw))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseKEK(tc.in)
			if err != nil {
				t.Fatalf("ParseKEK: %v", err)
			}
			if got.ID() != want.ID() || got.key != want.key {
				t.Fatalf("got %s, want %s", got, want)
			}
		})
	}
}

func TestParseKEKSaysWhichEncodingWasWrong(t *testing.T) {
	raw := bytes.Repeat([]byte{0xab}, 16)
	tests := []struct {
		name    string
		in      []byte
		want    error
		mention string
	}{
		{"empty is missing", []byte(" \n"), ErrKEKMissing, "empty"},
		{"hex of 16 bytes is too short", []byte(hex.EncodeToString(raw)), ErrKEKMalformed, "hex"},
		{"hex of 33 bytes is too long", []byte(hex.EncodeToString(append(bytes.Repeat(raw, 2), 1))), ErrKEKMalformed, "66 characters"},
		{"base64 of 16 bytes is too short", []byte(base64.StdEncoding.EncodeToString(raw)), ErrKEKMalformed, "base64 decodes to 16 bytes"},
		{"a 32-character passphrase is text, not a raw key", []byte("correct horse battery staple!!!!"), ErrKEKMalformed, "printable"},
		{"29 raw bytes are no accepted encoding", bytes.Repeat([]byte{0x00, 0xff}, 15)[:29], ErrKEKMalformed, "raw bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseKEK(tc.in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q should mention %q", err, tc.mention)
			}
		})
	}
}

func TestKEKFromFileAndEnvOpenTheSameKey(t *testing.T) {
	kek := testKEK(t)
	text := hex.EncodeToString(kek.key[:])
	data, err := MarshalEncrypted(testKeys()[ECDSAP384], kek)
	if err != nil {
		t.Fatal(err)
	}

	path := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(path, []byte(text+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fromFile, err := KEKFromFile(path)
	if err != nil {
		t.Fatalf("KEKFromFile: %v", err)
	}
	if _, err := ParseEncrypted(data, fromFile); err != nil {
		t.Fatalf("open with KEK from file: %v", err)
	}

	t.Setenv("MESHCA_TEST_KEK", base64.StdEncoding.EncodeToString(kek.key[:]))
	fromEnv, err := KEKFromEnv("MESHCA_TEST_KEK")
	if err != nil {
		t.Fatalf("KEKFromEnv: %v", err)
	}
	if _, err := ParseEncrypted(data, fromEnv); err != nil {
		t.Fatalf("open with KEK from env: %v", err)
	}

	if _, err := KEKFromFile(filepath.Join(t.TempDir(), "absent")); !errors.Is(err, ErrKEKMissing) {
		t.Errorf("absent file: err = %v, want ErrKEKMissing", err)
	}
	t.Setenv("MESHCA_TEST_KEK_EMPTY", "")
	if _, err := KEKFromEnv("MESHCA_TEST_KEK_EMPTY"); !errors.Is(err, ErrKEKMissing) || !strings.Contains(err.Error(), "MESHCA_TEST_KEK_EMPTY") {
		t.Errorf("empty env: err = %v, want ErrKEKMissing naming the variable", err)
	}
	bad := filepath.Join(t.TempDir(), "kek-bad")
	if err := os.WriteFile(bad, []byte("zz-not-a-key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := KEKFromFile(bad); !errors.Is(err, ErrKEKMalformed) || !strings.Contains(err.Error(), bad) {
		t.Errorf("malformed file: err = %v, want ErrKEKMalformed naming the file", err)
	}
}

func TestKEKNeverPrintsItsKey(t *testing.T) {
	kek := testKEK(t)
	for _, s := range []string{kek.String(), kek.GoString()} {
		if strings.Contains(s, hex.EncodeToString(kek.key[:])) {
			t.Fatalf("%q contains the key", s)
		}
	}
}

func TestPlaintextKeysOnlyThroughPlaintextFunctions(t *testing.T) {
	kek := testKEK(t)
	key := testKeys()[ECDSAP256]
	plain, err := MarshalPlaintextPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := MarshalEncrypted(key, kek)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseEncrypted(plain, kek); !errors.Is(err, ErrPlaintextKey) {
		t.Errorf("ParseEncrypted(plaintext): err = %v, want ErrPlaintextKey", err)
	}
	if _, err := ParsePlaintextPEM(sealed); !errors.Is(err, ErrEncryptedKey) {
		t.Errorf("ParsePlaintextPEM(encrypted): err = %v, want ErrEncryptedKey", err)
	}
	got, err := ParsePlaintextPEM(plain)
	if err != nil {
		t.Fatalf("ParsePlaintextPEM: %v", err)
	}
	if got.KeyID() != key.KeyID() {
		t.Fatal("plaintext round trip changed the key")
	}
}

func TestPlaintextReaderAcceptsPKCS8PKCS1AndSEC1(t *testing.T) {
	ec := testKeys()[ECDSAP256]
	rsaKey := testKeys()[RSA2048]
	sec1, err := x509.MarshalECPrivateKey(ec.Private().(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		block *pem.Block
		want  string
	}{
		{"SEC 1 EC PRIVATE KEY", &pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}, ec.KeyID()},
		{"PKCS#1 RSA PRIVATE KEY", &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey.Private().(*rsa.PrivateKey))}, rsaKey.KeyID()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePlaintextPEM(pem.EncodeToMemory(tc.block))
			if err != nil {
				t.Fatal(err)
			}
			if got.KeyID() != tc.want {
				t.Fatal("wrong key")
			}
		})
	}
	legacy := &pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: []byte{1}}
	if _, err := ParsePlaintextPEM(pem.EncodeToMemory(legacy)); !errors.Is(err, ErrKeyFormat) {
		t.Errorf("legacy encrypted PEM: err = %v, want ErrKeyFormat", err)
	}
}

func TestKeyFilesAreWrittenOwnerOnly(t *testing.T) {
	kek := testKEK(t)
	key := testKeys()[Ed25519]
	dir := t.TempDir()
	enc := filepath.Join(dir, "ca-key.enc.pem")
	plain := filepath.Join(dir, "ca-key.pem")
	if err := WriteEncryptedFile(enc, key, kek); err != nil {
		t.Fatal(err)
	}
	if err := WritePlaintextFile(plain, key); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{enc, plain} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", p, fi.Mode().Perm())
		}
	}
	got, err := ReadEncryptedFile(enc, kek)
	if err != nil {
		t.Fatal(err)
	}
	if got.KeyID() != key.KeyID() {
		t.Fatal("encrypted file round trip changed the key")
	}
	if _, err := ReadEncryptedFile(plain, kek); !errors.Is(err, ErrPlaintextKey) || !strings.Contains(err.Error(), plain) {
		t.Errorf("ReadEncryptedFile(plaintext file): err = %v, want ErrPlaintextKey naming the file", err)
	}
	got, err = ReadPlaintextFile(plain)
	if err != nil {
		t.Fatal(err)
	}
	if got.KeyID() != key.KeyID() {
		t.Fatal("plaintext file round trip changed the key")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}
