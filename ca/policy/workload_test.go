package policy_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/policy"
)

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

func ext(oid asn1.ObjectIdentifier, value any) pkix.Extension {
	b, err := asn1.Marshal(value)
	if err != nil {
		panic(err)
	}
	return pkix.Extension{Id: oid, Value: b}
}

// sanWith builds a raw SAN extension holding the three good names plus extra GeneralNames.
func sanWith(extra ...asn1.RawValue) pkix.Extension {
	names := []asn1.RawValue{
		{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(testSPIFFE)},
		{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte(testSvcDNS)},
		{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte(testInstDNS)},
	}
	return ext(asn1.ObjectIdentifier{2, 5, 29, 17}, append(names, extra...))
}

func serialBits(bits int) *big.Int {
	n := new(big.Int).Lsh(big.NewInt(1), uint(bits-1))
	return n.Add(n, big.NewInt(7))
}

type workloadCase struct {
	name   string
	key    string                         // CSR key kind; "p256" when empty
	csr    func(*x509.CertificateRequest) // edits the good CSR template
	raw    func(t testing.TB) []byte      // replaces the CSR altogether
	req    func(*policy.WorkloadRequest)  // edits the good request
	issuer func(t testing.TB) *x509.Certificate
	want   error  // nil means accepted
	msg    string // must appear in the error text
	check  func(t *testing.T, tmpl *x509.Certificate, req policy.WorkloadRequest)
}

func TestCheckWorkload(t *testing.T) {
	cases := []workloadCase{
		// The CSR's proof of possession.
		{name: "CSR with exactly the identity's names is accepted"},
		{name: "CSR whose signature does not verify is refused", raw: func(t testing.TB) []byte {
			der := makeCSRDER(t, goodCSRTemplate(), testKey(t, "p256"))
			der[len(der)-5] ^= 0xff
			return der
		}, want: policy.ErrCSRSignature, msg: "csr: signature does not verify"},
		{name: "CSR signed with SHA-1 is refused", key: "rsa2048", csr: func(c *x509.CertificateRequest) {
			c.SignatureAlgorithm = x509.SHA1WithRSA
		}, want: policy.ErrCSRSignature, msg: "signature algorithm SHA1-RSA is not allowed"},
		{name: "CSR signed with RSA-PSS SHA-256 is accepted", key: "rsa2048", csr: func(c *x509.CertificateRequest) {
			c.SignatureAlgorithm = x509.SHA256WithRSAPSS
		}},

		// Key types and sizes.
		{name: "ECDSA P-384 key is accepted", key: "p384"},
		{name: "RSA-2048 key is accepted and gets keyEncipherment", key: "rsa2048", check: func(t *testing.T, tmpl *x509.Certificate, _ policy.WorkloadRequest) {
			if tmpl.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
				t.Errorf("key usage %b, want digitalSignature|keyEncipherment", tmpl.KeyUsage)
			}
		}},
		{name: "Ed25519 key is accepted", key: "ed25519"},
		{name: "ECDSA key gets digitalSignature only", check: func(t *testing.T, tmpl *x509.Certificate, _ policy.WorkloadRequest) {
			if tmpl.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("key usage %b, want digitalSignature", tmpl.KeyUsage)
			}
		}},
		{name: "RSA-1024 key is refused", key: "rsa1024", want: policy.ErrKeyNotAllowed, msg: "RSA key of 1024 bits is too small (minimum 2048)"},
		{name: "RSA key over 8192 bits is refused", raw: func(t testing.TB) []byte {
			n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 8300))
			n.SetBit(n, 8299, 1).SetBit(n, 0, 1)
			spki, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: n, E: 65537})
			if err != nil {
				t.Fatal(err)
			}
			return csrWithSPKI(t, makeCSRDER(t, goodCSRTemplate(), testKey(t, "rsa2048")), spki, testKey(t, "rsa2048"))
		}, want: policy.ErrKeyNotAllowed, msg: "RSA key of 8300 bits is too large"},
		{name: "ECDSA P-224 key is refused", key: "p224", want: policy.ErrKeyNotAllowed, msg: "ECDSA curve P-224 is not allowed"},
		{name: "ECDSA P-521 key is refused", key: "p521", want: policy.ErrKeyNotAllowed, msg: "ECDSA curve P-521 is not allowed"},
		{name: "DSA key is refused", raw: func(t testing.TB) []byte {
			return readPEMCSR(t, "testdata/dsa.csr.pem").Raw
		}, want: policy.ErrKeyNotAllowed, msg: "DSA keys are not allowed"},
		{name: "CSR carrying the issuer's own key is refused", key: "ca", want: policy.ErrKeyNotAllowed, msg: "public key is the issuer's own key"},
		{name: "CSR made by openssl with the identity's names is accepted", raw: func(t testing.TB) []byte {
			return readPEMCSR(t, "testdata/openssl-p256.csr.pem").Raw
		}},

		// Subject.
		{name: "CN other than <domain>.<service> is refused", csr: func(c *x509.CertificateRequest) {
			c.Subject.CommonName = "sports.web"
		}, want: policy.ErrSubjectMismatch, msg: `csr: subject CN "sports.web" is not "sports.api"`},
		{name: "subject with two CN attributes is refused", csr: func(c *x509.CertificateRequest) {
			c.Subject.ExtraNames = []pkix.AttributeTypeAndValue{
				{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "admin.root"},
				{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "sports.api"},
			}
		}, want: policy.ErrSubjectMismatch, msg: "2 CN attributes"},
		{name: "other CSR subject attributes are not copied", csr: func(c *x509.CertificateRequest) {
			c.Subject.Organization = []string{"Evil Corp"}
		}, check: func(t *testing.T, tmpl *x509.Certificate, _ policy.WorkloadRequest) {
			if len(tmpl.Subject.Organization) != 0 {
				t.Errorf("organization %q copied from the CSR", tmpl.Subject.Organization)
			}
		}},
		{name: "domain with dots gives a dashed service DNS name", req: func(r *policy.WorkloadRequest) {
			r.Domain = "sys.auth.k8s"
		}, csr: func(c *x509.CertificateRequest) {
			c.Subject.CommonName = "sys.auth.k8s.api"
			c.DNSNames[0] = "api.sys-auth-k8s.k8s.mesh.example"
			c.URIs[0] = mustURL("spiffe://mesh.example/ns/sys.auth.k8s/sa/api")
		}},

		// SANs: exactly the three names.
		{name: "DNS SAN outside the provider suffix is refused", csr: func(c *x509.CertificateRequest) {
			c.DNSNames = append(c.DNSNames, "x.evil.com")
		}, want: policy.ErrSANNotAllowed, msg: `csr: DNS SAN "x.evil.com" is outside provider suffix "k8s.mesh.example"`},
		{name: "extra DNS SAN inside the provider suffix is refused", csr: func(c *x509.CertificateRequest) {
			c.DNSNames = append(c.DNSNames, "db.sports.k8s.mesh.example")
		}, want: policy.ErrSANNotAllowed, msg: `DNS SAN "db.sports.k8s.mesh.example" is neither the service name`},
		{name: "missing service DNS SAN is refused", csr: func(c *x509.CertificateRequest) {
			c.DNSNames = []string{testInstDNS}
		}, want: policy.ErrSANNotAllowed, msg: `DNS SAN "api.sports.k8s.mesh.example" is missing`},
		{name: "missing instance DNS SAN is refused", csr: func(c *x509.CertificateRequest) {
			c.DNSNames = []string{testSvcDNS}
		}, want: policy.ErrSANNotAllowed, msg: `DNS SAN "pod-1.ns.cluster-a.instanceid.athenz.k8s.mesh.example" is missing`},
		{name: "instance DNS SAN for another instance is refused", csr: func(c *x509.CertificateRequest) {
			c.DNSNames[1] = "pod-2.ns.cluster-a.instanceid.athenz.k8s.mesh.example"
		}, want: policy.ErrSANNotAllowed, msg: "neither the service name"},
		{name: "repeated DNS SAN is refused", csr: func(c *x509.CertificateRequest) {
			c.DNSNames = append(c.DNSNames, testSvcDNS)
		}, want: policy.ErrSANNotAllowed, msg: "appears 2 times"},
		{name: "missing URI SAN is refused", csr: func(c *x509.CertificateRequest) {
			c.URIs = nil
		}, want: policy.ErrSANNotAllowed, msg: `URI SAN "spiffe://mesh.example/ns/sports/sa/api" is missing`},
		{name: "URI SAN in another trust domain is refused", csr: func(c *x509.CertificateRequest) {
			c.URIs = []*url.URL{mustURL("spiffe://other.example/ns/sports/sa/api")}
		}, want: policy.ErrSANNotAllowed, msg: `URI SAN "spiffe://other.example/ns/sports/sa/api" is not`},
		{name: "extra URI SAN is refused", csr: func(c *x509.CertificateRequest) {
			c.URIs = append(c.URIs, mustURL("https://sports.example/api"))
		}, want: policy.ErrSANNotAllowed, msg: `URI SAN "https://sports.example/api"`},
		{name: "email SAN is refused", csr: func(c *x509.CertificateRequest) {
			c.EmailAddresses = []string{"api@sports.example"}
		}, want: policy.ErrSANNotAllowed, msg: `email SAN "api@sports.example" is not allowed`},
		{name: "IP SAN is refused", csr: func(c *x509.CertificateRequest) {
			c.IPAddresses = []net.IP{net.ParseIP("10.0.0.1")}
		}, want: policy.ErrSANNotAllowed, msg: "IP SAN 10.0.0.1 is not allowed"},
		{name: "otherName SAN is refused", csr: func(c *x509.CertificateRequest) {
			c.DNSNames, c.URIs = nil, nil
			c.ExtraExtensions = []pkix.Extension{sanWith(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: []byte{0x06, 0x01, 0x2a, 0xa0, 0x03, 0x0c, 0x01, 0x61}})}
		}, want: policy.ErrSANNotAllowed, msg: "otherName SAN (tag 0) is not allowed"},
		{name: "registeredID SAN is refused", csr: func(c *x509.CertificateRequest) {
			c.DNSNames, c.URIs = nil, nil
			c.ExtraExtensions = []pkix.Extension{sanWith(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 8, Bytes: []byte{0x2a, 0x03}})}
		}, want: policy.ErrSANNotAllowed, msg: "registeredID SAN"},
		{name: "otherName SAN from an openssl CSR is refused", raw: func(t testing.TB) []byte {
			return readPEMCSR(t, "testdata/openssl-othername.csr.pem").Raw
		}, want: policy.ErrSANNotAllowed, msg: "otherName SAN"},
		{name: "raw SAN extension with only the three names is accepted", csr: func(c *x509.CertificateRequest) {
			c.DNSNames, c.URIs = nil, nil
			c.ExtraExtensions = []pkix.Extension{sanWith()}
		}},

		// CA extensions are never honored.
		{name: "CSR asking for CA:TRUE is refused", csr: func(c *x509.CertificateRequest) {
			c.ExtraExtensions = []pkix.Extension{ext(asn1.ObjectIdentifier{2, 5, 29, 19}, struct{ IsCA bool }{true})}
		}, want: policy.ErrCAExtensionRequested, msg: "requests a basic constraints extension"},
		{name: "CSR asking for basic constraints CA:FALSE is refused too", csr: func(c *x509.CertificateRequest) {
			c.ExtraExtensions = []pkix.Extension{ext(asn1.ObjectIdentifier{2, 5, 29, 19}, struct{}{})}
		}, want: policy.ErrCAExtensionRequested},
		{name: "CSR asking for name constraints is refused", csr: func(c *x509.CertificateRequest) {
			c.ExtraExtensions = []pkix.Extension{ext(asn1.ObjectIdentifier{2, 5, 29, 30}, struct{}{})}
		}, want: policy.ErrCAExtensionRequested, msg: "name constraints"},
		{name: "requested key usage and codeSigning EKU are ignored, not honored", csr: func(c *x509.CertificateRequest) {
			c.ExtraExtensions = []pkix.Extension{
				ext(asn1.ObjectIdentifier{2, 5, 29, 15}, asn1.BitString{Bytes: []byte{0x06}, BitLength: 7}),
				ext(asn1.ObjectIdentifier{2, 5, 29, 37}, []asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 3}}),
			}
		}, check: func(t *testing.T, tmpl *x509.Certificate, _ policy.WorkloadRequest) {
			if len(tmpl.ExtKeyUsage) != 1 || tmpl.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || tmpl.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("EKU %v KU %b, want clientAuth and digitalSignature only", tmpl.ExtKeyUsage, tmpl.KeyUsage)
			}
		}},

		// Purposes.
		{name: "no purposes gives clientAuth only", check: func(t *testing.T, tmpl *x509.Certificate, _ policy.WorkloadRequest) {
			if len(tmpl.ExtKeyUsage) != 1 || tmpl.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
				t.Errorf("EKU %v, want [clientAuth]", tmpl.ExtKeyUsage)
			}
		}},
		{name: "server_auth asked and allowed gives both", req: func(r *policy.WorkloadRequest) {
			r.Purposes = []policy.Purpose{policy.ClientAuth, policy.ServerAuth, policy.ServerAuth}
			r.ServerAuthAllowed = true
		}, check: func(t *testing.T, tmpl *x509.Certificate, _ policy.WorkloadRequest) {
			if len(tmpl.ExtKeyUsage) != 2 || tmpl.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || tmpl.ExtKeyUsage[1] != x509.ExtKeyUsageServerAuth {
				t.Errorf("EKU %v, want [clientAuth serverAuth]", tmpl.ExtKeyUsage)
			}
		}},
		{name: "server_auth asked but not allowed is refused", req: func(r *policy.WorkloadRequest) {
			r.Purposes = []policy.Purpose{policy.ServerAuth}
		}, want: policy.ErrPurposeNotAllowed, msg: `request.purposes: "server_auth" is not allowed for this identity`},
		{name: "unknown purpose is refused", req: func(r *policy.WorkloadRequest) {
			r.Purposes = []policy.Purpose{"code_signing"}
		}, want: policy.ErrPurposeNotAllowed, msg: `"code_signing" is not a purpose`},

		// Lifetime.
		{name: "no TTL gives 24 hours backdated by one minute", check: func(t *testing.T, tmpl *x509.Certificate, _ policy.WorkloadRequest) {
			if !tmpl.NotBefore.Equal(t0.Add(-time.Minute)) || !tmpl.NotAfter.Equal(t0.Add(24*time.Hour)) {
				t.Errorf("validity [%s, %s], want [t0-1m, t0+24h]", tmpl.NotBefore, tmpl.NotAfter)
			}
		}},
		{name: "TTL of 30 days is accepted", req: func(r *policy.WorkloadRequest) { r.TTL = 30 * 24 * time.Hour },
			check: func(t *testing.T, tmpl *x509.Certificate, _ policy.WorkloadRequest) {
				if !tmpl.NotAfter.Equal(t0.Add(30 * 24 * time.Hour)) {
					t.Errorf("NotAfter %s, want t0+30d", tmpl.NotAfter)
				}
			}},
		{name: "TTL over 30 days is refused", req: func(r *policy.WorkloadRequest) { r.TTL = 31 * 24 * time.Hour },
			want: policy.ErrLifetime, msg: "request.ttl: 744h0m0s exceeds the maximum 720h0m0s"},
		{name: "negative TTL is refused", req: func(r *policy.WorkloadRequest) { r.TTL = -time.Hour },
			want: policy.ErrLifetime, msg: "is negative"},
		{name: "lifetime is clamped to the issuer's remaining life", req: func(r *policy.WorkloadRequest) { r.TTL = 10 * 24 * time.Hour },
			issuer: func(t testing.TB) *x509.Certificate { return issuerValid(t, t0.Add(-time.Hour), t0.Add(3*time.Hour)) },
			check: func(t *testing.T, tmpl *x509.Certificate, _ policy.WorkloadRequest) {
				if !tmpl.NotAfter.Equal(t0.Add(3 * time.Hour)) {
					t.Errorf("NotAfter %s, want the issuer's t0+3h", tmpl.NotAfter)
				}
			}},
		{name: "NotBefore is not backdated before the issuer's NotBefore",
			issuer: func(t testing.TB) *x509.Certificate {
				return issuerValid(t, t0.Add(-20*time.Second), t0.Add(time.Hour))
			},
			check: func(t *testing.T, tmpl *x509.Certificate, _ policy.WorkloadRequest) {
				if !tmpl.NotBefore.Equal(t0.Add(-20 * time.Second)) {
					t.Errorf("NotBefore %s, want the issuer's t0-20s", tmpl.NotBefore)
				}
			}},
		{name: "expired issuer is refused",
			issuer: func(t testing.TB) *x509.Certificate { return issuerValid(t, t0.Add(-48*time.Hour), t0.Add(-time.Hour)) },
			want:   policy.ErrIssuerNotValid, msg: "issuer: expired at 2026-03-01T11:00:00Z"},
		{name: "issuer not yet valid is refused",
			issuer: func(t testing.TB) *x509.Certificate { return issuerValid(t, t0.Add(time.Hour), t0.Add(48*time.Hour)) },
			want:   policy.ErrIssuerNotValid, msg: "issuer: not valid before"},
		{name: "sub-second request time is truncated to whole seconds", req: func(r *policy.WorkloadRequest) { r.Now = t0.Add(900 * time.Millisecond) },
			check: func(t *testing.T, tmpl *x509.Certificate, _ policy.WorkloadRequest) {
				if !tmpl.NotAfter.Equal(t0.Add(24 * time.Hour)) {
					t.Errorf("NotAfter %s, want t0+24h", tmpl.NotAfter)
				}
			}},
		{name: "missing request time is refused", req: func(r *policy.WorkloadRequest) { r.Now = time.Time{} },
			want: policy.ErrInvalidRequest, msg: "request.now: missing"},

		// Serial from the caller.
		{name: "serial of 1 is accepted", req: func(r *policy.WorkloadRequest) { r.Serial = big.NewInt(1) }},
		{name: "serial of 159 bits (20 octets) is accepted", req: func(r *policy.WorkloadRequest) { r.Serial = serialBits(159) }},
		{name: "serial of 160 bits (21 octets) is refused", req: func(r *policy.WorkloadRequest) { r.Serial = serialBits(160) },
			want: policy.ErrSerial, msg: "serial: 160 bits is longer than 20 octets"},
		{name: "zero serial is refused", req: func(r *policy.WorkloadRequest) { r.Serial = big.NewInt(0) },
			want: policy.ErrSerial, msg: "serial: 0 is not positive"},
		{name: "negative serial is refused", req: func(r *policy.WorkloadRequest) { r.Serial = big.NewInt(-5) },
			want: policy.ErrSerial, msg: "is not positive"},
		{name: "missing serial is refused", req: func(r *policy.WorkloadRequest) { r.Serial = nil },
			want: policy.ErrSerial, msg: "serial: missing"},

		// Request syntax.
		{name: "domain with an upper-case letter is refused", req: func(r *policy.WorkloadRequest) { r.Domain = "Sports" },
			want: policy.ErrInvalidRequest, msg: `request.domain: "Sports" is not a sequence of DNS labels`},
		{name: "domain with an underscore is refused", req: func(r *policy.WorkloadRequest) { r.Domain = "my_domain" },
			want: policy.ErrInvalidRequest, msg: "request.domain"},
		{name: "domain with an empty label is refused", req: func(r *policy.WorkloadRequest) { r.Domain = "sports..web" },
			want: policy.ErrInvalidRequest, msg: "empty label"},
		{name: "domain whose dashed form exceeds one DNS label is refused", req: func(r *policy.WorkloadRequest) {
			r.Domain = strings.Repeat("abcdefgh.", 7) + "x"
		}, want: policy.ErrInvalidRequest, msg: "service DNS name"},
		{name: "service with a dot is refused", req: func(r *policy.WorkloadRequest) { r.Service = "api.v2" },
			want: policy.ErrInvalidRequest, msg: `request.service: "api.v2" is not a single DNS label`},
		{name: "service starting with a hyphen is refused", req: func(r *policy.WorkloadRequest) { r.Service = "-api" },
			want: policy.ErrInvalidRequest, msg: "starts or ends with '-'"},
		{name: "instance id with an underscore is refused", req: func(r *policy.WorkloadRequest) { r.InstanceID = "pod_1" },
			want: policy.ErrInvalidRequest, msg: "request.instance_id"},
		{name: "empty instance id is refused", req: func(r *policy.WorkloadRequest) { r.InstanceID = "" },
			want: policy.ErrInvalidRequest, msg: "request.instance_id"},
		{name: "provider suffix of one label is refused", req: func(r *policy.WorkloadRequest) { r.ProviderDNSSuffix = "local" },
			want: policy.ErrInvalidRequest, msg: "request.provider_dns_suffix"},
		{name: "trust domain given as a spiffe URI is refused", req: func(r *policy.WorkloadRequest) { r.TrustDomain = "spiffe://mesh.example" },
			want: policy.ErrInvalidRequest, msg: "must be a bare trust domain name"},
		{name: "trust domain with illegal characters is refused", req: func(r *policy.WorkloadRequest) { r.TrustDomain = "Mesh Example" },
			want: policy.ErrInvalidRequest, msg: "request.trust_domain"},
		{name: "missing CSR is refused", raw: func(testing.TB) []byte { return nil },
			want: policy.ErrInvalidRequest, msg: "csr: missing"},
		{name: "missing issuer is refused", issuer: func(testing.TB) *x509.Certificate { return nil },
			want: policy.ErrInvalidRequest, msg: "issuer: missing"},
	}

	p := mustPolicy(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := goodRequest()
			if tc.req != nil {
				tc.req(&req)
			}
			issuer := testIssuer(t)
			if tc.issuer != nil {
				issuer = tc.issuer(t)
			}
			var csr *x509.CertificateRequest
			if tc.raw != nil {
				if der := tc.raw(t); der != nil {
					csr = parseCSR(t, der)
				}
			} else {
				tmpl := goodCSRTemplate()
				if tc.csr != nil {
					tc.csr(tmpl)
				}
				kind := tc.key
				if kind == "" {
					kind = "p256"
				}
				csr = makeCSR(t, tmpl, testKey(t, kind))
			}

			tmpl, err := p.CheckWorkload(csr, req, issuer)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				workloadInvariants(t, tmpl, csr, req, issuer, p.Config())
				if tc.check != nil {
					tc.check(t, tmpl, req)
				}
				return
			}
			if tmpl != nil {
				t.Errorf("refusal returned a template")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			var vs policy.Violations
			if !errors.As(err, &vs) || len(vs) == 0 {
				t.Fatalf("error %T is not Violations", err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not say %q", err, tc.msg)
			}
		})
	}
}

func TestCheckWorkloadReportsEveryViolationAtOnce(t *testing.T) {
	tmpl := goodCSRTemplate()
	tmpl.Subject.CommonName = "sports.web"
	tmpl.DNSNames = append(tmpl.DNSNames, "x.evil.com")
	req := goodRequest()
	req.Purposes = []policy.Purpose{policy.ServerAuth}
	req.Serial = big.NewInt(0)
	_, err := mustPolicy(t).CheckWorkload(makeCSR(t, tmpl, testKey(t, "rsa1024")), req, testIssuer(t))
	var vs policy.Violations
	if !errors.As(err, &vs) {
		t.Fatalf("error %v is not Violations", err)
	}
	for _, want := range []error{policy.ErrSubjectMismatch, policy.ErrSANNotAllowed, policy.ErrPurposeNotAllowed, policy.ErrSerial, policy.ErrKeyNotAllowed} {
		if !vs.Has(want) || !errors.Is(err, want) {
			t.Errorf("violations %q lack %v", vs, want)
		}
	}
	if len(vs) != 5 {
		t.Errorf("%d violations, want 5: %v", len(vs), vs)
	}
	if vs.Has(policy.ErrLifetime) {
		t.Errorf("violations %q include a lifetime refusal nobody asked for", vs)
	}
}

// A CSR that requests an extension twice could hide a second SAN list behind the first; the
// parser every caller goes through refuses it, so the policy never sees one.
func TestCSRRequestingAnExtensionTwiceDoesNotParse(t *testing.T) {
	tmpl := goodCSRTemplate()
	ku := ext(asn1.ObjectIdentifier{2, 5, 29, 15}, asn1.BitString{Bytes: []byte{0x80}, BitLength: 1})
	tmpl.ExtraExtensions = []pkix.Extension{ku, ku}
	if _, err := x509.ParseCertificateRequest(makeCSRDER(t, tmpl, testKey(t, "p256"))); err == nil {
		t.Fatal("a CSR requesting key usage twice parsed")
	}
}

func TestWorkloadNames(t *testing.T) {
	req := goodRequest()
	req.Domain = "sys.auth.k8s"
	n, err := req.Names()
	if err != nil {
		t.Fatal(err)
	}
	want := policy.WorkloadNames{
		CommonName:  "sys.auth.k8s.api",
		ServiceDNS:  "api.sys-auth-k8s.k8s.mesh.example",
		InstanceDNS: "pod-1.ns.cluster-a.instanceid.athenz.k8s.mesh.example",
	}
	if n.CommonName != want.CommonName || n.ServiceDNS != want.ServiceDNS || n.InstanceDNS != want.InstanceDNS {
		t.Errorf("names %+v, want %+v", n, want)
	}
	if got := n.SPIFFEID.String(); got != "spiffe://mesh.example/ns/sys.auth.k8s/sa/api" {
		t.Errorf("SPIFFE ID %s", got)
	}
	req.Service = ""
	if _, err := req.Names(); !errors.Is(err, policy.ErrInvalidRequest) || !strings.Contains(err.Error(), "request.service") {
		t.Errorf("empty service: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		edit func(*policy.Config)
		ok   bool
	}{
		{"default config is valid", func(*policy.Config) {}, true},
		{"max TTL of 30 days is valid", func(c *policy.Config) { c.MaxTTL = 30 * 24 * time.Hour }, true},
		{"max TTL over 30 days is refused", func(c *policy.Config) { c.MaxTTL = 31 * 24 * time.Hour }, false},
		{"zero default TTL is refused", func(c *policy.Config) { c.DefaultTTL = 0 }, false},
		{"default TTL over max TTL is refused", func(c *policy.Config) { c.MaxTTL = time.Hour }, false},
		{"negative backdate is refused", func(c *policy.Config) { c.Backdate = -time.Second }, false},
		{"backdate over an hour is refused", func(c *policy.Config) { c.Backdate = 2 * time.Hour }, false},
		{"zero backdate is valid", func(c *policy.Config) { c.Backdate = 0 }, true},
		{"zero spec default lifetime is refused", func(c *policy.Config) { c.SpecDefaultLifetime = 0 }, false},
		{"spec max below spec default is refused", func(c *policy.Config) { c.SpecMaxLifetime = policy.Day }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := policy.DefaultConfig()
			tc.edit(&cfg)
			_, err := policy.New(cfg)
			if tc.ok && err != nil {
				t.Errorf("refused: %v", err)
			}
			if !tc.ok && !errors.Is(err, policy.ErrInvalidConfig) {
				t.Errorf("error %v, want ErrInvalidConfig", err)
			}
		})
	}
}
