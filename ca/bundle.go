package ca

import (
	"crypto/x509"
	"errors"
	"fmt"
	"slices"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrBundle means a trust bundle is empty or holds a certificate that is not a CA.
var ErrBundle = errors.New("invalid trust bundle")

// NewBundle returns the trust bundle of td holding roots, newest first (latest NotBefore
// first, then latest NotAfter), so a reader that takes the first root takes the newest.
// Duplicates collapse. Every certificate must be a CA; the bundle must not be empty.
func NewBundle(td spiffeid.TrustDomain, roots []*x509.Certificate) (*x509bundle.Bundle, error) {
	if td.IsZero() {
		return nil, fmt.Errorf("%w: trust domain is missing", ErrBundle)
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("%w: %s: no root certificate", ErrBundle, td)
	}
	sorted := slices.Clone(roots)
	for i, r := range sorted {
		if r == nil || !r.BasicConstraintsValid || !r.IsCA {
			return nil, fmt.Errorf("%w: %s: certificate %d is not a CA", ErrBundle, td, i)
		}
	}
	slices.SortStableFunc(sorted, func(a, b *x509.Certificate) int {
		if c := b.NotBefore.Compare(a.NotBefore); c != 0 {
			return c
		}
		return b.NotAfter.Compare(a.NotAfter)
	})
	b := x509bundle.New(td)
	for _, r := range sorted {
		b.AddX509Authority(r) // ignores duplicates
	}
	return b, nil
}

// AddRoot returns a new bundle with root added in its place (newest first), as the first
// step of a root rotation: both roots are trusted before the new one signs anything.
func AddRoot(b *x509bundle.Bundle, root *x509.Certificate) (*x509bundle.Bundle, error) {
	return NewBundle(b.TrustDomain(), append(b.X509Authorities(), root))
}

// RemoveRoot returns a new bundle without root, as the last step of a rotation. Removing the
// last root is refused.
func RemoveRoot(b *x509bundle.Bundle, root *x509.Certificate) (*x509bundle.Bundle, error) {
	kept := slices.DeleteFunc(b.X509Authorities(), root.Equal)
	return NewBundle(b.TrustDomain(), kept)
}

// ParseBundlePEM reads a PEM trust bundle for td with go-spiffe's parser and checks it as
// NewBundle does, ordering it newest first. The bundle's own Marshal method writes it.
func ParseBundlePEM(td spiffeid.TrustDomain, data []byte) (*x509bundle.Bundle, error) {
	parsed, err := x509bundle.Parse(td, data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBundle, err)
	}
	return NewBundle(td, parsed.X509Authorities())
}
