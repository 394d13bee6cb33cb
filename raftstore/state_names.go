package raftstore

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Limits on the names and ids the state machine stores.
const (
	maxNameLen  = 253
	maxLabelLen = 63
	maxIDLen    = 128
	maxNonceLen = 256
	// maxSerialHex is 20 octets (RFC 5280 §4.1.2.2) in hex.
	maxSerialHex = 40
)

// errNameRule is the cause wrapped by every name-validation error; messages name the rule.
var errNameRule = errors.New("invalid name")

// validateLabel checks one Athenz-style name label: lowercase letters, digits, '_' and '-',
// not starting with '-', at most 63 characters.
func validateLabel(label string) error {
	if label == "" {
		return fmt.Errorf("%w: empty label", errNameRule)
	}
	if len(label) > maxLabelLen {
		return fmt.Errorf("%w: label %q is longer than %d characters", errNameRule, label, maxLabelLen)
	}
	if label[0] == '-' {
		return fmt.Errorf("%w: label %q starts with '-'", errNameRule, label)
	}
	for i := 0; i < len(label); i++ {
		c := label[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("%w: label %q has %q (allowed: a-z 0-9 _ -)", errNameRule, label, c)
		}
	}
	return nil
}

// validateDottedName checks a name made of one or more labels separated by dots, such as a
// domain ("sys.auth") or a provider ("sys.auth.k8s").
func validateDottedName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty", errNameRule)
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("%w: longer than %d characters", errNameRule, maxNameLen)
	}
	for label := range strings.SplitSeq(name, ".") {
		if err := validateLabel(label); err != nil {
			return err
		}
	}
	return nil
}

// SplitIdentity splits a service identity "<domain>.<service>" at its last dot: the service is
// the last label, the domain everything before it.
func SplitIdentity(identity string) (domain, service string, err error) {
	i := strings.LastIndexByte(identity, '.')
	if i < 0 {
		return "", "", fmt.Errorf("%w: identity %q has no domain (want <domain>.<service>)", errNameRule, identity)
	}
	domain, service = identity[:i], identity[i+1:]
	if err := validateDottedName(domain); err != nil {
		return "", "", fmt.Errorf("domain of %q: %w", identity, err)
	}
	if err := validateLabel(service); err != nil {
		return "", "", fmt.Errorf("service of %q: %w", identity, err)
	}
	return domain, service, nil
}

// Identity joins a domain and a service label into "<domain>.<service>".
func Identity(domain, service string) string { return domain + "." + service }

// InstanceKey is the full name of an instance: provider/domain.service/instance-id.
func InstanceKey(provider, domain, service, instanceID string) string {
	return provider + "/" + Identity(domain, service) + "/" + instanceID
}

// instanceSlot is where an instance is stored: provider/instance-id, because an instance id is
// unique in its provider's namespace whatever the identity.
func instanceSlot(provider, instanceID string) string { return provider + "/" + instanceID }

// validateIdentityParts checks a domain and a service label.
func validateIdentityParts(domain, service string) error {
	if err := validateDottedName(domain); err != nil {
		return fmt.Errorf("domain %q: %w", domain, err)
	}
	if err := validateLabel(service); err != nil {
		return fmt.Errorf("service %q: %w", service, err)
	}
	return nil
}

// validateProviderName checks a provider name: a service identity such as "sys.auth.k8s".
func validateProviderName(name string) error {
	if _, _, err := SplitIdentity(name); err != nil {
		return err
	}
	return nil
}

// validateDNSName checks a DNS name used in SANs (a provider's DNS suffix, an instance id):
// labels of lowercase letters, digits and '-', not starting or ending with '-'.
func validateDNSName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty", errNameRule)
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("%w: longer than %d characters", errNameRule, maxNameLen)
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" {
			return fmt.Errorf("%w: empty DNS label in %q", errNameRule, name)
		}
		if len(label) > maxLabelLen {
			return fmt.Errorf("%w: DNS label %q is longer than %d characters", errNameRule, label, maxLabelLen)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%w: DNS label %q starts or ends with '-'", errNameRule, label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%w: DNS label %q has %q (allowed: a-z 0-9 -)", errNameRule, label, c)
			}
		}
	}
	return nil
}

// dnsNamesNest reports whether two DNS names are equal or one is a dot-suffix of the other
// ("k8s.mesh.example" nests within "mesh.example").
func dnsNamesNest(a, b string) bool {
	return a == b || strings.HasSuffix(a, "."+b) || strings.HasSuffix(b, "."+a)
}

// validateSerial checks a certificate serial: lowercase hex without leading zeros, 1 to 40
// digits (a positive integer of at most 20 octets).
func validateSerial(serial string) error {
	if serial == "" {
		return fmt.Errorf("%w: empty serial", errNameRule)
	}
	if len(serial) > maxSerialHex {
		return fmt.Errorf("%w: serial longer than %d hex digits", errNameRule, maxSerialHex)
	}
	if serial[0] == '0' {
		return fmt.Errorf("%w: serial %q has a leading zero (or is zero)", errNameRule, serial)
	}
	for i := 0; i < len(serial); i++ {
		c := serial[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return fmt.Errorf("%w: serial %q is not lowercase hex", errNameRule, serial)
		}
	}
	return nil
}

// validateID checks a client-chosen id (command id, token jti, CSR request id): 1 to 128
// printable ASCII characters without spaces.
func validateID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty id", errNameRule)
	}
	if len(id) > maxIDLen {
		return fmt.Errorf("%w: id longer than %d characters", errNameRule, maxIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("%w: id has byte 0x%02x (allowed: printable ASCII without space)", errNameRule, c)
		}
	}
	return nil
}

// validateTrustDomain checks a SPIFFE trust domain name with go-spiffe's rules.
func validateTrustDomain(name string) error {
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return fmt.Errorf("%w: %w", errNameRule, err)
	}
	if td.Name() != name {
		return fmt.Errorf("%w: trust domain %q is not in canonical form %q", errNameRule, name, td.Name())
	}
	return nil
}
