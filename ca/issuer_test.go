package ca_test

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
)

func TestNewSelfSigned(t *testing.T) {
	t.Run("root only: the root signs, the chain is empty, the root lives 10 years", func(t *testing.T) {
		iss := selfSigned(t, signer.ECDSAP256, false)
		root := iss.Certificate()
		if len(iss.Chain()) != 0 || len(iss.Roots()) != 1 || !iss.Roots()[0].Equal(root) {
			t.Fatalf("chain %d roots %d, want 0 and the root itself", len(iss.Chain()), len(iss.Roots()))
		}
		if !root.IsCA || root.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign || root.MaxPathLen != -1 {
			t.Errorf("root IsCA=%v KU=%b MaxPathLen=%d", root.IsCA, root.KeyUsage, root.MaxPathLen)
		}
		if got := root.NotAfter.Sub(t0); got != ca.DefaultRootTTL {
			t.Errorf("root lives %s after now, want %s", got, ca.DefaultRootTTL)
		}
		if len(root.URIs) != 1 || root.URIs[0].String() != "spiffe://mesh.example" {
			t.Errorf("root URIs %v, want the trust domain's SPIFFE ID", root.URIs)
		}
		if err := root.CheckSignatureFrom(root); err != nil {
			t.Errorf("root is not self-signed: %v", err)
		}
	})
	t.Run("with intermediate: it signs leaves only and lives 1 year", func(t *testing.T) {
		iss := selfSigned(t, signer.ECDSAP384, true)
		inter := iss.Certificate()
		if len(iss.Chain()) != 1 || !iss.Chain()[0].Equal(inter) {
			t.Fatalf("chain %v, want the intermediate", iss.Chain())
		}
		if inter.MaxPathLen != 0 || !inter.MaxPathLenZero || !inter.IsCA {
			t.Errorf("intermediate MaxPathLen=%d zero=%v IsCA=%v", inter.MaxPathLen, inter.MaxPathLenZero, inter.IsCA)
		}
		if got := inter.NotAfter.Sub(t0); got != ca.DefaultIntermediateTTL {
			t.Errorf("intermediate lives %s after now, want %s", got, ca.DefaultIntermediateTTL)
		}
		if err := inter.CheckSignatureFrom(iss.Roots()[0]); err != nil {
			t.Errorf("intermediate not signed by the root: %v", err)
		}
		if inter.Subject.String() == iss.Roots()[0].Subject.String() {
			t.Errorf("intermediate and root share the subject %s", inter.Subject)
		}
	})
	t.Run("intermediate lifetime is cut to the root's", func(t *testing.T) {
		iss, err := ca.NewSelfSigned(ca.SelfSignedConfig{
			TrustDomain: testTD, Now: t0,
			RootKey: softKey(t, signer.ECDSAP256, "root"), RootTTL: 30 * 24 * time.Hour,
			IntermediateKey: softKey(t, signer.ECDSAP256, "intermediate"), IntermediateTTL: 365 * 24 * time.Hour,
		})
		if err != nil {
			t.Fatal(err)
		}
		if !iss.Certificate().NotAfter.Equal(iss.Roots()[0].NotAfter) {
			t.Errorf("intermediate ends %s, root %s", iss.Certificate().NotAfter, iss.Roots()[0].NotAfter)
		}
	})
	for _, tc := range []struct {
		name string
		edit func(*ca.SelfSignedConfig)
		msg  string
	}{
		{"missing trust domain is refused", func(c *ca.SelfSignedConfig) { c.TrustDomain = ca.Config{}.TrustDomain }, "trust_domain"},
		{"missing root key is refused", func(c *ca.SelfSignedConfig) { c.RootKey = nil }, "root_key"},
		{"missing time is refused", func(c *ca.SelfSignedConfig) { c.Now = time.Time{} }, "now"},
		{"negative root lifetime is refused", func(c *ca.SelfSignedConfig) { c.RootTTL = -time.Hour }, "root_ttl"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ca.SelfSignedConfig{TrustDomain: testTD, RootKey: softKey(t, signer.ECDSAP256, "root"), Now: t0}
			tc.edit(&cfg)
			_, err := ca.NewSelfSigned(cfg)
			if !errors.Is(err, ca.ErrInvalidConfig) || !strings.HasPrefix(err.Error(), tc.msg) {
				t.Errorf("error %v, want ErrInvalidConfig naming %s", err, tc.msg)
			}
		})
	}
}

func TestNewSerial(t *testing.T) {
	seen := map[string]bool{}
	for range 64 {
		s, err := ca.NewSerial(nil)
		if err != nil {
			t.Fatal(err)
		}
		if s.Sign() <= 0 || s.BitLen() > ca.SerialBits {
			t.Fatalf("serial %x: want positive and at most %d bits", s, ca.SerialBits)
		}
		if seen[s.String()] {
			t.Fatalf("serial %x drawn twice", s)
		}
		seen[s.String()] = true
	}
	t.Run("a source that yields only zeros fails instead of looping", func(t *testing.T) {
		if _, err := ca.NewSerial(zeroReader{}); !errors.Is(err, ca.ErrRandom) {
			t.Errorf("error %v, want ErrRandom", err)
		}
	})
	t.Run("a failing source fails", func(t *testing.T) {
		if _, err := ca.NewSerial(strings.NewReader("short")); !errors.Is(err, ca.ErrRandom) {
			t.Errorf("error %v, want ErrRandom", err)
		}
	})
	t.Run("an all-zero draw is retried", func(t *testing.T) {
		src := strings.NewReader(strings.Repeat("\x00", 20) + "\xff" + strings.Repeat("\x01", 19))
		s, err := ca.NewSerial(src)
		if err != nil || s.BitLen() != ca.SerialBits {
			t.Errorf("serial %v (%d bits), err %v; want the second draw with its top bit cleared", s, s.BitLen(), err)
		}
	})
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// The Istio plug-in layout: each rule has a refusing case that names the file.
func TestLoadCACerts(t *testing.T) {
	rootKey := softKey(t, signer.ECDSAP256, "plug-root")
	interKey := softKey(t, signer.ECDSAP256, "plug-inter")
	caKey := softKey(t, signer.ECDSAP256, "plug-ca")
	otherKey := softKey(t, signer.ECDSAP256, "plug-other")
	root := makeCA(t, "root", rootKey, nil)
	otherRoot := makeCA(t, "root", otherKey, nil)
	good := makeCA(t, "ca", caKey, root, pathLen(0))

	type layout struct {
		caCert *testCA
		key    *signer.Software
		chain  []*testCA
		roots  []*testCA
	}
	certs := func(cs []*testCA) []*x509.Certificate {
		out := make([]*x509.Certificate, len(cs))
		for i, c := range cs {
			out[i] = c.cert
		}
		return out
	}
	cases := []struct {
		name    string
		layout  func() layout
		edit    func(t *testing.T, dir string)
		signer  *signer.Software // instead of ca-key.pem
		want    error
		msg     string
		chainOK int // chain length (without root) on success
	}{
		{name: "ca-cert under the root with cert-chain ca-cert+root loads", layout: func() layout {
			return layout{good, caKey, []*testCA{good, root}, []*testCA{root}}
		}, chainOK: 1},
		{name: "cert-chain without the root loads", layout: func() layout {
			return layout{good, caKey, []*testCA{good}, []*testCA{root}}
		}, chainOK: 1},
		{name: "ca-cert two levels under the root loads with both intermediates in the chain", layout: func() layout {
			inter := makeCA(t, "inter", interKey, root, pathLen(1))
			c := makeCA(t, "ca", caKey, inter)
			return layout{c, caKey, []*testCA{c, inter, root}, []*testCA{root}}
		}, chainOK: 2},
		{name: "a signer key with only the certificates on disk loads", layout: func() layout {
			return layout{good, nil, []*testCA{good, root}, []*testCA{root}}
		}, signer: caKey, chainOK: 1},
		{name: "a signer key that does not match ca-cert is refused", layout: func() layout {
			return layout{good, nil, []*testCA{good, root}, []*testCA{root}}
		}, signer: otherKey, want: ca.ErrKeyMismatch, msg: "signer key " + otherKey.KeyID() + ": key does not match the CA certificate: the key does not match the public key of ca-cert.pem"},
		{name: "ca-key that does not match ca-cert is refused", layout: func() layout {
			return layout{good, otherKey, []*testCA{good, root}, []*testCA{root}}
		}, want: ca.ErrKeyMismatch, msg: "ca-key.pem: key does not match the CA certificate"},
		{name: "ca-cert with CA:FALSE is refused", layout: func() layout {
			c := makeCA(t, "ca", caKey, root, notCA())
			return layout{c, caKey, []*testCA{c, root}, []*testCA{root}}
		}, want: ca.ErrNotCA, msg: "ca-cert.pem: certificate cannot issue certificates: basic constraints say CA:FALSE"},
		{name: "ca-cert without keyCertSign is refused", layout: func() layout {
			c := makeCA(t, "ca", caKey, root, keyUsage(x509.KeyUsageDigitalSignature))
			return layout{c, caKey, []*testCA{c, root}, []*testCA{root}}
		}, want: ca.ErrNotCA, msg: "ca-cert.pem: certificate cannot issue certificates: key usage lacks keyCertSign"},
		{name: "ca-cert restricted to serverAuth is refused", layout: func() layout {
			c := makeCA(t, "ca", caKey, root, ekus(x509.ExtKeyUsageServerAuth))
			return layout{c, caKey, []*testCA{c, root}, []*testCA{root}}
		}, want: ca.ErrNotCA, msg: "extended key usage"},
		{name: "ca-cert allowing clientAuth and serverAuth loads", layout: func() layout {
			c := makeCA(t, "ca", caKey, root, ekus(x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth))
			return layout{c, caKey, []*testCA{c, root}, []*testCA{root}}
		}, chainOK: 1},
		{name: "chain that does not verify to root-cert is refused", layout: func() layout {
			return layout{good, caKey, []*testCA{good}, []*testCA{otherRoot}}
		}, want: ca.ErrChainUntrusted, msg: "cert-chain.pem: chain does not verify to the roots: ca-cert.pem does not verify to root-cert.pem"},
		{name: "chain missing a middle intermediate is refused", layout: func() layout {
			inter := makeCA(t, "inter", interKey, root)
			c := makeCA(t, "ca", caKey, inter)
			return layout{c, caKey, []*testCA{c}, []*testCA{root}}
		}, want: ca.ErrChainUntrusted},
		{name: "expired ca-cert is refused", layout: func() layout {
			c := makeCA(t, "ca", caKey, root, notAfter(t0.Add(-time.Minute)))
			return layout{c, caKey, []*testCA{c, root}, []*testCA{root}}
		}, want: ca.ErrExpired, msg: "ca-cert.pem: certificate outside its validity period: certificate 0 (CN=ca,O=test PKI) expired at 2026-03-01T11:59:00Z"},
		{name: "ca-cert not yet valid is refused", layout: func() layout {
			c := makeCA(t, "ca", caKey, root, notBefore(t0.Add(time.Hour)))
			return layout{c, caKey, []*testCA{c, root}, []*testCA{root}}
		}, want: ca.ErrExpired, msg: "ca-cert.pem"},
		{name: "expired intermediate in cert-chain is refused", layout: func() layout {
			inter := makeCA(t, "inter", interKey, root, notAfter(t0.Add(-time.Minute)))
			c := makeCA(t, "ca", caKey, inter)
			return layout{c, caKey, []*testCA{c, inter, root}, []*testCA{root}}
		}, want: ca.ErrExpired, msg: "cert-chain.pem: certificate outside its validity period: certificate 0 (CN=inter"},
		{name: "expired root is refused", layout: func() layout {
			r := makeCA(t, "root", rootKey, nil, notAfter(t0.Add(-time.Minute)))
			c := makeCA(t, "ca", caKey, r)
			return layout{c, caKey, []*testCA{c, r}, []*testCA{r}}
		}, want: ca.ErrExpired, msg: "root-cert.pem"},
		{name: "root with path length 0 above ca-cert is refused", layout: func() layout {
			r := makeCA(t, "root", rootKey, nil, pathLen(0))
			c := makeCA(t, "ca", caKey, r)
			return layout{c, caKey, []*testCA{c, r}, []*testCA{r}}
		}, want: ca.ErrPathLen, msg: "root-cert.pem: path length constraint forbids the CA certificate: CN=root,O=test PKI has path length 0, but 1 CA certificate(s) including ca-cert.pem sit below it"},
		{name: "intermediate with path length 0 above ca-cert is refused", layout: func() layout {
			inter := makeCA(t, "inter", interKey, root, pathLen(0))
			c := makeCA(t, "ca", caKey, inter)
			return layout{c, caKey, []*testCA{c, inter, root}, []*testCA{root}}
		}, want: ca.ErrPathLen, msg: "cert-chain.pem: path length constraint"},
		{name: "root with path length 1 above two CAs is refused", layout: func() layout {
			r := makeCA(t, "root", rootKey, nil, pathLen(1))
			inter := makeCA(t, "inter", interKey, r)
			c := makeCA(t, "ca", caKey, inter)
			return layout{c, caKey, []*testCA{c, inter}, []*testCA{r}}
		}, want: ca.ErrPathLen, msg: "root-cert.pem"},
		{name: "ca-cert with path length 0 issues leaves", layout: func() layout {
			return layout{good, caKey, []*testCA{good, root}, []*testCA{root}}
		}, chainOK: 1},
		{name: "cert-chain not starting with ca-cert is refused", layout: func() layout {
			return layout{good, caKey, []*testCA{root, good}, []*testCA{root}}
		}, want: ca.ErrCAFile, msg: "cert-chain.pem: unusable CA file: the first certificate"},
		{name: "missing ca-key.pem is refused", layout: func() layout {
			return layout{good, nil, []*testCA{good, root}, []*testCA{root}}
		}, want: ca.ErrCAFile, msg: "ca-key.pem: unusable CA file: missing"},
		{name: "missing root-cert.pem is refused", layout: func() layout {
			return layout{good, caKey, []*testCA{good, root}, []*testCA{root}}
		}, edit: func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, ca.RootCertFile)); err != nil {
				t.Fatal(err)
			}
		}, want: ca.ErrCAFile, msg: "root-cert.pem: unusable CA file: missing"},
		{name: "ca-cert.pem with two certificates is refused", layout: func() layout {
			return layout{good, caKey, []*testCA{good, root}, []*testCA{root}}
		}, edit: func(t *testing.T, dir string) {
			writePEMCerts(t, filepath.Join(dir, ca.CACertFile), good.cert, root.cert)
		}, want: ca.ErrCAFile, msg: "ca-cert.pem: unusable CA file: holds 2 certificates"},
		{name: "root-cert.pem with text after the certificate is refused", layout: func() layout {
			return layout{good, caKey, []*testCA{good, root}, []*testCA{root}}
		}, edit: func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, ca.RootCertFile), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteString("garbage\n"); err != nil {
				t.Fatal(err)
			}
		}, want: ca.ErrCAFile, msg: "root-cert.pem: unusable CA file: malformed PEM"},
		{name: "ca-key.pem that is not a key is refused", layout: func() layout {
			return layout{good, caKey, []*testCA{good, root}, []*testCA{root}}
		}, edit: func(t *testing.T, dir string) {
			writePEMCerts(t, filepath.Join(dir, ca.CAKeyFile), good.cert)
		}, want: ca.ErrCAFile, msg: "ca-key.pem: unusable CA file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.layout()
			var key *signer.Software
			if l.key != nil {
				key = l.key
			}
			var dir string
			if key != nil {
				dir = writeCACerts(t, l.caCert, key, certs(l.chain), certs(l.roots))
			} else {
				dir = writeCACerts(t, l.caCert, nil, certs(l.chain), certs(l.roots))
			}
			if tc.edit != nil {
				tc.edit(t, dir)
			}
			var s signer.Signer
			if tc.signer != nil {
				s = tc.signer
			}
			iss, err := ca.LoadCACerts(dir, s, t0)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if !iss.Certificate().Equal(l.caCert.cert) || len(iss.Chain()) != tc.chainOK {
					t.Errorf("issuer %s with chain of %d, want ca-cert with %d", iss.Certificate().Subject, len(iss.Chain()), tc.chainOK)
				}
				for _, c := range iss.Chain() {
					if c.Equal(root.cert) {
						t.Errorf("the issued chain includes the root")
					}
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not say %q", err, tc.msg)
			}
		})
	}
}

func TestNewIssuerRefusesMissingParts(t *testing.T) {
	iss := selfSigned(t, signer.ECDSAP256, false)
	for _, tc := range []struct {
		name  string
		parts ca.IssuerParts
	}{
		{"missing certificate", ca.IssuerParts{Key: iss.Signer(), Roots: iss.Roots()}},
		{"missing key", ca.IssuerParts{Certificate: iss.Certificate(), Roots: iss.Roots()}},
		{"missing roots", ca.IssuerParts{Certificate: iss.Certificate(), Key: iss.Signer()}},
	} {
		t.Run(tc.name+" is refused", func(t *testing.T) {
			if _, err := ca.NewIssuer(tc.parts, t0); !errors.Is(err, ca.ErrCAFile) {
				t.Errorf("error %v, want ErrCAFile", err)
			}
		})
	}
	if _, err := ca.NewIssuer(ca.IssuerParts{Certificate: iss.Certificate(), Key: iss.Signer(), Roots: iss.Roots()}, t0); err != nil {
		t.Errorf("complete parts refused: %v", err)
	}
}
