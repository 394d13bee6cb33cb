package confirm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Operations a Request asks the provider to confirm.
const (
	// OperationRegister is an instance's first certificate.
	OperationRegister = "register"
	// OperationRefresh is a refresh of a provider that asks to confirm refreshes too.
	OperationRefresh = "refresh"
)

// Limits of the wire format.
const (
	// MaxResponseBytes is the largest response body the CA reads.
	MaxResponseBytes = 64 << 10
	// MaxRequestBytes is the largest request body a provider should accept.
	MaxRequestBytes = 256 << 10
	// MaxReasonLen bounds Response.Reason, in bytes.
	MaxReasonLen = 1024
)

// ErrMalformed is wrapped by every decoding error; the message names the key and the rule.
var ErrMalformed = errors.New("malformed confirm message")

// SANs are the subject alternative names of the instance's certificate request.
type SANs struct {
	DNS []string `json:"dns"`
	URI []string `json:"uri"`
}

// Request is what the CA asks the provider.
type Request struct {
	// Operation is OperationRegister or OperationRefresh.
	Operation string `json:"operation"`
	// Provider is the provider's service identity, e.g. sys.auth.example.
	Provider string `json:"provider"`
	// Domain and Service name the identity <domain>.<service> the instance asks for.
	Domain  string `json:"domain"`
	Service string `json:"service"`
	// InstanceID is the instance's id in the provider's namespace, read from the CSR.
	InstanceID string `json:"instance_id"`
	// AttestationData is the instance's opaque attestation (the provider's signed identity
	// document), base64 in JSON.
	AttestationData []byte `json:"attestation_data"`
	// SANs are the CSR's names.
	SANs SANs `json:"csr_sans"`
	// ClientAddr is the address the instance called the CA from.
	ClientAddr string `json:"client_addr"`
	// Hostname is what the instance says its hostname is.
	Hostname string `json:"hostname"`
	// TTLSeconds is the lifetime the CA will issue unless the provider shortens it.
	TTLSeconds int64 `json:"ttl_seconds"`
}

// Response is the provider's answer.
type Response struct {
	// Allowed says whether the instance may have the identity.
	Allowed bool `json:"allowed"`
	// Reason says why not (or anything the provider wants logged).
	Reason string `json:"reason"`
	// TTLSeconds, when positive, shortens the certificate's lifetime to at most that.
	TTLSeconds int64 `json:"ttl_seconds"`
}

// responseWire has pointer fields so that a missing "allowed" is told from false.
type responseWire struct {
	Allowed    *bool  `json:"allowed"`
	Reason     string `json:"reason"`
	TTLSeconds int64  `json:"ttl_seconds"`
}

// DecodeResponse reads a provider's answer strictly: one JSON object with "allowed" (required),
// "reason" (at most MaxReasonLen bytes of UTF-8) and "ttl_seconds" (not negative); any other
// key, a duplicated key, a wrong type or trailing data is an error naming it.
func DecodeResponse(data []byte) (*Response, error) {
	if len(data) > MaxResponseBytes {
		return nil, fmt.Errorf("%w: response: %d bytes, more than %d", ErrMalformed, len(data), MaxResponseBytes)
	}
	if err := checkObjectKeys(data, "response"); err != nil {
		return nil, err
	}
	var w responseWire
	if err := decodeStrict(data, &w); err != nil {
		return nil, decodeError("response", err)
	}
	switch {
	case w.Allowed == nil:
		return nil, fmt.Errorf("%w: response.allowed: required", ErrMalformed)
	case w.TTLSeconds < 0:
		return nil, fmt.Errorf("%w: response.ttl_seconds: %d is negative", ErrMalformed, w.TTLSeconds)
	case len(w.Reason) > MaxReasonLen:
		return nil, fmt.Errorf("%w: response.reason: %d bytes, at most %d", ErrMalformed, len(w.Reason), MaxReasonLen)
	case !utf8.ValidString(w.Reason):
		return nil, fmt.Errorf("%w: response.reason: not valid UTF-8", ErrMalformed)
	}
	return &Response{Allowed: *w.Allowed, Reason: w.Reason, TTLSeconds: w.TTLSeconds}, nil
}

// DecodeRequest reads the CA's request strictly, for a provider's confirm endpoint: unknown
// or duplicated keys, wrong types and trailing data are errors naming the key, and operation,
// provider, domain, service and instance_id are required.
func DecodeRequest(data []byte) (*Request, error) {
	if len(data) > MaxRequestBytes {
		return nil, fmt.Errorf("%w: request: %d bytes, more than %d", ErrMalformed, len(data), MaxRequestBytes)
	}
	if err := checkObjectKeys(data, "request"); err != nil {
		return nil, err
	}
	var r Request
	if err := decodeStrict(data, &r); err != nil {
		return nil, decodeError("request", err)
	}
	for _, f := range []struct{ name, v string }{
		{"operation", r.Operation}, {"provider", r.Provider}, {"domain", r.Domain},
		{"service", r.Service}, {"instance_id", r.InstanceID},
	} {
		if f.v == "" {
			return nil, fmt.Errorf("%w: request.%s: required", ErrMalformed, f.name)
		}
	}
	if r.Operation != OperationRegister && r.Operation != OperationRefresh {
		return nil, fmt.Errorf("%w: request.operation: %q is not %q or %q", ErrMalformed, r.Operation, OperationRegister, OperationRefresh)
	}
	if r.TTLSeconds < 0 {
		return nil, fmt.Errorf("%w: request.ttl_seconds: %d is negative", ErrMalformed, r.TTLSeconds)
	}
	return &r, nil
}

// decodeStrict decodes exactly one JSON value with unknown fields refused.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// checkObjectKeys makes sure data is a JSON object whose top-level keys appear once each:
// encoding/json would silently keep the last of two.
func checkObjectKeys(data []byte, where string) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return decodeError(where, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("%w: %s: want a JSON object", ErrMalformed, where)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return decodeError(where, err)
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("%w: %s: want a key", ErrMalformed, where)
		}
		if seen[key] {
			return fmt.Errorf("%w: %s.%s: key appears twice", ErrMalformed, where, key)
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return decodeError(where+"."+key, err)
		}
	}
	return nil
}

func decodeError(where string, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: %s: empty or truncated JSON", ErrMalformed, where)
	case errors.As(err, &syn):
		return fmt.Errorf("%w: %s: invalid JSON at byte %d: %v", ErrMalformed, where, syn.Offset, syn)
	case errors.As(err, &typ):
		if typ.Field != "" {
			return fmt.Errorf("%w: %s.%s: want %v, got JSON %s", ErrMalformed, where, typ.Field, typ.Type, typ.Value)
		}
		return fmt.Errorf("%w: %s: want %v, got JSON %s", ErrMalformed, where, typ.Type, typ.Value)
	}
	return fmt.Errorf("%w: %s: %v", ErrMalformed, where, err)
}
