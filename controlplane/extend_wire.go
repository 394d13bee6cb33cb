package controlplane

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"unicode/utf8"

	"github.com/meshca/meshca/ca/policy"
)

// Fields of the extend API's request bodies.
const (
	// FieldClientCertCSR is the body field of an extend: the PEM CSR for the new certificate.
	FieldClientCertCSR = "clientCertCsr"
	// FieldClientCert is the body field of an extend-verify: the PEM of the new certificate.
	FieldClientCert = "clientCert"
)

// maxFieldNameInError bounds how much of an unknown key an error repeats.
const maxFieldNameInError = 64

// decodeExtendBody reads a request body of the extend API strictly: exactly one JSON object
// whose only key is field, present once, with a non-empty string value, and nothing after
// it. Anything else is an error wrapping policy.ErrInvalidRequest whose message names the
// field (or "body") and the rule.
func decodeExtendBody(data []byte, field string) (string, error) {
	bad := func(name, format string, args ...any) error {
		return refuse(policy.ErrInvalidRequest, name, format, args...)
	}
	want := `want {"` + field + `": "<PEM>"}`
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return "", bad("body", "not JSON (%s): %s", jsonProblem(err), want)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return "", bad("body", "a JSON %s, not an object: %s", jsonKind(tok), want)
	}
	value, seen := "", false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return "", bad("body", "invalid JSON: %s", jsonProblem(err))
		}
		key, _ := tok.(string)
		if key != field {
			return "", bad(strconv.Quote(clip(key)), "unknown field: the body has only %q", field)
		}
		if seen {
			return "", bad(field, "appears twice")
		}
		tok, err = dec.Token()
		if err != nil {
			return "", bad(field, "invalid JSON: %s", jsonProblem(err))
		}
		s, ok := tok.(string)
		if !ok {
			return "", bad(field, "want a string, got a JSON %s", jsonKind(tok))
		}
		value, seen = s, true
	}
	if _, err := dec.Token(); err != nil {
		return "", bad("body", "invalid JSON: %s", jsonProblem(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return "", bad("body", "trailing data after the JSON object")
	}
	if !seen || value == "" {
		return "", bad(field, "required: %s", want)
	}
	return value, nil
}

// jsonKind names the kind of a JSON token.
func jsonKind(tok json.Token) string {
	switch t := tok.(type) {
	case json.Delim:
		if t == '[' {
			return "array"
		}
		return "object"
	case string:
		return "string"
	case json.Number:
		return "number"
	case bool:
		return "boolean"
	case nil:
		return "null"
	}
	return "value"
}

// jsonProblem describes a decoding error without repeating the input.
func jsonProblem(err error) string {
	var syn *json.SyntaxError
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "empty or truncated"
	case errors.As(err, &syn):
		return "syntax error at byte " + strconv.FormatInt(syn.Offset, 10) + ": " + syn.Error()
	}
	return err.Error()
}

// clip shortens an unknown key for an error message and keeps it valid UTF-8.
func clip(key string) string {
	if len(key) > maxFieldNameInError {
		key = key[:maxFieldNameInError]
		for !utf8.ValidString(key) {
			key = key[:len(key)-1]
		}
		key += "…"
	}
	return key
}
