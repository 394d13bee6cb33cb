package controlplane

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/meshca/meshca/ca/policy"
)

// FuzzDecodeExtendBody: the extend API's body decoder never panics; what it accepts is the
// one string field, which encodes back to a body it decodes to the same value; what it
// refuses is an InvalidArgument refusal naming a field or the body. The seed corpus is in
// testdata/fuzz/FuzzDecodeExtendBody.
func FuzzDecodeExtendBody(f *testing.F) {
	f.Add([]byte(`{"clientCertCsr": "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"}`), false)
	f.Add([]byte(`{"clientCert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}`), true)
	for _, seed := range []string{``, `{`, `[]`, `null`, `{"clientCertCsr": null}`, `{"clientCertCsr": "a", "clientCertCsr": "b"}`, `{"clientCertCsr": "a"} x`} {
		f.Add([]byte(seed), false)
	}
	f.Fuzz(func(t *testing.T, data []byte, verify bool) {
		field := FieldClientCertCSR
		if verify {
			field = FieldClientCert
		}
		v, err := decodeExtendBody(data, field)
		if err != nil {
			if !errors.Is(err, policy.ErrInvalidRequest) {
				t.Fatalf("refusal %v does not wrap policy.ErrInvalidRequest", err)
			}
			name, _, found := strings.Cut(err.Error(), ": ")
			if !found || name == "" {
				t.Fatalf("refusal %q names no field", err)
			}
			return
		}
		if v == "" {
			t.Fatal("accepted an empty value")
		}
		again, err := json.Marshal(map[string]string{field: v})
		if err != nil {
			t.Fatal(err)
		}
		v2, err := decodeExtendBody(again, field)
		if err != nil || v2 != v {
			t.Fatalf("re-encoded body %s decodes to %q, %v; want %q", again, v2, err, v)
		}
	})
}

// The decoder's rules, one case each.
func TestDecodeExtendBody(t *testing.T) {
	tests := []struct {
		name, body, want, err string
	}{
		{name: "one string field is the value", body: `{"clientCertCsr": "pem"}`, want: "pem"},
		{name: "whitespace around the object is allowed", body: " \n{\"clientCertCsr\":\"pem\"}\n", want: "pem"},
		{name: "escapes are decoded", body: `{"clientCertCsr": "a\nb\u0041"}`, want: "a\nbA"},
		{name: "an empty body is refused", body: ``, err: "body: not JSON (empty or truncated)"},
		{name: "null is not an object", body: `null`, err: "body: a JSON null, not an object"},
		{name: "a string is not an object", body: `"pem"`, err: "body: a JSON string, not an object"},
		{name: "an unknown key is named", body: `{"clientCert": "pem"}`, err: `"clientCert": unknown field: the body has only "clientCertCsr"`},
		{name: "a long unknown key is clipped", body: `{"` + strings.Repeat("k", 100) + `": 1}`, err: `"` + strings.Repeat("k", maxFieldNameInError) + `…": unknown field`},
		{name: "a duplicated key is refused", body: `{"clientCertCsr": "a", "clientCertCsr": "a"}`, err: "clientCertCsr: appears twice"},
		{name: "null is not a string", body: `{"clientCertCsr": null}`, err: "clientCertCsr: want a string, got a JSON null"},
		{name: "an object is not a string", body: `{"clientCertCsr": {"pem": "x"}}`, err: "clientCertCsr: want a string, got a JSON object"},
		{name: "true is not a string", body: `{"clientCertCsr": true}`, err: "clientCertCsr: want a string, got a JSON boolean"},
		{name: "an empty value is missing", body: `{"clientCertCsr": ""}`, err: "clientCertCsr: required"},
		{name: "a missing key is required", body: `{}`, err: "clientCertCsr: required"},
		{name: "a second object is trailing data", body: `{"clientCertCsr": "a"}{}`, err: "body: trailing data after the JSON object"},
		{name: "a syntax error names its offset", body: `{"clientCertCsr" "a"}`, err: "clientCertCsr: invalid JSON: syntax error at byte"},
		{name: "a truncated object is refused", body: `{"clientCertCsr": "a"`, err: "body: invalid JSON: empty or truncated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeExtendBody([]byte(tc.body), FieldClientCertCSR)
			if tc.err == "" {
				if err != nil || got != tc.want {
					t.Fatalf("decoded %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, policy.ErrInvalidRequest) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}
