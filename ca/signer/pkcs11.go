//go:build cgo

package signer

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"sync"
	"sync/atomic"

	"github.com/miekg/pkcs11"
)

// PKCS#11 3.0 names for Edwards-curve keys, which github.com/miekg/pkcs11 v1.1.2 predates.
const (
	ckkECEdwards             = 0x00000040 // CKK_EC_EDWARDS
	ckmECEdwardsKeyPairGen   = 0x00001055 // CKM_EC_EDWARDS_KEY_PAIR_GEN
	ckmEDDSA                 = 0x00001057 // CKM_EDDSA
	pkcs11KeyIDLen           = 16
	pkcs11FindObjectsAtATime = 2 // enough to tell one match from several
)

// DER OBJECT IDENTIFIERs used as CKA_EC_PARAMS.
var (
	oidP256    = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidP384    = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
	oidEd25519 = asn1.ObjectIdentifier{1, 3, 101, 112}
)

// PKCS11 is a CA key that lives on a PKCS#11 token: the private key never leaves it. Sign is
// safe for concurrent use; each call borrows one of a bounded pool of sessions. Every
// signature the token makes is verified in software before Sign returns it.
type PKCS11 struct {
	cfg   PKCS11Config
	mod   *p11Module
	pool  *sessionPool
	log   *slog.Logger
	kt    KeyType
	pub   crypto.PublicKey
	keyID string
	ckaID []byte

	key atomic.Uint64 // the private key's object handle

	recoveries atomic.Int64 // sessions replaced after a lost-session error, for tests

	closeOnce sync.Once
	closeErr  error
}

var _ Signer = (*PKCS11)(nil)

// OpenPKCS11 opens the key pair labelled cfg.KeyLabel on the token labelled cfg.TokenLabel.
// A missing label gives ErrKeyNotFound, a label on two keys ErrKeyAmbiguous, and a key that
// could leave the token ErrKeyExportable; each message names the label and token.
func OpenPKCS11(cfg PKCS11Config) (*PKCS11, error) {
	return openPKCS11(cfg, false)
}

// GeneratePKCS11 generates a new key pair of cfg.KeyType on the token, labelled
// cfg.KeyLabel, with a random CKA_ID; the private key is a token object that is private,
// sensitive, not extractable and usable only to sign. It refuses a label already in use
// (ErrKeyExists). Ed25519 needs a token with CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA.
func GeneratePKCS11(cfg PKCS11Config) (*PKCS11, error) {
	return openPKCS11(cfg, true)
}

// OpenOrGeneratePKCS11 opens the key labelled cfg.KeyLabel, generating it first when the
// token has no key with that label.
func OpenOrGeneratePKCS11(cfg PKCS11Config) (*PKCS11, error) {
	s, err := OpenPKCS11(cfg)
	if errors.Is(err, ErrKeyNotFound) {
		s, err = GeneratePKCS11(cfg)
		if errors.Is(err, ErrKeyExists) { // another process generated it in between
			return OpenPKCS11(cfg)
		}
	}
	return s, err
}

func openPKCS11(cfg PKCS11Config, generate bool) (_ *PKCS11, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if generate && cfg.KeyType == "" {
		return nil, fmt.Errorf("pkcs11 key_type: required to generate a key: %w", ErrPKCS11Config)
	}
	pin, err := cfg.readPIN()
	if err != nil {
		return nil, err
	}
	mod, err := acquireModule(cfg.ModulePath)
	if err != nil {
		return nil, err
	}
	s := &PKCS11{cfg: cfg, mod: mod, log: cfg.logger()}
	defer func() {
		if err != nil {
			if s.pool != nil {
				_ = s.pool.close()
			}
			_ = mod.release()
		}
	}()
	slot, err := findToken(mod.ctx, cfg.TokenLabel)
	if err != nil {
		return nil, err
	}
	s.pool = newSessionPool(mod, slot, pin, cfg.pinSource(), cfg.maxSessions())
	if generate {
		if err := s.generate(slot, pin); err != nil {
			return nil, err
		}
	}
	sh, err := s.pool.get()
	if err != nil {
		return nil, fmt.Errorf("pkcs11 token %q: %w", cfg.TokenLabel, err)
	}
	defer s.pool.put(sh)
	if err := s.load(sh); err != nil {
		return nil, err
	}
	return s, nil
}

// findToken returns the slot of the one token labelled label.
func findToken(ctx *pkcs11.Ctx, label string) (uint, error) {
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("pkcs11: C_GetSlotList: %w", err)
	}
	var found []uint
	var labels []string
	for _, slot := range slots {
		info, err := ctx.GetTokenInfo(slot)
		if err != nil {
			continue // a token that cannot describe itself is not the one we want
		}
		labels = append(labels, info.Label)
		if info.Label == label {
			found = append(found, slot)
		}
	}
	switch len(found) {
	case 0:
		return 0, fmt.Errorf("pkcs11 token_label %q: no such token (tokens present: %q): %w", label, labels, ErrTokenNotFound)
	case 1:
		return found[0], nil
	}
	return 0, fmt.Errorf("pkcs11 token_label %q: %d tokens have this label (slots %v): %w", label, len(found), found, ErrTokenNotFound)
}

// generate makes the key pair on a read-write session of its own.
func (s *PKCS11) generate(slot uint, pin string) error {
	ctx := s.mod.ctx
	sh, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("pkcs11 token %q: C_OpenSession (read-write): %w", s.cfg.TokenLabel, err)
	}
	defer func() { _ = ctx.CloseSession(sh) }()
	if err := s.mod.login(sh, slot, pin, s.cfg.pinSource()); err != nil {
		return fmt.Errorf("pkcs11 token %q: %w", s.cfg.TokenLabel, err)
	}
	existing, err := findObjects(ctx, sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, s.cfg.KeyLabel),
	})
	if err != nil {
		return fmt.Errorf("pkcs11 key_label %q: %w", s.cfg.KeyLabel, err)
	}
	if len(existing) > 0 {
		return fmt.Errorf("pkcs11 key_label %q on token %q: %w", s.cfg.KeyLabel, s.cfg.TokenLabel, ErrKeyExists)
	}
	id := make([]byte, pkcs11KeyIDLen)
	if _, err := rand.Read(id); err != nil {
		return fmt.Errorf("pkcs11: CKA_ID: %w", err)
	}
	mech, pubAttrs, err := keyGenTemplate(s.cfg.KeyType)
	if err != nil {
		return err
	}
	ckk, _ := ckkOf(s.cfg.KeyType)
	pubTemplate := append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckk),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, s.cfg.KeyLabel),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}, pubAttrs...)
	privTemplate := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckk),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, s.cfg.KeyLabel),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}
	_, _, err = ctx.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pubTemplate, privTemplate)
	if err != nil {
		if errors.Is(err, pkcs11.Error(pkcs11.CKR_MECHANISM_INVALID)) || errors.Is(err, pkcs11.Error(pkcs11.CKR_CURVE_NOT_SUPPORTED)) {
			return fmt.Errorf("pkcs11 key_type %s: token %q does not support generating it (mechanism 0x%x): %w: %w",
				s.cfg.KeyType, s.cfg.TokenLabel, mech, ErrUnsupportedKey, err)
		}
		return fmt.Errorf("pkcs11 key_label %q: C_GenerateKeyPair %s on token %q: %w", s.cfg.KeyLabel, s.cfg.KeyType, s.cfg.TokenLabel, err)
	}
	s.log.Info("generated CA key on PKCS#11 token", "token", s.cfg.TokenLabel, "key_label", s.cfg.KeyLabel,
		"key_type", string(s.cfg.KeyType), "cka_id", hex.EncodeToString(id))
	return nil
}

// keyGenTemplate is the generation mechanism and the type-specific public key attributes.
func keyGenTemplate(kt KeyType) (uint, []*pkcs11.Attribute, error) {
	ecParams := func(oid asn1.ObjectIdentifier) []*pkcs11.Attribute {
		der, _ := asn1.Marshal(oid)
		return []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, der)}
	}
	rsaBits := func(bits int) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, bits),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
		}
	}
	switch kt {
	case ECDSAP256:
		return pkcs11.CKM_EC_KEY_PAIR_GEN, ecParams(oidP256), nil
	case ECDSAP384:
		return pkcs11.CKM_EC_KEY_PAIR_GEN, ecParams(oidP384), nil
	case RSA2048:
		return pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, rsaBits(2048), nil
	case RSA3072:
		return pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, rsaBits(3072), nil
	case RSA4096:
		return pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, rsaBits(4096), nil
	case Ed25519:
		return ckmECEdwardsKeyPairGen, ecParams(oidEd25519), nil
	}
	return 0, nil, fmt.Errorf("pkcs11 key_type %q: %w", kt, ErrUnsupportedKey)
}

func ckkOf(kt KeyType) (uint, error) {
	switch kt {
	case ECDSAP256, ECDSAP384:
		return pkcs11.CKK_EC, nil
	case RSA2048, RSA3072, RSA4096:
		return pkcs11.CKK_RSA, nil
	case Ed25519:
		return ckkECEdwards, nil
	}
	return 0, fmt.Errorf("pkcs11 key_type %q: %w", kt, ErrUnsupportedKey)
}

// findObjects returns the handles of up to pkcs11FindObjectsAtATime objects matching the
// template: enough to tell none, one and several apart.
func findObjects(ctx *pkcs11.Ctx, sh pkcs11.SessionHandle, template []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := ctx.FindObjectsInit(sh, template); err != nil {
		return nil, fmt.Errorf("C_FindObjectsInit: %w", err)
	}
	objs, _, err := ctx.FindObjects(sh, pkcs11FindObjectsAtATime)
	if ferr := ctx.FindObjectsFinal(sh); err == nil && ferr != nil {
		err = ferr
	}
	if err != nil {
		return nil, fmt.Errorf("C_FindObjects: %w", err)
	}
	return objs, nil
}

// load finds the key pair by label, checks it cannot leave the token and reads the public key.
func (s *PKCS11) load(sh pkcs11.SessionHandle) error {
	ctx := s.mod.ctx
	where := fmt.Sprintf("pkcs11 key_label %q on token %q", s.cfg.KeyLabel, s.cfg.TokenLabel)
	privs, err := findObjects(ctx, sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, s.cfg.KeyLabel),
	})
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	switch len(privs) {
	case 0:
		return fmt.Errorf("%s: no private key with this label: %w", where, ErrKeyNotFound)
	case 1:
	default:
		return fmt.Errorf("%s: %w", where, ErrKeyAmbiguous)
	}
	priv := privs[0]
	attrs, err := ctx.GetAttributeValue(sh, priv, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, nil),
	})
	if err != nil {
		return fmt.Errorf("%s: private key attributes: %w", where, err)
	}
	id, ckk := attrs[0].Value, bytesToUint(attrs[1].Value)
	sensitive, extractable, canSign := attrBool(attrs[2]), attrBool(attrs[3]), attrBool(attrs[4])
	if !sensitive || extractable {
		return fmt.Errorf("%s: CKA_SENSITIVE=%t CKA_EXTRACTABLE=%t, want true and false: %w", where, sensitive, extractable, ErrKeyExportable)
	}
	if !canSign {
		return fmt.Errorf("%s: private key has CKA_SIGN false: %w", where, ErrUnsupportedKey)
	}
	if len(id) == 0 {
		return fmt.Errorf("%s: private key has no CKA_ID to find its public key by: %w", where, ErrKeyNotFound)
	}
	pubs, err := findObjects(ctx, sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	})
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	switch len(pubs) {
	case 0:
		return fmt.Errorf("%s: no public key with CKA_ID %x: %w", where, id, ErrKeyNotFound)
	case 1:
	default:
		return fmt.Errorf("%s: several public keys with CKA_ID %x: %w", where, id, ErrKeyAmbiguous)
	}
	pub, err := readPublicKey(ctx, sh, pubs[0], ckk)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	kt, err := KeyTypeOf(pub)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	if s.cfg.KeyType != "" && s.cfg.KeyType != kt {
		return fmt.Errorf("%s: key is %s but key_type is %s: %w", where, kt, s.cfg.KeyType, ErrPKCS11Config)
	}
	keyID, err := KeyIDOf(pub)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	s.kt, s.pub, s.keyID, s.ckaID = kt, pub, keyID, id
	s.key.Store(uint64(priv))
	return nil
}

// readPublicKey builds the Go public key from a public key object's attributes.
func readPublicKey(ctx *pkcs11.Ctx, sh pkcs11.SessionHandle, obj pkcs11.ObjectHandle, ckk uint) (crypto.PublicKey, error) {
	switch ckk {
	case pkcs11.CKK_RSA:
		attrs, err := ctx.GetAttributeValue(sh, obj, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
		})
		if err != nil {
			return nil, fmt.Errorf("RSA public key attributes: %w", err)
		}
		e := new(big.Int).SetBytes(attrs[1].Value)
		if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
			return nil, fmt.Errorf("RSA public exponent %v: %w", e, ErrUnsupportedKey)
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(attrs[0].Value), E: int(e.Int64())}, nil
	case pkcs11.CKK_EC, ckkECEdwards:
		attrs, err := ctx.GetAttributeValue(sh, obj, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil),
		})
		if err != nil {
			return nil, fmt.Errorf("EC public key attributes: %w", err)
		}
		return parseECPublicKey(attrs[0].Value, attrs[1].Value)
	}
	return nil, fmt.Errorf("CKA_KEY_TYPE 0x%x: %w", ckk, ErrUnsupportedKey)
}

// parseECPublicKey reads CKA_EC_PARAMS (a named-curve OID, or for Edwards curves also the
// PrintableString name) and CKA_EC_POINT (DER OCTET STRING, or raw on some tokens).
func parseECPublicKey(params, point []byte) (crypto.PublicKey, error) {
	var inner []byte
	if rest, err := asn1.Unmarshal(point, &inner); err == nil && len(rest) == 0 {
		point = inner
	}
	var oid asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(params, &oid); err != nil || len(rest) != 0 {
		var name string
		if rest, err := asn1.Unmarshal(params, &name); err == nil && len(rest) == 0 && name == "edwards25519" {
			oid = oidEd25519
		} else {
			return nil, fmt.Errorf("CKA_EC_PARAMS %x: not a named curve: %w", params, ErrUnsupportedKey)
		}
	}
	var curve elliptic.Curve
	switch {
	case oid.Equal(oidP256):
		curve = elliptic.P256()
	case oid.Equal(oidP384):
		curve = elliptic.P384()
	case oid.Equal(oidEd25519):
		if len(point) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("Ed25519 CKA_EC_POINT: %d bytes, want %d", len(point), ed25519.PublicKeySize)
		}
		return ed25519.PublicKey(bytes.Clone(point)), nil
	default:
		return nil, fmt.Errorf("curve %v: %w", oid, ErrUnsupportedKey)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(curve, point)
	if err != nil {
		return nil, fmt.Errorf("CKA_EC_POINT: %w", err)
	}
	return pub, nil
}

func attrBool(a *pkcs11.Attribute) bool { return len(a.Value) == 1 && a.Value[0] != 0 }

// bytesToUint reads a CK_ULONG attribute, which the library returns in host byte order.
func bytesToUint(b []byte) uint {
	switch len(b) {
	case 8:
		return uint(binary.NativeEndian.Uint64(b))
	case 4:
		return uint(binary.NativeEndian.Uint32(b))
	}
	return ^uint(0) // no CK_ULONG: matches no key type
}

// Public returns the public key read from the token.
func (s *PKCS11) Public() crypto.PublicKey { return s.pub }

// KeyType is the key's algorithm and size.
func (s *PKCS11) KeyType() KeyType { return s.kt }

// KeyID is the hex SHA-256 of the key's SubjectPublicKeyInfo.
func (s *PKCS11) KeyID() string { return s.keyID }

// SignatureAlgorithm is the x509 algorithm certificates signed by this key use.
func (s *PKCS11) SignatureAlgorithm() x509.SignatureAlgorithm {
	return SignatureAlgorithmFor(s.kt)
}

// Label is the key's CKA_LABEL.
func (s *PKCS11) Label() string { return s.cfg.KeyLabel }

// TokenLabel is the label of the token the key lives on.
func (s *PKCS11) TokenLabel() string { return s.cfg.TokenLabel }

// Sign signs digest on the token, as crypto.Signer specifies: for ECDSA and RSA, digest is
// the hash named by opts (RSA-PSS when opts is *rsa.PSSOptions, PKCS#1 v1.5 otherwise); for
// Ed25519 it is the whole message and opts.HashFunc() is 0. ECDSA signatures are returned as
// ASN.1 DER. The signature is verified against the public key in software first; one that
// fails gives ErrBadTokenSignature. A session the token lost is replaced (logging in again)
// and the signature retried once. The random reader is unused: the token has its own.
func (s *PKCS11) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil {
		opts = crypto.Hash(0)
	}
	sig, err := s.signUnverified(digest, opts)
	if err != nil {
		return nil, err
	}
	if err := verifySignature(s.pub, digest, sig, opts); err != nil {
		return nil, fmt.Errorf("pkcs11 key %q on token %q: %w", s.cfg.KeyLabel, s.cfg.TokenLabel, err)
	}
	return sig, nil
}

// signUnverified is Sign without the software check, for callers that make that check
// themselves (see CreateCertificate).
func (s *PKCS11) signUnverified(digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil {
		opts = crypto.Hash(0)
	}
	if err := checkDigest(s.kt, digest, opts); err != nil {
		return nil, fmt.Errorf("pkcs11 key %q: %w", s.cfg.KeyLabel, err)
	}
	mech, input, err := s.signMechanism(digest, opts)
	if err != nil {
		return nil, fmt.Errorf("pkcs11 key %q: %w", s.cfg.KeyLabel, err)
	}
	raw, err := s.signOnToken(mech, input)
	if err != nil {
		return nil, fmt.Errorf("pkcs11 key %q on token %q: %w", s.cfg.KeyLabel, s.cfg.TokenLabel, err)
	}
	sig := raw
	switch s.kt {
	case ECDSAP256, ECDSAP384:
		size := (s.pub.(*ecdsa.PublicKey).Curve.Params().BitSize + 7) / 8
		if sig, err = ecdsaRawToDER(raw, size); err != nil {
			return nil, fmt.Errorf("pkcs11 key %q: %w", s.cfg.KeyLabel, err)
		}
	}
	return sig, nil
}

// signMechanism picks the PKCS#11 mechanism and the bytes the token signs.
func (s *PKCS11) signMechanism(digest []byte, opts crypto.SignerOpts) (*pkcs11.Mechanism, []byte, error) {
	switch s.kt {
	case ECDSAP256, ECDSAP384:
		// CKM_ECDSA signs a digest computed outside the token, which is what we are given.
		return pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil), digest, nil
	case Ed25519:
		return pkcs11.NewMechanism(ckmEDDSA, nil), digest, nil
	case RSA2048, RSA3072, RSA4096:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			h := pss.HashFunc()
			hashMech, mgf, err := pssMechanisms(h)
			if err != nil {
				return nil, nil, err
			}
			salt, err := pssSaltLength(s.pub.(*rsa.PublicKey), h, pss)
			if err != nil {
				return nil, nil, err
			}
			params := pkcs11.NewPSSParams(hashMech, mgf, uint(salt))
			return pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_PSS, params), digest, nil
		}
		// CKM_RSA_PKCS pads and signs what it is given, so give it the DigestInfo.
		input, err := pkcs1DigestInfo(opts.HashFunc(), digest)
		if err != nil {
			return nil, nil, err
		}
		return pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil), input, nil
	}
	return nil, nil, fmt.Errorf("key type %q: %w", s.kt, ErrUnsupportedKey)
}

// pssMechanisms names the hash and MGF1 of CK_RSA_PKCS_PSS_PARAMS for a hash.
func pssMechanisms(h crypto.Hash) (hashMech, mgf uint, err error) {
	switch h {
	case crypto.SHA224:
		return pkcs11.CKM_SHA224, pkcs11.CKG_MGF1_SHA224, nil
	case crypto.SHA256:
		return pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, nil
	case crypto.SHA384:
		return pkcs11.CKM_SHA384, pkcs11.CKG_MGF1_SHA384, nil
	case crypto.SHA512:
		return pkcs11.CKM_SHA512, pkcs11.CKG_MGF1_SHA512, nil
	}
	return 0, 0, fmt.Errorf("RSA-PSS with %v: %w", h, ErrUnsupportedKey)
}

// signOnToken runs C_SignInit and C_Sign on a borrowed session. After an error that means the
// session or its login is gone, it drops the session, opens and logs in a new one, finds the
// key again by its CKA_ID (and the token by its label if the slot went away) and tries once
// more.
func (s *PKCS11) signOnToken(mech *pkcs11.Mechanism, input []byte) ([]byte, error) {
	sh, err := s.pool.get()
	if err != nil {
		return nil, err
	}
	sig, err := s.signWith(sh, mech, input)
	if err == nil {
		s.pool.put(sh)
		return sig, nil
	}
	if !sessionLost(err) {
		s.pool.put(sh) // C_Sign and a failed C_SignInit leave no operation active
		return nil, err
	}
	s.recoveries.Add(1)
	s.log.Warn("PKCS#11 session lost; opening a new one and retrying once",
		"token", s.cfg.TokenLabel, "key_label", s.cfg.KeyLabel, "error", err)
	if tokenLost(err) {
		if slot, ferr := findToken(s.mod.ctx, s.cfg.TokenLabel); ferr == nil {
			s.pool.setSlot(slot)
		}
	}
	first := err
	sh, err = s.pool.replace(sh)
	if err != nil {
		return nil, fmt.Errorf("after %w: reopening the session: %w", first, err)
	}
	// Tokens may forget object handles with the sessions that used them (SoftHSM2 does when
	// the last session closes), so find the key again on the fresh session.
	if err := s.refindKey(sh); err != nil {
		if sessionLost(err) {
			s.pool.discard(sh)
		} else {
			s.pool.put(sh)
		}
		return nil, fmt.Errorf("after %w: %w", first, err)
	}
	sig, err = s.signWith(sh, mech, input)
	if err != nil {
		if sessionLost(err) {
			s.pool.discard(sh)
		} else {
			s.pool.put(sh)
		}
		return nil, fmt.Errorf("after a lost session (%w), the retry failed: %w", first, err)
	}
	s.pool.put(sh)
	return sig, nil
}

func (s *PKCS11) signWith(sh pkcs11.SessionHandle, mech *pkcs11.Mechanism, input []byte) ([]byte, error) {
	key := pkcs11.ObjectHandle(s.key.Load())
	if err := s.mod.ctx.SignInit(sh, []*pkcs11.Mechanism{mech}, key); err != nil {
		return nil, fmt.Errorf("C_SignInit: %w", err)
	}
	sig, err := s.mod.ctx.Sign(sh, input)
	if err != nil {
		return nil, fmt.Errorf("C_Sign: %w", err)
	}
	return sig, nil
}

// refindKey looks the private key up again by the CKA_ID it had.
func (s *PKCS11) refindKey(sh pkcs11.SessionHandle) error {
	objs, err := findObjects(s.mod.ctx, sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_ID, s.ckaID),
	})
	if err != nil {
		return fmt.Errorf("finding key %q again: %w", s.cfg.KeyLabel, err)
	}
	if len(objs) != 1 {
		return fmt.Errorf("finding key %q again by CKA_ID %x: %d matches: %w", s.cfg.KeyLabel, s.ckaID, len(objs), ErrKeyNotFound)
	}
	s.key.Store(uint64(objs[0]))
	return nil
}

// Close waits for signatures in progress, closes the signer's sessions and releases the
// module, which is finalized when no other signer in the process uses it. Sign fails with
// ErrSignerClosed afterwards. Close is idempotent.
func (s *PKCS11) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = errors.Join(s.pool.close(), s.mod.release())
	})
	return s.closeErr
}
