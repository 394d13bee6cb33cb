package policy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/meshca/meshca/ca/policy"
)

func ExamplePolicy_CheckWorkload() {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "example CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	issuer, _ := x509.ParseCertificate(caDER)

	req := policy.WorkloadRequest{
		TrustDomain: "mesh.example", Domain: "sports", Service: "api",
		ProviderDNSSuffix: "k8s.mesh.example", InstanceID: "pod-1.ns.cluster-a",
		Now: now, Serial: big.NewInt(0x5eed),
	}
	names, _ := req.Names()

	// The workload's agent asks for its names, plus one it should not have.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	uri, _ := url.Parse(names.SPIFFEID.String())
	csrDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: names.CommonName},
		DNSNames: []string{names.ServiceDNS, names.InstanceDNS, "x.evil.com"},
		URIs:     []*url.URL{uri},
	}, key)
	csr, _ := x509.ParseCertificateRequest(csrDER)

	p, _ := policy.New(policy.DefaultConfig())
	_, err := p.CheckWorkload(csr, req, issuer)
	fmt.Println(err)
	fmt.Println(errors.Is(err, policy.ErrSANNotAllowed))
	// Output:
	// csr: DNS SAN "x.evil.com" is outside provider suffix "k8s.mesh.example"
	// true
}
