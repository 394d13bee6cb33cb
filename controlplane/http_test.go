package controlplane

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spiffe/go-spiffe/v2/federation"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// httpsClient trusts the cluster's bundle (the node certificate names 127.0.0.1).
func (ts *testServer) httpsClient() *http.Client {
	return &http.Client{Timeout: waitTimeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ts.bundlePool()}}}
}

func (ts *testServer) get(t *testing.T, path string) (int, []byte) {
	t.Helper()
	resp, err := ts.httpsClient().Get("https://" + ts.s.HTTPAddr() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

func TestHealthAndReadiness(t *testing.T) {
	ts := startServer(t, nil)
	if code, body := ts.get(t, PathHealthz); code != 200 || strings.TrimSpace(string(body)) != "ok" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := ts.get(t, PathReadyz); code != 200 || strings.TrimSpace(string(body)) != "ready" {
		t.Fatalf("/readyz: %d %q", code, body)
	}
}

// TestCRLListsRevocations pins down /crl: a DER CRL signed by the active issuer, listing the
// replicated revocations, rebuilt when they change.
func TestCRLListsRevocations(t *testing.T) {
	f := newIdentityFixture(t, nil)
	crl := func() *x509.RevocationList {
		code, der := f.get(t, PathCRL)
		if code != 200 {
			t.Fatalf("/crl: %d %s", code, der)
		}
		l, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.CheckSignatureFrom(f.iss.Certificate()); err != nil {
			t.Fatalf("CRL signature: %v", err)
		}
		return l
	}
	first := crl()
	if len(first.RevokedCertificateEntries) != 0 {
		t.Fatalf("fresh CA lists %d revocations", len(first.RevokedCertificateEntries))
	}
	w := newWorkload(t, "sports", "api", testSuffix, "pod-crl")
	resp := f.register(t, w)
	f.apply(&meshcav1.Command{Command: &meshcav1.Command_Revoke{Revoke: &meshcav1.RevokeCommand{
		Target: &meshcav1.RevokeCommand_Serial{Serial: resp.GetSerial()},
		Reason: meshcav1.RevocationReason_REVOCATION_REASON_KEY_COMPROMISE,
	}}})
	second := crl()
	if len(second.RevokedCertificateEntries) != 1 || second.RevokedCertificateEntries[0].SerialNumber.Text(16) != resp.GetSerial() ||
		second.RevokedCertificateEntries[0].ReasonCode != 1 {
		t.Fatalf("CRL entries %+v, want serial %s for key compromise", second.RevokedCertificateEntries, resp.GetSerial())
	}
	if second.Number.Cmp(first.Number) <= 0 {
		t.Fatalf("CRL number %s did not grow past %s", second.Number, first.Number)
	}
}

// TestBundleEndpoint fetches the SPIFFE bundle endpoint with go-spiffe's federation client,
// authenticating the endpoint by the node's SPIFFE ID as a federated peer would.
func TestBundleEndpoint(t *testing.T) {
	ts := startServer(t, nil)
	nodeID, _ := NodeSPIFFEID(ts.s.TrustDomain(), "n1")
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	b, err := federation.FetchBundle(ctx, ts.s.TrustDomain(), "https://"+ts.s.HTTPAddr()+PathBundle,
		federation.WithSPIFFEAuth(ts.s.Bundle(), nodeID))
	if err != nil {
		t.Fatal(err)
	}
	if !b.X509Bundle().Equal(ts.s.Bundle()) {
		t.Fatal("bundle endpoint serves other roots than the CA's")
	}
	if hint, ok := b.RefreshHint(); !ok || hint != BundleRefreshHint {
		t.Fatalf("refresh hint %s %v, want %s", hint, ok, BundleRefreshHint)
	}
	if seq, ok := b.SequenceNumber(); !ok || seq == 0 {
		t.Fatalf("sequence number %d %v", seq, ok)
	}
}

// TestHTTPBodyLimit pins down that handlers mounted on the mux read at most
// limits.max_message_bytes.
func TestHTTPBodyLimit(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Limits.MaxMessageBytes = 4096 })
	ts.s.HTTPMux().HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		w.Write(body)
	})
	post := func(n int) int {
		resp, err := ts.httpsClient().Post("https://"+ts.s.HTTPAddr()+"/echo", "text/plain", bytes.NewReader(make([]byte, n)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(4096); code != 200 {
		t.Fatalf("a body at the limit: %d", code)
	}
	if code := post(4097); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("a body over the limit: %d", code)
	}
}

// TestMetrics scrapes /metrics with the Prometheus text parser after issuances and refusals.
func TestMetrics(t *testing.T) {
	f := newIdentityFixture(t, nil)
	ctx := context.Background()
	w := newWorkload(t, "sports", "api", testSuffix, "pod-m1")
	cert := w.tlsCert(t, f.register(t, w))
	w.key = newKey(t)
	if _, err := f.clientWith(cert).Refresh(ctx, &meshcav1.RefreshRequest{Csr: w.csr(t, nil)}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"deny-m1", "deny-m2"} {
		d := newWorkload(t, "sports", "api", testSuffix, id)
		if _, err := f.client().Register(ctx, d.registerReq(t, provMain)); err == nil {
			t.Fatal("provider refusal was not a refusal")
		}
	}
	if _, err := f.client().Register(ctx, newWorkload(t, "sports", "api", testSuffix, "x").registerReq(t, "sys.auth.nope")); err == nil {
		t.Fatal("unknown provider was not refused")
	}

	code, body := f.get(t, PathMetrics)
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	sample := func(name string, labels map[string]string) *dto.Metric {
		t.Helper()
		fam, ok := families[name]
		if !ok {
			t.Fatalf("metric %s not exported", name)
		}
	next:
		for _, m := range fam.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return m
		}
		t.Fatalf("metric %s has no series %v", name, labels)
		return nil
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"meshca_issued_total", map[string]string{"flow": "register"}, 1},
		{"meshca_issued_total", map[string]string{"flow": "refresh"}, 1},
		{"meshca_refused_total", map[string]string{"reason": "provider_denied"}, 2},
		{"meshca_refused_total", map[string]string{"reason": "provider_unknown"}, 1},
	} {
		if got := sample(c.name, c.labels).GetCounter().GetValue(); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if n := sample("meshca_issuance_seconds", map[string]string{"flow": "register"}).GetHistogram().GetSampleCount(); n != 1 {
		t.Errorf("meshca_issuance_seconds{flow=register} count %d, want 1", n)
	}
	if n := sample("meshca_raft_apply_seconds", map[string]string{"command": "record_refresh"}).GetHistogram().GetSampleCount(); n != 1 {
		t.Errorf("meshca_raft_apply_seconds{command=record_refresh} count %d, want 1", n)
	}
	// The Raft node's own series are on the same registry.
	if _, ok := families["meshca_raft_is_leader"]; !ok {
		t.Error("meshca_raft_is_leader is not on /metrics")
	}
}
