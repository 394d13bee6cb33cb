package ca_test

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
)

func parseChain(t testing.TB, chain [][]byte) []*x509.Certificate {
	t.Helper()
	var certs []*x509.Certificate
	for _, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	return certs
}

func TestIssueWorkloadVerifiesAsAnX509SVID(t *testing.T) {
	for _, kt := range []signer.KeyType{signer.ECDSAP256, signer.ECDSAP384, signer.RSA2048, signer.Ed25519} {
		for _, withInter := range []bool{false, true} {
			name := string(kt) + " root"
			if withInter {
				name += " and intermediate"
			}
			t.Run(name, func(t *testing.T) {
				a := newAuthority(t, selfSigned(t, kt, withInter))
				key := workloadKey(t)
				got, err := a.IssueWorkload(workloadCSR(t, key), workloadRequest(77))
				if err != nil {
					t.Fatal(err)
				}
				chain := parseChain(t, got.Chain)
				if leaf, err := got.Leaf(); err != nil || !chain[0].Equal(leaf) {
					t.Fatalf("chain does not start with the leaf: %v", err)
				}
				wantLen := 1
				if withInter {
					wantLen = 2
				}
				if len(chain) != wantLen {
					t.Fatalf("chain of %d, want %d (leaf + intermediates, no root)", len(chain), wantLen)
				}
				id, _, err := x509svid.Verify(chain, a.Bundle(), x509svid.WithTime(t0))
				if err != nil {
					t.Fatalf("issued chain does not verify against the bundle: %v", err)
				}
				if id.String() != testSPIFFE {
					t.Errorf("SPIFFE ID %s, want %s", id, testSPIFFE)
				}
				leaf := chain[0]
				if got.Template.SerialNumber.Int64() != 77 || !got.Template.NotAfter.Equal(leaf.NotAfter) {
					t.Errorf("template serial %v NotAfter %s, leaf NotAfter %s", got.Template.SerialNumber, got.Template.NotAfter, leaf.NotAfter)
				}
				if leaf.SerialNumber.Int64() != 77 || leaf.IsCA || leaf.SignatureAlgorithm != signer.SignatureAlgorithmFor(kt) {
					t.Errorf("leaf serial %v IsCA %v sigalg %v", leaf.SerialNumber, leaf.IsCA, leaf.SignatureAlgorithm)
				}
				fp, _ := policy.FingerprintOf(key.Public())
				if got.Fingerprint != fp {
					t.Errorf("fingerprint %s, want the CSR key's %s", got.Fingerprint, fp)
				}
				if _, _, err := x509svid.Verify(chain, a.Bundle(), x509svid.WithTime(t0.Add(25*time.Hour))); err == nil {
					t.Error("the leaf still verifies after its 24 h lifetime")
				}
			})
		}
	}
}

func TestIssueWorkloadRefusals(t *testing.T) {
	a := newAuthority(t, selfSigned(t, signer.ECDSAP256, true))
	good := workloadCSR(t, workloadKey(t))
	cases := []struct {
		name string
		csr  []byte
		req  func(*policy.WorkloadRequest)
		want error
		msg  string
	}{
		{name: "a policy refusal comes back as violations", csr: good, req: func(r *policy.WorkloadRequest) { r.Service = "web" },
			want: policy.ErrSubjectMismatch, msg: `csr: subject CN "sports.api" is not "sports.web"`},
		{name: "a CSR that does not parse is refused", csr: []byte("not a CSR"),
			want: policy.ErrInvalidRequest, msg: "csr: does not parse"},
		{name: "a request for another trust domain is refused", csr: good, req: func(r *policy.WorkloadRequest) { r.TrustDomain = "other.example" },
			want: policy.ErrInvalidRequest, msg: `request.trust_domain: "other.example" is not this CA's trust domain "mesh.example"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := workloadRequest(5)
			if tc.req != nil {
				tc.req(&req)
			}
			got, err := a.IssueWorkload(tc.csr, req)
			if got != nil || !errors.Is(err, tc.want) {
				t.Fatalf("issued %v, error %v; want %v", got, err, tc.want)
			}
			var vs policy.Violations
			if !errors.As(err, &vs) {
				t.Errorf("error %T is not policy.Violations", err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not say %q", err, tc.msg)
			}
		})
	}
	t.Run("an empty trust domain means the CA's", func(t *testing.T) {
		req := workloadRequest(6)
		req.TrustDomain = ""
		if _, err := a.IssueWorkload(good, req); err != nil {
			t.Fatal(err)
		}
	})
}

func TestIssueSpec(t *testing.T) {
	a := newAuthority(t, selfSigned(t, signer.ECDSAP256, true))
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "ignored", Organization: []string{"CSR Org"}, Locality: []string{"CSR Town"}},
	}, workloadKey(t))
	if err != nil {
		t.Fatal(err)
	}
	specs, err := policy.DecodeSpecFile([]byte(`[{"common_name":"server.example.com","purposes":["client_auth","server_auth"],"sans":["server.example.com","bad_name.example.com"],"lifetime":90,"organization":"Partner Ltd"}]`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.IssueSpec(der, policy.SpecRequest{Spec: specs[0], Now: t0, Serial: big.NewInt(900)})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := got.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "server.example.com" || leaf.Subject.Organization[0] != "Partner Ltd" || leaf.Subject.Locality[0] != "CSR Town" {
		t.Errorf("subject %s", leaf.Subject)
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "server.example.com" || len(got.Dropped) != 1 || got.Dropped[0].Name != "bad_name.example.com" {
		t.Errorf("DNS %q dropped %v", leaf.DNSNames, got.Dropped)
	}
	if !leaf.NotAfter.Equal(t0.Add(90 * 24 * time.Hour)) {
		t.Errorf("NotAfter %s, want 90 days", leaf.NotAfter)
	}
	roots := x509.NewCertPool()
	roots.AddCert(a.Issuer().Roots()[0])
	inter := x509.NewCertPool()
	for _, c := range a.Issuer().Chain() {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: t0, DNSName: "server.example.com", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("spec certificate does not verify as a server certificate: %v", err)
	}
	_, err = a.IssueSpec(der, policy.SpecRequest{Spec: policy.Spec{CommonName: "a", Lifetime: 400}, Now: t0, Serial: big.NewInt(901)})
	if !errors.Is(err, policy.ErrLifetime) {
		t.Errorf("lifetime over the maximum: %v", err)
	}
}

func TestConcurrentIssuance(t *testing.T) {
	a := newAuthority(t, selfSigned(t, signer.ECDSAP256, true))
	csr := workloadCSR(t, workloadKey(t))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 4 {
				if _, err := a.IssueWorkload(csr, workloadRequest(int64(100+g*10+i))); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestNewAuthority(t *testing.T) {
	iss := selfSigned(t, signer.ECDSAP256, true)
	if _, err := ca.New(ca.Config{Issuer: iss}); !errors.Is(err, ca.ErrInvalidConfig) {
		t.Errorf("missing trust domain: %v", err)
	}
	if _, err := ca.New(ca.Config{TrustDomain: testTD}); !errors.Is(err, ca.ErrInvalidConfig) {
		t.Errorf("missing issuer: %v", err)
	}
	bad := policy.DefaultConfig()
	bad.MaxTTL = 90 * 24 * time.Hour
	if _, err := ca.New(ca.Config{TrustDomain: testTD, Issuer: iss, Policy: bad}); !errors.Is(err, policy.ErrInvalidConfig) {
		t.Errorf("invalid policy: %v", err)
	}
	short := policy.DefaultConfig()
	short.DefaultTTL = time.Hour
	a, err := ca.New(ca.Config{TrustDomain: testTD, Issuer: iss, Policy: short})
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.IssueWorkload(workloadCSR(t, workloadKey(t)), workloadRequest(8))
	if err != nil {
		t.Fatal(err)
	}
	if leaf, err := got.Leaf(); err != nil || !leaf.NotAfter.Equal(t0.Add(time.Hour)) {
		t.Errorf("leaf %v, want NotAfter at the configured 1 h default", err)
	}
}

func TestPEM(t *testing.T) {
	a := newAuthority(t, selfSigned(t, signer.ECDSAP256, true))
	der := workloadCSR(t, workloadKey(t))
	got, err := a.IssueWorkload(der, workloadRequest(9))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ca.ParseCertificatesPEM(got.ChainPEM())
	if err != nil || len(certs) != 2 || string(certs[0].Raw) != string(got.Chain[0]) || !certs[1].Equal(a.Issuer().Certificate()) {
		t.Fatalf("ChainPEM round trip: %d certs, %v", len(certs), err)
	}
	if certs, err := ca.ParseCertificatesPEM(a.ChainPEM()); err != nil || len(certs) != 1 {
		t.Errorf("authority ChainPEM: %d certs, %v", len(certs), err)
	}

	pemCSR := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	for _, tc := range []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"a PEM CSR decodes to its DER", pemCSR, true},
		{"a legacy NEW CERTIFICATE REQUEST block decodes", pem.EncodeToMemory(&pem.Block{Type: "NEW CERTIFICATE REQUEST", Bytes: der}), true},
		{"DER passes through", der, true},
		{"a certificate block is refused", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), false},
		{"text after the CSR is refused", append(append([]byte{}, pemCSR...), "trailing"...), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := ca.DecodeCSR(tc.in)
			if tc.ok && (err != nil || string(out) != string(der)) {
				t.Errorf("got %d bytes, %v", len(out), err)
			}
			if !tc.ok && !errors.Is(err, ca.ErrPEM) {
				t.Errorf("error %v, want ErrPEM", err)
			}
		})
	}
	for _, bad := range []string{"", "garbage", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"} {
		if _, err := ca.ParseCertificatesPEM([]byte(bad)); !errors.Is(err, ca.ErrPEM) {
			t.Errorf("ParseCertificatesPEM(%q): %v, want ErrPEM", bad, err)
		}
	}
}

func TestBundle(t *testing.T) {
	old := makeCA(t, "old root", softKey(t, signer.ECDSAP256, "bundle-old"), nil, notBefore(t0.Add(-48*time.Hour)))
	cur := makeCA(t, "current root", softKey(t, signer.ECDSAP256, "bundle-cur"), nil, notBefore(t0.Add(-24*time.Hour)))
	next := makeCA(t, "next root", softKey(t, signer.ECDSAP256, "bundle-next"), nil)
	names := func(b interface{ X509Authorities() []*x509.Certificate }) []string {
		var out []string
		for _, c := range b.X509Authorities() {
			out = append(out, c.Subject.CommonName)
		}
		return out
	}

	t.Run("roots are ordered newest first and duplicates collapse", func(t *testing.T) {
		b, err := ca.NewBundle(testTD, []*x509.Certificate{old.cert, next.cert, cur.cert, old.cert})
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(names(b), ","); got != "next root,current root,old root" {
			t.Errorf("order %s", got)
		}
		if b.TrustDomain() != testTD {
			t.Errorf("trust domain %s", b.TrustDomain())
		}
	})
	t.Run("rotation adds the new root first and drops the old one last", func(t *testing.T) {
		b, _ := ca.NewBundle(testTD, []*x509.Certificate{old.cert})
		b, err := ca.AddRoot(b, cur.cert)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(names(b), ","); got != "current root,old root" {
			t.Errorf("after add: %s", got)
		}
		b, err = ca.RemoveRoot(b, old.cert)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(names(b), ","); got != "current root" {
			t.Errorf("after remove: %s", got)
		}
		if _, err := ca.RemoveRoot(b, cur.cert); !errors.Is(err, ca.ErrBundle) {
			t.Errorf("removing the last root: %v, want ErrBundle", err)
		}
	})
	t.Run("PEM round trip keeps the order", func(t *testing.T) {
		b, _ := ca.NewBundle(testTD, []*x509.Certificate{old.cert, next.cert})
		data, err := b.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, err := ca.ParseBundlePEM(testTD, data)
		if err != nil {
			t.Fatal(err)
		}
		if !back.Equal(b) {
			t.Errorf("round trip %v != %v", names(back), names(b))
		}
	})
	t.Run("a leaf certificate is refused", func(t *testing.T) {
		a := newAuthority(t, selfSigned(t, signer.ECDSAP256, false))
		got, err := a.IssueWorkload(workloadCSR(t, workloadKey(t)), workloadRequest(10))
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := got.Leaf()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ca.NewBundle(testTD, []*x509.Certificate{cur.cert, leaf}); !errors.Is(err, ca.ErrBundle) {
			t.Errorf("error %v, want ErrBundle", err)
		}
	})
	t.Run("an empty bundle is refused", func(t *testing.T) {
		if _, err := ca.NewBundle(testTD, nil); !errors.Is(err, ca.ErrBundle) {
			t.Errorf("error %v, want ErrBundle", err)
		}
		if _, err := ca.ParseBundlePEM(testTD, []byte("")); !errors.Is(err, ca.ErrBundle) {
			t.Errorf("empty PEM: %v, want ErrBundle", err)
		}
		if _, err := ca.NewBundle(spiffeid.TrustDomain{}, []*x509.Certificate{cur.cert}); !errors.Is(err, ca.ErrBundle) {
			t.Errorf("no trust domain: %v, want ErrBundle", err)
		}
	})
	t.Run("garbage PEM is refused", func(t *testing.T) {
		if _, err := ca.ParseBundlePEM(testTD, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")); !errors.Is(err, ca.ErrBundle) {
			t.Errorf("error %v, want ErrBundle", err)
		}
	})
	t.Run("the authority's bundle holds its root and the trusted next root, newest first", func(t *testing.T) {
		iss := selfSigned(t, signer.ECDSAP256, true)
		a, err := ca.New(ca.Config{TrustDomain: testTD, Issuer: iss, TrustedRoots: []*x509.Certificate{old.cert}})
		if err != nil {
			t.Fatal(err)
		}
		auths := a.Bundle().X509Authorities()
		if len(auths) != 2 || !auths[0].Equal(iss.Roots()[0]) || !auths[1].Equal(old.cert) {
			t.Errorf("bundle %v", names(a.Bundle()))
		}
	})
}
