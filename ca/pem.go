package ca

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// PEM block types.
const (
	pemCertificate = "CERTIFICATE"
	pemCSR         = "CERTIFICATE REQUEST"
	pemCSRLegacy   = "NEW CERTIFICATE REQUEST"
	pemCRL         = "X509 CRL"
)

// ErrPEM means PEM data is malformed or holds the wrong kind of block.
var ErrPEM = errors.New("malformed PEM")

// EncodeCertificatesPEM writes DER certificates as consecutive CERTIFICATE blocks.
func EncodeCertificatesPEM(ders ...[]byte) []byte {
	var b bytes.Buffer
	for _, der := range ders {
		// Writing PEM to a bytes.Buffer cannot fail.
		_ = pem.Encode(&b, &pem.Block{Type: pemCertificate, Bytes: der})
	}
	return b.Bytes()
}

// ParseCertificatesPEM reads one or more CERTIFICATE blocks. Any other block type, any
// non-blank text after the last block, and no certificate at all are errors.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != pemCertificate {
			return nil, fmt.Errorf("%w: block %d is %q, want %q", ErrPEM, len(certs), block.Type, pemCertificate)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate %d: %w", ErrPEM, len(certs), err)
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, fmt.Errorf("%w: unparsed text after certificate %d", ErrPEM, len(certs))
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no %q block", ErrPEM, pemCertificate)
	}
	return certs, nil
}

// DecodeCSR returns the DER of a CSR given as PEM ("CERTIFICATE REQUEST" or the older "NEW
// CERTIFICATE REQUEST") or already as DER. It does not parse the CSR; issuing does.
func DecodeCSR(data []byte) ([]byte, error) {
	trimmed := bytes.TrimSpace(data)
	if !bytes.HasPrefix(trimmed, []byte("-----BEGIN")) {
		return data, nil
	}
	block, rest := pem.Decode(trimmed)
	if block == nil {
		return nil, fmt.Errorf("csr: %w: no PEM block", ErrPEM)
	}
	if block.Type != pemCSR && block.Type != pemCSRLegacy {
		return nil, fmt.Errorf("csr: %w: block is %q, want %q", ErrPEM, block.Type, pemCSR)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, fmt.Errorf("csr: %w: text after the CSR block", ErrPEM)
	}
	return block.Bytes, nil
}

// EncodeCRLPEM wraps a DER CRL in an "X509 CRL" PEM block.
func EncodeCRLPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemCRL, Bytes: der})
}
