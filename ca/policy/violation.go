package policy

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors for the outcomes callers branch on. Every Violation wraps exactly one of
// them, so errors.Is works on a single Violation and on Violations.
var (
	// ErrInvalidRequest means a request field is missing or malformed (domain, service,
	// trust domain, provider suffix, instance id, time).
	ErrInvalidRequest = errors.New("invalid request")
	// ErrCSRSignature means the CSR's signature does not verify or uses a refused algorithm.
	ErrCSRSignature = errors.New("CSR signature refused")
	// ErrKeyNotAllowed means the CSR's public key type or size is not allowed.
	ErrKeyNotAllowed = errors.New("public key not allowed")
	// ErrSubjectMismatch means the CSR's subject does not name the identity.
	ErrSubjectMismatch = errors.New("subject does not match the identity")
	// ErrSANNotAllowed means the CSR's subject alternative names are not exactly the
	// identity's names.
	ErrSANNotAllowed = errors.New("subject alternative name not allowed")
	// ErrCAExtensionRequested means the CSR asks for basic constraints or name constraints;
	// a leaf certificate never honors them.
	ErrCAExtensionRequested = errors.New("CSR requests a CA extension")
	// ErrPurposeNotAllowed means a requested purpose is unknown or not allowed.
	ErrPurposeNotAllowed = errors.New("purpose not allowed")
	// ErrLifetime means the requested lifetime is negative or over the maximum.
	ErrLifetime = errors.New("lifetime not allowed")
	// ErrIssuerNotValid means the issuer certificate has no validity left at the request's
	// time (expired or not yet valid), so nothing can be issued under it.
	ErrIssuerNotValid = errors.New("issuer not valid")
	// ErrSerial means the caller-supplied serial number is missing, not positive, or longer
	// than 20 octets.
	ErrSerial = errors.New("serial number not allowed")
	// ErrKeyReused means the public key was used for an earlier certificate and reuse was
	// not forced.
	ErrKeyReused = errors.New("public key already used")
	// ErrInvalidSpec means a GitOps certificate spec does not decode or breaks a rule.
	ErrInvalidSpec = errors.New("invalid certificate spec")
)

// Violation is one broken rule: the field it concerns and the rule, in words. Its Error text
// is "<field>: <rule>", for example
// `csr: DNS SAN "x.evil.com" is outside provider suffix "k8s.mesh.example"`.
type Violation struct {
	// Field names what the rule is about: "csr", "serial", "issuer", "request.domain",
	// "spec.lifetime", ...
	Field string
	// Rule says what is wrong, naming the offending value.
	Rule string
	// Err is the sentinel error for the kind of outcome (ErrSANNotAllowed, ...).
	Err error
}

// Error returns "<field>: <rule>".
func (v *Violation) Error() string { return v.Field + ": " + v.Rule }

// Unwrap returns the sentinel error, so errors.Is(v, ErrSANNotAllowed) works.
func (v *Violation) Unwrap() error { return v.Err }

// Violations is every rule a request breaks, in the order they were found. It is the error
// type CheckWorkload and CheckSpec return.
type Violations []*Violation

// Error joins the violations with "; ".
func (vs Violations) Error() string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = v.Error()
	}
	return strings.Join(parts, "; ")
}

// Unwrap returns each violation, so errors.Is and errors.As see all of them.
func (vs Violations) Unwrap() []error {
	errs := make([]error, len(vs))
	for i, v := range vs {
		errs[i] = v
	}
	return errs
}

// Has tells whether any violation wraps target.
func (vs Violations) Has(target error) bool {
	for _, v := range vs {
		if errors.Is(v.Err, target) {
			return true
		}
	}
	return false
}

// collector gathers violations while a request is checked, so the caller learns every broken
// rule at once instead of one per round trip.
type collector struct {
	vs Violations
}

func (c *collector) add(field string, sentinel error, format string, args ...any) {
	c.vs = append(c.vs, &Violation{Field: field, Rule: fmt.Sprintf(format, args...), Err: sentinel})
}

// err returns the violations as an error, or nil (not a typed nil) when there are none.
func (c *collector) err() error {
	if len(c.vs) == 0 {
		return nil
	}
	return c.vs
}
