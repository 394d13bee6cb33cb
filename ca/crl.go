package ca

import (
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"time"

	"github.com/meshca/meshca/ca/signer"
)

// RFC 5280 §5.3.1 CRL reason codes meshca records.
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonCACompromise         = 2
	ReasonAffiliationChanged   = 3
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
	ReasonCertificateHold      = 6
	ReasonRemoveFromCRL        = 8
	ReasonPrivilegeWithdrawn   = 9
	ReasonAACompromise         = 10
)

// ErrCRL means a CRL request breaks a rule: the error names the field.
var ErrCRL = errors.New("invalid CRL request")

// Revocation is one revoked certificate as the replicated state records it.
type Revocation struct {
	// Serial is the revoked certificate's serial number.
	Serial *big.Int
	// RevokedAt is when it was revoked.
	RevokedAt time.Time
	// Reason is an RFC 5280 reason code; ReasonUnspecified leaves the extension out.
	Reason int
	// NotAfter is the certificate's expiry. Once it is before the CRL's ThisUpdate the entry
	// is dropped: an expired certificate is refused anyway. Zero keeps the entry.
	NotAfter time.Time
}

// CRLRequest is everything a CRL depends on, supplied by the caller so every node that
// builds it from the same replicated state builds the same list.
type CRLRequest struct {
	// Number is the CRL number; it must be positive and greater than Previous.
	Number *big.Int
	// Previous is the number of the last CRL published, nil if none, so numbers only grow.
	Previous *big.Int
	// ThisUpdate is the CRL's issue time.
	ThisUpdate time.Time
	// NextUpdate is when the next CRL is due; after ThisUpdate.
	NextUpdate time.Time
	// Revoked are the revocations; their order is kept.
	Revoked []Revocation
}

// CRL signs a DER certificate revocation list for the certificates the Authority's issuer
// signed.
func (a *Authority) CRL(req CRLRequest) ([]byte, error) {
	return a.issuer.CRL(req, a.random)
}

// CRL signs a DER certificate revocation list with the issuer's key, leaving out entries for
// certificates already expired at ThisUpdate. random is the signature randomness (crypto/rand
// when nil). crypto/x509 verifies the signature before returning the list.
func (i *Issuer) CRL(req CRLRequest, random io.Reader) ([]byte, error) {
	switch {
	case req.Number == nil || req.Number.Sign() <= 0:
		return nil, fmt.Errorf("number: %w: must be positive", ErrCRL)
	case req.Number.BitLen() > 159:
		return nil, fmt.Errorf("number: %w: longer than 20 octets", ErrCRL)
	case req.Previous != nil && req.Number.Cmp(req.Previous) <= 0:
		return nil, fmt.Errorf("number %s: %w: not greater than the previous CRL's %s", req.Number, ErrCRL, req.Previous)
	case req.ThisUpdate.IsZero():
		return nil, fmt.Errorf("this_update: %w: missing", ErrCRL)
	case !req.NextUpdate.After(req.ThisUpdate):
		return nil, fmt.Errorf("next_update: %w: %s is not after this_update %s", ErrCRL, req.NextUpdate.UTC().Format(time.RFC3339), req.ThisUpdate.UTC().Format(time.RFC3339))
	case i.cert.KeyUsage&x509.KeyUsageCRLSign == 0:
		return nil, fmt.Errorf("issuer: %w: %s lacks the cRLSign key usage", ErrCRL, i.cert.Subject)
	}
	if random == nil {
		random = rand.Reader
	}
	entries := make([]x509.RevocationListEntry, 0, len(req.Revoked))
	for k, r := range req.Revoked {
		switch {
		case r.Serial == nil || r.Serial.Sign() <= 0:
			return nil, fmt.Errorf("revoked[%d].serial: %w: must be positive", k, ErrCRL)
		case r.RevokedAt.IsZero():
			return nil, fmt.Errorf("revoked[%d].revoked_at: %w: missing", k, ErrCRL)
		case r.Reason < 0 || r.Reason > ReasonAACompromise || r.Reason == 7:
			return nil, fmt.Errorf("revoked[%d].reason: %w: %d is not an RFC 5280 reason code", k, ErrCRL, r.Reason)
		}
		if !r.NotAfter.IsZero() && r.NotAfter.Before(req.ThisUpdate) {
			continue
		}
		entries = append(entries, x509.RevocationListEntry{
			SerialNumber:   r.Serial,
			RevocationTime: r.RevokedAt.UTC(),
			ReasonCode:     r.Reason,
		})
	}
	der, err := signer.CreateRevocationList(random, &x509.RevocationList{
		SignatureAlgorithm:        i.key.SignatureAlgorithm(),
		RevokedCertificateEntries: entries,
		Number:                    req.Number,
		ThisUpdate:                req.ThisUpdate.UTC(),
		NextUpdate:                req.NextUpdate.UTC(),
	}, i.cert, i.key)
	if err != nil {
		return nil, fmt.Errorf("%w: CRL %s: %w", ErrSign, req.Number, err)
	}
	return der, nil
}
