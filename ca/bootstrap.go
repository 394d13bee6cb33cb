package ca

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca/signer"
)

// Lifetimes of the CA certificates meshca makes itself (DESIGN.md §2).
const (
	// DefaultRootTTL is a self-signed root's lifetime: 10 years, like istiod's.
	DefaultRootTTL = 10 * 365 * 24 * time.Hour
	// DefaultIntermediateTTL is an intermediate's lifetime: 1 year.
	DefaultIntermediateTTL = 365 * 24 * time.Hour
	// caBackdate is how far before now a new CA certificate starts, for skewed clocks.
	caBackdate = 5 * time.Minute
)

// ErrInvalidConfig means a CA configuration is unusable; the error names the field.
var ErrInvalidConfig = errors.New("invalid CA config")

// SelfSignedConfig says how to make the CA at a cluster's first start.
type SelfSignedConfig struct {
	// TrustDomain is the cluster's trust domain; CA certificates carry spiffe://<td>.
	TrustDomain spiffeid.TrustDomain
	// Organization is the subject O of the CA certificates; "meshca" when empty.
	Organization string
	// RootKey is the root's key (software or PKCS#11).
	RootKey signer.Signer
	// RootTTL is the root's lifetime; DefaultRootTTL when zero.
	RootTTL time.Duration
	// IntermediateKey, when set, makes an intermediate under the root that signs the
	// leaves; when nil the root signs them.
	IntermediateKey signer.Signer
	// IntermediateTTL is the intermediate's lifetime, cut to the root's; DefaultIntermediateTTL
	// when zero.
	IntermediateTTL time.Duration
	// Now is the time of creation.
	Now time.Time
	// Random is the source of serial numbers and signature randomness; crypto/rand when nil.
	Random io.Reader
}

// Validate reports the first field that is missing or out of range.
func (c SelfSignedConfig) Validate() error {
	switch {
	case c.TrustDomain.IsZero():
		return fmt.Errorf("trust_domain: %w: missing", ErrInvalidConfig)
	case c.RootKey == nil:
		return fmt.Errorf("root_key: %w: missing", ErrInvalidConfig)
	case c.RootTTL < 0:
		return fmt.Errorf("root_ttl %s: %w: negative", c.RootTTL, ErrInvalidConfig)
	case c.IntermediateTTL < 0:
		return fmt.Errorf("intermediate_ttl %s: %w: negative", c.IntermediateTTL, ErrInvalidConfig)
	case c.Now.IsZero():
		return fmt.Errorf("now: %w: missing", ErrInvalidConfig)
	}
	return nil
}

// NewSelfSigned makes a self-signed root and, when IntermediateKey is set, an intermediate
// under it, and returns the Issuer that signs leaves: the intermediate if there is one, else
// the root. The root has no path length constraint; the intermediate has path length 0, so
// it can sign leaves only.
func NewSelfSigned(cfg SelfSignedConfig) (*Issuer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	random := cfg.Random
	if random == nil {
		random = rand.Reader
	}
	org := cfg.Organization
	if org == "" {
		org = "meshca"
	}
	rootTTL := cfg.RootTTL
	if rootTTL == 0 {
		rootTTL = DefaultRootTTL
	}
	now := cfg.Now.UTC().Truncate(time.Second)

	rootTmpl, err := caTemplate(cfg.TrustDomain, org, "root CA", now.Add(-caBackdate), now.Add(rootTTL), random)
	if err != nil {
		return nil, err
	}
	rootTmpl.SignatureAlgorithm = cfg.RootKey.SignatureAlgorithm()
	root, err := createCert(random, rootTmpl, rootTmpl, cfg.RootKey, cfg.RootKey)
	if err != nil {
		return nil, fmt.Errorf("root certificate: %w", err)
	}
	if cfg.IntermediateKey == nil {
		return NewIssuer(IssuerParts{Certificate: root, Key: cfg.RootKey, Roots: []*x509.Certificate{root}}, now)
	}

	interTTL := cfg.IntermediateTTL
	if interTTL == 0 {
		interTTL = DefaultIntermediateTTL
	}
	notAfter := now.Add(interTTL)
	if notAfter.After(root.NotAfter) {
		notAfter = root.NotAfter
	}
	interTmpl, err := caTemplate(cfg.TrustDomain, org, "intermediate CA", now.Add(-caBackdate), notAfter, random)
	if err != nil {
		return nil, err
	}
	interTmpl.MaxPathLen, interTmpl.MaxPathLenZero = 0, true
	interTmpl.SignatureAlgorithm = cfg.RootKey.SignatureAlgorithm()
	inter, err := createCert(random, interTmpl, root, cfg.IntermediateKey, cfg.RootKey)
	if err != nil {
		return nil, fmt.Errorf("intermediate certificate: %w", err)
	}
	return NewIssuer(IssuerParts{Certificate: inter, Key: cfg.IntermediateKey, Roots: []*x509.Certificate{root}}, now)
}

// caTemplate is a CA certificate carrying the trust domain's SPIFFE ID, as SPIFFE signing
// certificates may. The subject's serialNumber attribute keeps successive CAs' names
// distinct across rotations.
func caTemplate(td spiffeid.TrustDomain, org, role string, notBefore, notAfter time.Time, random io.Reader) (*x509.Certificate, error) {
	serial, err := NewSerial(random)
	if err != nil {
		return nil, err
	}
	uri, err := url.Parse(td.IDString())
	if err != nil {
		return nil, fmt.Errorf("trust domain %s: %w", td, err)
	}
	return &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{org},
			CommonName:   org + " " + role,
			SerialNumber: serial.Text(16),
		},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{uri},
	}, nil
}

func createCert(random io.Reader, tmpl, parent *x509.Certificate, subjectKey, parentKey signer.Signer) (*x509.Certificate, error) {
	der, err := signer.CreateCertificate(random, tmpl, parent, subjectKey.Public(), parentKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}
