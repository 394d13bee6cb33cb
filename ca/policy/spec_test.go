package policy_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/policy"
)

// exampleTLSJSON is the tls.json of the GitOps workflow we follow.
const exampleTLSJSON = `[
  {
    "common_name": "server.example.com",
    "purposes": ["server_auth"],
    "sans": ["server.example.com", "server2.example.com"],
    "lifetime": 365,
    "csr_file": "server-cert-request.csr"
  },
  {
    "common_name": "partner client",
    "organization": "Partner Ltd",
    "country": "GB",
    "force_issue": true
  }
]`

func TestDecodeSpecFile(t *testing.T) {
	specs, err := policy.DecodeSpecFile([]byte(exampleTLSJSON))
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 2 {
		t.Fatalf("%d specs, want 2", len(specs))
	}
	s := specs[0]
	if s.CommonName != "server.example.com" || s.Lifetime != 365 || s.CSRFile != "server-cert-request.csr" ||
		!slices.Equal(s.Purposes, []policy.Purpose{policy.ServerAuth}) || !slices.Equal(s.SANs, []string{"server.example.com", "server2.example.com"}) {
		t.Errorf("spec 0 = %+v", s)
	}
	if !specs[1].ForceIssue || specs[1].Organization != "Partner Ltd" || specs[1].Country != "GB" {
		t.Errorf("spec 1 = %+v", specs[1])
	}
}

func TestDecodeSpecIsStrict(t *testing.T) {
	cases := []struct {
		name string
		json string
		msg  string // "" means accepted
	}{
		{"a spec with every field decodes", `{"common_name":"a.example.com","purposes":["client_auth","server_auth"],"sans":["a.example.com"],"lifetime":30,"organization":"O","organizational_unit":"OU","locality":"L","state":"ST","country":"US","csr_file":"a.csr","force_issue":false}`, ""},
		{"unknown field is refused by name", `{"common_name":"a","lifetme":30}`, `spec: invalid certificate spec: unknown field "lifetme"`},
		{"field spelled in another case is refused", `{"Common_Name":"a"}`, `unknown field "Common_Name"`},
		{"repeated key is refused", `{"common_name":"a","lifetime":1,"lifetime":365}`, "spec.lifetime: invalid certificate spec: key appears more than once"},
		{"repeated key in a nested object is refused", `{"common_name":"a","sans":[{"x":1,"x":2}]}`, "key appears more than once"},
		{"wrong type names the field", `{"common_name":"a","lifetime":"365"}`, "spec.lifetime: invalid certificate spec: want int"},
		{"force_issue written as a string is refused", `{"common_name":"a","force_issue":"True"}`, "spec.force_issue"},
		{"trailing data is refused", `{"common_name":"a"} {"common_name":"b"}`, "trailing data"},
		{"empty document is refused", ``, "empty document"},
		{"array instead of object is refused", `[{"common_name":"a"}]`, "want a JSON object"},
		{"invalid JSON is refused", `{"common_name":}`, "invalid JSON"},
		{"missing common_name is refused", `{"sans":["a.example.com"]}`, "spec.common_name: is required"},
		{"common_name over 64 characters is refused", `{"common_name":"` + strings.Repeat("a", 65) + `"}`, "spec.common_name: is 65 characters, at most 64"},
		{"unknown purpose is refused", `{"common_name":"a","purposes":["code_signing"]}`, `spec.purposes: "code_signing" is not a purpose`},
		{"negative lifetime is refused", `{"common_name":"a","lifetime":-1}`, "spec.lifetime: -1 days is negative"},
		{"lower-case country is refused", `{"common_name":"a","country":"gb"}`, `spec.country: "gb" is not a two-letter`},
		{"three-letter country is refused", `{"common_name":"a","country":"GBR"}`, "spec.country"},
		{"control character in organization is refused", `{"common_name":"a","organization":"O\u0000"}`, "spec.organization"},
		{"csr_file with a path is refused", `{"common_name":"a","csr_file":"../../etc/passwd"}`, "spec.csr_file"},
		{"more than 100 SANs is refused", `{"common_name":"a","sans":[` + strings.TrimSuffix(strings.Repeat(`"a.example.com",`, 101), ",") + `]}`, "spec.sans: 101 names, at most 100"},
		{"deep nesting is refused", `{"common_name":"a","sans":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`, "nested deeper than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := policy.DecodeSpec([]byte(tc.json))
			if tc.msg == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want %q", tc.msg)
			}
			if !errors.Is(err, policy.ErrInvalidSpec) && !errors.Is(err, policy.ErrPurposeNotAllowed) && !errors.Is(err, policy.ErrLifetime) {
				t.Errorf("error %v wraps no spec sentinel", err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not say %q", err, tc.msg)
			}
		})
	}
}

func TestDecodeSpecFileNamesTheEntry(t *testing.T) {
	_, err := policy.DecodeSpecFile([]byte(`[{"common_name":"a"},{"common_name":"b","lifetime":"x"}]`))
	if err == nil || !strings.Contains(err.Error(), "tls.json[1].lifetime") {
		t.Errorf("error %v, want it to name tls.json[1].lifetime", err)
	}
	_, err = policy.DecodeSpecFile([]byte(`{"common_name":"a"}`))
	if !errors.Is(err, policy.ErrInvalidSpec) || !strings.Contains(err.Error(), "tls.json") {
		t.Errorf("object instead of array: %v", err)
	}
}

func TestSpecDNSNames(t *testing.T) {
	cases := []struct {
		name    string
		spec    policy.Spec
		kept    []string
		dropped []string
	}{
		{"SANs take precedence over the CN", policy.Spec{CommonName: "cn.example.com", SANs: []string{"a.example.com", "b.example.com"}},
			[]string{"a.example.com", "b.example.com"}, nil},
		{"invalid SANs are dropped and reported", policy.Spec{CommonName: "cn.example.com", SANs: []string{"ok.example.com", "bad_name.example.com", "*.example.com", "10.0.0.1", "localhost", "-x.example.com", "x..example.com"}},
			[]string{"ok.example.com"}, []string{"bad_name.example.com", "*.example.com", "10.0.0.1", "localhost", "-x.example.com", "x..example.com"}},
		{"upper-case SANs are kept lower-cased and duplicates once", policy.Spec{CommonName: "cn", SANs: []string{"A.Example.COM", "a.example.com", "b.example.com."}},
			[]string{"a.example.com", "b.example.com"}, []string{"a.example.com"}},
		{"with no SANs the CN is used when it is a valid domain", policy.Spec{CommonName: "server.example.com"},
			[]string{"server.example.com"}, nil},
		{"with only invalid SANs the CN is used when it is a valid domain", policy.Spec{CommonName: "server.example.com", SANs: []string{"not a name"}},
			[]string{"server.example.com"}, []string{"not a name"}},
		{"with no SANs a CN that is not a domain gives no DNS names", policy.Spec{CommonName: "partner client"},
			nil, nil},
		{"a single-label CN is not a domain", policy.Spec{CommonName: "server"},
			nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kept, dropped := tc.spec.DNSNames()
			if !slices.Equal(kept, tc.kept) {
				t.Errorf("kept %q, want %q", kept, tc.kept)
			}
			var names []string
			for _, d := range dropped {
				names = append(names, d.Name)
				if d.Reason == "" {
					t.Errorf("dropped %q without a reason", d.Name)
				}
			}
			if !slices.Equal(names, tc.dropped) {
				t.Errorf("dropped %q, want %q", names, tc.dropped)
			}
		})
	}
}

func TestCheckSpec(t *testing.T) {
	cases := []struct {
		name  string
		spec  policy.Spec
		key   string
		csr   func(*x509.CertificateRequest)
		edit  func(*policy.SpecRequest)
		want  error
		msg   string
		check func(t *testing.T, d *policy.SpecDecision)
	}{
		{name: "no purposes gives client_auth only", spec: policy.Spec{CommonName: "partner client"}, check: func(t *testing.T, d *policy.SpecDecision) {
			if !slices.Equal(d.Template.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
				t.Errorf("EKU %v", d.Template.ExtKeyUsage)
			}
			if len(d.Template.DNSNames) != 0 {
				t.Errorf("DNS names %q for a CN that is not a domain", d.Template.DNSNames)
			}
		}},
		{name: "server_auth only gives serverAuth only", spec: policy.Spec{CommonName: "server.example.com", Purposes: []policy.Purpose{policy.ServerAuth}}, check: func(t *testing.T, d *policy.SpecDecision) {
			if !slices.Equal(d.Template.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
				t.Errorf("EKU %v", d.Template.ExtKeyUsage)
			}
		}},
		{name: "both purposes give both", spec: policy.Spec{CommonName: "server.example.com", Purposes: []policy.Purpose{policy.ClientAuth, policy.ServerAuth}}, check: func(t *testing.T, d *policy.SpecDecision) {
			if !slices.Equal(d.Template.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}) {
				t.Errorf("EKU %v", d.Template.ExtKeyUsage)
			}
		}},
		{name: "server_auth without any valid DNS name is refused", spec: policy.Spec{CommonName: "partner server", Purposes: []policy.Purpose{policy.ServerAuth}, SANs: []string{"bad_name"}},
			want: policy.ErrSANNotAllowed, msg: "spec.sans: server_auth needs at least one valid DNS name"},
		{name: "SANs win over the CN and dropped SANs are reported", spec: policy.Spec{CommonName: "cn.example.com", SANs: []string{"a.example.com", "bad_name.example.com"}}, check: func(t *testing.T, d *policy.SpecDecision) {
			if !slices.Equal(d.Template.DNSNames, []string{"a.example.com"}) {
				t.Errorf("DNS names %q", d.Template.DNSNames)
			}
			if len(d.Dropped) != 1 || d.Dropped[0].Name != "bad_name.example.com" || !strings.Contains(d.Dropped[0].String(), "bad_name.example.com") {
				t.Errorf("dropped %v", d.Dropped)
			}
		}},
		{name: "CSR SANs are ignored", spec: policy.Spec{CommonName: "cn.example.com"}, csr: func(c *x509.CertificateRequest) {
			c.DNSNames = []string{"evil.example.com"}
			c.EmailAddresses = []string{"x@evil.example.com"}
		}, check: func(t *testing.T, d *policy.SpecDecision) {
			if !slices.Equal(d.Template.DNSNames, []string{"cn.example.com"}) || len(d.Template.EmailAddresses)+len(d.Template.URIs) != 0 {
				t.Errorf("SANs %q %q %v", d.Template.DNSNames, d.Template.EmailAddresses, d.Template.URIs)
			}
		}},
		{name: "lifetime in days sets NotAfter", spec: policy.Spec{CommonName: "a", Lifetime: 365}, check: func(t *testing.T, d *policy.SpecDecision) {
			if !d.Template.NotAfter.Equal(t0.Add(365 * 24 * time.Hour)) {
				t.Errorf("NotAfter %s", d.Template.NotAfter)
			}
		}},
		{name: "no lifetime gives the 30-day default", spec: policy.Spec{CommonName: "a"}, check: func(t *testing.T, d *policy.SpecDecision) {
			if !d.Template.NotAfter.Equal(t0.Add(30 * 24 * time.Hour)) {
				t.Errorf("NotAfter %s", d.Template.NotAfter)
			}
		}},
		{name: "lifetime over the maximum is refused", spec: policy.Spec{CommonName: "a", Lifetime: 366},
			want: policy.ErrLifetime, msg: "spec.lifetime: 366 days exceeds the maximum 365 days"},
		{name: "huge lifetime is refused without overflowing", spec: policy.Spec{CommonName: "a", Lifetime: 1 << 62},
			want: policy.ErrLifetime, msg: "exceeds the maximum"},
		{name: "subject overrides win over the CSR", spec: policy.Spec{CommonName: "a", Organization: "Spec O", OrganizationalUnit: "Spec OU", Locality: "Spec L", State: "Spec ST", Country: "GB"},
			csr: func(c *x509.CertificateRequest) {
				c.Subject = pkix.Name{CommonName: "csr cn", Organization: []string{"CSR O"}, OrganizationalUnit: []string{"CSR OU"}, Locality: []string{"CSR L"}, Province: []string{"CSR ST"}, Country: []string{"US"}}
			}, check: func(t *testing.T, d *policy.SpecDecision) {
				s := d.Template.Subject
				if s.CommonName != "a" || !slices.Equal(s.Organization, []string{"Spec O"}) || !slices.Equal(s.OrganizationalUnit, []string{"Spec OU"}) ||
					!slices.Equal(s.Locality, []string{"Spec L"}) || !slices.Equal(s.Province, []string{"Spec ST"}) || !slices.Equal(s.Country, []string{"GB"}) {
					t.Errorf("subject %+v", s)
				}
			}},
		{name: "CSR subject is kept where the spec has no override", spec: policy.Spec{CommonName: "a", Locality: "Spec L"},
			csr: func(c *x509.CertificateRequest) {
				c.Subject = pkix.Name{CommonName: "csr cn", Organization: []string{"CSR O"}, Locality: []string{"CSR L"}, StreetAddress: []string{"1 Main St"}}
			}, check: func(t *testing.T, d *policy.SpecDecision) {
				s := d.Template.Subject
				if s.CommonName != "a" || !slices.Equal(s.Organization, []string{"CSR O"}) || !slices.Equal(s.Locality, []string{"Spec L"}) || len(s.StreetAddress) != 0 {
					t.Errorf("subject %+v", s)
				}
			}},
		{name: "CSR whose signature does not verify is refused", spec: policy.Spec{CommonName: "a"}, key: "tampered",
			want: policy.ErrCSRSignature},
		{name: "RSA-1024 key is refused", spec: policy.Spec{CommonName: "a"}, key: "rsa1024", want: policy.ErrKeyNotAllowed},
		{name: "CSR asking for CA:TRUE is refused", spec: policy.Spec{CommonName: "a"}, csr: func(c *x509.CertificateRequest) {
			c.ExtraExtensions = []pkix.Extension{ext([]int{2, 5, 29, 19}, struct{ IsCA bool }{true})}
		}, want: policy.ErrCAExtensionRequested},
		{name: "invalid spec is refused", spec: policy.Spec{}, want: policy.ErrInvalidSpec, msg: "spec.common_name: is required"},
		{name: "missing serial is refused", spec: policy.Spec{CommonName: "a"}, edit: func(r *policy.SpecRequest) { r.Serial = nil }, want: policy.ErrSerial},
		{name: "missing CSR is refused", spec: policy.Spec{CommonName: "a"}, key: "none", want: policy.ErrInvalidRequest, msg: "csr: missing"},
	}
	p := mustPolicy(t)
	issuer := testIssuer(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "whatever"}}
			if tc.csr != nil {
				tc.csr(tmpl)
			}
			var csr *x509.CertificateRequest
			switch tc.key {
			case "none":
			case "tampered":
				der := makeCSRDER(t, tmpl, testKey(t, "p256"))
				der[len(der)-4] ^= 0x55
				csr = parseCSR(t, der)
			case "":
				csr = makeCSR(t, tmpl, testKey(t, "p256"))
			default:
				csr = makeCSR(t, tmpl, testKey(t, tc.key))
			}
			req := policy.SpecRequest{Spec: tc.spec, Now: t0, Serial: big.NewInt(99)}
			if tc.edit != nil {
				tc.edit(&req)
			}
			d, err := p.CheckSpec(csr, req, issuer)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				tm := d.Template
				if tm.IsCA || !tm.BasicConstraintsValid || tm.SerialNumber.Cmp(big.NewInt(99)) != 0 || !tm.NotBefore.Equal(t0.Add(-time.Minute)) {
					t.Errorf("template IsCA=%v BC=%v serial=%v NotBefore=%s", tm.IsCA, tm.BasicConstraintsValid, tm.SerialNumber, tm.NotBefore)
				}
				if tc.check != nil {
					tc.check(t, d)
				}
				return
			}
			if d != nil {
				t.Errorf("refusal returned a decision")
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
