//go:build cgo

package ca_test

import (
	"testing"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
)

// BenchmarkIssueSoftHSM is BenchmarkIssue with the intermediate's P-256 key on a SoftHSM2
// token (the signer package's benchmarks measure the raw C_Sign rate to compare with).
func BenchmarkIssueSoftHSM(b *testing.B) {
	keys := hsmKeys(b, signer.ECDSAP256, "root", "intermediate")
	iss, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: testTD, RootKey: keys[0], IntermediateKey: keys[1], Now: t0})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("softhsm-ecdsa-p256", func(b *testing.B) {
		benchIssue(b, newAuthority(b, iss))
	})
}
