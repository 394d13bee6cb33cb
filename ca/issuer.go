package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/meshca/meshca/ca/signer"
)

// Sentinel errors for an issuer that cannot be used, one per rule. Errors wrapping them name
// the file (or part) and say what is wrong.
var (
	// ErrCAFile means a CA file is missing, unreadable or holds no usable PEM.
	ErrCAFile = errors.New("unusable CA file")
	// ErrKeyMismatch means the key does not belong to the CA certificate.
	ErrKeyMismatch = errors.New("key does not match the CA certificate")
	// ErrNotCA means the certificate may not issue: not CA:TRUE, no keyCertSign, or an
	// extended key usage that excludes workload certificates.
	ErrNotCA = errors.New("certificate cannot issue certificates")
	// ErrExpired means a certificate is expired, or not yet valid, at the time given.
	ErrExpired = errors.New("certificate outside its validity period")
	// ErrPathLen means a path length constraint above the CA certificate forbids it.
	ErrPathLen = errors.New("path length constraint forbids the CA certificate")
	// ErrChainUntrusted means the CA certificate does not chain to the roots.
	ErrChainUntrusted = errors.New("chain does not verify to the roots")
)

// Issuer is a CA certificate, its key and the certificates above it, validated for issuing.
// It is immutable and safe for concurrent use.
type Issuer struct {
	cert  *x509.Certificate
	key   signer.Signer
	chain []*x509.Certificate // sent after each leaf: cert (unless it is a root) and the CAs above it, roots excluded
	roots []*x509.Certificate
}

// IssuerParts are the pieces of an Issuer.
type IssuerParts struct {
	// Certificate is the CA certificate that signs.
	Certificate *x509.Certificate
	// Key is its private key.
	Key signer.Signer
	// Intermediates are the CA certificates between Certificate and a root, nearest first.
	// Roots listed here are ignored.
	Intermediates []*x509.Certificate
	// Roots are the trust anchors; Certificate chains to one of them (or is one).
	Roots []*x509.Certificate
}

// partNames are how errors refer to each part: a file name for a cacerts folder.
type partNames struct {
	cert, key, chain, roots string
}

var memoryParts = partNames{cert: "issuer certificate", key: "issuer key", chain: "intermediates", roots: "roots"}

// NewIssuer validates parts at now and returns the Issuer. The rules: the key matches the
// certificate; the certificate is CA:TRUE with keyCertSign and an extended key usage (if any)
// that allows client and server authentication; nothing is expired or not yet valid; no path
// length constraint above forbids it; and it verifies to the roots through the intermediates.
func NewIssuer(parts IssuerParts, now time.Time) (*Issuer, error) {
	return newIssuer(memoryParts, parts, now)
}

func newIssuer(n partNames, p IssuerParts, now time.Time) (*Issuer, error) {
	switch {
	case p.Certificate == nil:
		return nil, fmt.Errorf("%s: %w: missing", n.cert, ErrCAFile)
	case p.Key == nil:
		return nil, fmt.Errorf("%s: %w: missing", n.key, ErrCAFile)
	case len(p.Roots) == 0:
		return nil, fmt.Errorf("%s: %w: no root certificate", n.roots, ErrCAFile)
	case now.IsZero():
		return nil, fmt.Errorf("%s: validation time is missing", n.cert)
	}
	cert := p.Certificate

	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(p.Key.Public()) {
		return nil, fmt.Errorf("%s: %w: the key does not match the public key of %s", n.key, ErrKeyMismatch, n.cert)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("%s: %w: basic constraints say CA:FALSE", n.cert, ErrNotCA)
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%s: %w: key usage lacks keyCertSign", n.cert, ErrNotCA)
	}
	if len(cert.ExtKeyUsage) > 0 && !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageAny) &&
		(!slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) || !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth)) {
		return nil, fmt.Errorf("%s: %w: extended key usage does not allow both clientAuth and serverAuth, so the workload certificates it signs would not verify", n.cert, ErrNotCA)
	}

	var above []*x509.Certificate
	for _, c := range p.Intermediates {
		if !containsCert(p.Roots, c) && !c.Equal(cert) {
			above = append(above, c)
		}
	}
	if err := checkValidity(n.cert, []*x509.Certificate{cert}, now); err != nil {
		return nil, err
	}
	if err := checkValidity(n.chain, above, now); err != nil {
		return nil, err
	}
	if err := checkValidity(n.roots, p.Roots, now); err != nil {
		return nil, err
	}
	isRoot := containsCert(p.Roots, cert)
	if !isRoot {
		if err := checkPathLen(n, cert, above, p.Roots); err != nil {
			return nil, err
		}
	}

	rootPool := x509.NewCertPool()
	for _, r := range p.Roots {
		rootPool.AddCert(r)
	}
	interPool := x509.NewCertPool()
	for _, c := range above {
		interPool.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:         rootPool,
		Intermediates: interPool,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("%s: %w: %s does not verify to %s: %v", n.chain, ErrChainUntrusted, n.cert, n.roots, err)
	}

	var chain []*x509.Certificate
	if !isRoot {
		chain = append([]*x509.Certificate{cert}, above...)
	}
	return &Issuer{cert: cert, key: p.Key, chain: chain, roots: slices.Clone(p.Roots)}, nil
}

// checkValidity refuses any certificate outside its validity period at now.
func checkValidity(name string, certs []*x509.Certificate, now time.Time) error {
	for i, c := range certs {
		switch {
		case now.After(c.NotAfter):
			return fmt.Errorf("%s: %w: certificate %d (%s) expired at %s", name, ErrExpired, i, c.Subject, c.NotAfter.UTC().Format(time.RFC3339))
		case now.Before(c.NotBefore):
			return fmt.Errorf("%s: %w: certificate %d (%s) is not valid before %s", name, ErrExpired, i, c.Subject, c.NotBefore.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// checkPathLen walks from the CA certificate up through the intermediates to the root that
// signed the top one: a certificate with k CA certificates below it needs a path length
// constraint of at least k (or none). The leaves the CA issues add no CA, so the CA's own
// constraint, even 0, always allows them.
func checkPathLen(n partNames, cert *x509.Certificate, above, roots []*x509.Certificate) error {
	path := append([]*x509.Certificate{cert}, above...)
	top := path[len(path)-1]
	for _, r := range roots {
		if bytes.Equal(top.RawIssuer, r.RawSubject) && top.CheckSignatureFrom(r) == nil {
			path = append(path, r)
			break
		}
	}
	for k := 1; k < len(path); k++ {
		c := path[k]
		if c.BasicConstraintsValid && c.MaxPathLen >= 0 && c.MaxPathLen < k {
			name := n.chain
			if k == len(path)-1 && containsCert(roots, c) {
				name = n.roots
			}
			return fmt.Errorf("%s: %w: %s has path length %d, but %d CA certificate(s) including %s sit below it", name, ErrPathLen, c.Subject, c.MaxPathLen, k, n.cert)
		}
	}
	return nil
}

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	return slices.ContainsFunc(certs, c.Equal)
}

// Certificate is the CA certificate that signs.
func (i *Issuer) Certificate() *x509.Certificate { return i.cert }

// Signer is the CA key.
func (i *Issuer) Signer() signer.Signer { return i.key }

// Chain is what follows a leaf in an issued chain: the CA certificate and the intermediates
// above it, without roots. It is empty when the CA certificate is itself a root.
func (i *Issuer) Chain() []*x509.Certificate { return slices.Clone(i.chain) }

// Roots are the trust anchors the CA certificate chains to.
func (i *Issuer) Roots() []*x509.Certificate { return slices.Clone(i.roots) }
