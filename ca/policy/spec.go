package policy

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Spec is one entry of a GitOps tls.json file: what a manually approved certificate should
// carry. The JSON keys are the ones in the struct tags; any other key is an error.
type Spec struct {
	// CommonName is the subject CN. It is also the DNS SAN when SANs yields no valid name
	// and the CN is a valid domain name.
	CommonName string `json:"common_name"`
	// Purposes are client_auth and/or server_auth; none means client_auth only.
	Purposes []Purpose `json:"purposes,omitempty"`
	// SANs are DNS names; they take precedence over the CN. Invalid names are dropped and
	// reported, never issued.
	SANs []string `json:"sans,omitempty"`
	// Lifetime is in days; 0 means Config.SpecDefaultLifetime.
	Lifetime int `json:"lifetime,omitempty"`
	// Organization (O) overrides the CSR's.
	Organization string `json:"organization,omitempty"`
	// OrganizationalUnit (OU) overrides the CSR's.
	OrganizationalUnit string `json:"organizational_unit,omitempty"`
	// Locality (L) overrides the CSR's.
	Locality string `json:"locality,omitempty"`
	// State (ST) overrides the CSR's.
	State string `json:"state,omitempty"`
	// Country (C, two upper-case letters) overrides the CSR's.
	Country string `json:"country,omitempty"`
	// CSRFile names the CSR file beside tls.json that this spec applies to.
	CSRFile string `json:"csr_file,omitempty"`
	// ForceIssue allows a public key that was already used for another certificate.
	ForceIssue bool `json:"force_issue,omitempty"`
}

// specKeys are the JSON keys a spec may have, spelled exactly.
var specKeys = map[string]bool{
	"common_name": true, "purposes": true, "sans": true, "lifetime": true,
	"organization": true, "organizational_unit": true, "locality": true, "state": true,
	"country": true, "csr_file": true, "force_issue": true,
}

// Limits on spec fields, from the upper bounds of RFC 5280 Appendix A.
const (
	maxCommonNameLen = 64
	maxOrgLen        = 64
	maxLocalityLen   = 128
	maxSpecSANs      = 100
	maxJSONDepth     = 16
)

// DroppedSAN is a spec SAN that was not issued, and why.
type DroppedSAN struct {
	// Name is the SAN as written in the spec.
	Name string
	// Reason says which rule it broke.
	Reason string
}

// String returns `"<name>": <reason>`.
func (d DroppedSAN) String() string { return fmt.Sprintf("%q: %s", d.Name, d.Reason) }

// DecodeSpec reads one spec object strictly: unknown or misspelled keys, duplicated keys,
// wrong types and trailing data are errors naming the key, and the spec must then pass
// Validate. Errors wrap ErrInvalidSpec.
func DecodeSpec(data []byte) (Spec, error) {
	return decodeSpec(data, "spec")
}

// DecodeSpecFile reads a tls.json file: a JSON array of spec objects, each decoded as by
// DecodeSpec. Errors name the entry, e.g. "tls.json[2].lifetime".
func DecodeSpecFile(data []byte) ([]Spec, error) {
	var raws []json.RawMessage
	if err := decodeStrict(data, &raws); err != nil {
		return nil, decodeError("tls.json", err)
	}
	specs := make([]Spec, len(raws))
	for i, raw := range raws {
		s, err := decodeSpec(raw, fmt.Sprintf("tls.json[%d]", i))
		if err != nil {
			return nil, err
		}
		specs[i] = s
	}
	return specs, nil
}

func decodeSpec(data []byte, where string) (Spec, error) {
	if err := checkSpecKeys(data, where); err != nil {
		return Spec{}, err
	}
	var s Spec
	if err := decodeStrict(data, &s); err != nil {
		return Spec{}, decodeError(where, err)
	}
	var c collector
	s.validate(&c, where)
	if err := c.err(); err != nil {
		return Spec{}, err
	}
	return s, nil
}

// decodeStrict decodes exactly one JSON value with unknown fields refused.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

func decodeError(where string, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%s: %w: empty document", where, ErrInvalidSpec)
	case errors.As(err, &syn):
		return fmt.Errorf("%s: %w: invalid JSON at byte %d: %v", where, ErrInvalidSpec, syn.Offset, syn)
	case errors.As(err, &typ):
		if typ.Field != "" {
			return fmt.Errorf("%s.%s: %w: want %v, got JSON %s", where, typ.Field, ErrInvalidSpec, typ.Type, typ.Value)
		}
		return fmt.Errorf("%s: %w: want %v, got JSON %s", where, ErrInvalidSpec, typ.Type, typ.Value)
	}
	return fmt.Errorf("%s: %w: %v", where, ErrInvalidSpec, err)
}

// checkSpecKeys walks the JSON tokens so that what a reviewer reads is what is issued: the
// value must be an object, its keys spelled exactly as specKeys (encoding/json would match
// "Common_Name" case-insensitively), and no object anywhere may repeat a key (encoding/json
// would keep the last one silently).
func checkSpecKeys(data []byte, where string) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return decodeError(where, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("%s: %w: want a JSON object, got %v", where, ErrInvalidSpec, tok)
	}
	return walkObject(dec, where, 1, true)
}

// walkObject reads the keys and values of an object whose '{' was just read.
func walkObject(dec *json.Decoder, where string, depth int, top bool) error {
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return decodeError(where, err)
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("%s: %w: object key %v is not a string", where, ErrInvalidSpec, tok)
		}
		if seen[key] {
			return fmt.Errorf("%s.%s: %w: key appears more than once", where, key, ErrInvalidSpec)
		}
		seen[key] = true
		if top && !specKeys[key] {
			return fmt.Errorf("%s: %w: unknown field %q", where, ErrInvalidSpec, key)
		}
		if err := walkValue(dec, where+"."+key, depth); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return decodeError(where, err)
	}
	return nil
}

func walkValue(dec *json.Decoder, where string, depth int) error {
	if depth > maxJSONDepth {
		return fmt.Errorf("%s: %w: nested deeper than %d", where, ErrInvalidSpec, maxJSONDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return decodeError(where, err)
	}
	switch tok {
	case json.Delim('{'):
		return walkObject(dec, where, depth+1, false)
	case json.Delim('['):
		for dec.More() {
			if err := walkValue(dec, where, depth+1); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil {
			return decodeError(where, err)
		}
	}
	return nil
}

// Validate reports every field that breaks a rule: common_name present and at most 64
// characters, known purposes, lifetime not negative, at most 100 SANs, subject overrides
// within their X.509 length limits, country two upper-case letters, csr_file a plain file
// name. Invalid SANs are not errors: CheckSpec drops and reports them.
func (s Spec) Validate() error {
	var c collector
	s.validate(&c, "spec")
	return c.err()
}

func (s Spec) validate(c *collector, where string) {
	switch {
	case strings.TrimSpace(s.CommonName) == "":
		c.add(where+".common_name", ErrInvalidSpec, "is required")
	default:
		checkText(c, where+".common_name", s.CommonName, maxCommonNameLen)
	}
	for _, p := range s.Purposes {
		if p != ClientAuth && p != ServerAuth {
			c.add(where+".purposes", ErrPurposeNotAllowed, "%q is not a purpose (want %q or %q)", p, ClientAuth, ServerAuth)
		}
	}
	if s.Lifetime < 0 {
		c.add(where+".lifetime", ErrLifetime, "%d days is negative", s.Lifetime)
	}
	if len(s.SANs) > maxSpecSANs {
		c.add(where+".sans", ErrInvalidSpec, "%d names, at most %d", len(s.SANs), maxSpecSANs)
	}
	checkText(c, where+".organization", s.Organization, maxOrgLen)
	checkText(c, where+".organizational_unit", s.OrganizationalUnit, maxOrgLen)
	checkText(c, where+".locality", s.Locality, maxLocalityLen)
	checkText(c, where+".state", s.State, maxLocalityLen)
	if s.Country != "" && (len(s.Country) != 2 || strings.Trim(s.Country, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != "") {
		c.add(where+".country", ErrInvalidSpec, "%q is not a two-letter upper-case country code", s.Country)
	}
	if s.CSRFile != "" && (strings.ContainsAny(s.CSRFile, `/\`) || s.CSRFile == "." || s.CSRFile == ".." || !utf8.ValidString(s.CSRFile)) {
		c.add(where+".csr_file", ErrInvalidSpec, "%q must be a plain file name in the CSR folder", s.CSRFile)
	}
}

// checkText refuses text that is too long, not UTF-8, or has control characters.
func checkText(c *collector, field, s string, max int) {
	switch {
	case !utf8.ValidString(s):
		c.add(field, ErrInvalidSpec, "is not valid UTF-8")
	case utf8.RuneCountInString(s) > max:
		c.add(field, ErrInvalidSpec, "is %d characters, at most %d", utf8.RuneCountInString(s), max)
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		c.add(field, ErrInvalidSpec, "%q has a control character", s)
	}
}

// DNSNames applies the SAN rules: the spec's SANs take precedence, only valid domain names
// are kept (lower-cased, duplicates once), and the rest are dropped and reported. With no
// valid SAN, the common name is used if it is a valid domain name.
func (s Spec) DNSNames() (kept []string, dropped []DroppedSAN) {
	seen := map[string]bool{}
	for _, san := range s.SANs {
		name, err := normalizeDomainName(san)
		switch {
		case err != nil:
			dropped = append(dropped, DroppedSAN{Name: san, Reason: err.Error()})
		case seen[name]:
			dropped = append(dropped, DroppedSAN{Name: san, Reason: "duplicate of " + name})
		default:
			seen[name] = true
			kept = append(kept, name)
		}
	}
	if len(kept) == 0 {
		if name, err := normalizeDomainName(s.CommonName); err == nil {
			kept = append(kept, name)
		}
	}
	return kept, dropped
}

// SpecRequest is a GitOps spec with the time and serial the caller issues it with.
type SpecRequest struct {
	// Spec is the approved spec.
	Spec Spec
	// Now is the issuance time.
	Now time.Time
	// Serial is the certificate's serial number, drawn by the caller.
	Serial *big.Int
}

// SpecDecision is an accepted spec: the template to sign and the SANs that were dropped.
type SpecDecision struct {
	// Template is the certificate to sign.
	Template *x509.Certificate
	// Dropped are the spec SANs left out, with the reason for each.
	Dropped []DroppedSAN
}

// CheckSpec decides a GitOps certificate. The CSR obeys the same rules as a workload CSR
// (signature, key, no CA extensions) but its names are not used: the subject is the CSR's
// O/OU/L/ST/C overridden by the spec's, with CN from the spec, and the DNS SANs come from
// Spec.DNSNames. A server_auth certificate needs at least one DNS name. The lifetime is the
// spec's days (or Config.SpecDefaultLifetime), at most Config.SpecMaxLifetime, clamped to the
// issuer's remaining life. Key reuse is decided separately by CheckKeyReuse with ForceIssue.
//
// On refusal the error is Violations, listing every rule broken.
func (p *Policy) CheckSpec(csr *x509.CertificateRequest, req SpecRequest, issuer *x509.Certificate) (*SpecDecision, error) {
	var c collector
	s := req.Spec
	s.validate(&c, "spec")
	// A missing CSR is a violation, so the template below is only built with one.
	checkCSR(&c, csr, issuer)
	kept, dropped := s.DNSNames()
	ekus := extKeyUsages(&c, "spec.purposes", s.Purposes, true)
	for _, e := range ekus {
		if e == x509.ExtKeyUsageServerAuth && len(kept) == 0 {
			c.add("spec.sans", ErrSANNotAllowed, "server_auth needs at least one valid DNS name, and neither the SANs nor common name %q is one", s.CommonName)
		}
	}
	lifetime := p.cfg.SpecDefaultLifetime
	if maxDays := int(p.cfg.SpecMaxLifetime / Day); s.Lifetime > maxDays {
		c.add("spec.lifetime", ErrLifetime, "%d days exceeds the maximum %d days", s.Lifetime, maxDays)
	} else if s.Lifetime > 0 {
		lifetime = time.Duration(s.Lifetime) * Day
	}
	notBefore, notAfter := validity(&c, "spec.lifetime", req.Now, lifetime, p.cfg.SpecMaxLifetime, p.cfg.Backdate, issuer)
	checkSerial(&c, req.Serial)
	if err := c.err(); err != nil {
		return nil, err
	}
	subject := pkix.Name{
		CommonName:         s.CommonName,
		Organization:       override(csr.Subject.Organization, s.Organization),
		OrganizationalUnit: override(csr.Subject.OrganizationalUnit, s.OrganizationalUnit),
		Locality:           override(csr.Subject.Locality, s.Locality),
		Province:           override(csr.Subject.Province, s.State),
		Country:            override(csr.Subject.Country, s.Country),
	}
	return &SpecDecision{
		Template: &x509.Certificate{
			SerialNumber:          new(big.Int).Set(req.Serial),
			Subject:               subject,
			NotBefore:             notBefore,
			NotAfter:              notAfter,
			KeyUsage:              keyUsageFor(csr),
			ExtKeyUsage:           ekus,
			BasicConstraintsValid: true,
			IsCA:                  false,
			DNSNames:              kept,
			PublicKey:             csr.PublicKey,
			PublicKeyAlgorithm:    csr.PublicKeyAlgorithm,
		},
		Dropped: dropped,
	}, nil
}

// override returns the spec's value when set, else a copy of the CSR's.
func override(fromCSR []string, fromSpec string) []string {
	if fromSpec != "" {
		return []string{fromSpec}
	}
	if len(fromCSR) == 0 {
		return nil
	}
	return append([]string(nil), fromCSR...)
}
