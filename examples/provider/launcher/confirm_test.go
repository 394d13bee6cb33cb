package launcher

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/controlplane/confirm"
)

// confirmFixture is the provider's confirm endpoint served over real mutual TLS on
// 127.0.0.1, with its certificate issued by a meshca CA to sys.auth.example, and the CA's
// side of the call: confirm.Client presenting a CA node's certificate.
type confirmFixture struct {
	ca       *testCA
	url      string
	addr     string
	dir      string
	handler  *Handler
	provider spiffeid.ID
	node     *x509svid.SVID
	src      *FileSource
	reg      *prometheus.Registry
}

func startConfirm(t testing.TB, maxTTL time.Duration) (*confirmFixture, func(Instance, time.Time, time.Duration) string) {
	t.Helper()
	c := newTestCA(t, testTD)
	dir := t.TempDir()
	own := c.workload("sys.auth", "example", "provider-1")
	certFile, keyFile := writeSVID(t, dir, own)
	bundleFile := c.writeBundle(dir)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	src, err := NewFileSource(c.td, certFile, keyFile, bundleFile, log)
	if err != nil {
		t.Fatal(err)
	}
	docKey := newKey(t)
	v, err := NewVerifier(testProvider, testTD, &docKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	metrics, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{Policy: &Policy{Provider: testProvider, Verifier: v, MaxTTL: maxTTL}, Now: func() time.Time { return t0 }, Log: log, Metrics: metrics}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewHTTPServer(h, src, c.td, log)
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	f := &confirmFixture{
		ca: c, url: "https://" + ln.Addr().String() + ConfirmPath, addr: ln.Addr().String(), dir: dir, handler: h,
		provider: own.ID, node: c.node("n1"), src: src, reg: reg,
	}
	issue := func(in Instance, at time.Time, ttl time.Duration) string {
		return issueDoc(t, testProvider, testTD, docKey, in, at, ttl)
	}
	return f, issue
}

func (f *confirmFixture) client(t testing.TB, svid *x509svid.SVID) *confirm.Client {
	t.Helper()
	c := confirm.NewClient(svid, f.ca.bundle(), 5*time.Second)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func request(in Instance, doc string) *confirm.Request {
	return &confirm.Request{
		Operation: confirm.OperationRegister, Provider: testProvider, Domain: in.Domain, Service: in.Service,
		InstanceID: in.InstanceID, AttestationData: []byte(doc), ClientAddr: "127.0.0.1:5555", TTLSeconds: 3600,
	}
}

// TestConfirmOverMutualTLS asks the provider over real mutual TLS, as a CA node does, and
// checks its answer for each kind of document.
func TestConfirmOverMutualTLS(t *testing.T) {
	f, issue := startConfirm(t, 0)
	client := f.client(t, f.node)
	good := issue(instance, t0.Add(-time.Minute), 5*time.Minute)
	refresh := request(instance, good)
	refresh.Operation = confirm.OperationRefresh
	otherProvider := request(instance, good)
	otherProvider.Provider = "sys.auth.other"
	cases := []struct {
		name       string
		req        *confirm.Request
		allowed    bool
		reasonPart string
	}{
		{"a good document is confirmed", request(instance, good), true, ""},
		{"a refresh with the current document is confirmed", refresh, true, ""},
		{"a tampered document is refused", request(Instance{"sports", "api", "pod-2"}, tamper(t, good, instance.InstanceID, "pod-2")), false, "signature invalid"},
		{"an expired document is refused", request(instance, issue(instance, t0.Add(-time.Hour), 10*time.Minute)), false, "expired"},
		{"a document for another instance is refused", request(Instance{"sports", "api", "pod-2"}, good), false, `instance_id is "pod-1.ns.cluster-a", the request says "pod-2"`},
		{"a document for another service is refused", request(Instance{"sports", "db", instance.InstanceID}, good), false, "service"},
		{"a request for another provider is refused", otherProvider, false, `provider: "sys.auth.other" is not this provider`},
		{"a request without a document is refused", request(instance, ""), false, "no document"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := client.Confirm(context.Background(), f.url, f.provider, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Allowed != tc.allowed || !strings.Contains(resp.Reason, tc.reasonPart) {
				t.Fatalf("answer %+v, want allowed=%v with a reason naming %q", resp, tc.allowed, tc.reasonPart)
			}
			if resp.TTLSeconds != 0 {
				t.Fatalf("ttl_seconds = %d without a cap", resp.TTLSeconds)
			}
		})
	}
	if got := f.handler.Counts(); got.Allowed != 2 || got.Refused != int64(len(cases)-2) || got.Rejected != 0 {
		t.Fatalf("counts %+v", got)
	}
}

func TestConfirmCapsTheLifetime(t *testing.T) {
	f, issue := startConfirm(t, 90*time.Second)
	resp, err := f.client(t, f.node).Confirm(context.Background(), f.url, f.provider, request(instance, issue(instance, t0, time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Allowed || resp.TTLSeconds != 90 {
		t.Fatalf("answer %+v, want allowed with ttl_seconds 90", resp)
	}
}

// TestOnlyCANodesMayAsk holds the endpoint to its callers: a client that is not a CA node of
// the trust domain does not get through the handshake, and the CA refuses a provider whose
// certificate it did not issue to the provider.
func TestOnlyCANodesMayAsk(t *testing.T) {
	f, issue := startConfirm(t, 0)
	req := request(instance, issue(instance, t0, time.Minute))
	t.Run("a workload certificate of the trust domain is not a CA node", func(t *testing.T) {
		_, err := f.client(t, f.ca.workload("sports", "api", "pod-1")).Confirm(context.Background(), f.url, f.provider, req)
		if !errors.Is(err, confirm.ErrUnreachable) {
			t.Fatalf("err = %v, want the handshake refused", err)
		}
	})
	t.Run("a CA node of another trust domain is refused", func(t *testing.T) {
		other := newTestCA(t, "other.test")
		c := confirm.NewClient(other.node("n1"), f.ca.bundle(), 5*time.Second)
		defer c.CloseIdleConnections()
		if _, err := c.Confirm(context.Background(), f.url, f.provider, req); !errors.Is(err, confirm.ErrUnreachable) {
			t.Fatalf("err = %v, want the handshake refused", err)
		}
	})
	t.Run("the CA refuses a provider certificate for another identity", func(t *testing.T) {
		wrong := spiffeid.RequireFromPath(f.ca.td, "/ns/sys.auth/sa/other")
		_, err := f.client(t, f.node).Confirm(context.Background(), f.url, wrong, req)
		if !errors.Is(err, confirm.ErrUntrusted) {
			t.Fatalf("err = %v, want ErrUntrusted", err)
		}
	})
	if got := f.handler.Counts(); got != (Counts{}) {
		t.Fatalf("a refused caller reached the handler: %+v", got)
	}
}

// TestConfirmRejectsWhatIsNotARequest: a body that is not a confirm request is a 400 naming
// the key, not an answer.
func TestConfirmRejectsWhatIsNotARequest(t *testing.T) {
	f, _ := startConfirm(t, 0)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: tlsconfig.MTLSClientConfig(f.node, f.ca.bundle(), tlsconfig.AuthorizeID(f.provider)),
	}}
	defer hc.CloseIdleConnections()
	for name, c := range map[string]struct {
		method, body, part string
		code               int
	}{
		"unknown key":       {http.MethodPost, `{"operation":"register","provider":"p","domain":"d","service":"s","instance_id":"i","admin":true}`, `unknown field "admin"`, http.StatusBadRequest},
		"missing instance":  {http.MethodPost, `{"operation":"register","provider":"p","domain":"d","service":"s"}`, "request.instance_id: required", http.StatusBadRequest},
		"not JSON":          {http.MethodPost, `allowed please`, "invalid JSON", http.StatusBadRequest},
		"only POST answers": {http.MethodGet, ``, "only POST", http.StatusMethodNotAllowed},
	} {
		t.Run(name, func(t *testing.T) {
			req, err := http.NewRequest(c.method, f.url, bytes.NewBufferString(c.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.code || !strings.Contains(string(body), c.part) {
				t.Fatalf("HTTP %d %q, want %d naming %q", resp.StatusCode, body, c.code, c.part)
			}
		})
	}
	if got := f.handler.Counts(); got.Rejected != 4 || got.Allowed+got.Refused != 0 {
		t.Fatalf("counts %+v", got)
	}
}

// TestRenewedCertificateIsServedWithoutRestart replaces the provider's certificate files, as
// its renewer does, and checks that the next handshake presents the new certificate, and that
// files that do not agree yet leave the old one in place.
func TestRenewedCertificateIsServedWithoutRestart(t *testing.T) {
	f, _ := startConfirm(t, 0)
	serial := func() string {
		t.Helper()
		conn, err := tls.Dial("tcp", f.addr, tlsconfig.MTLSClientConfig(f.node, f.ca.bundle(), tlsconfig.AuthorizeID(f.provider)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
	}
	first := serial()
	renewed := f.ca.workload("sys.auth", "example", "provider-1")
	certFile, _ := writeSVID(t, f.dir, renewed)
	want := renewed.Certificates[0].SerialNumber.Text(16)
	if got := serial(); got != want || got == first {
		t.Fatalf("after renewal the provider presents %s, want %s (was %s)", got, want, first)
	}
	// A certificate whose key is not (yet) in the key file is not taken.
	next := f.ca.workload("sys.auth", "example", "provider-1")
	certPEM, _, err := next.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFile(certFile, certPEM); err != nil {
		t.Fatal(err)
	}
	if got := serial(); got != want {
		t.Fatalf("with a mismatched key file the provider presents %s, want the previous %s", got, want)
	}
}

func writeFile(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// TestOpsEndpoints scrapes the provider's metrics with the Prometheus text parser after real
// confirm calls, and holds /readyz to the certificate's validity.
func TestOpsEndpoints(t *testing.T) {
	f, issue := startConfirm(t, 0)
	client := f.client(t, f.node)
	good := issue(instance, t0, time.Minute)
	for _, req := range []*confirm.Request{request(instance, good), request(instance, good), request(instance, "")} {
		if _, err := client.Confirm(context.Background(), f.url, f.provider, req); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	get := func(h http.Handler, path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec
	}
	ops := OpsHandler(f.reg, f.src, func() time.Time { return now })
	rec := get(ops, OpsMetricsPath)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, m := range fams["meshca_provider_confirmations_total"].GetMetric() {
		key := ""
		for _, l := range m.GetLabel() {
			key += l.GetName() + "=" + l.GetValue() + ","
		}
		got[key] = m.GetCounter().GetValue()
	}
	want := map[string]float64{"answer=allowed,operation=register,": 2, "answer=refused,operation=register,": 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("meshca_provider_confirmations_total = %v, want %v", got, want)
	}
	if rec := get(ops, OpsReadyPath); rec.Code != http.StatusOK {
		t.Fatalf("/readyz with a valid certificate: %d %s", rec.Code, rec.Body)
	}
	if rec := get(ops, OpsHealthPath); rec.Code != http.StatusOK {
		t.Fatalf("/healthz: %d", rec.Code)
	}
	late := OpsHandler(f.reg, f.src, func() time.Time { return now.Add(2 * time.Hour) })
	if rec := get(late, OpsReadyPath); rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "valid from") {
		t.Fatalf("/readyz with an expired certificate: %d %s", rec.Code, rec.Body)
	}
}
