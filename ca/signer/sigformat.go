package signer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
)

// This file holds the pure conversions between what crypto.Signer promises and what a
// PKCS#11 token takes and returns, and the software check of every token signature. It has no
// build tag so its tests run in every build.

// ecdsaRawToDER turns the r||s a PKCS#11 token returns for CKM_ECDSA into the ASN.1 DER
// SEQUENCE { r INTEGER, s INTEGER } that crypto.Signer and X.509 use. size is the curve's
// scalar length in bytes (32 for P-256, 48 for P-384).
func ecdsaRawToDER(raw []byte, size int) ([]byte, error) {
	if len(raw) != 2*size {
		return nil, fmt.Errorf("ECDSA signature from token: %d bytes, want r||s of 2x%d", len(raw), size)
	}
	r := new(big.Int).SetBytes(raw[:size])
	s := new(big.Int).SetBytes(raw[size:])
	if r.Sign() == 0 || s.Sign() == 0 {
		return nil, fmt.Errorf("ECDSA signature from token: r or s is zero: %w", ErrBadTokenSignature)
	}
	der, err := asn1.Marshal(struct{ R, S *big.Int }{r, s})
	if err != nil {
		return nil, fmt.Errorf("ECDSA signature: DER: %w", err)
	}
	return der, nil
}

// hashOIDs are the DigestInfo algorithm identifiers of RFC 8017 §9.2 for the hashes a CA
// signature uses.
var hashOIDs = map[crypto.Hash]asn1.ObjectIdentifier{
	crypto.SHA224: {2, 16, 840, 1, 101, 3, 4, 2, 4},
	crypto.SHA256: {2, 16, 840, 1, 101, 3, 4, 2, 1},
	crypto.SHA384: {2, 16, 840, 1, 101, 3, 4, 2, 2},
	crypto.SHA512: {2, 16, 840, 1, 101, 3, 4, 2, 3},
}

// pkcs1DigestInfo is the input CKM_RSA_PKCS signs for RSASSA-PKCS1-v1_5: the DER DigestInfo
// of the digest. With hash 0 the digest is signed as it is, like rsa.SignPKCS1v15.
func pkcs1DigestInfo(h crypto.Hash, digest []byte) ([]byte, error) {
	if h == 0 {
		return digest, nil
	}
	oid, ok := hashOIDs[h]
	if !ok {
		return nil, fmt.Errorf("RSA PKCS#1 v1.5 with %v: %w", h, ErrUnsupportedKey)
	}
	if len(digest) != h.Size() {
		return nil, fmt.Errorf("digest: %d bytes, want %d for %v", len(digest), h.Size(), h)
	}
	return asn1.Marshal(struct {
		Algorithm pkix.AlgorithmIdentifier
		Digest    []byte
	}{pkix.AlgorithmIdentifier{Algorithm: oid, Parameters: asn1.NullRawValue}, digest})
}

// pssSaltLength resolves rsa.PSSOptions.SaltLength to a byte count for a key and hash, the
// way rsa.SignPSS does: PSSSaltLengthAuto is the longest salt that fits, EqualsHash is the
// hash length.
func pssSaltLength(pub *rsa.PublicKey, h crypto.Hash, opts *rsa.PSSOptions) (int, error) {
	emLen := (pub.N.BitLen() - 1 + 7) / 8
	maxSalt := emLen - h.Size() - 2
	if maxSalt < 0 {
		return 0, fmt.Errorf("RSA-PSS: key too small for %v", h)
	}
	switch salt := opts.SaltLength; {
	case salt == rsa.PSSSaltLengthAuto:
		return maxSalt, nil
	case salt == rsa.PSSSaltLengthEqualsHash:
		return h.Size(), nil
	case salt > 0 && salt <= maxSalt:
		return salt, nil
	default:
		return 0, fmt.Errorf("RSA-PSS salt length %d: want 1..%d, PSSSaltLengthAuto or PSSSaltLengthEqualsHash", salt, maxSalt)
	}
}

// checkDigest makes sure digest and opts agree the way crypto.Signer requires.
func checkDigest(kt KeyType, digest []byte, opts crypto.SignerOpts) error {
	h := opts.HashFunc()
	if kt == Ed25519 {
		if h != 0 {
			return fmt.Errorf("Ed25519 with pre-hash %v (Ed25519ph): %w", h, ErrUnsupportedKey)
		}
		if o, ok := opts.(*ed25519.Options); ok && o.Context != "" {
			return fmt.Errorf("Ed25519 with a context (Ed25519ctx): %w", ErrUnsupportedKey)
		}
		return nil
	}
	if h == 0 {
		if _, ok := opts.(*rsa.PSSOptions); ok || kt == ECDSAP256 || kt == ECDSAP384 {
			return fmt.Errorf("%s signature: opts must name the hash that made the digest", kt)
		}
		return nil
	}
	if len(digest) != h.Size() {
		return fmt.Errorf("digest: %d bytes, want %d for %v", len(digest), h.Size(), h)
	}
	return nil
}

// verifySignature checks a signature against the public key with the standard library, as
// the signer's callers would: DER ECDSA, PKCS#1 v1.5 or PSS RSA, pure Ed25519.
func verifySignature(pub crypto.PublicKey, digest, sig []byte, opts crypto.SignerOpts) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, digest, sig) {
			return ErrBadTokenSignature
		}
		return nil
	case *rsa.PublicKey:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			// Verify with the salt length actually requested, not Auto, so a token that used
			// another length is caught.
			salt, err := pssSaltLength(k, pss.HashFunc(), pss)
			if err != nil {
				return err
			}
			if err := rsa.VerifyPSS(k, pss.HashFunc(), digest, sig, &rsa.PSSOptions{SaltLength: salt, Hash: pss.HashFunc()}); err != nil {
				return fmt.Errorf("%w: %w", ErrBadTokenSignature, err)
			}
			return nil
		}
		if err := rsa.VerifyPKCS1v15(k, opts.HashFunc(), digest, sig); err != nil {
			return fmt.Errorf("%w: %w", ErrBadTokenSignature, err)
		}
		return nil
	case ed25519.PublicKey:
		if !ed25519.Verify(k, digest, sig) {
			return ErrBadTokenSignature
		}
		return nil
	}
	return fmt.Errorf("verify %T: %w", pub, ErrUnsupportedKey)
}
