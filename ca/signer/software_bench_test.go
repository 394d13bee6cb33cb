package signer

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"testing"
)

// BenchmarkSoftwareSign is the in-memory CA key's Sign for the key types a CA usually has,
// as a reference for the PKCS#11 figures.
func BenchmarkSoftwareSign(b *testing.B) {
	d256 := sha256.Sum256([]byte("meshca benchmark tbsCertificate"))
	d384 := sha512.Sum384([]byte("meshca benchmark tbsCertificate"))
	for _, tc := range []struct {
		kt     KeyType
		digest []byte
		h      crypto.Hash
	}{
		{ECDSAP256, d256[:], crypto.SHA256},
		{ECDSAP384, d384[:], crypto.SHA384},
		{RSA2048, d256[:], crypto.SHA256},
	} {
		s := testKeys()[tc.kt]
		b.Run(string(tc.kt)+"/serial", func(b *testing.B) {
			for b.Loop() {
				if _, err := s.Sign(rand.Reader, tc.digest, tc.h); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(string(tc.kt)+"/parallel", func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := s.Sign(rand.Reader, tc.digest, tc.h); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
