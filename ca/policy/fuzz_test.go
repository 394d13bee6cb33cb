package policy_test

import (
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/policy"
)

// FuzzWorkloadCSR feeds arbitrary CSR bytes and request fields through parsing and the
// workload policy. Nothing may panic, and whatever is accepted must obey the workload
// invariants and sign into a certificate carrying exactly the identity's names.
// The seed corpus is in testdata/fuzz/FuzzWorkloadCSR (written by testdata/gencorpus.go).
func FuzzWorkloadCSR(f *testing.F) {
	good := makeCSRDER(f, goodCSRTemplate(), testKey(f, "p256"))
	f.Add(good, testTD, testDomain, testService, testSuffix, testInstance, int64(0), "", false, []byte{0x42})
	f.Add(good, testTD, testDomain, testService, testSuffix, testInstance, int64(3600), "client_auth,server_auth", true, []byte{0x01, 0x00})
	ossl, err := os.ReadFile("testdata/openssl-p256.csr.pem")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ossl, testTD, testDomain, testService, testSuffix, testInstance, int64(-1), "server_auth", false, []byte{})

	p := mustPolicy(f)
	issuer := testIssuer(f)
	caKey := testKey(f, "ca")
	f.Fuzz(func(t *testing.T, der []byte, td, domain, service, suffix, instance string, ttlSeconds int64, purposes string, serverAllowed bool, serial []byte) {
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return
		}
		req := policy.WorkloadRequest{
			TrustDomain: td, Domain: domain, Service: service, ProviderDNSSuffix: suffix, InstanceID: instance,
			ServerAuthAllowed: serverAllowed,
			TTL:               time.Duration(ttlSeconds) * time.Second,
			Now:               t0,
			Serial:            new(big.Int).SetBytes(serial),
		}
		if purposes != "" {
			for _, s := range strings.Split(purposes, ",") {
				req.Purposes = append(req.Purposes, policy.Purpose(s))
			}
		}
		tmpl, err := p.CheckWorkload(csr, req, issuer)
		if err != nil {
			if tmpl != nil {
				t.Fatal("refusal returned a template")
			}
			if _, ok := err.(policy.Violations); !ok {
				t.Fatalf("error %T is not Violations", err)
			}
			return
		}
		workloadInvariants(t, tmpl, csr, req, issuer, p.Config())
		certDER, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, csr.PublicKey, caKey)
		if err != nil {
			t.Fatalf("accepted template does not sign: %v", err)
		}
		cert, err := x509.ParseCertificate(certDER)
		if err != nil {
			t.Fatalf("signed certificate does not parse: %v", err)
		}
		if cert.IsCA || len(cert.DNSNames) != 2 || len(cert.URIs) != 1 || len(cert.EmailAddresses)+len(cert.IPAddresses) != 0 {
			t.Fatalf("signed certificate IsCA=%v DNS=%q URI=%v", cert.IsCA, cert.DNSNames, cert.URIs)
		}
		if err := cert.CheckSignatureFrom(issuer); err != nil {
			t.Fatalf("signed certificate does not verify: %v", err)
		}
	})
}

// FuzzSpec feeds arbitrary bytes to the spec decoders. Nothing may panic; a spec that decodes
// must pass Validate, and if the policy accepts it the template must be a CA:FALSE leaf with
// only valid DNS names, within the lifetime limits. The seed corpus is in
// testdata/fuzz/FuzzSpec.
func FuzzSpec(f *testing.F) {
	f.Add([]byte(`{"common_name":"server.example.com","purposes":["server_auth"],"sans":["server.example.com","server2.example.com"],"lifetime":365}`))
	f.Add([]byte(exampleTLSJSON))
	f.Add([]byte(`{"common_name":"a","lifetime":1,"lifetime":2}`))

	p := mustPolicy(f)
	issuer := testIssuer(f)
	csr := makeCSR(f, goodCSRTemplate(), testKey(f, "p256"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if specs, err := policy.DecodeSpecFile(data); err == nil {
			for _, s := range specs {
				if err := s.Validate(); err != nil {
					t.Fatalf("DecodeSpecFile returned an invalid spec: %v", err)
				}
			}
		}
		spec, err := policy.DecodeSpec(data)
		if err != nil {
			return
		}
		if err := spec.Validate(); err != nil {
			t.Fatalf("DecodeSpec returned an invalid spec: %v", err)
		}
		d, err := p.CheckSpec(csr, policy.SpecRequest{Spec: spec, Now: t0, Serial: big.NewInt(1)}, issuer)
		if err != nil {
			return
		}
		tm := d.Template
		if tm.IsCA || !tm.BasicConstraintsValid || len(tm.URIs)+len(tm.EmailAddresses)+len(tm.IPAddresses) != 0 {
			t.Fatalf("template IsCA=%v BC=%v URIs=%v", tm.IsCA, tm.BasicConstraintsValid, tm.URIs)
		}
		for _, n := range tm.DNSNames {
			if n != strings.ToLower(n) || strings.Count(n, ".") < 1 || strings.ContainsAny(n, "*_ ") {
				t.Fatalf("kept DNS name %q is not a valid domain", n)
			}
		}
		if tm.NotAfter.After(issuer.NotAfter) || tm.NotAfter.Sub(t0) > p.Config().SpecMaxLifetime || !tm.NotAfter.After(tm.NotBefore) {
			t.Fatalf("validity [%s, %s]", tm.NotBefore, tm.NotAfter)
		}
		if tm.Subject.CommonName != spec.CommonName {
			t.Fatalf("CN %q, want %q", tm.Subject.CommonName, spec.CommonName)
		}
	})
}
