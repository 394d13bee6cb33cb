package controlplane

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
)

// TestOCSPAnswerRules pins down the decision for one serial, for the active issuer "active".
func TestOCSPAnswerRules(t *testing.T) {
	revokedAt := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	rev := &meshcav1.Revocation{Serial: "1f", Time: revokedAt.UnixNano(), Reason: meshcav1.RevocationReason_REVOCATION_REASON_KEY_COMPROMISE}
	ours := &meshcav1.Cert{Serial: "1f", IssuerId: "active"}
	theirs := &meshcav1.Cert{Serial: "1f", IssuerId: "previous"}
	for _, tc := range []struct {
		name    string
		issued  *meshcav1.Cert
		revoked *meshcav1.Revocation
		want    int
	}{
		{"a certificate the active issuer signed is good", ours, nil, ocsp.Good},
		{"a revoked certificate is revoked", ours, rev, ocsp.Revoked},
		{"a revocation outlives the pruned certificate record", nil, rev, ocsp.Revoked},
		{"a serial never issued is unknown", nil, nil, ocsp.Unknown},
		{"a certificate another issuer signed is unknown to the active one", theirs, nil, ocsp.Unknown},
		{"another issuer's revoked certificate is unknown to the active one", theirs, rev, ocsp.Unknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ocspAnswer("active", tc.issued, tc.revoked)
			if got.Status != tc.want {
				t.Fatalf("status %d, want %d", got.Status, tc.want)
			}
			if tc.want == ocsp.Revoked && (!got.RevokedAt.Equal(revokedAt) || got.RevocationReason != ocsp.KeyCompromise) {
				t.Fatalf("revoked at %s for %d, want %s for keyCompromise", got.RevokedAt, got.RevocationReason, revokedAt)
			}
		})
	}
}

// ocspPost sends a DER request with POST and returns the HTTP status, the error header and
// the body.
func ocspPost(t *testing.T, ts *testServer, contentType string, body []byte) (int, string, []byte) {
	t.Helper()
	resp, err := ts.httpsClient().Post("https://"+ts.s.HTTPAddr()+PathOCSP, contentType, bytes.NewReader(body))
	return readOCSPAnswer(t, resp, err)
}

// ocspGet sends a GET to PathOCSP + "/" + escaped (already URL-encoded).
func ocspGet(t *testing.T, ts *testServer, escaped string) (int, string, []byte) {
	t.Helper()
	client := ts.httpsClient()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := client.Get("https://" + ts.s.HTTPAddr() + PathOCSP + "/" + escaped)
	return readOCSPAnswer(t, resp, err)
}

// readOCSPAnswer reads a responder's answer: status, error header and body.
func readOCSPAnswer(t *testing.T, resp *http.Response, err error) (int, string, []byte) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get(ocspErrorHeader), out
}

// TestOCSPResponderAnswersFromTheReplicatedState asks the responder of a running node about a
// certificate it issued, the same certificate once revoked, and a serial it never issued, by
// POST and by GET, and checks each answer's signature against the active issuer.
func TestOCSPResponderAnswersFromTheReplicatedState(t *testing.T) {
	f := newIdentityFixture(t, nil)
	issuer := f.iss.Certificate()
	w := newWorkload(t, "sports", "api", testSuffix, "pod-ocsp")
	leaf := parseLeaf(t, f.register(t, w))

	ask := func(t *testing.T, cert *x509.Certificate, h crypto.Hash, get bool) *ocsp.Response {
		t.Helper()
		req, err := ocsp.CreateRequest(cert, issuer, &ocsp.RequestOptions{Hash: h})
		if err != nil {
			t.Fatal(err)
		}
		var code int
		var reason string
		var body []byte
		if get {
			code, reason, body = ocspGet(t, f.testServer, url.PathEscape(base64.StdEncoding.EncodeToString(req)))
		} else {
			code, reason, body = ocspPost(t, f.testServer, ocspRequestType, req)
		}
		if code != http.StatusOK {
			t.Fatalf("HTTP %d (%s)", code, reason)
		}
		resp, err := ocsp.ParseResponseForCert(body, cert, issuer)
		if err != nil {
			t.Fatalf("response: %v", err)
		}
		if resp.SerialNumber.Cmp(cert.SerialNumber) != 0 {
			t.Fatalf("response for serial %x, want %x", resp.SerialNumber, cert.SerialNumber)
		}
		if resp.Certificate != nil {
			t.Fatal("the response carries a delegated responder certificate; the issuer signs itself")
		}
		if d := resp.NextUpdate.Sub(resp.ThisUpdate); d <= 0 || d > ocspValidity+time.Minute {
			t.Fatalf("thisUpdate %s nextUpdate %s: want a window of at most %s", resp.ThisUpdate, resp.NextUpdate, ocspValidity)
		}
		return resp
	}

	for _, get := range []bool{false, true} {
		for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256} {
			if r := ask(t, leaf, h, get); r.Status != ocsp.Good {
				t.Fatalf("issued certificate (GET %v, %v): status %d, want good", get, h, r.Status)
			}
		}
	}

	// A serial the CA never issued, under the active issuer's name.
	never := *leaf
	never.SerialNumber = new(big.Int).Add(leaf.SerialNumber, big.NewInt(1))
	if r := ask(t, &never, crypto.SHA1, false); r.Status != ocsp.Unknown {
		t.Fatalf("serial never issued: status %d, want unknown", r.Status)
	}

	f.apply(&meshcav1.Command{Command: &meshcav1.Command_Revoke{Revoke: &meshcav1.RevokeCommand{
		Target: &meshcav1.RevokeCommand_Serial{Serial: serialOf(leaf)},
		Reason: meshcav1.RevocationReason_REVOCATION_REASON_KEY_COMPROMISE,
	}}})
	rev, err := f.s.Store().State().Revocation(serialOf(leaf))
	if err != nil {
		t.Fatal(err)
	}
	for _, get := range []bool{false, true} {
		r := ask(t, leaf, crypto.SHA1, get)
		if r.Status != ocsp.Revoked || r.RevocationReason != ocsp.KeyCompromise {
			t.Fatalf("revoked certificate (GET %v): status %d reason %d, want revoked for keyCompromise", get, r.Status, r.RevocationReason)
		}
		if want := time.Unix(0, rev.GetTime()).UTC().Truncate(time.Second); !r.RevokedAt.Equal(want) {
			t.Fatalf("revoked at %s, want the recorded %s", r.RevokedAt, want)
		}
	}
}

// TestOCSPResponderRefusesBadRequests pins down the refusals: HTTP 400 with malformedRequest
// and a header naming the rule, unauthorized for another issuer's certificate.
func TestOCSPResponderRefusesBadRequests(t *testing.T) {
	f := newIdentityFixture(t, nil)
	issuer := f.iss.Certificate()
	leaf := parseLeaf(t, f.register(t, newWorkload(t, "sports", "api", testSuffix, "pod-ocsp-bad")))
	good, err := ocsp.CreateRequest(leaf, issuer, nil)
	if err != nil {
		t.Fatal(err)
	}
	malformed := func(t *testing.T, code int, reason string, body []byte, want string) {
		t.Helper()
		if code != http.StatusBadRequest {
			t.Fatalf("HTTP %d, want 400", code)
		}
		if !bytes.Equal(body, ocsp.MalformedRequestErrorResponse) {
			t.Fatalf("body %x, want the malformedRequest response", body)
		}
		if _, err := ocsp.ParseResponse(body, nil); err == nil || !strings.Contains(err.Error(), "malformed") {
			t.Fatalf("an OCSP client reads %v, want malformed", err)
		}
		if !strings.Contains(reason, want) {
			t.Fatalf("%s: %q, want it to say %q", ocspErrorHeader, reason, want)
		}
	}
	for _, tc := range []struct {
		name        string
		contentType string
		body        []byte
		want        string
	}{
		{"an empty body", ocspRequestType, nil, "request: empty"},
		{"a body that is not DER", ocspRequestType, []byte("hello, responder"), "request: not DER"},
		{"DER that is not an OCSPRequest", ocspRequestType, issuer.Raw, "not an OCSPRequest"},
		{"bytes after the request", ocspRequestType, append(append([]byte(nil), good...), 0x00), "bytes after the OCSPRequest"},
		{"a body that is not an OCSP request type", "application/json", good, "Content-Type"},
		{"no content type", "", good, "Content-Type"},
	} {
		t.Run("POST "+tc.name, func(t *testing.T) {
			code, reason, body := ocspPost(t, f.testServer, tc.contentType, tc.body)
			malformed(t, code, reason, body, tc.want)
		})
	}
	for _, tc := range []struct {
		name, path, want string
	}{
		{"a path that is not base64", "not*base64", "not base64"},
		{"no request in the path", "", "want /ocsp/<base64 DER request>"},
		{"base64 that is not a request", base64.StdEncoding.EncodeToString([]byte("hello")), "not DER"},
		{"a path too long", strings.Repeat("A", maxOCSPGetRequest+4), "at most"},
	} {
		t.Run("GET "+tc.name, func(t *testing.T) {
			code, reason, body := ocspGet(t, f.testServer, tc.path)
			malformed(t, code, reason, body, tc.want)
		})
	}

	// Base64's "/" and "+" survive as long as the client URL-encodes them (RFC 6960 A.1):
	// find a request whose base64 has both and ask for it.
	var escaped string
	for i := 0; escaped == ""; i++ {
		c := *leaf
		c.SerialNumber = new(big.Int).Add(leaf.SerialNumber, big.NewInt(int64(i)))
		req, err := ocsp.CreateRequest(&c, issuer, nil)
		if err != nil {
			t.Fatal(err)
		}
		if b := base64.StdEncoding.EncodeToString(req); strings.Contains(b, "/") && strings.Contains(b, "+") {
			escaped = url.PathEscape(b)
		}
	}
	if code, reason, body := ocspGet(t, f.testServer, escaped); code != http.StatusOK {
		t.Fatalf("GET with an encoded / and +: HTTP %d (%s) %x", code, reason, body)
	}

	// A certificate of another CA: the node cannot sign for that issuer.
	other, err := signer.GenerateSoftware(signer.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: f.td, RootKey: other, RootTTL: time.Hour, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := ocsp.CreateRequest(leaf, otherCA.Certificate(), nil)
	if err != nil {
		t.Fatal(err)
	}
	code, reason, body := ocspPost(t, f.testServer, ocspRequestType, foreign)
	if code != http.StatusOK || !bytes.Equal(body, ocsp.UnauthorizedErrorResponse) || !strings.Contains(reason, "not those of the active issuer") {
		t.Fatalf("another issuer's certificate: HTTP %d %q %x, want unauthorized", code, reason, body)
	}
}
