package policy

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"math/big"
)

// Fingerprint is the SHA-256 of a DER SubjectPublicKeyInfo: the key a certificate binds,
// independent of the certificate. It is what key reuse is detected by, and equals the
// signer package's KeyID for the same key.
type Fingerprint [sha256.Size]byte

// FingerprintSPKI hashes a DER SubjectPublicKeyInfo, such as
// x509.CertificateRequest.RawSubjectPublicKeyInfo, without re-encoding it.
func FingerprintSPKI(spkiDER []byte) Fingerprint {
	return sha256.Sum256(spkiDER)
}

// FingerprintOf hashes a public key's SubjectPublicKeyInfo.
func FingerprintOf(pub crypto.PublicKey) (Fingerprint, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return Fingerprint{}, fmt.Errorf("public key: %w", err)
	}
	return FingerprintSPKI(der), nil
}

// ParseFingerprint reads the hex form String writes.
func ParseFingerprint(s string) (Fingerprint, error) {
	var f Fingerprint
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(f) {
		return Fingerprint{}, fmt.Errorf("fingerprint %q: want %d hex digits", s, 2*len(f))
	}
	copy(f[:], b)
	return f, nil
}

// String is the lower-case hex form.
func (f Fingerprint) String() string { return hex.EncodeToString(f[:]) }

// CheckKeyReuse decides whether a public key may be certified again. firstSerial is the
// serial of the certificate that first used the key, or nil when the key is new. Reuse is
// refused with ErrKeyReused unless force is set (a spec's force_issue); workload requests
// never force.
func CheckKeyReuse(fp Fingerprint, firstSerial *big.Int, force bool) error {
	if firstSerial == nil || force {
		return nil
	}
	return &Violation{
		Field: "csr",
		Rule:  fmt.Sprintf("public key sha256:%s was already used for certificate serial %x; use a new key or set force_issue", fp, firstSerial),
		Err:   ErrKeyReused,
	}
}
