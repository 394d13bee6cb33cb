package ca

import (
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
)

var (
	// ErrSign means the CA key failed to sign, or its signature did not verify.
	ErrSign = errors.New("signing failed")
	// ErrDecisionNotUsable means SignWorkload was given a decision it must not sign.
	ErrDecisionNotUsable = errors.New("workload decision cannot be signed")
)

// Config is what an Authority needs.
type Config struct {
	// TrustDomain is the cluster's trust domain. Workload requests must name it (or leave it
	// empty to mean it), and the trust bundle is for it.
	TrustDomain spiffeid.TrustDomain
	// Issuer signs the certificates.
	Issuer *Issuer
	// Policy decides what may be issued; policy.DefaultConfig() when zero.
	Policy policy.Config
	// TrustedRoots are roots trusted besides the issuer's own, e.g. the next root published
	// ahead of a rotation. The bundle holds both, newest first.
	TrustedRoots []*x509.Certificate
	// Random is the signature randomness; crypto/rand when nil.
	Random io.Reader
}

// Authority issues certificates with one Issuer under one policy. It holds no mutable state:
// a rotation builds a new Authority. It is safe for concurrent use.
type Authority struct {
	td       spiffeid.TrustDomain
	issuer   *Issuer
	policy   *policy.Policy
	sigAlg   x509.SignatureAlgorithm
	random   io.Reader
	chainDER [][]byte // the issuer's chain, encoded once
	bundle   *x509bundle.Bundle
	// bundlePEM is bundle encoded once: every issuance answers with it.
	bundlePEM string
}

// New validates cfg and returns an Authority.
func New(cfg Config) (*Authority, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, fmt.Errorf("trust_domain: %w: missing", ErrInvalidConfig)
	}
	if cfg.Issuer == nil {
		return nil, fmt.Errorf("issuer: %w: missing", ErrInvalidConfig)
	}
	pc := cfg.Policy
	if pc == (policy.Config{}) {
		pc = policy.DefaultConfig()
	}
	pol, err := policy.New(pc)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	random := cfg.Random
	if random == nil {
		random = rand.Reader
	}
	bundle, err := NewBundle(cfg.TrustDomain, append(cfg.Issuer.Roots(), cfg.TrustedRoots...))
	if err != nil {
		return nil, err
	}
	bundlePEM, err := bundle.Marshal()
	if err != nil {
		return nil, fmt.Errorf("trust bundle: %w", err)
	}
	a := &Authority{
		td:        cfg.TrustDomain,
		issuer:    cfg.Issuer,
		policy:    pol,
		sigAlg:    cfg.Issuer.key.SignatureAlgorithm(),
		random:    random,
		bundle:    bundle,
		bundlePEM: string(bundlePEM),
	}
	for _, c := range cfg.Issuer.chain {
		a.chainDER = append(a.chainDER, c.Raw)
	}
	return a, nil
}

// Issued is a signed certificate.
type Issued struct {
	// Chain is the leaf's DER followed by the intermediates' (never a root).
	Chain [][]byte
	// Template is what was signed, as the policy decided it: serial number, validity,
	// subject, SANs, key usages. It is not parsed from Chain[0] (its Raw fields are empty);
	// Leaf does that, for callers that need the parsed certificate.
	Template *x509.Certificate
	// Fingerprint is the SHA-256 of the leaf's SubjectPublicKeyInfo, for key-reuse records.
	Fingerprint policy.Fingerprint
	// Dropped are the spec SANs that were not issued (IssueSpec only).
	Dropped []policy.DroppedSAN
}

// Leaf parses the signed leaf certificate.
func (i *Issued) Leaf() (*x509.Certificate, error) { return x509.ParseCertificate(i.Chain[0]) }

// ChainPEM is the chain as PEM, leaf first.
func (i *Issued) ChainPEM() []byte { return EncodeCertificatesPEM(i.Chain...) }

// IssueWorkload parses the DER CSR, decides it with policy.CheckWorkload and signs it. A
// request with an empty TrustDomain gets the Authority's; another trust domain is refused.
// Refusals are policy.Violations; a signing failure wraps ErrSign.
func (a *Authority) IssueWorkload(csrDER []byte, req policy.WorkloadRequest) (*Issued, error) {
	csr, err := parseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	d, err := a.DecideWorkload(csr, req)
	if err != nil {
		return nil, err
	}
	return a.SignWorkload(d)
}

// WorkloadDecision is a workload certificate the policy allowed, not yet signed. It is bound
// to the Authority that decided it and can be signed once.
type WorkloadDecision struct {
	a      *Authority
	csr    *x509.CertificateRequest
	tmpl   *x509.Certificate
	signed atomic.Bool
}

// DecideWorkload is the decision half of IssueWorkload, for a CSR the caller has parsed: a
// flow that asks a provider before signing decides first, asks, then calls SignWorkload, so the
// CSR's signature is verified once per issuance rather than once per step. The caller must not
// modify csr until the decision is signed.
func (a *Authority) DecideWorkload(csr *x509.CertificateRequest, req policy.WorkloadRequest) (*WorkloadDecision, error) {
	switch req.TrustDomain {
	case "":
		req.TrustDomain = a.td.Name()
	case a.td.Name():
	default:
		return nil, policy.Violations{{Field: "request.trust_domain", Rule: fmt.Sprintf("%q is not this CA's trust domain %q", req.TrustDomain, a.td.Name()), Err: policy.ErrInvalidRequest}}
	}
	tmpl, err := a.policy.CheckWorkload(csr, req, a.issuer.cert)
	if err != nil {
		return nil, err
	}
	return &WorkloadDecision{a: a, csr: csr, tmpl: tmpl}, nil
}

// SignWorkload signs what DecideWorkload allowed. A decision of another Authority (one built
// before a rotation) wraps ErrDecisionNotUsable, and so does a decision signed before: its
// serial number is spent.
func (a *Authority) SignWorkload(d *WorkloadDecision) (*Issued, error) {
	switch {
	case d == nil || d.a != a:
		return nil, fmt.Errorf("%w: it was not made by this authority", ErrDecisionNotUsable)
	case !d.signed.CompareAndSwap(false, true):
		return nil, fmt.Errorf("%w: serial %x is already signed", ErrDecisionNotUsable, d.tmpl.SerialNumber)
	}
	return a.sign(d.tmpl, d.csr, nil)
}

// IssueSpec parses the DER CSR, decides it with policy.CheckSpec and signs it. Key reuse is
// the caller's to decide first, with policy.CheckKeyReuse and the spec's ForceIssue.
func (a *Authority) IssueSpec(csrDER []byte, req policy.SpecRequest) (*Issued, error) {
	csr, err := parseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	d, err := a.policy.CheckSpec(csr, req, a.issuer.cert)
	if err != nil {
		return nil, err
	}
	return a.sign(d.Template, csr, d.Dropped)
}

func parseCSR(der []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, policy.Violations{{Field: "csr", Rule: "does not parse: " + err.Error(), Err: policy.ErrInvalidRequest}}
	}
	return csr, nil
}

// sign creates the certificate. crypto/x509 checks the signature against the issuer's public
// key before returning, so a faulty signer (or token) cannot hand out a bad certificate;
// signer.CreateCertificate makes that the only check, not a second one after the token's.
func (a *Authority) sign(tmpl *x509.Certificate, csr *x509.CertificateRequest, dropped []policy.DroppedSAN) (*Issued, error) {
	tmpl.SignatureAlgorithm = a.sigAlg
	der, err := signer.CreateCertificate(a.random, tmpl, a.issuer.cert, csr.PublicKey, a.issuer.key)
	if err != nil {
		return nil, fmt.Errorf("%w: serial %x: %w", ErrSign, tmpl.SerialNumber, err)
	}
	chain := make([][]byte, 0, 1+len(a.chainDER))
	chain = append(chain, der)
	chain = append(chain, a.chainDER...)
	return &Issued{
		Chain:       chain,
		Template:    tmpl,
		Fingerprint: policy.FingerprintSPKI(csr.RawSubjectPublicKeyInfo),
		Dropped:     dropped,
	}, nil
}

// TrustDomain is the Authority's trust domain.
func (a *Authority) TrustDomain() spiffeid.TrustDomain { return a.td }

// Issuer is the Issuer that signs.
func (a *Authority) Issuer() *Issuer { return a.issuer }

// Policy is the issuance policy in force.
func (a *Authority) Policy() *policy.Policy { return a.policy }

// Bundle is a copy of the trust bundle: the issuer's roots and the trusted roots, newest
// first.
func (a *Authority) Bundle() *x509bundle.Bundle { return a.bundle.Clone() }

// BundlePEM is the trust bundle as PEM (Bundle().Marshal()), encoded once.
func (a *Authority) BundlePEM() string { return a.bundlePEM }

// ChainPEM is the issuer's chain (without leaf or roots) as PEM.
func (a *Authority) ChainPEM() []byte { return EncodeCertificatesPEM(slices.Clone(a.chainDER)...) }
