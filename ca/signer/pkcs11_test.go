//go:build cgo

package signer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/testenv"
	"github.com/miekg/pkcs11"
)

// tokenConfig makes a fresh SoftHSM2 token and a configuration for a key on it.
func tokenConfig(t testing.TB, keyLabel string, kt KeyType) PKCS11Config {
	t.Helper()
	tok := testenv.NewSoftHSMToken(t, "meshca-test")
	t.Cleanup(func() {
		if n := loadedModules(); n != 0 {
			t.Errorf("%d PKCS#11 modules still loaded after the test: a signer was not closed", n)
		}
	})
	cfg := DefaultPKCS11Config()
	cfg.ModulePath = tok.ModulePath
	cfg.TokenLabel = tok.Label
	cfg.KeyLabel = keyLabel
	cfg.PINFile = tok.PINFile
	cfg.KeyType = kt
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	return cfg
}

func mustGenerate(t testing.TB, cfg PKCS11Config) *PKCS11 {
	t.Helper()
	s, err := GeneratePKCS11(cfg)
	if err != nil {
		t.Fatalf("GeneratePKCS11(%s %s): %v", cfg.KeyLabel, cfg.KeyType, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func mustOpen(t testing.TB, cfg PKCS11Config) *PKCS11 {
	t.Helper()
	s, err := OpenPKCS11(cfg)
	if err != nil {
		t.Fatalf("OpenPKCS11(%s): %v", cfg.KeyLabel, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// rwSession opens a logged-in read-write session on the signer's token for a test to poke
// at objects directly.
func rwSession(t testing.TB, s *PKCS11) pkcs11.SessionHandle {
	t.Helper()
	s.pool.mu.Lock()
	slot := s.pool.slot
	s.pool.mu.Unlock()
	sh, err := s.mod.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.mod.ctx.CloseSession(sh) })
	if err := s.mod.login(sh, slot, s.pool.pin, "test"); err != nil {
		t.Fatal(err)
	}
	return sh
}

func selfSign(t *testing.T, s Signer) {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "meshca test root " + string(s.KeyType())},
		NotBefore:             time.Unix(1_700_000_000, 0),
		NotAfter:              time.Unix(1_700_000_000, 0).Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
		SignatureAlgorithm:    s.SignatureAlgorithm(),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, s.Public(), s)
	if err != nil {
		t.Fatalf("x509.CreateCertificate with the token key: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Fatalf("self-signed certificate does not verify: %v", err)
	}
}

func TestPKCS11EveryKeyTypeIsGeneratedOnTheTokenAndSigns(t *testing.T) {
	cfg := tokenConfig(t, "", "")
	for _, kt := range allKeyTypes {
		t.Run(string(kt), func(t *testing.T) {
			c := cfg
			c.KeyLabel, c.KeyType = "ca-"+string(kt), kt
			s := mustGenerate(t, c)
			if s.KeyType() != kt || s.SignatureAlgorithm() != SignatureAlgorithmFor(kt) {
				t.Fatalf("KeyType %s SignatureAlgorithm %v, want %s %v", s.KeyType(), s.SignatureAlgorithm(), kt, SignatureAlgorithmFor(kt))
			}
			if id, _ := KeyIDOf(s.Public()); id != s.KeyID() {
				t.Fatalf("KeyID %s, want SPKI hash %s", s.KeyID(), id)
			}
			signAndVerify(t, s, kt, s.Public())
			selfSign(t, s)

			// The private key object says it can never leave the token.
			sh := rwSession(t, s)
			key := pkcs11.ObjectHandle(s.key.Load())
			attrs, err := s.mod.ctx.GetAttributeValue(sh, key, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
				pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_SIGN, nil),
				pkcs11.NewAttribute(pkcs11.CKA_ALWAYS_SENSITIVE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_NEVER_EXTRACTABLE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
			})
			if err != nil {
				t.Fatalf("read private key attributes: %v", err)
			}
			want := []struct {
				name string
				val  bool
			}{{"CKA_TOKEN", true}, {"CKA_PRIVATE", true}, {"CKA_SENSITIVE", true}, {"CKA_EXTRACTABLE", false},
				{"CKA_SIGN", true}, {"CKA_ALWAYS_SENSITIVE", true}, {"CKA_NEVER_EXTRACTABLE", true}}
			for i, w := range want {
				if got := attrBool(attrs[i]); got != w.val {
					t.Errorf("%s = %t, want %t", w.name, got, w.val)
				}
			}
			if len(attrs[7].Value) != pkcs11KeyIDLen {
				t.Errorf("CKA_ID has %d bytes, want %d", len(attrs[7].Value), pkcs11KeyIDLen)
			}
			if string(attrs[8].Value) != c.KeyLabel {
				t.Errorf("CKA_LABEL = %q, want %q", attrs[8].Value, c.KeyLabel)
			}
			// And the token refuses to hand out the secret.
			secret := uint(pkcs11.CKA_VALUE)
			if s.kt == RSA2048 || s.kt == RSA3072 || s.kt == RSA4096 {
				secret = pkcs11.CKA_PRIVATE_EXPONENT
			}
			_, err = s.mod.ctx.GetAttributeValue(sh, key, []*pkcs11.Attribute{pkcs11.NewAttribute(secret, nil)})
			if !errors.Is(err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_SENSITIVE)) {
				t.Errorf("reading the private value: err = %v, want CKR_ATTRIBUTE_SENSITIVE", err)
			}
		})
	}
}

func TestPKCS11KeyIsFoundByLabelInASecondSigner(t *testing.T) {
	cfg := tokenConfig(t, "ca-root", ECDSAP256)
	first := mustGenerate(t, cfg)

	open := cfg
	open.KeyType = "" // optional when opening
	second := mustOpen(t, open)
	if second.KeyID() != first.KeyID() || second.KeyType() != ECDSAP256 {
		t.Fatalf("second signer found %s %s, want %s %s", second.KeyType(), second.KeyID(), ECDSAP256, first.KeyID())
	}
	if loadedModules() != 1 {
		t.Fatalf("%d modules loaded, want the one shared by both signers", loadedModules())
	}
	signAndVerify(t, second, ECDSAP256, first.Public())

	// Closing one signer leaves the shared module initialized for the other.
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	signAndVerify(t, second, ECDSAP256, first.Public())
	if err := second.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if loadedModules() != 0 {
		t.Fatal("the module is still loaded after its last signer closed")
	}

	// OpenOrGenerate opens the existing key rather than making another.
	again, err := OpenOrGeneratePKCS11(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if again.KeyID() != first.KeyID() {
		t.Fatal("OpenOrGeneratePKCS11 made a new key although one had the label")
	}
}

func TestPKCS11OpenOrGenerateMakesAMissingKey(t *testing.T) {
	cfg := tokenConfig(t, "ca-new", ECDSAP384)
	s, err := OpenOrGeneratePKCS11(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.KeyType() != ECDSAP384 {
		t.Fatalf("KeyType %s", s.KeyType())
	}
}

func TestPKCS11ErrorsNameWhatIsWrong(t *testing.T) {
	cfg := tokenConfig(t, "ca-root", ECDSAP256)
	s := mustGenerate(t, cfg)

	// Keys that break the rules, made behind the signer's back.
	sh := rwSession(t, s)
	makePair := func(label string, extractable bool) {
		t.Helper()
		mech, pubAttrs, err := keyGenTemplate(ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		id := []byte(label)
		pub := append([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		}, pubAttrs...)
		priv := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, !extractable),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, extractable),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		}
		if _, _, err := s.mod.ctx.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pub, priv); err != nil {
			t.Fatal(err)
		}
	}
	makePair("twice", false)
	makePair("twice", false)
	makePair("exportable", true)

	wrongPIN := filepath.Join(t.TempDir(), "wrong-pin")
	if err := os.WriteFile(wrongPIN, []byte("00000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		edit    func(c *PKCS11Config)
		open    func(PKCS11Config) (*PKCS11, error)
		want    error
		mention string
	}{
		{"a missing key label is named", func(c *PKCS11Config) { c.KeyLabel = "no-such-key" }, OpenPKCS11, ErrKeyNotFound, `"no-such-key"`},
		{"a label on two keys is ambiguous", func(c *PKCS11Config) { c.KeyLabel = "twice" }, OpenPKCS11, ErrKeyAmbiguous, `"twice"`},
		{"an extractable key is refused", func(c *PKCS11Config) { c.KeyLabel = "exportable" }, OpenPKCS11, ErrKeyExportable, "CKA_EXTRACTABLE=true"},
		{"a wrong PIN is refused", func(c *PKCS11Config) { c.PINFile = wrongPIN }, OpenPKCS11, ErrPINIncorrect, wrongPIN},
		{"a missing PIN file is named", func(c *PKCS11Config) { c.PINFile = wrongPIN + ".absent" }, OpenPKCS11, ErrPINMissing, wrongPIN + ".absent"},
		{"an unset PIN variable is named", func(c *PKCS11Config) { c.PINFile, c.PINEnv = "", "MESHCA_TEST_NO_SUCH_PIN" }, OpenPKCS11, ErrPINMissing, "MESHCA_TEST_NO_SUCH_PIN"},
		{"a missing token is named", func(c *PKCS11Config) { c.TokenLabel = "no-such-token" }, OpenPKCS11, ErrTokenNotFound, `"no-such-token"`},
		{"a key of another type than configured is refused", func(c *PKCS11Config) { c.KeyType = RSA2048 }, OpenPKCS11, ErrPKCS11Config, "rsa-2048"},
		{"generating under a used label is refused", func(c *PKCS11Config) {}, GeneratePKCS11, ErrKeyExists, `"ca-root"`},
		{"generating without a key type is refused", func(c *PKCS11Config) { c.KeyLabel, c.KeyType = "fresh", "" }, GeneratePKCS11, ErrPKCS11Config, "key_type"},
		{"a module that does not load is named", func(c *PKCS11Config) { c.ModulePath = "/nonexistent/libnothing.so" }, OpenPKCS11, ErrPKCS11Config, "/nonexistent/libnothing.so"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			tc.edit(&c)
			got, err := tc.open(c)
			if got != nil {
				_ = got.Close()
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q should mention %s", err, tc.mention)
			}
			if got != nil {
				t.Error("a signer was returned with the error")
			}
			if n := loadedModules(); n != 1 {
				t.Errorf("%d modules loaded after a failed open, want only the test's signer's", n)
			}
		})
	}
	// The PIN comes from the environment just as well as from a file.
	pin, err := os.ReadFile(cfg.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("MESHCA_TEST_PIN", strings.TrimSpace(string(pin)))
	fromEnv := cfg
	fromEnv.PINFile, fromEnv.PINEnv = "", "MESHCA_TEST_PIN"
	if other := mustOpen(t, fromEnv); other.KeyID() != s.KeyID() {
		t.Fatal("opened a different key with the PIN from the environment")
	}
}

func TestPKCS11ConcurrentSigningSharesASmallPool(t *testing.T) {
	cfg := tokenConfig(t, "ca-root", ECDSAP256)
	cfg.MaxSessions = 2
	s := mustGenerate(t, cfg)
	pub := s.Public().(*ecdsa.PublicKey)

	const goroutines, each = 16, 25
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				d := sha256.Sum256([]byte{byte(g), byte(i)})
				sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
				if err != nil {
					errs <- err
					return
				}
				if !ecdsa.VerifyASN1(pub, d[:], sig) {
					errs <- errors.New("signature does not verify")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	open, maxOpen, _ := s.pool.stats()
	if maxOpen > cfg.MaxSessions || open > cfg.MaxSessions {
		t.Fatalf("pool had %d sessions open at once (now %d), limit %d", maxOpen, open, cfg.MaxSessions)
	}
	if maxOpen < 2 {
		t.Logf("only %d session was ever needed", maxOpen)
	}
}

func TestPKCS11LostSessionIsReplacedWithAFreshLogin(t *testing.T) {
	tests := []struct {
		name     string
		lose     func(t *testing.T, s *PKCS11, idle pkcs11.SessionHandle)
		wantGone bool // the pooled session handle itself is invalid afterwards
	}{
		{"C_CloseAllSessions behind the pool logs the user out", func(t *testing.T, s *PKCS11, _ pkcs11.SessionHandle) {
			if err := s.mod.ctx.CloseAllSessions(s.pool.slot); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"a session handle closed behind the pool", func(t *testing.T, s *PKCS11, idle pkcs11.SessionHandle) {
			if err := s.mod.ctx.CloseSession(idle); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"C_Logout behind the pool leaves a session that is not logged in", func(t *testing.T, s *PKCS11, idle pkcs11.SessionHandle) {
			if err := s.mod.ctx.Logout(idle); err != nil {
				t.Fatal(err)
			}
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tokenConfig(t, "ca-root", ECDSAP256)
			cfg.MaxSessions = 1
			s := mustGenerate(t, cfg)
			signAndVerify(t, s, ECDSAP256, s.Public())

			s.pool.mu.Lock()
			if len(s.pool.idle) != 1 {
				s.pool.mu.Unlock()
				t.Fatalf("%d idle sessions, want 1", len(s.pool.idle))
			}
			idle := s.pool.idle[0]
			s.pool.mu.Unlock()

			tc.lose(t, s, idle)
			info, err := s.mod.ctx.GetSessionInfo(idle)
			if tc.wantGone && !errors.Is(err, pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID)) {
				t.Fatalf("the pooled session should be gone: GetSessionInfo err = %v", err)
			}
			if !tc.wantGone && (err != nil || info.State != pkcs11.CKS_RO_PUBLIC_SESSION) {
				t.Fatalf("the pooled session should be open but logged out: state %d, err %v", info.State, err)
			}

			signAndVerify(t, s, ECDSAP256, s.Public())
			if got := s.recoveries.Load(); got != 1 {
				t.Fatalf("%d session recoveries, want 1", got)
			}
			s.pool.mu.Lock()
			fresh := s.pool.idle[0]
			s.pool.mu.Unlock()
			info, err = s.mod.ctx.GetSessionInfo(fresh)
			if err != nil {
				t.Fatal(err)
			}
			if info.State != pkcs11.CKS_RO_USER_FUNCTIONS {
				t.Fatalf("replacement session state %d, want CKS_RO_USER_FUNCTIONS (logged in)", info.State)
			}
			if open, _, _ := s.pool.stats(); open != 1 {
				t.Fatalf("%d sessions counted open, want 1", open)
			}
		})
	}
}

func TestPKCS11RSASignsPKCS1v15AndPSS(t *testing.T) {
	cfg := tokenConfig(t, "ca-rsa", RSA2048)
	s := mustGenerate(t, cfg)
	pub := s.Public().(*rsa.PublicKey)
	msg := []byte("meshca RSA test")
	d256, d384, d512 := sha256.Sum256(msg), sha512.Sum384(msg), sha512.Sum512(msg)
	tests := []struct {
		name   string
		digest []byte
		opts   crypto.SignerOpts
		verify func(sig []byte) error
	}{
		{"PKCS#1 v1.5 with SHA-256", d256[:], crypto.SHA256, func(sig []byte) error { return rsa.VerifyPKCS1v15(pub, crypto.SHA256, d256[:], sig) }},
		{"PKCS#1 v1.5 with SHA-384", d384[:], crypto.SHA384, func(sig []byte) error { return rsa.VerifyPKCS1v15(pub, crypto.SHA384, d384[:], sig) }},
		{"PKCS#1 v1.5 with SHA-512", d512[:], crypto.SHA512, func(sig []byte) error { return rsa.VerifyPKCS1v15(pub, crypto.SHA512, d512[:], sig) }},
		{"PSS with salt equal to the hash (as x509 uses)", d256[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256},
			func(sig []byte) error {
				return rsa.VerifyPSS(pub, crypto.SHA256, d256[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
			}},
		{"PSS with the longest salt (auto)", d384[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: crypto.SHA384},
			func(sig []byte) error {
				return rsa.VerifyPSS(pub, crypto.SHA384, d384[:], sig, &rsa.PSSOptions{SaltLength: 256 - 48 - 2})
			}},
		{"PSS with a 20-byte salt", d512[:], &rsa.PSSOptions{SaltLength: 20, Hash: crypto.SHA512},
			func(sig []byte) error {
				return rsa.VerifyPSS(pub, crypto.SHA512, d512[:], sig, &rsa.PSSOptions{SaltLength: 20})
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sig, err := s.Sign(rand.Reader, tc.digest, tc.opts)
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if err := tc.verify(sig); err != nil {
				t.Fatalf("stdlib verification: %v", err)
			}
		})
	}
	// x509 with an RSA-PSS algorithm goes through the PSS path end to end.
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "pss"},
		NotBefore: time.Unix(1_700_000_000, 0), NotAfter: time.Unix(1_700_086_400, 0), SignatureAlgorithm: x509.SHA256WithRSAPSS}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, s)
	if err != nil {
		t.Fatalf("CreateCertificate with RSA-PSS: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		t.Fatalf("RSA-PSS certificate signature: %v", err)
	}
}

func TestPKCS11ECDSASignaturesAreDER(t *testing.T) {
	cfg := tokenConfig(t, "", "")
	for _, kt := range []KeyType{ECDSAP256, ECDSAP384} {
		t.Run(string(kt), func(t *testing.T) {
			c := cfg
			c.KeyLabel, c.KeyType = "ca-"+string(kt), kt
			s := mustGenerate(t, c)
			// A SHA-512 digest is longer than either curve's order; ECDSA truncates it.
			for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
				hh := h.New()
				hh.Write([]byte("der test"))
				d := hh.Sum(nil)
				sig, err := s.Sign(rand.Reader, d, h)
				if err != nil {
					t.Fatalf("Sign with %v: %v", h, err)
				}
				var rs struct{ R, S *big.Int }
				rest, err := asn1.Unmarshal(sig, &rs)
				if err != nil || len(rest) != 0 {
					t.Fatalf("signature is not one DER SEQUENCE of two INTEGERs: %v, %d trailing bytes", err, len(rest))
				}
				if rs.R.Sign() <= 0 || rs.S.Sign() <= 0 {
					t.Fatal("r or s not positive")
				}
				if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d, sig) {
					t.Fatalf("%v signature does not verify", h)
				}
			}
		})
	}
}

func TestPKCS11SignatureThatFailsVerificationIsNeverReturned(t *testing.T) {
	cfg := tokenConfig(t, "ca-root", ECDSAP256)
	s := mustGenerate(t, cfg)
	other := cfg
	other.KeyLabel = "another-key"
	o := mustGenerate(t, other)

	// Point the signer at the other key's handle: the token now makes a valid signature,
	// but with a key that is not the signer's public key.
	s.key.Store(o.key.Load())
	d := sha256.Sum256([]byte("x"))
	sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
	if !errors.Is(err, ErrBadTokenSignature) {
		t.Fatalf("err = %v, want ErrBadTokenSignature", err)
	}
	if sig != nil {
		t.Fatal("a signature that failed verification was returned")
	}
}

func TestPKCS11SignRefusesInputsThatDoNotMatchTheKey(t *testing.T) {
	cfg := tokenConfig(t, "", "")
	ec := cfg
	ec.KeyLabel, ec.KeyType = "ec", ECDSAP256
	ed := cfg
	ed.KeyLabel, ed.KeyType = "ed", Ed25519
	ecSigner, edSigner := mustGenerate(t, ec), mustGenerate(t, ed)
	d := sha256.Sum256([]byte("x"))
	tests := []struct {
		name   string
		s      *PKCS11
		digest []byte
		opts   crypto.SignerOpts
	}{
		{"an ECDSA digest shorter than its hash", ecSigner, d[:20], crypto.SHA256},
		{"ECDSA without a hash", ecSigner, d[:], crypto.Hash(0)},
		{"Ed25519ph (pre-hashed) is not offered", edSigner, d[:], crypto.SHA512},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if sig, err := tc.s.Sign(rand.Reader, tc.digest, tc.opts); err == nil || sig != nil {
				t.Fatalf("Sign = %x, %v; want an error", sig, err)
			}
		})
	}
}

func TestPKCS11ClosedSignerRefusesToSign(t *testing.T) {
	cfg := tokenConfig(t, "ca-root", ECDSAP256)
	s := mustGenerate(t, cfg)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	d := sha256.Sum256([]byte("x"))
	if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); !errors.Is(err, ErrSignerClosed) {
		t.Fatalf("err = %v, want ErrSignerClosed", err)
	}
}

func TestPKCS11WrongPINIsRefusedByTheToken(t *testing.T) {
	cfg := tokenConfig(t, "ca-root", ECDSAP256)
	s := mustGenerate(t, cfg)
	if err := s.Close(); err != nil { // nothing in the process is logged in any more
		t.Fatal(err)
	}
	wrong := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(wrong, []byte("12345678"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.PINFile = wrong
	_, err := OpenPKCS11(cfg)
	if !errors.Is(err, ErrPINIncorrect) || !errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_INCORRECT)) {
		t.Fatalf("err = %v, want ErrPINIncorrect from CKR_PIN_INCORRECT", err)
	}
	if !strings.Contains(err.Error(), wrong) {
		t.Errorf("error %q should name the PIN file", err)
	}
}
