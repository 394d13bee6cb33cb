package policy

import (
	"bytes"
	"crypto/dsa" //nolint:staticcheck // named only to refuse DSA keys clearly.
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
)

// Key size limits for workload keys.
const (
	// MinRSABits is the smallest RSA modulus accepted.
	MinRSABits = 2048
	// MaxRSABits is the largest RSA modulus accepted; larger keys only cost verification time.
	MaxRSABits = 8192
)

var (
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidNameConstraints  = asn1.ObjectIdentifier{2, 5, 29, 30}
	oidSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidCommonName       = asn1.ObjectIdentifier{2, 5, 4, 3}
)

// allowedCSRSignatures are the CSR signature algorithms accepted: SHA-2 family and Ed25519.
// SHA-1 and MD5 proofs of possession are refused.
var allowedCSRSignatures = map[x509.SignatureAlgorithm]bool{
	x509.SHA256WithRSA:    true,
	x509.SHA384WithRSA:    true,
	x509.SHA512WithRSA:    true,
	x509.SHA256WithRSAPSS: true,
	x509.SHA384WithRSAPSS: true,
	x509.SHA512WithRSAPSS: true,
	x509.ECDSAWithSHA256:  true,
	x509.ECDSAWithSHA384:  true,
	x509.ECDSAWithSHA512:  true,
	x509.PureEd25519:      true,
}

// generalNameTypes names the GeneralName choices of RFC 5280 §4.2.1.6 by context tag.
var generalNameTypes = map[int]string{
	0: "otherName",
	1: "email (rfc822Name)",
	2: "DNS",
	3: "x400Address",
	4: "directoryName",
	5: "ediPartyName",
	6: "URI",
	7: "IP",
	8: "registeredID",
}

// checkCSR applies the rules every CSR obeys whatever it asks for: it is present, its
// signature verifies with an allowed algorithm, its key is of an allowed type and size and is
// not the issuer's own key, and it requests neither basic constraints nor name constraints.
// It reports whether the CSR is present at all.
func checkCSR(c *collector, csr *x509.CertificateRequest, issuer *x509.Certificate) bool {
	if csr == nil {
		c.add("csr", ErrInvalidRequest, "missing")
		return false
	}
	if !allowedCSRSignatures[csr.SignatureAlgorithm] {
		c.add("csr", ErrCSRSignature, "signature algorithm %v is not allowed (want SHA-256 or stronger, or Ed25519)", csr.SignatureAlgorithm)
	} else if err := csr.CheckSignature(); err != nil {
		c.add("csr", ErrCSRSignature, "signature does not verify: %v", err)
	}
	checkKey(c, csr)
	if issuer != nil && bytes.Equal(csr.RawSubjectPublicKeyInfo, issuer.RawSubjectPublicKeyInfo) {
		c.add("csr", ErrKeyNotAllowed, "public key is the issuer's own key")
	}

	// crypto/x509 refuses a CSR that requests an extension twice, so each OID is seen once.
	for _, ext := range csr.Extensions {
		switch {
		case ext.Id.Equal(oidBasicConstraints):
			c.add("csr", ErrCAExtensionRequested, "requests a basic constraints extension; a leaf certificate is always CA:FALSE")
		case ext.Id.Equal(oidNameConstraints):
			c.add("csr", ErrCAExtensionRequested, "requests a name constraints extension; a leaf certificate never carries one")
		}
	}
	return true
}

// checkKey allows ECDSA P-256 and P-384, RSA of 2048 to 8192 bits and Ed25519.
func checkKey(c *collector, csr *x509.CertificateRequest) {
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == nil {
			c.add("csr", ErrKeyNotAllowed, "ECDSA key has no curve")
		} else if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			c.add("csr", ErrKeyNotAllowed, "ECDSA curve %s is not allowed (want P-256 or P-384)", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		switch bits := k.N.BitLen(); {
		case bits < MinRSABits:
			c.add("csr", ErrKeyNotAllowed, "RSA key of %d bits is too small (minimum %d)", bits, MinRSABits)
		case bits > MaxRSABits:
			c.add("csr", ErrKeyNotAllowed, "RSA key of %d bits is too large (maximum %d)", bits, MaxRSABits)
		}
	case ed25519.PublicKey:
	case *dsa.PublicKey:
		c.add("csr", ErrKeyNotAllowed, "DSA keys are not allowed (want ECDSA P-256/P-384, RSA >= %d or Ed25519)", MinRSABits)
	default:
		c.add("csr", ErrKeyNotAllowed, "%v keys are not allowed (want ECDSA P-256/P-384, RSA >= %d or Ed25519)", csr.PublicKeyAlgorithm, MinRSABits)
	}
}

// checkSANTypes refuses GeneralName kinds the standard library drops silently when it parses
// a CSR (otherName, directoryName, registeredID, ...): "nothing else" has to include them.
func checkSANTypes(c *collector, csr *x509.CertificateRequest) {
	for _, ext := range csr.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		var names []asn1.RawValue
		rest, err := asn1.Unmarshal(ext.Value, &names)
		if err != nil || len(rest) > 0 {
			c.add("csr", ErrSANNotAllowed, "subject alternative name extension is malformed")
			continue
		}
		for _, n := range names {
			if n.Class != asn1.ClassContextSpecific {
				c.add("csr", ErrSANNotAllowed, "subject alternative name of ASN.1 class %d is not a GeneralName", n.Class)
				continue
			}
			switch n.Tag {
			case 1, 2, 6, 7:
				// email, DNS, URI and IP are parsed by crypto/x509 and judged by name.
			default:
				kind, ok := generalNameTypes[n.Tag]
				if !ok {
					kind = "unknown"
				}
				c.add("csr", ErrSANNotAllowed, "%s SAN (tag %d) is not allowed", kind, n.Tag)
			}
		}
	}
}

// countCommonNames counts CN attributes in the CSR subject; crypto/x509 keeps only the last.
func countCommonNames(csr *x509.CertificateRequest) int {
	n := 0
	for _, atv := range csr.Subject.Names {
		if atv.Type.Equal(oidCommonName) {
			n++
		}
	}
	return n
}

// keyUsageFor is digitalSignature for every key, plus keyEncipherment for RSA keys, which
// TLS 1.2 RSA key exchange needs.
func keyUsageFor(csr *x509.CertificateRequest) x509.KeyUsage {
	if _, ok := csr.PublicKey.(*rsa.PublicKey); ok {
		return x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	}
	return x509.KeyUsageDigitalSignature
}
