package controlplane

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/raftstore"
)

// Paths of the extend API (OpenZiti style) on listen.http.
const (
	// PathAuthenticators lists the caller's authenticators (GET).
	PathAuthenticators = "/v1/current-identity/authenticators"
	// PathExtend is PathAuthenticators/{id}/extend (POST {"clientCertCsr": "<PEM>"}).
	PathExtend = PathAuthenticators + "/{id}/extend"
	// PathExtendVerify is PathAuthenticators/{id}/extend-verify (POST {"clientCert": "<PEM>"}).
	PathExtendVerify = PathAuthenticators + "/{id}/extend-verify"
)

// MaxExtendBodyBytes bounds an extend API request body (and limits.max_message_bytes bounds
// it further when smaller).
const MaxExtendBodyBytes = 64 << 10

// AuthenticatorMethodCert is the method of the one authenticator an instance has: its client
// certificate.
const AuthenticatorMethodCert = "cert"

// CertAuthenticator is how the extend API describes a caller's certificate authenticator. Its id
// is stable across extends: it is derived from the instance the certificate names, so every
// certificate of one instance, on every node, has the same authenticator id.
type CertAuthenticator struct {
	// ID names the authenticator in the extend paths.
	ID string `json:"id"`
	// Method is AuthenticatorMethodCert.
	Method string `json:"method"`
	// IdentityID is the certificate's SPIFFE ID.
	IdentityID string `json:"identityId"`
	// Provider and InstanceID name the instance.
	Provider   string `json:"provider"`
	InstanceID string `json:"instanceId"`
	// Fingerprint is the SHA-256 of the presented certificate's DER, lowercase hex.
	Fingerprint string `json:"fingerprint"`
	// Serial is the presented certificate's serial (lowercase hex), NotBefore and NotAfter
	// its validity.
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	// IsIssuedByNetwork is always true: the CA issued the certificate and can extend it.
	IsIssuedByNetwork bool `json:"isIssuedByNetwork"`
	// ExtendPending says an extend issued a certificate the client has not yet confirmed with
	// extend-verify, as this node's copy of the state knows.
	ExtendPending bool `json:"extendPending"`
}

// ExtendResult is the data of an extend's answer.
type ExtendResult struct {
	// CA is the trust bundle (the roots), PEM.
	CA string `json:"ca"`
	// ClientCert is the new certificate followed by the intermediates it chains through, PEM.
	ClientCert string `json:"clientCert"`
}

// APIError is the error object of an extend API answer: {"error": APIError, "meta": {}}.
type APIError struct {
	// Code is the refusal's reason in capitals (CERT_EXPIRED, SERIAL_MISMATCH,
	// INVALID_ARGUMENT, ...), the meshca_refused_total reason.
	Code string `json:"code"`
	// Message names the field and the rule.
	Message string `json:"message"`
	// Hint says what the client should do, when there is something to do.
	Hint string `json:"hint,omitempty"`
}

// envelope is the OpenZiti-style answer.
type envelope struct {
	Data  any       `json:"data,omitempty"`
	Error *APIError `json:"error,omitempty"`
	Meta  struct{}  `json:"meta"`
}

// AuthenticatorID is the extend API's id of an instance's authenticator: 128 bits of the
// SHA-256 of the instance key provider/domain.service/instance-id, hex.
func AuthenticatorID(provider, domain, service, instanceID string) string {
	sum := sha256.Sum256([]byte("meshca authenticator\x00" + raftstore.InstanceKey(provider, domain, service, instanceID)))
	return hex.EncodeToString(sum[:16])
}

// extendAPI serves the extend API of one server.
type extendAPI struct{ s *Server }

// extendFlow mounts the extend API on the server's HTTPS port.
func extendFlow(s *Server) error {
	x := extendAPI{s}
	mux := s.HTTPMux()
	mux.HandleFunc("GET "+PathAuthenticators, x.list)
	mux.HandleFunc("GET "+PathAuthenticators+"/{id}", x.get)
	mux.HandleFunc("POST "+PathExtend, x.extend)
	mux.HandleFunc("POST "+PathExtendVerify, x.verify)
	mux.HandleFunc("/v1/current-identity/", x.notFound)
	return nil
}

// instanceOf is the instance a caller's certificate names.
type instanceOf struct {
	provider, domain, service, id string
	// record is this node's copy of the instance record, nil if it has none yet.
	record *meshcav1.Instance
}

func (i instanceOf) key() string {
	return raftstore.InstanceKey(i.provider, i.domain, i.service, i.id)
}

// authenticate authenticates the caller of an extend API request and finds its instance.
func (x extendAPI) authenticate(r *http.Request) (*Caller, instanceOf, error) {
	c, err := x.s.AuthenticateTLS(r.TLS, r.RemoteAddr)
	if err != nil {
		return nil, instanceOf{}, err
	}
	in, err := x.instanceOfCert(c.Leaf)
	if err != nil {
		return nil, instanceOf{}, err
	}
	return c, in, nil
}

// instanceOfCert reads the instance a workload certificate names.
func (x extendAPI) instanceOfCert(cert *x509.Certificate) (instanceOf, error) {
	domain, service, err := workloadOf(x.s.td, cert)
	if err != nil {
		return instanceOf{}, err
	}
	st := x.s.fsm.State()
	p, id, err := providerOf(st, cert)
	if err != nil {
		return instanceOf{}, refuse(ErrIdentityMismatch, "client certificate", "names no instance of a registered provider (%s); the extend API extends instance certificates", strings.Join(cert.DNSNames, ", "))
	}
	in := instanceOf{provider: p.GetName(), domain: domain, service: service, id: id}
	if rec, err := st.Instance(in.provider, domain, service, id); err == nil {
		in.record = rec
	}
	return in, nil
}

// authenticatorOf describes the caller's authenticator.
func authenticatorOf(c *Caller, in instanceOf) CertAuthenticator {
	fp := sha256.Sum256(c.Leaf.Raw)
	return CertAuthenticator{
		ID: AuthenticatorID(in.provider, in.domain, in.service, in.id), Method: AuthenticatorMethodCert,
		IdentityID: c.ID.String(), Provider: in.provider, InstanceID: in.id,
		Fingerprint: hex.EncodeToString(fp[:]), Serial: c.Serial,
		NotBefore: c.Leaf.NotBefore.UTC(), NotAfter: c.Leaf.NotAfter.UTC(),
		IsIssuedByNetwork: true, ExtendPending: in.record.GetExtendPending(),
	}
}

// checkID holds the path's authenticator id to the caller's.
func checkID(r *http.Request, in instanceOf) error {
	id := r.PathValue("id")
	if id != AuthenticatorID(in.provider, in.domain, in.service, in.id) {
		return refuseAs("authenticator_unknown", raftstore.ErrNotFound, "id",
			"authenticator %q is not one of this certificate's; list them with GET %s", clip(id), PathAuthenticators)
	}
	return nil
}

// list answers GET /v1/current-identity/authenticators: the caller's one authenticator.
func (x extendAPI) list(w http.ResponseWriter, r *http.Request) {
	c, in, err := x.authenticate(r)
	if err != nil {
		x.fail(w, err)
		return
	}
	x.answer(w, []CertAuthenticator{authenticatorOf(c, in)})
}

// get answers GET /v1/current-identity/authenticators/{id}.
func (x extendAPI) get(w http.ResponseWriter, r *http.Request) {
	c, in, err := x.authenticate(r)
	if err == nil {
		err = checkID(r, in)
	}
	if err != nil {
		x.fail(w, err)
		return
	}
	x.answer(w, authenticatorOf(c, in))
}

// extend answers POST .../{id}/extend: a refresh with the same serial rules, marked as an
// extend, so the certificate presented stays acceptable for one retry until extend-verify.
func (x extendAPI) extend(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c, in, err := x.authenticate(r)
	if err == nil {
		err = checkID(r, in)
	}
	var csr string
	if err == nil {
		csr, err = x.readBody(w, r, FieldClientCertCSR)
	}
	var csrDER []byte
	if err == nil {
		csrDER, err = csrOfBody(csr)
	}
	if err != nil {
		x.s.observe(FlowExtend, start, err)
		x.fail(w, err)
		return
	}
	iss, err := x.s.refresh(r.Context(), c.Leaf, csrDER, RefreshOptions{ClientAddr: c.Addr, Extend: true, Flow: FlowExtend})
	if err != nil {
		x.fail(w, err)
		return
	}
	x.answer(w, ExtendResult{CA: iss.BundlePEM, ClientCert: string(ca.EncodeCertificatesPEM(iss.Chain...))})
}

// verify answers POST .../{id}/extend-verify: the client shows the certificate the extend
// issued, and the log retires the serial it replaced. The caller may authenticate with the
// replaced certificate or with the new one.
func (x extendAPI) verify(w http.ResponseWriter, r *http.Request) {
	c, in, err := x.authenticate(r)
	if err == nil {
		err = checkID(r, in)
	}
	var body string
	if err == nil {
		body, err = x.readBody(w, r, FieldClientCert)
	}
	var serial string
	if err == nil {
		serial, err = x.checkNewCert(c, in, body)
	}
	if err != nil {
		x.fail(w, err)
		return
	}
	_, err = x.s.Apply(r.Context(), &meshcav1.Command{Command: &meshcav1.Command_VerifyExtend{VerifyExtend: &meshcav1.VerifyExtendCommand{
		Provider: in.provider, Domain: in.domain, Service: in.service, InstanceId: in.id, Serial: serial,
	}}})
	if err != nil {
		x.fail(w, err)
		return
	}
	x.answer(w, struct{}{})
}

// checkNewCert checks the certificate an extend-verify shows: it verifies to the trust
// bundle, names the caller's instance, and the caller authenticated with it or with one of
// the instance's two serials in force. It returns the certificate's serial.
func (x extendAPI) checkNewCert(c *Caller, in instanceOf, body string) (string, error) {
	certs, err := ca.ParseCertificatesPEM([]byte(body))
	if err != nil {
		return "", refuse(policy.ErrInvalidRequest, FieldClientCert, "not PEM certificates: %v", err)
	}
	auth, _, err := x.s.Authority()
	if err != nil {
		return "", err
	}
	// The client may send the leaf alone: the issuer's chain completes it.
	chain := append(append([]*x509.Certificate(nil), certs...), auth.Issuer().Chain()...)
	if _, _, err := x509svid.Verify(chain, bundleSource{x.s}, x509svid.WithTime(x.s.now())); err != nil {
		return "", refuse(policy.ErrInvalidRequest, FieldClientCert, "does not verify to the trust bundle of %s: %v", x.s.td.Name(), err)
	}
	shown, err := x.instanceOfCert(certs[0])
	if err != nil {
		return "", refuse(ErrIdentityMismatch, FieldClientCert, "names no instance: %v", err)
	}
	if shown.key() != in.key() {
		return "", refuse(ErrIdentityMismatch, FieldClientCert, "is a certificate of instance %s, not of the caller's %s", shown.key(), in.key())
	}
	serial := certs[0].SerialNumber.Text(16)
	if rec := in.record; rec != nil && c.Serial != serial && c.Serial != rec.GetCurrentSerial() && c.Serial != rec.GetPreviousSerial() {
		return "", refuse(ErrIdentityMismatch, "client certificate", "serial %s is neither the certificate shown nor one of instance %s's serials in force (%s, %q)",
			c.Serial, in.key(), rec.GetCurrentSerial(), rec.GetPreviousSerial())
	}
	return serial, nil
}

// csrOfBody reads the DER of a clientCertCsr: one PEM "CERTIFICATE REQUEST" (or, as OpenZiti
// clients write it, "NEW CERTIFICATE REQUEST") block that parses. A refusal names the body's
// field; the refresh core checks everything else about the CSR.
func csrOfBody(data string) ([]byte, error) {
	block, rest := pem.Decode([]byte(data))
	switch {
	case block == nil:
		return nil, refuse(policy.ErrInvalidRequest, FieldClientCertCSR, "not PEM: want a \"CERTIFICATE REQUEST\" block")
	case block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST":
		return nil, refuse(policy.ErrInvalidRequest, FieldClientCertCSR, "a %q PEM block, not a \"CERTIFICATE REQUEST\"", block.Type)
	case len(bytes.TrimSpace(rest)) != 0:
		return nil, refuse(policy.ErrInvalidRequest, FieldClientCertCSR, "holds more than one PEM block")
	}
	if _, err := x509.ParseCertificateRequest(block.Bytes); err != nil {
		return nil, refuse(policy.ErrInvalidRequest, FieldClientCertCSR, "does not parse as a certificate request: %v", err)
	}
	return block.Bytes, nil
}

// readBody reads and decodes a JSON request body of at most MaxExtendBodyBytes.
func (x extendAPI) readBody(w http.ResponseWriter, r *http.Request, field string) (string, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return "", errUnsupportedMedia{refuse(policy.ErrInvalidRequest, "Content-Type", "%q: the extend API takes application/json", ct)}
		}
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxExtendBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return "", errTooLarge{refuseAs("body_too_large", policy.ErrInvalidRequest, "body", "larger than %d bytes", tooBig.Limit)}
		}
		return "", refuse(policy.ErrInvalidRequest, "body", "could not be read: %v", err)
	}
	return decodeExtendBody(data, field)
}

// errTooLarge marks a body over the limit: 413.
type errTooLarge struct{ error }

func (e errTooLarge) Unwrap() error { return e.error }

// errUnsupportedMedia marks a body that is not JSON: 415.
type errUnsupportedMedia struct{ error }

func (e errUnsupportedMedia) Unwrap() error { return e.error }

// notFound answers a path or method of /v1/current-identity/ the API does not serve.
func (x extendAPI) notFound(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusNotFound, envelope{Error: &APIError{
		Code:    "NOT_FOUND",
		Message: fmt.Sprintf("path: %s %s is not an endpoint of the extend API (GET %s, POST %s, POST %s)", r.Method, clip(r.URL.Path), PathAuthenticators, PathExtend, PathExtendVerify),
	}})
}

// answer writes {"data": data, "meta": {}} with 200.
func (x extendAPI) answer(w http.ResponseWriter, data any) {
	writeJSON(w, http.StatusOK, envelope{Data: data})
}

// fail writes the error envelope of err with the HTTP status of its gRPC code.
func (x extendAPI) fail(w http.ResponseWriter, err error) {
	code, reason := classify(err)
	status := httpStatus(code)
	var tooBig errTooLarge
	var media errUnsupportedMedia
	switch {
	case errors.As(err, &tooBig):
		status = http.StatusRequestEntityTooLarge
	case errors.As(err, &media):
		status, reason = http.StatusUnsupportedMediaType, "unsupported_media_type"
	}
	if status == http.StatusInternalServerError {
		x.s.log.Error("extend API call failed", "error", err)
	}
	e := &APIError{Code: strings.ToUpper(reason), Message: err.Error()}
	switch {
	case errors.Is(err, ErrClientCertExpired), errors.Is(err, raftstore.ErrCertExpired):
		e.Hint = "re-register: an expired certificate cannot be extended; register the instance again with its attestation (Register), then extend the new certificate"
	case status == http.StatusUnauthorized:
		e.Hint = "present, as the TLS client certificate, the certificate this CA issued to the instance"
	case errors.Is(err, raftstore.ErrSerialMismatch), errors.Is(err, raftstore.ErrInstanceRevoked):
		e.Hint = "the instance is revoked; launch a new instance"
	}
	writeJSON(w, status, envelope{Error: e})
}

// httpStatus is the HTTP status of a gRPC code.
func httpStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.InvalidArgument, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.FailedPrecondition, codes.Aborted:
		return http.StatusConflict
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable, codes.Canceled:
		return http.StatusServiceUnavailable
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

// writeJSON writes v as the JSON answer with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}
