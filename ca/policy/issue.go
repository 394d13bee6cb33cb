package policy

import (
	"crypto/x509"
	"math/big"
	"time"
)

// MaxSerialBits is the longest serial number accepted: RFC 5280 §4.1.2.2 allows 20 octets,
// and a positive DER INTEGER of 160 bits would need a 21st for its sign.
const MaxSerialBits = 159

// Purpose is what a certificate may be used for; it becomes an ExtKeyUsage.
type Purpose string

// The purposes a certificate may carry.
const (
	// ClientAuth is TLS client authentication (the default).
	ClientAuth Purpose = "client_auth"
	// ServerAuth is TLS server authentication.
	ServerAuth Purpose = "server_auth"
)

// checkSerial refuses a missing, non-positive or over-long serial.
func checkSerial(c *collector, serial *big.Int) {
	switch {
	case serial == nil:
		c.add("serial", ErrSerial, "missing (the caller draws it, at least 128 random bits)")
	case serial.Sign() <= 0:
		c.add("serial", ErrSerial, "%s is not positive", serial)
	case serial.BitLen() > MaxSerialBits:
		c.add("serial", ErrSerial, "%d bits is longer than 20 octets (at most %d bits)", serial.BitLen(), MaxSerialBits)
	}
}

// extKeyUsages maps purposes to ExtKeyUsages: client_auth when none are given, server_auth
// only when serverAllowed. Duplicates collapse.
func extKeyUsages(c *collector, field string, purposes []Purpose, serverAllowed bool) []x509.ExtKeyUsage {
	if len(purposes) == 0 {
		return []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	var client, server bool
	for _, p := range purposes {
		switch p {
		case ClientAuth:
			client = true
		case ServerAuth:
			if !serverAllowed {
				c.add(field, ErrPurposeNotAllowed, "%q is not allowed for this identity", p)
			}
			server = true
		default:
			c.add(field, ErrPurposeNotAllowed, "%q is not a purpose (want %q or %q)", p, ClientAuth, ServerAuth)
		}
	}
	ekus := make([]x509.ExtKeyUsage, 0, 2)
	if client {
		ekus = append(ekus, x509.ExtKeyUsageClientAuth)
	}
	if server {
		ekus = append(ekus, x509.ExtKeyUsageServerAuth)
	}
	return ekus
}

// validity computes NotBefore and NotAfter: now minus the backdate (not before the issuer's
// own NotBefore), now plus the lifetime, clamped to the issuer's NotAfter. Times are whole
// seconds in UTC, as X.509 encodes them. It refuses a lifetime that is negative or over max,
// a missing time, and an issuer with no validity left at now.
func validity(c *collector, field string, now time.Time, lifetime, max, backdate time.Duration, issuer *x509.Certificate) (notBefore, notAfter time.Time) {
	ok := true
	if now.IsZero() {
		c.add("request.now", ErrInvalidRequest, "missing (the caller supplies the issuance time)")
		ok = false
	}
	switch {
	case lifetime < 0:
		c.add(field, ErrLifetime, "%s is negative", lifetime)
		ok = false
	case lifetime > max:
		c.add(field, ErrLifetime, "%s exceeds the maximum %s", lifetime, max)
		ok = false
	}
	if issuer == nil {
		c.add("issuer", ErrInvalidRequest, "missing issuer certificate")
		return time.Time{}, time.Time{}
	}
	if !ok {
		return time.Time{}, time.Time{}
	}
	now = now.UTC().Truncate(time.Second)
	if now.Before(issuer.NotBefore) {
		c.add("issuer", ErrIssuerNotValid, "not valid before %s (request time %s)", issuer.NotBefore.UTC().Format(time.RFC3339), now.Format(time.RFC3339))
		return time.Time{}, time.Time{}
	}
	if !now.Before(issuer.NotAfter) {
		c.add("issuer", ErrIssuerNotValid, "expired at %s (request time %s)", issuer.NotAfter.UTC().Format(time.RFC3339), now.Format(time.RFC3339))
		return time.Time{}, time.Time{}
	}
	notBefore = now.Add(-backdate)
	if notBefore.Before(issuer.NotBefore) {
		notBefore = issuer.NotBefore.UTC()
	}
	notAfter = now.Add(lifetime)
	if notAfter.After(issuer.NotAfter) {
		notAfter = issuer.NotAfter.UTC()
	}
	return notBefore, notAfter
}
