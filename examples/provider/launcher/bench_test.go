package launcher

import (
	"context"
	"testing"
	"time"
)

// BenchmarkVerify is the provider's per-request work: parse and verify one ES256 document.
func BenchmarkVerify(b *testing.B) {
	key, err := GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	iss, err := NewIssuer(testProvider, testTD, key)
	if err != nil {
		b.Fatal(err)
	}
	doc, err := iss.Issue(instance, t0, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	v, err := NewVerifier(testProvider, testTD, &key.PublicKey)
	if err != nil {
		b.Fatal(err)
	}
	raw := []byte(doc)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(raw, instance, t0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkConfirmOverMutualTLS is one confirm call as a CA node makes it: confirm.Client
// over a pooled mutual TLS connection to the provider on 127.0.0.1.
func BenchmarkConfirmOverMutualTLS(b *testing.B) {
	f, issue := startConfirm(b, 0)
	client := f.client(b, f.node)
	req := request(instance, issue(instance, t0, time.Hour))
	b.ReportAllocs()
	for b.Loop() {
		resp, err := client.Confirm(context.Background(), f.url, f.provider, req)
		if err != nil || !resp.Allowed {
			b.Fatal(resp, err)
		}
	}
}
