package ca_test

import (
	"crypto/x509"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
)

func parsedCSR(t testing.TB, der []byte) *x509.CertificateRequest {
	t.Helper()
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func TestWorkloadDecision(t *testing.T) {
	a := newAuthority(t, selfSigned(t, signer.ECDSAP256, true))
	csr := parsedCSR(t, workloadCSR(t, workloadKey(t)))

	t.Run("a decision signs the certificate the policy decided", func(t *testing.T) {
		d, err := a.DecideWorkload(csr, workloadRequest(501))
		if err != nil {
			t.Fatal(err)
		}
		got, err := a.SignWorkload(d)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := got.Leaf()
		if err != nil {
			t.Fatal(err)
		}
		if leaf.SerialNumber.Int64() != 501 || leaf.Subject.CommonName != "sports.api" {
			t.Fatalf("signed serial %v CN %q, want 501 sports.api", leaf.SerialNumber, leaf.Subject.CommonName)
		}
		if err := leaf.CheckSignatureFrom(a.Issuer().Certificate()); err != nil {
			t.Fatalf("leaf does not verify with the issuer: %v", err)
		}
	})
	t.Run("a decision is signed once: its serial is spent", func(t *testing.T) {
		d, err := a.DecideWorkload(csr, workloadRequest(502))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.SignWorkload(d); err != nil {
			t.Fatal(err)
		}
		if got, err := a.SignWorkload(d); got != nil || !errors.Is(err, ca.ErrDecisionNotUsable) {
			t.Fatalf("second signature: %v, %v; want ErrDecisionNotUsable", got, err)
		}
	})
	t.Run("concurrent signers of one decision get one certificate", func(t *testing.T) {
		d, err := a.DecideWorkload(csr, workloadRequest(503))
		if err != nil {
			t.Fatal(err)
		}
		var signed atomic.Int32
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				if _, err := a.SignWorkload(d); err == nil {
					signed.Add(1)
				} else if !errors.Is(err, ca.ErrDecisionNotUsable) {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if signed.Load() != 1 {
			t.Fatalf("%d certificates signed from one decision, want 1", signed.Load())
		}
	})
	t.Run("another authority's decision is refused", func(t *testing.T) {
		other := newAuthority(t, selfSigned(t, signer.ECDSAP256, false))
		d, err := other.DecideWorkload(csr, workloadRequest(504))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := a.SignWorkload(d); got != nil || !errors.Is(err, ca.ErrDecisionNotUsable) {
			t.Fatalf("foreign decision: %v, %v; want ErrDecisionNotUsable", got, err)
		}
		if got, err := a.SignWorkload(nil); got != nil || !errors.Is(err, ca.ErrDecisionNotUsable) {
			t.Fatalf("nil decision: %v, %v; want ErrDecisionNotUsable", got, err)
		}
	})
	t.Run("a refused request yields no decision", func(t *testing.T) {
		req := workloadRequest(505)
		req.Service = "web"
		d, err := a.DecideWorkload(csr, req)
		if d != nil || !errors.Is(err, policy.ErrSubjectMismatch) {
			t.Fatalf("decision %v, error %v; want ErrSubjectMismatch", d, err)
		}
		req = workloadRequest(506)
		req.TrustDomain = "other.example"
		if d, err := a.DecideWorkload(csr, req); d != nil || !errors.Is(err, policy.ErrInvalidRequest) {
			t.Fatalf("decision %v, error %v; want ErrInvalidRequest for another trust domain", d, err)
		}
	})
}

func TestBundlePEMIsTheBundleEncoded(t *testing.T) {
	iss := selfSigned(t, signer.ECDSAP256, true)
	next := selfSigned(t, signer.ECDSAP256, false)
	a, err := ca.New(ca.Config{TrustDomain: testTD, Issuer: iss, TrustedRoots: next.Roots()})
	if err != nil {
		t.Fatal(err)
	}
	want, err := a.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if a.BundlePEM() != string(want) {
		t.Fatalf("BundlePEM:\n%s\nwant the bundle's own encoding, both roots:\n%s", a.BundlePEM(), want)
	}
}
