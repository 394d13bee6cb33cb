//go:build cgo

package signer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
)

// BenchmarkPKCS11P256 measures, in one run and on one SoftHSM2 token, the raw C_SignInit +
// C_Sign rate of a P-256 key straight through miekg/pkcs11 (one session per goroutine) and the
// rate of the PKCS11 signer (session pool, DER conversion, software verification), so that
// their ratio can be read off. verify-only is the software check on its own.
func BenchmarkPKCS11P256(b *testing.B) {
	cfg := tokenConfig(b, "bench-p256", ECDSAP256)
	s := mustGenerate(b, cfg)
	ctx := s.mod.ctx
	key := pkcs11.ObjectHandle(s.key.Load())
	digest := sha256.Sum256([]byte("meshca benchmark tbsCertificate"))
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}

	rawSign := func(b *testing.B, sh pkcs11.SessionHandle) {
		if err := ctx.SignInit(sh, mech, key); err != nil {
			b.Fatal(err)
		}
		if _, err := ctx.Sign(sh, digest[:]); err != nil {
			b.Fatal(err)
		}
	}
	openSession := func(b *testing.B) pkcs11.SessionHandle {
		sh, err := ctx.OpenSession(s.pool.slot, pkcs11.CKF_SERIAL_SESSION)
		if err != nil {
			b.Fatal(err)
		}
		return sh // logged in already: the signer's sessions hold the login
	}

	b.Run("raw-C_Sign/serial", func(b *testing.B) {
		sh := openSession(b)
		defer ctx.CloseSession(sh)
		for b.Loop() {
			rawSign(b, sh)
		}
	})
	b.Run("signer/serial", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw-C_Sign/parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			sh := openSession(b)
			defer ctx.CloseSession(sh)
			for pb.Next() {
				rawSign(b, sh)
			}
		})
	})
	b.Run("signer/parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	// The same two operations alternated in one loop, so that both see the same machine: on
	// a shared 2-core host the separate runs above drift with other load, the ratio here less.
	interleaved := func(b *testing.B, next func() bool, sh pkcs11.SessionHandle, raw, ours *atomic.Int64) {
		for next() {
			t0 := time.Now()
			rawSign(b, sh)
			t1 := time.Now()
			if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
				b.Fatal(err)
			}
			raw.Add(int64(t1.Sub(t0)))
			ours.Add(int64(time.Since(t1)))
		}
	}
	report := func(b *testing.B, raw, ours *atomic.Int64) {
		b.ReportMetric(float64(raw.Load())/float64(b.N), "raw-ns/op")
		b.ReportMetric(float64(ours.Load())/float64(b.N), "signer-ns/op")
		b.ReportMetric(100*float64(raw.Load())/float64(ours.Load()), "signer-rate-%-of-raw")
	}
	b.Run("interleaved/serial", func(b *testing.B) {
		var raw, ours atomic.Int64
		sh := openSession(b)
		defer ctx.CloseSession(sh)
		interleaved(b, b.Loop, sh, &raw, &ours)
		report(b, &raw, &ours)
	})
	b.Run("interleaved/parallel", func(b *testing.B) {
		var raw, ours atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			sh := openSession(b)
			defer ctx.CloseSession(sh)
			interleaved(b, pb.Next, sh, &raw, &ours)
		})
		report(b, &raw, &ours)
	})

	// Issuing through crypto/x509, which verifies the signature itself: once with
	// x509.CreateCertificate alone (the signer verifies too), once with CreateCertificate.
	leaf := leafTemplate()
	issuer := caTemplate("bench issuer")
	leafKey := testKeys()[ECDSAP256].Public()
	b.Run("x509.CreateCertificate/parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := x509.CreateCertificate(rand.Reader, leaf, issuer, leafKey, s); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("signer.CreateCertificate/parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := CreateCertificate(rand.Reader, leaf, issuer, leafKey, s); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		b.Fatal(err)
	}
	pub := s.Public().(*ecdsa.PublicKey)
	b.Run("verify-only/serial", func(b *testing.B) {
		for b.Loop() {
			if !ecdsa.VerifyASN1(pub, digest[:], sig) {
				b.Fatal("does not verify")
			}
		}
	})
}

func leafTemplate() *x509.Certificate {
	return &x509.Certificate{
		SerialNumber: big.NewInt(0x7f3a_11c2_9d0e_55aa),
		Subject:      pkix.Name{CommonName: "sports.api"},
		DNSNames:     []string{"api.sports.k8s.mesh.example", "pod-1.ns.cluster-a.instanceid.athenz.k8s.mesh.example"},
		NotBefore:    time.Unix(1_700_000_000, 0),
		NotAfter:     time.Unix(1_700_000_000, 0).Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// BenchmarkPKCS11RSA2048 is the same comparison for an RSA-2048 key, where the software
// verification is cheap next to the token's private-key operation.
func BenchmarkPKCS11RSA2048(b *testing.B) {
	cfg := tokenConfig(b, "bench-rsa", RSA2048)
	s := mustGenerate(b, cfg)
	ctx := s.mod.ctx
	key := pkcs11.ObjectHandle(s.key.Load())
	digest := sha256.Sum256([]byte("meshca benchmark tbsCertificate"))
	input, err := pkcs1DigestInfo(crypto.SHA256, digest[:])
	if err != nil {
		b.Fatal(err)
	}
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)}
	b.Run("raw-C_Sign/parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			sh, err := ctx.OpenSession(s.pool.slot, pkcs11.CKF_SERIAL_SESSION)
			if err != nil {
				b.Fatal(err)
			}
			defer ctx.CloseSession(sh)
			for pb.Next() {
				if err := ctx.SignInit(sh, mech, key); err != nil {
					b.Fatal(err)
				}
				if _, err := ctx.Sign(sh, input); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("signer/parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
