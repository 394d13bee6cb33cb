package controlplane

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testenv"
)

// extendAnswer is an answer of the extend API, decoded strictly.
type extendAnswer struct {
	status int
	Data   json.RawMessage `json:"data"`
	Error  *APIError       `json:"error"`
	Meta   *struct{}       `json:"meta"`
}

// call makes an extend API request to the server, presenting cert (nil: none), and decodes
// the JSON answer.
func (e *tokenEnv) call(cert *tls.Certificate, method, path, contentType string, body []byte) extendAnswer {
	e.t.Helper()
	cfg := &tls.Config{RootCAs: e.bundlePool()}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(e.ctx(), method, "https://"+e.s.HTTPAddr()+path, bytes.NewReader(body))
	ok(e.t, err)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := (&http.Client{Transport: tr, Timeout: waitTimeout}).Do(req)
	ok(e.t, err)
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		e.t.Fatalf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	var a extendAnswer
	dec := json.NewDecoder(resp.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		e.t.Fatalf("%s %s: answer is not the JSON envelope: %v", method, path, err)
	}
	if a.Meta == nil {
		e.t.Fatalf("%s %s: answer has no meta object", method, path)
	}
	a.status = resp.StatusCode
	return a
}

// extendPath is the path of an authenticator's action.
func extendPath(id, action string) string {
	return PathAuthenticators + "/" + id + "/" + action
}

// body is a JSON object with one string field.
func body(field, value string) []byte {
	out, _ := json.Marshal(map[string]string{field: value})
	return out
}

// wantAPIError asserts an error answer: its HTTP status, code and message parts.
func wantAPIError(t testing.TB, a extendAnswer, status int, code string, parts ...string) {
	t.Helper()
	if a.status != status || a.Error == nil || a.Error.Code != code || a.Data != nil {
		t.Fatalf("answer %d %+v (data %s), want %d with error code %s", a.status, a.Error, a.Data, status, code)
	}
	for _, p := range parts {
		if !strings.Contains(a.Error.Message, p) {
			t.Fatalf("error message %q does not contain %q", a.Error.Message, p)
		}
	}
}

// extendOK asserts a successful extend and returns its result.
func extendOK(t testing.TB, a extendAnswer) ExtendResult {
	t.Helper()
	if a.status != http.StatusOK || a.Error != nil {
		t.Fatalf("extend answered %d %+v", a.status, a.Error)
	}
	var r ExtendResult
	dec := json.NewDecoder(bytes.NewReader(a.Data))
	dec.DisallowUnknownFields()
	ok(t, dec.Decode(&r))
	return r
}

// certOf is the TLS certificate of an extend result for a workload whose key signed the CSR.
func certOf(t testing.TB, w *testWorkload, r ExtendResult) *tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair([]byte(r.ClientCert), pemKey(t, w.key))
	ok(t, err)
	c.Leaf, err = x509.ParseCertificate(c.Certificate[0])
	ok(t, err)
	return &c
}

// instance reads an instance of the built-in provider from the server's state.
func (e *tokenEnv) instance(id string) *meshcav1.Instance {
	e.t.Helper()
	inst, err := e.s.Store().State().Instance(BuiltinProvider, "sports", "api", id)
	ok(e.t, err)
	return inst
}

// The extend round trip: the caller lists its authenticator, extends it with a CSR and gets
// a certificate that chains (openssl verify) to the bundle it is given; until extend-verify
// the old certificate is still the instance's previous serial; extend-verify retires it, and
// a later extend with it is refused as a stale serial, which revokes the instance.
func TestExtendRoundTrip(t *testing.T) {
	e := newTokenEnv(t)
	w, resp := e.mustRegister("sports", "api", "ext-1")
	certA := w.tlsCert(t, resp)
	leafA := parseLeaf(t, resp)
	id := AuthenticatorID(BuiltinProvider, "sports", "api", "ext-1")

	a := e.call(certA, http.MethodGet, PathAuthenticators, "", nil)
	var list []CertAuthenticator
	ok(t, json.Unmarshal(a.Data, &list))
	fp := sha256.Sum256(leafA.Raw)
	if a.status != http.StatusOK || len(list) != 1 {
		t.Fatalf("list answered %d with %d authenticators", a.status, len(list))
	}
	got := list[0]
	if got.ID != id || got.Method != "cert" || got.Serial != resp.GetSerial() || got.Fingerprint != hex.EncodeToString(fp[:]) ||
		!got.NotAfter.Equal(leafA.NotAfter) || got.InstanceID != "ext-1" || got.IdentityID != "spiffe://mesh.test/ns/sports/sa/api" || got.ExtendPending {
		t.Fatalf("authenticator %+v", got)
	}

	w.key = newKey(t)
	r := extendOK(t, e.call(certA, http.MethodPost, extendPath(id, "extend"), "application/json", body(FieldClientCertCSR, string(w.csr(t, nil)))))
	certB := certOf(t, w, r)
	if certB.Leaf.Subject.CommonName != "sports.api" || serialOf(certB.Leaf) == resp.GetSerial() {
		t.Fatalf("extended certificate %s serial %s", certB.Leaf.Subject, serialOf(certB.Leaf))
	}
	opensslVerify(t, r)
	inst := e.instance("ext-1")
	if inst.GetCurrentSerial() != serialOf(certB.Leaf) || inst.GetPreviousSerial() != resp.GetSerial() || !inst.GetExtendPending() {
		t.Fatalf("after extend: instance %v", inst)
	}
	a = e.call(certA, http.MethodGet, PathAuthenticators+"/"+id, "", nil)
	var one CertAuthenticator
	ok(t, json.Unmarshal(a.Data, &one))
	if !one.ExtendPending || one.Serial != resp.GetSerial() {
		t.Fatalf("the old certificate's authenticator after extend: %+v", one)
	}

	a = e.call(certB, http.MethodPost, extendPath(id, "extend-verify"), "application/json", body(FieldClientCert, r.ClientCert))
	if a.status != http.StatusOK || a.Error != nil || string(a.Data) != "{}" {
		t.Fatalf("extend-verify answered %d %+v %s", a.status, a.Error, a.Data)
	}
	inst = e.instance("ext-1")
	if inst.GetPreviousSerial() != "" || inst.GetExtendPending() || inst.GetRevoked() {
		t.Fatalf("after extend-verify: instance %v", inst)
	}

	w.key = newKey(t)
	a = e.call(certA, http.MethodPost, extendPath(id, "extend"), "application/json", body(FieldClientCertCSR, string(w.csr(t, nil))))
	wantAPIError(t, a, http.StatusForbidden, "SERIAL_MISMATCH", "presented serial "+resp.GetSerial()+" is neither the current serial "+serialOf(certB.Leaf))
	if !strings.Contains(a.Error.Hint, "revoked") || !e.instance("ext-1").GetRevoked() {
		t.Fatalf("a stale serial on extend: hint %q, instance %v", a.Error.Hint, e.instance("ext-1"))
	}
	if n := testutil.ToFloat64(e.s.metrics.issued.WithLabelValues(FlowExtend)); n != 1 {
		t.Fatalf("meshca_issued_total{flow=extend} = %v, want 1", n)
	}
}

// opensslVerify checks with openssl that an extend's certificate chains to its bundle.
func opensslVerify(t *testing.T, r ExtendResult) {
	t.Helper()
	bin := testenv.RequireOpenSSL(t)
	certs, err := ca.ParseCertificatesPEM([]byte(r.ClientCert))
	ok(t, err)
	dir := t.TempDir()
	files := map[string][]byte{
		"ca.pem":    []byte(r.CA),
		"chain.pem": []byte(r.ClientCert),
		"leaf.pem":  ca.EncodeCertificatesPEM(certs[0].Raw),
	}
	for name, data := range files {
		ok(t, os.WriteFile(filepath.Join(dir, name), data, 0o600))
	}
	out, err := exec.Command(bin, "verify", "-CAfile", filepath.Join(dir, "ca.pem"), "-untrusted", filepath.Join(dir, "chain.pem"),
		"-purpose", "sslclient", filepath.Join(dir, "leaf.pem")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "leaf.pem: OK") {
		t.Fatalf("openssl verify: %v: %s", err, out)
	}
}

// A client that lost the answer to its extend retries once with the old certificate; a
// second retry is a stale serial.
func TestExtendLostAnswerRetriesOnce(t *testing.T) {
	e := newTokenEnv(t)
	w, resp := e.mustRegister("sports", "api", "ext-2")
	certA := w.tlsCert(t, resp)
	id := AuthenticatorID(BuiltinProvider, "sports", "api", "ext-2")

	w.key = newKey(t)
	lost := extendOK(t, e.call(certA, http.MethodPost, extendPath(id, "extend"), "application/json", body(FieldClientCertCSR, string(w.csr(t, nil)))))
	w.key = newKey(t)
	r := extendOK(t, e.call(certA, http.MethodPost, extendPath(id, "extend"), "application/json", body(FieldClientCertCSR, string(w.csr(t, nil)))))
	certC := certOf(t, w, r)
	lostLeaf, err := ca.ParseCertificatesPEM([]byte(lost.ClientCert))
	ok(t, err)
	inst := e.instance("ext-2")
	if inst.GetCurrentSerial() != serialOf(certC.Leaf) || inst.GetPreviousSerial() != resp.GetSerial() || !inst.GetPreviousRetried() || !inst.GetExtendPending() {
		t.Fatalf("after the retry: instance %v", inst)
	}
	if !e.s.Store().State().IsRevoked(serialOf(lostLeaf[0])) {
		t.Fatal("the certificate whose answer was lost is not revoked as superseded")
	}

	a := e.call(certA, http.MethodPost, extendPath(id, "extend-verify"), "application/json", body(FieldClientCert, lost.ClientCert))
	wantAPIError(t, a, http.StatusConflict, "FAILED_PRECONDITION", "verify_extend.serial: "+serialOf(lostLeaf[0])+" is not the certificate the extend issued")

	w.key = newKey(t)
	a = e.call(certA, http.MethodPost, extendPath(id, "extend"), "application/json", body(FieldClientCertCSR, string(w.csr(t, nil))))
	wantAPIError(t, a, http.StatusForbidden, "SERIAL_MISMATCH", "previous serial "+resp.GetSerial()+" was already presented once")
}

// Every refusal of the extend API is a JSON error with the HTTP status of its rule and a
// message naming the field and the rule.
func TestExtendRefusals(t *testing.T) {
	e := newTokenEnv(t)
	w, resp := e.mustRegister("sports", "api", "ext-3")
	cert := w.tlsCert(t, resp)
	id := AuthenticatorID(BuiltinProvider, "sports", "api", "ext-3")
	_, otherResp := e.mustRegister("sports", "api", "ext-4")
	goodCSR := string(newWorkload(t, "sports", "api", builtinSuffix, "ext-3").csr(t, nil))

	// An expired certificate of the same instance, signed by the CA.
	expiredKey := newKey(t)
	spiffe, _ := url.Parse("spiffe://mesh.test/ns/sports/sa/api")
	expired := signLeaf(t, e.iss, expiredKey, &x509.Certificate{
		Subject: pkix.Name{CommonName: "sports.api"}, URIs: []*url.URL{spiffe},
		DNSNames: []string{"api.sports." + builtinSuffix, "ext-3.instanceid.athenz." + builtinSuffix},
		// Within the CA's own life: it expired two seconds ago.
		NotBefore: e.iss.Certificate().NotBefore, NotAfter: time.Now().Add(-2 * time.Second),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	expiredCert := &tls.Certificate{Certificate: [][]byte{expired.Raw}, PrivateKey: expiredKey}

	type req struct {
		cert             *tls.Certificate
		method, path, ct string
		body             []byte
		status           int
		code             string
		parts            []string
		hint             string
	}
	extend := extendPath(id, "extend")
	tests := []struct {
		name string
		req
	}{
		{"an expired certificate cannot extend: re-register", req{cert: expiredCert, method: "POST", path: extend, ct: "application/json", body: body(FieldClientCertCSR, goodCSR),
			status: 401, code: "CERT_EXPIRED", parts: []string{"client certificate: serial " + serialOf(expired), "register again"}, hint: "re-register"}},
		{"an expired certificate cannot list", req{cert: expiredCert, method: "GET", path: PathAuthenticators,
			status: 401, code: "CERT_EXPIRED", parts: []string{"register again"}, hint: "re-register"}},
		{"no client certificate is unauthenticated", req{method: "POST", path: extend, ct: "application/json", body: body(FieldClientCertCSR, goodCSR),
			status: 401, code: "UNAUTHENTICATED", parts: []string{"client certificate: none presented"}, hint: "present"}},
		{"an unknown authenticator id is not found", req{cert: cert, method: "POST", path: extendPath("0123abcd", "extend"), ct: "application/json", body: body(FieldClientCertCSR, goodCSR),
			status: 404, code: "AUTHENTICATOR_UNKNOWN", parts: []string{`id: authenticator "0123abcd" is not one of this certificate's`}}},
		{"another instance's authenticator id is not found", req{cert: cert, method: "GET", path: PathAuthenticators + "/" + AuthenticatorID(BuiltinProvider, "sports", "api", "ext-4"),
			status: 404, code: "AUTHENTICATOR_UNKNOWN"}},
		{"truncated JSON is malformed", req{cert: cert, method: "POST", path: extend, ct: "application/json", body: []byte(`{"clientCertCsr": "abc`),
			status: 400, code: "INVALID_ARGUMENT", parts: []string{"clientCertCsr: invalid JSON"}}},
		{"an empty body is malformed", req{cert: cert, method: "POST", path: extend, ct: "application/json",
			status: 400, code: "INVALID_ARGUMENT", parts: []string{"body: not JSON (empty or truncated)"}}},
		{"an array is malformed", req{cert: cert, method: "POST", path: extend, ct: "application/json", body: []byte(`["x"]`),
			status: 400, code: "INVALID_ARGUMENT", parts: []string{"body: a JSON array, not an object"}}},
		{"an unknown field is refused", req{cert: cert, method: "POST", path: extend, ct: "application/json", body: []byte(`{"clientCertCsr": "x", "csr": "y"}`),
			status: 400, code: "INVALID_ARGUMENT", parts: []string{`"csr": unknown field: the body has only "clientCertCsr"`}}},
		{"a duplicated field is refused", req{cert: cert, method: "POST", path: extend, ct: "application/json", body: []byte(`{"clientCertCsr": "x", "clientCertCsr": "y"}`),
			status: 400, code: "INVALID_ARGUMENT", parts: []string{"clientCertCsr: appears twice"}}},
		{"a number is not a CSR", req{cert: cert, method: "POST", path: extend, ct: "application/json", body: []byte(`{"clientCertCsr": 42}`),
			status: 400, code: "INVALID_ARGUMENT", parts: []string{"clientCertCsr: want a string, got a JSON number"}}},
		{"a missing field is refused", req{cert: cert, method: "POST", path: extend, ct: "application/json", body: []byte(`{}`),
			status: 400, code: "INVALID_ARGUMENT", parts: []string{`clientCertCsr: required: want {"clientCertCsr": "<PEM>"}`}}},
		{"trailing data is refused", req{cert: cert, method: "POST", path: extend, ct: "application/json", body: []byte(`{"clientCertCsr": "x"} {}`),
			status: 400, code: "INVALID_ARGUMENT", parts: []string{"body: trailing data after the JSON object"}}},
		{"a CSR that is not PEM is refused", req{cert: cert, method: "POST", path: extend, ct: "application/json", body: body(FieldClientCertCSR, "hello"),
			status: 400, code: "INVALID_ARGUMENT", parts: []string{`clientCertCsr: not PEM`}}},
		{"a certificate is not a CSR", req{cert: cert, method: "POST", path: extend, ct: "application/json", body: body(FieldClientCertCSR, resp.GetCertificate()),
			status: 400, code: "INVALID_ARGUMENT", parts: []string{`clientCertCsr: a "CERTIFICATE" PEM block`}}},
		{"a CSR for another instance is refused", req{cert: cert, method: "POST", path: extend, ct: "application/json",
			body:   body(FieldClientCertCSR, string(newWorkload(t, "sports", "api", builtinSuffix, "ext-9").csr(t, nil))),
			status: 403, code: "IDENTITY_MISMATCH", parts: []string{`csr: instance id "ext-9" is not the client certificate's "ext-3"`}}},
		{"a body over the limit is refused", req{cert: cert, method: "POST", path: extend, ct: "application/json", body: body(FieldClientCertCSR, strings.Repeat("a", MaxExtendBodyBytes)),
			status: 413, code: "BODY_TOO_LARGE", parts: []string{"body: larger than"}}},
		{"a body that is not JSON by its type is refused", req{cert: cert, method: "POST", path: extend, ct: "text/plain", body: body(FieldClientCertCSR, goodCSR),
			status: 415, code: "UNSUPPORTED_MEDIA_TYPE", parts: []string{`Content-Type: "text/plain": the extend API takes application/json`}}},
		{"extend-verify before an extend is a failed precondition", req{cert: cert, method: "POST", path: extendPath(id, "extend-verify"), ct: "application/json", body: body(FieldClientCert, resp.GetCertificate()),
			status: 409, code: "FAILED_PRECONDITION", parts: []string{"has no extend awaiting verification"}}},
		{"extend-verify with another instance's certificate is refused", req{cert: cert, method: "POST", path: extendPath(id, "extend-verify"), ct: "application/json", body: body(FieldClientCert, otherResp.GetCertificate()),
			status: 403, code: "IDENTITY_MISMATCH", parts: []string{"clientCert: is a certificate of instance sys.auth.meshca/sports.api/ext-4, not of the caller's sys.auth.meshca/sports.api/ext-3"}}},
		{"extend-verify with a certificate of another CA is refused", req{cert: cert, method: "POST", path: extendPath(id, "extend-verify"), ct: "application/json",
			body: body(FieldClientCert, string(ca.EncodeCertificatesPEM(e.clientCert("spiffe://other.test/x").Leaf.Raw))), status: 400, code: "INVALID_ARGUMENT", parts: []string{"clientCert: does not verify to the trust bundle"}}},
		{"a certificate that names no instance cannot list", req{cert: e.clientCert(tokenAdmin), method: "GET", path: PathAuthenticators,
			status: 403, code: "IDENTITY_MISMATCH", parts: []string{"client certificate: "}}},
		{"an unknown path is a JSON not found", req{cert: cert, method: "GET", path: "/v1/current-identity/nothing",
			status: 404, code: "NOT_FOUND", parts: []string{"path: GET /v1/current-identity/nothing is not an endpoint"}}},
		{"a wrong method is a JSON not found", req{cert: cert, method: "GET", path: extend,
			status: 404, code: "NOT_FOUND", parts: []string{"is not an endpoint"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := e.call(tc.cert, tc.method, tc.path, tc.ct, tc.body)
			wantAPIError(t, a, tc.status, tc.code, tc.parts...)
			if !strings.Contains(a.Error.Hint, tc.hint) {
				t.Fatalf("hint %q does not contain %q", a.Error.Hint, tc.hint)
			}
		})
	}
	if inst := e.instance("ext-3"); inst.GetRevoked() || inst.GetCurrentSerial() != resp.GetSerial() {
		t.Fatalf("refusals changed the instance: %v", inst)
	}
}
