package controlplane

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ocsp"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// OCSP responder on listen.http (RFC 6960): POST PathOCSP with an application/ocsp-request
// body, or GET PathOCSP/<request> with the DER request base64-encoded and then URL-encoded
// (RFC 6960 Appendix A.1). Answers are signed by the active issuer itself (no delegated
// responder certificate) and carry no nonce, so they may be cached until their nextUpdate.
const (
	PathOCSP = "/ocsp"
	// ocspValidity is how long an answer may be relied on: short, because a revocation
	// reaches the replicated state at once and should reach relying parties soon after.
	ocspValidity = time.Hour
	// ocspErrorHeader carries the reason of a refused request in words; the body is the
	// DER OCSP error response a client parses.
	ocspErrorHeader = "Meshca-Error"
	// maxOCSPGetRequest bounds the path of a GET request (an OCSP request for one
	// certificate is about 100 bytes; base64 and URL encoding at most triple it).
	maxOCSPGetRequest = 4096
)

// Content types of RFC 6960 Appendix C.
const (
	ocspRequestType  = "application/ocsp-request"
	ocspResponseType = "application/ocsp-response"
)

// errOCSPMalformed marks a request that is not a DER OCSP request as RFC 6960 describes; it
// is answered with malformedRequest and HTTP 400.
var errOCSPMalformed = errors.New("malformed OCSP request")

// errOCSPNotIssuer marks a request about a certificate of an issuer that is not the active
// one; it is answered with unauthorized, as this node cannot sign for that issuer.
var errOCSPNotIssuer = errors.New("OCSP request names another issuer")

// serveOCSP is the handler of GET and POST PathOCSP.
func (s *Server) serveOCSP(w http.ResponseWriter, r *http.Request) {
	der, err := readOCSPRequest(r)
	if err != nil {
		writeOCSPError(w, http.StatusBadRequest, ocsp.MalformedRequestErrorResponse, err)
		return
	}
	resp, err := s.OCSP(der)
	switch {
	case errors.Is(err, errOCSPMalformed):
		writeOCSPError(w, http.StatusBadRequest, ocsp.MalformedRequestErrorResponse, err)
		return
	case errors.Is(err, errOCSPNotIssuer):
		writeOCSPError(w, http.StatusOK, ocsp.UnauthorizedErrorResponse, err)
		return
	case errors.Is(err, ErrNotReady):
		writeOCSPError(w, http.StatusServiceUnavailable, ocsp.TryLaterErrorResponse, err)
		return
	case err != nil:
		s.log.Warn("ocsp", "error", err)
		writeOCSPError(w, http.StatusInternalServerError, ocsp.InternalErrorErrorResponse, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", ocspResponseType)
	// RFC 5019 §6: a GET answer may be cached by intermediaries until it goes stale.
	h.Set("Cache-Control", "max-age="+strconv.Itoa(int(ocspValidity/time.Second))+", public, no-transform, must-revalidate")
	w.Write(resp)
}

// readOCSPRequest takes the DER OCSP request out of a GET path or a POST body.
func readOCSPRequest(r *http.Request) ([]byte, error) {
	if r.Method == http.MethodPost {
		ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || ct != ocspRequestType {
			return nil, fmt.Errorf("%w: Content-Type: %q, want %s", errOCSPMalformed, r.Header.Get("Content-Type"), ocspRequestType)
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return nil, fmt.Errorf("%w: body: %w", errOCSPMalformed, err)
		}
		return body, nil
	}
	// The escaped path, not r.URL.Path: base64's "/" must stay part of the request and
	// "%2B" must not become a space.
	raw, ok := strings.CutPrefix(r.URL.EscapedPath(), PathOCSP+"/")
	if !ok || raw == "" {
		return nil, fmt.Errorf("%w: path: want %s/<base64 DER request>", errOCSPMalformed, PathOCSP)
	}
	if len(raw) > maxOCSPGetRequest {
		return nil, fmt.Errorf("%w: path: %d bytes, at most %d", errOCSPMalformed, len(raw), maxOCSPGetRequest)
	}
	unescaped, err := url.PathUnescape(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: path: not URL-encoded: %w", errOCSPMalformed, err)
	}
	der, err := base64.StdEncoding.DecodeString(unescaped)
	if err != nil {
		return nil, fmt.Errorf("%w: path: not base64 (RFC 6960 A.1): %w", errOCSPMalformed, err)
	}
	return der, nil
}

// writeOCSPError answers with one of RFC 6960's unsigned error responses, and names the
// reason in a header for a reader that is not an OCSP client.
func writeOCSPError(w http.ResponseWriter, code int, body []byte, reason error) {
	h := w.Header()
	h.Set("Content-Type", ocspResponseType)
	h.Set("Cache-Control", "no-store")
	h.Set(ocspErrorHeader, strings.ReplaceAll(reason.Error(), "\n", " "))
	w.WriteHeader(code)
	w.Write(body)
}

// OCSP answers a DER OCSP request from the replicated state, signed by the active issuer:
// revoked (with the time and reason) when the serial is revoked, good when the active issuer
// issued it, unknown otherwise. A request that does not parse is errOCSPMalformed, one that
// names another issuer errOCSPNotIssuer, and a node without the CA record ErrNotReady.
func (s *Server) OCSP(der []byte) ([]byte, error) {
	req, err := parseOCSPRequest(der)
	if err != nil {
		return nil, err
	}
	auth, issuer, err := s.Authority()
	if err != nil {
		return nil, err
	}
	iss := auth.Issuer()
	cert := iss.Certificate()
	if err := matchOCSPIssuer(req, cert); err != nil {
		return nil, err
	}
	st := s.fsm.State()
	serial := req.SerialNumber.Text(16)
	issued, err := st.Cert(serial)
	if err != nil {
		issued = nil
	}
	revoked, err := st.Revocation(serial)
	if err != nil {
		revoked = nil
	}
	now := s.now()
	tmpl := ocspAnswer(issuer.GetId(), issued, revoked)
	tmpl.SerialNumber = req.SerialNumber
	tmpl.IssuerHash = req.HashAlgorithm
	tmpl.ThisUpdate = now.Add(-time.Minute).Truncate(time.Second)
	tmpl.NextUpdate = now.Add(ocspValidity).Truncate(time.Second)
	out, err := ocsp.CreateResponse(cert, cert, tmpl, iss.Signer())
	if err != nil {
		return nil, fmt.Errorf("ocsp: signing with the active issuer (%s key): %w", iss.Signer().KeyType(), err)
	}
	return out, nil
}

// ocspAnswer decides the status of a serial for the active issuer activeID from its
// certificate record and its revocation record (either may be nil): a revocation wins, with
// its time and reason; a certificate this issuer signed is good; anything else is unknown,
// including a certificate another issuer signed.
func ocspAnswer(activeID string, issued *meshcav1.Cert, revoked *meshcav1.Revocation) ocsp.Response {
	if issued != nil && issued.GetIssuerId() != activeID {
		return ocsp.Response{Status: ocsp.Unknown}
	}
	if revoked != nil {
		return ocsp.Response{
			Status:           ocsp.Revoked,
			RevokedAt:        time.Unix(0, revoked.GetTime()).UTC().Truncate(time.Second),
			RevocationReason: int(revoked.GetReason()),
		}
	}
	if issued != nil {
		return ocsp.Response{Status: ocsp.Good}
	}
	return ocsp.Response{Status: ocsp.Unknown}
}

// parseOCSPRequest parses a DER OCSP request, refusing trailing bytes and a missing serial.
func parseOCSPRequest(der []byte) (*ocsp.Request, error) {
	if len(der) == 0 {
		return nil, fmt.Errorf("%w: request: empty", errOCSPMalformed)
	}
	var whole asn1.RawValue
	rest, err := asn1.Unmarshal(der, &whole)
	if err != nil {
		return nil, fmt.Errorf("%w: request: not DER: %w", errOCSPMalformed, err)
	}
	if len(rest) > 0 {
		return nil, fmt.Errorf("%w: request: %d bytes after the OCSPRequest", errOCSPMalformed, len(rest))
	}
	req, err := ocsp.ParseRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: request: not an OCSPRequest (RFC 6960 §4.1.1): %w", errOCSPMalformed, err)
	}
	if req.SerialNumber == nil || req.SerialNumber.Sign() <= 0 {
		return nil, fmt.Errorf("%w: request: reqCert.serialNumber: must be a positive integer", errOCSPMalformed)
	}
	return req, nil
}

// matchOCSPIssuer checks that the request's CertID names cert: the hash of its subject and of
// its public key, with the request's hash algorithm.
func matchOCSPIssuer(req *ocsp.Request, cert *x509.Certificate) error {
	nameHash, keyHash, err := ocspIssuerHashes(req.HashAlgorithm, cert)
	if err != nil {
		return fmt.Errorf("%w: request: reqCert.hashAlgorithm: %w", errOCSPMalformed, err)
	}
	if !bytes.Equal(req.IssuerNameHash, nameHash) || !bytes.Equal(req.IssuerKeyHash, keyHash) {
		return fmt.Errorf("%w: request: reqCert: the issuer name and key hashes are not those of the active issuer %q", errOCSPNotIssuer, cert.Subject)
	}
	return nil
}

// ocspIssuerHashes are the issuerNameHash and issuerKeyHash of RFC 6960 §4.1.1 for cert.
func ocspIssuerHashes(h crypto.Hash, cert *x509.Certificate) (nameHash, keyHash []byte, err error) {
	if !h.Available() {
		return nil, nil, fmt.Errorf("hash %v is not available", h)
	}
	var spki struct {
		Algorithm asn1.RawValue
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(cert.RawSubjectPublicKeyInfo, &spki); err != nil {
		return nil, nil, fmt.Errorf("issuer public key: %w", err)
	}
	hn := h.New()
	hn.Write(cert.RawSubject)
	hk := h.New()
	hk.Write(spki.PublicKey.RightAlign())
	return hn.Sum(nil), hk.Sum(nil), nil
}
