package policy

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"strings"
	"time"
)

// WorkloadRequest is what the caller knows about a workload certificate request besides the
// CSR: the identity, who launched it, where, and the time and serial to issue with. The
// caller supplies Now and Serial so the decision is the same wherever it is computed.
type WorkloadRequest struct {
	// TrustDomain is the cluster's SPIFFE trust domain, e.g. "mesh.example".
	TrustDomain string
	// Domain is the identity's domain, e.g. "sports" or "sys.auth.k8s".
	Domain string
	// Service is the identity's service, one label, e.g. "api".
	Service string
	// ProviderDNSSuffix is the launching provider's registered DNS suffix, e.g.
	// "k8s.mesh.example".
	ProviderDNSSuffix string
	// InstanceID is the instance's id, unique in the provider's namespace, as DNS labels,
	// e.g. "pod-1.ns.cluster-a".
	InstanceID string
	// Purposes are the requested purposes; none means client_auth only.
	Purposes []Purpose
	// ServerAuthAllowed tells whether server_auth may be granted to this identity.
	ServerAuthAllowed bool
	// TTL is the requested lifetime; zero means Config.DefaultTTL.
	TTL time.Duration
	// Now is the issuance time.
	Now time.Time
	// Serial is the certificate's serial number, drawn by the caller.
	Serial *big.Int
}

// CheckWorkload decides a workload certificate. The CSR must be signed with an allowed
// algorithm and verify, carry an allowed key, name CN "<domain>.<service>" and exactly the
// SANs of WorkloadNames (the SPIFFE URI, the service DNS name and the instance DNS name) and
// nothing else, and must not request basic or name constraints. The template it returns is a
// CA:FALSE leaf with only those names, ExtKeyUsage from the purposes, the caller's serial,
// NotBefore backdated by Config.Backdate and a lifetime clamped to the issuer's remaining life.
//
// On refusal the error is Violations, listing every rule broken.
func (p *Policy) CheckWorkload(csr *x509.CertificateRequest, req WorkloadRequest, issuer *x509.Certificate) (*x509.Certificate, error) {
	var c collector
	names := req.names(&c)
	namesOK := len(c.vs) == 0
	csrOK := checkCSR(&c, csr, issuer)
	if csrOK {
		checkSANTypes(&c, csr)
		if namesOK {
			checkWorkloadNames(&c, csr, req, names)
		}
	}
	ekus := extKeyUsages(&c, "request.purposes", req.Purposes, req.ServerAuthAllowed)
	ttl := req.TTL
	if ttl == 0 {
		ttl = p.cfg.DefaultTTL
	}
	notBefore, notAfter := validity(&c, "request.ttl", req.Now, ttl, p.cfg.MaxTTL, p.cfg.Backdate, issuer)
	checkSerial(&c, req.Serial)
	if err := c.err(); err != nil {
		return nil, err
	}

	uri, err := url.Parse(names.SPIFFEID.String())
	if err != nil {
		// A spiffeid.ID always renders as a parseable URI; this guards the invariant.
		return nil, Violations{{Field: "request.domain", Rule: "SPIFFE ID does not parse as a URI: " + err.Error(), Err: ErrInvalidRequest}}
	}
	return &x509.Certificate{
		SerialNumber:          new(big.Int).Set(req.Serial),
		Subject:               pkix.Name{CommonName: names.CommonName},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              keyUsageFor(csr),
		ExtKeyUsage:           ekus,
		BasicConstraintsValid: true,
		IsCA:                  false,
		DNSNames:              []string{names.ServiceDNS, names.InstanceDNS},
		URIs:                  []*url.URL{uri},
		PublicKey:             csr.PublicKey,
		PublicKeyAlgorithm:    csr.PublicKeyAlgorithm,
	}, nil
}

// checkWorkloadNames holds the CSR's subject and SANs to exactly the identity's names.
func checkWorkloadNames(c *collector, csr *x509.CertificateRequest, req WorkloadRequest, n WorkloadNames) {
	if cn := csr.Subject.CommonName; cn != n.CommonName {
		c.add("csr", ErrSubjectMismatch, "subject CN %q is not %q", cn, n.CommonName)
	} else if k := countCommonNames(csr); k > 1 {
		c.add("csr", ErrSubjectMismatch, "subject has %d CN attributes, want one", k)
	}

	var svc, inst int
	suffix := "." + req.ProviderDNSSuffix
	for _, d := range csr.DNSNames {
		switch {
		case d == n.ServiceDNS:
			svc++
		case d == n.InstanceDNS:
			inst++
		case !strings.HasSuffix(d, suffix):
			c.add("csr", ErrSANNotAllowed, "DNS SAN %q is outside provider suffix %q", d, req.ProviderDNSSuffix)
		default:
			c.add("csr", ErrSANNotAllowed, "DNS SAN %q is neither the service name %q nor the instance name %q", d, n.ServiceDNS, n.InstanceDNS)
		}
	}
	wantOnce(c, "DNS SAN", n.ServiceDNS, svc)
	wantOnce(c, "DNS SAN", n.InstanceDNS, inst)

	want := n.SPIFFEID.String()
	var uris int
	for _, u := range csr.URIs {
		if s := u.String(); s == want {
			uris++
		} else {
			c.add("csr", ErrSANNotAllowed, "URI SAN %q is not %q", s, want)
		}
	}
	wantOnce(c, "URI SAN", want, uris)

	for _, e := range csr.EmailAddresses {
		c.add("csr", ErrSANNotAllowed, "email SAN %q is not allowed", e)
	}
	for _, ip := range csr.IPAddresses {
		c.add("csr", ErrSANNotAllowed, "IP SAN %s is not allowed", ip)
	}
}

func wantOnce(c *collector, kind, name string, count int) {
	switch {
	case count == 0:
		c.add("csr", ErrSANNotAllowed, "%s %q is missing", kind, name)
	case count > 1:
		c.add("csr", ErrSANNotAllowed, "%s %q appears %d times", kind, name, count)
	}
}
