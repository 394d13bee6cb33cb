package signer

import (
	"crypto"
	"crypto/x509"
	"io"
)

// selfCheckingSigner is a signer whose Sign verifies every signature in software (PKCS11),
// and that can also sign without that check for a caller that is about to make it anyway.
type selfCheckingSigner interface {
	signUnverified(digest []byte, opts crypto.SignerOpts) ([]byte, error)
}

// x509View hands crypto/x509 the signer's signatures without the signer's own check:
// crypto/x509 makes the same check itself before it returns anything.
type x509View struct {
	s Signer
	c selfCheckingSigner
}

func (v x509View) Public() crypto.PublicKey { return v.s.Public() }

func (v x509View) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return v.c.signUnverified(digest, opts)
}

// forX509 is the crypto.Signer to give crypto/x509's Create functions.
func forX509(s Signer) crypto.Signer {
	if c, ok := s.(selfCheckingSigner); ok {
		return x509View{s: s, c: c}
	}
	return s
}

// CreateCertificate is x509.CreateCertificate signed by a CA signer, with each signature
// checked in software exactly once.
//
// crypto/x509 verifies every signature a crypto.Signer returns against the signer's public
// key before it returns a certificate (since Go 1.16: "x509: signature returned by signer is
// invalid"). A PKCS#11 signer also verifies inside Sign, so x509.CreateCertificate with it pays
// for two identical ECDSA verifications, each costing about as much as the token's signature.
// This function lets the crypto/x509 check be the only one; a test pins that crypto/x509 still
// makes it.
func CreateCertificate(random io.Reader, template, parent *x509.Certificate, pub crypto.PublicKey, s Signer) ([]byte, error) {
	return x509.CreateCertificate(random, template, parent, pub, forX509(s))
}

// CreateRevocationList is x509.CreateRevocationList signed by a CA signer, with the signature
// checked in software exactly once (see CreateCertificate).
func CreateRevocationList(random io.Reader, template *x509.RevocationList, issuer *x509.Certificate, s Signer) ([]byte, error) {
	return x509.CreateRevocationList(random, template, issuer, forX509(s))
}
