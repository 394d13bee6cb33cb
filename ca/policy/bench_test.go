package policy_test

import (
	"math/big"
	"testing"
)

// BenchmarkCheckWorkload is the policy alone on a parsed P-256 CSR; most of it is the CSR
// signature check.
func BenchmarkCheckWorkload(b *testing.B) {
	p := mustPolicy(b)
	issuer := testIssuer(b)
	csr := makeCSR(b, goodCSRTemplate(), testKey(b, "p256"))
	req := goodRequest()
	b.ReportAllocs()
	var n int64
	for b.Loop() {
		n++
		req.Serial = big.NewInt(n)
		if _, err := p.CheckWorkload(csr, req, issuer); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCheckWorkloadSignatureOnly is the CSR signature check the policy starts with, to
// show what the rest of the policy costs on top of it.
func BenchmarkCheckWorkloadSignatureOnly(b *testing.B) {
	csr := makeCSR(b, goodCSRTemplate(), testKey(b, "p256"))
	b.ReportAllocs()
	for b.Loop() {
		if err := csr.CheckSignature(); err != nil {
			b.Fatal(err)
		}
	}
}
