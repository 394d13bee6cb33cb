package ca_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
)

// A cluster's first start: a self-signed root and an intermediate, then one workload
// certificate, checked as an X.509-SVID against the trust bundle.
func Example() {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	td := spiffeid.RequireTrustDomainFromString("mesh.example")
	rootKey, _ := signer.GenerateSoftware(signer.ECDSAP256)
	interKey, _ := signer.GenerateSoftware(signer.ECDSAP256)
	issuer, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: td, RootKey: rootKey, IntermediateKey: interKey, Now: now})
	if err != nil {
		panic(err)
	}
	authority, err := ca.New(ca.Config{TrustDomain: td, Issuer: issuer})
	if err != nil {
		panic(err)
	}

	req := policy.WorkloadRequest{
		TrustDomain: td.Name(), Domain: "sports", Service: "api",
		ProviderDNSSuffix: "k8s.mesh.example", InstanceID: "pod-1.ns.cluster-a",
		Now: now,
	}
	req.Serial, _ = ca.NewSerial(nil)
	// The agent builds its CSR from the same names the policy will demand.
	names, _ := req.Names()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	uri, _ := url.Parse(names.SPIFFEID.String())
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: names.CommonName},
		DNSNames: []string{names.ServiceDNS, names.InstanceDNS},
		URIs:     []*url.URL{uri},
	}, key)

	issued, err := authority.IssueWorkload(csr, req)
	if err != nil {
		panic(err)
	}
	var chain []*x509.Certificate
	for _, der := range issued.Chain {
		c, _ := x509.ParseCertificate(der)
		chain = append(chain, c)
	}
	id, _, err := x509svid.Verify(chain, authority.Bundle(), x509svid.WithTime(now))
	fmt.Println(id, err)
	fmt.Println(len(issued.Chain), "certificates in the chain,", len(authority.Bundle().X509Authorities()), "root in the bundle")
	fmt.Println(issued.Template.NotAfter.Sub(now), issued.Template.SerialNumber.Cmp(big.NewInt(0)) > 0)
	// Output:
	// spiffe://mesh.example/ns/sports/sa/api <nil>
	// 2 certificates in the chain, 1 root in the bundle
	// 24h0m0s true
}
