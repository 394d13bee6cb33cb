package confirm

import (
	"errors"
	"strings"
	"testing"
)

func TestDecodeResponse(t *testing.T) {
	cases := []struct {
		name, in string
		want     *Response
		errPart  string
	}{
		{"allowed with a shorter lifetime", `{"allowed": true, "ttl_seconds": 3600}`, &Response{Allowed: true, TTLSeconds: 3600}, ""},
		{"refusal carries its reason", `{"allowed": false, "reason": "unknown instance"}`, &Response{Reason: "unknown instance"}, ""},
		{"allowed is required", `{"reason": "x"}`, nil, "response.allowed: required"},
		{"null allowed is missing", `{"allowed": null}`, nil, "response.allowed: required"},
		{"unknown key is named", `{"allowed": true, "admin": true}`, nil, `unknown field "admin"`},
		{"duplicated key is refused", `{"allowed": false, "allowed": true}`, nil, "response.allowed: key appears twice"},
		{"wrong type names the key", `{"allowed": "yes"}`, nil, "response.allowed: want bool"},
		{"negative lifetime is refused", `{"allowed": true, "ttl_seconds": -5}`, nil, "response.ttl_seconds: -5 is negative"},
		{"trailing data is refused", `{"allowed": true} {"allowed": false}`, nil, "trailing data"},
		{"an array is not an answer", `[true]`, nil, "want a JSON object"},
		{"empty body is refused", ``, nil, "empty or truncated"},
		{"truncated body is refused", `{"allowed": tr`, nil, "response"},
		{"overlong reason is refused", `{"allowed": false, "reason": "` + strings.Repeat("x", MaxReasonLen+1) + `"}`, nil, "response.reason: 1025 bytes"},
		{"oversized body is refused", `{"allowed": true, "reason": "` + strings.Repeat(" ", MaxResponseBytes) + `"}`, nil, "more than 65536"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeResponse([]byte(tc.in))
			if tc.errPart != "" {
				if err == nil || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.errPart) {
					t.Fatalf("err = %v, want ErrMalformed naming %q", err, tc.errPart)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *got != *tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestDecodeRequest(t *testing.T) {
	valid := `{"operation":"register","provider":"sys.auth.example","domain":"sports","service":"api",` +
		`"instance_id":"i-1","attestation_data":"aGVsbG8=","csr_sans":{"dns":["a"],"uri":["spiffe://td/x"]},` +
		`"client_addr":"127.0.0.1","hostname":"h","ttl_seconds":60}`
	r, err := DecodeRequest([]byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	if string(r.AttestationData) != "hello" || r.SANs.DNS[0] != "a" || r.TTLSeconds != 60 {
		t.Fatalf("decoded %+v", r)
	}
	cases := []struct{ name, from, to, errPart string }{
		{"instance id is required", `"instance_id":"i-1"`, `"instance_id":""`, "request.instance_id: required"},
		{"operation must be known", `"operation":"register"`, `"operation":"delete"`, "request.operation"},
		{"unknown key is refused", `"hostname":"h"`, `"hostname":"h","extra":1`, `unknown field "extra"`},
		{"attestation data is base64", `"aGVsbG8="`, `"not base64!"`, "request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeRequest([]byte(strings.Replace(valid, tc.from, tc.to, 1)))
			if err == nil || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.errPart) {
				t.Fatalf("err = %v, want ErrMalformed naming %q", err, tc.errPart)
			}
		})
	}
}

// FuzzDecodeResponse holds the decoder to its contract on any input: it never panics, and what
// it accepts is a well-formed answer that survives a round trip.
func FuzzDecodeResponse(f *testing.F) {
	f.Add([]byte(`{"allowed": true, "ttl_seconds": 3600}`))
	f.Add([]byte(`{"allowed": false, "reason": "no"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeResponse(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if r.TTLSeconds < 0 || len(r.Reason) > MaxReasonLen {
			t.Fatalf("accepted an answer that breaks a rule: %+v", r)
		}
	})
}
