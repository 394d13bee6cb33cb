package policy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Limits from RFC 1035: a label is at most 63 octets, a name at most 253 in text form.
const (
	maxLabelLen   = 63
	maxDNSNameLen = 253
)

// errNotDNS is the cause behind every name-syntax refusal; the message says which rule.
var errNotDNS = errors.New("not a DNS name")

// checkLabel accepts one lower-case LDH label: letters a-z, digits, inner hyphens.
func checkLabel(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty label", errNotDNS)
	}
	if len(s) > maxLabelLen {
		return fmt.Errorf("%w: label %q is %d characters, at most %d", errNotDNS, s, len(s), maxLabelLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case c == '-':
			if i == 0 || i == len(s)-1 {
				return fmt.Errorf("%w: label %q starts or ends with '-'", errNotDNS, s)
			}
		default:
			return fmt.Errorf("%w: label %q has %q (want a-z, 0-9, '-')", errNotDNS, s, c)
		}
	}
	return nil
}

// checkLabels accepts a dot-separated sequence of at least min lower-case LDH labels.
func checkLabels(s string, min int) error {
	if len(s) > maxDNSNameLen {
		return fmt.Errorf("%w: %d characters, at most %d", errNotDNS, len(s), maxDNSNameLen)
	}
	n := 0
	for l := range strings.SplitSeq(s, ".") {
		if err := checkLabel(l); err != nil {
			return err
		}
		n++
	}
	if n < min {
		return fmt.Errorf("%w: %d label(s), want at least %d", errNotDNS, n, min)
	}
	return nil
}

// normalizeDomainName lower-cases s and reports whether it is a valid domain name in the
// sense of a public DNS name: LDH labels, at least two of them, no wildcard, and a top-level
// label that is not all digits (so an IPv4 address is not a domain).
func normalizeDomainName(s string) (string, error) {
	name := strings.ToLower(strings.TrimSuffix(s, "."))
	if err := checkLabels(name, 2); err != nil {
		return "", err
	}
	tld := name[strings.LastIndexByte(name, '.')+1:]
	if strings.Trim(tld, "0123456789") == "" {
		return "", fmt.Errorf("%w: top-level label %q is all digits", errNotDNS, tld)
	}
	return name, nil
}

// WorkloadNames are the names a workload certificate carries, derived from the request by the
// rules of DESIGN.md §2. Agents build their CSRs from the same function, so the two sides
// cannot drift apart.
type WorkloadNames struct {
	// CommonName is "<domain>.<service>".
	CommonName string
	// SPIFFEID is "spiffe://<trust-domain>/ns/<domain>/sa/<service>".
	SPIFFEID spiffeid.ID
	// ServiceDNS is "<service>.<domain-with-dashes>.<provider-dns-suffix>".
	ServiceDNS string
	// InstanceDNS is "<instance-id>.instanceid.athenz.<provider-dns-suffix>".
	InstanceDNS string
}

// Names checks the request's identity fields and derives the certificate's names. Every
// malformed field is reported; the names are valid only when the error is nil.
func (r WorkloadRequest) Names() (WorkloadNames, error) {
	var c collector
	names := r.names(&c)
	if err := c.err(); err != nil {
		return WorkloadNames{}, err
	}
	return names, nil
}

func (r WorkloadRequest) names(c *collector) WorkloadNames {
	before := len(c.vs)
	td, err := spiffeid.TrustDomainFromString(r.TrustDomain)
	switch {
	case err != nil:
		c.add("request.trust_domain", ErrInvalidRequest, "%q is not a SPIFFE trust domain: %v", r.TrustDomain, err)
	case td.Name() != r.TrustDomain:
		c.add("request.trust_domain", ErrInvalidRequest, "%q must be a bare trust domain name such as %q", r.TrustDomain, td.Name())
	}
	if err := checkLabels(r.Domain, 1); err != nil {
		c.add("request.domain", ErrInvalidRequest, "%q is not a sequence of DNS labels: %v", r.Domain, err)
	}
	if err := checkLabel(r.Service); err != nil {
		c.add("request.service", ErrInvalidRequest, "%q is not a single DNS label: %v", r.Service, err)
	}
	if err := checkLabels(r.ProviderDNSSuffix, 2); err != nil {
		c.add("request.provider_dns_suffix", ErrInvalidRequest, "%q is not a DNS suffix: %v", r.ProviderDNSSuffix, err)
	}
	if err := checkLabels(r.InstanceID, 1); err != nil {
		c.add("request.instance_id", ErrInvalidRequest, "%q is not a sequence of DNS labels: %v", r.InstanceID, err)
	}
	if len(c.vs) > before {
		return WorkloadNames{}
	}

	n := WorkloadNames{
		CommonName:  r.Domain + "." + r.Service,
		ServiceDNS:  r.Service + "." + strings.ReplaceAll(r.Domain, ".", "-") + "." + r.ProviderDNSSuffix,
		InstanceDNS: r.InstanceID + ".instanceid.athenz." + r.ProviderDNSSuffix,
	}
	// The dashed domain becomes one label, and both names must fit a DNS name.
	if err := checkLabels(n.ServiceDNS, 3); err != nil {
		c.add("request.domain", ErrInvalidRequest, "service DNS name %q is not a DNS name: %v", n.ServiceDNS, err)
	}
	if err := checkLabels(n.InstanceDNS, 4); err != nil {
		c.add("request.instance_id", ErrInvalidRequest, "instance DNS name %q is not a DNS name: %v", n.InstanceDNS, err)
	}
	id, err := spiffeid.FromSegments(td, "ns", r.Domain, "sa", r.Service)
	if err != nil {
		c.add("request.domain", ErrInvalidRequest, "SPIFFE ID for %s/%s: %v", r.Domain, r.Service, err)
	}
	n.SPIFFEID = id
	return n
}
