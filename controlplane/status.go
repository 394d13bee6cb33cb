package controlplane

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/raftstore"
)

// Sentinel errors for the refusals this package decides itself; the refusals the replicated
// state, the CA engine and the policy decide wrap the sentinels of raftstore, ca and policy.
// Every refusal names the field and the rule in its message.
var (
	// ErrUnauthenticated means the call needs a client certificate and none was presented, or
	// the one presented does not chain to this CA's trust bundle.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrClientCertExpired means the client certificate is outside its validity period.
	ErrClientCertExpired = errors.New("client certificate expired")
	// ErrClientCertRevoked means the client certificate's serial is revoked.
	ErrClientCertRevoked = errors.New("client certificate revoked")
	// ErrIdentityMismatch means a refresh CSR names another identity or instance than the
	// client certificate it is authenticated with.
	ErrIdentityMismatch = errors.New("identity mismatch")
	// ErrProviderDenied means the provider answered that the instance may not have the
	// identity.
	ErrProviderDenied = errors.New("provider denied the instance")
	// ErrProviderUnavailable means the provider's confirm endpoint could not be reached, did not
	// prove it is the provider, or answered something that is not a confirmation.
	ErrProviderUnavailable = errors.New("provider unavailable")
	// ErrRateLimited means a caller asked for more certificates than its limit allows.
	ErrRateLimited = errors.New("rate limited")
	// ErrNotReady means this node cannot issue yet: the CA record has not reached it.
	ErrNotReady = errors.New("not ready")
	// ErrNotEnabled means the request asks for a flow this server does not run.
	ErrNotEnabled = errors.New("flow not enabled")
)

// refusal is an error whose message is "<field>: <rule>" and which wraps the sentinel a caller
// branches on. reason, when set, is the label of meshca_refused_total; otherwise the mapping
// table decides it.
type refusal struct {
	field, rule string
	kind        error
	reason      string
}

// Error is "<field>: <rule>".
func (r *refusal) Error() string { return r.field + ": " + r.rule }

// Unwrap returns the sentinel.
func (r *refusal) Unwrap() error { return r.kind }

// refuse builds a refusal of kind naming field and the rule.
func refuse(kind error, field, format string, args ...any) error {
	return &refusal{field: field, rule: fmt.Sprintf(format, args...), kind: kind}
}

// refuseAs is refuse with an explicit metrics reason.
func refuseAs(reason string, kind error, field, format string, args ...any) error {
	return &refusal{field: field, rule: fmt.Sprintf(format, args...), kind: kind, reason: reason}
}

// statusRule maps a sentinel to a gRPC code and a meshca_refused_total reason.
type statusRule struct {
	err    error
	code   codes.Code
	reason string
}

// statusRules is the one table that maps errors to gRPC codes. The first rule an error matches
// (errors.Is) decides, so more specific sentinels come first.
var statusRules = []statusRule{
	{ErrRateLimited, codes.ResourceExhausted, "rate_limited"},
	{ErrUnauthenticated, codes.Unauthenticated, "unauthenticated"},
	{ErrClientCertExpired, codes.Unauthenticated, "cert_expired"},
	{ErrClientCertRevoked, codes.PermissionDenied, "cert_revoked"},
	{ErrIdentityMismatch, codes.PermissionDenied, "identity_mismatch"},
	{ErrProviderDenied, codes.PermissionDenied, "provider_denied"},
	{ErrProviderUnavailable, codes.Unavailable, "provider_unavailable"},
	{ErrNotReady, codes.Unavailable, "not_ready"},
	{ErrNotEnabled, codes.Unimplemented, "not_enabled"},

	{raftstore.ErrSerialMismatch, codes.PermissionDenied, "serial_mismatch"},
	{raftstore.ErrInstanceRevoked, codes.PermissionDenied, "instance_revoked"},
	{raftstore.ErrCertRevoked, codes.PermissionDenied, "cert_revoked"},
	{raftstore.ErrCertExpired, codes.Unauthenticated, "cert_expired"},
	{raftstore.ErrLaunchNotAuthorized, codes.PermissionDenied, "launch_not_authorized"},
	{raftstore.ErrProviderDisabled, codes.PermissionDenied, "provider_disabled"},
	{raftstore.ErrKeyReused, codes.AlreadyExists, "key_reused"},
	{raftstore.ErrTokenUsed, codes.PermissionDenied, "token_used"},
	{raftstore.ErrTokenExpired, codes.PermissionDenied, "token_expired"},
	{raftstore.ErrNonceReused, codes.PermissionDenied, "nonce_reused"},
	{raftstore.ErrNotFound, codes.NotFound, "not_found"},
	{raftstore.ErrAlreadyExists, codes.AlreadyExists, "already_exists"},
	{raftstore.ErrFailedPrecondition, codes.FailedPrecondition, "failed_precondition"},
	{raftstore.ErrInvalidCommand, codes.InvalidArgument, "invalid_argument"},
	{raftstore.ErrInvalidGrant, codes.InvalidArgument, "invalid_argument"},
	{raftstore.ErrUnknownServer, codes.NotFound, "not_found"},
	{raftstore.ErrNotLeader, codes.Unavailable, "unavailable"},
	{raftstore.ErrUnavailable, codes.Unavailable, "unavailable"},
	{raftstore.ErrShutdown, codes.Unavailable, "unavailable"},

	{policy.ErrKeyReused, codes.AlreadyExists, "key_reused"},
	{policy.ErrIssuerNotValid, codes.FailedPrecondition, "issuer_not_valid"},
	{policy.ErrCSRSignature, codes.InvalidArgument, "csr_signature"},
	{policy.ErrKeyNotAllowed, codes.InvalidArgument, "key_not_allowed"},
	{policy.ErrSubjectMismatch, codes.InvalidArgument, "csr_subject"},
	{policy.ErrSANNotAllowed, codes.InvalidArgument, "csr_san"},
	{policy.ErrCAExtensionRequested, codes.InvalidArgument, "csr_ca_extension"},
	{policy.ErrPurposeNotAllowed, codes.InvalidArgument, "purpose_not_allowed"},
	{policy.ErrLifetime, codes.InvalidArgument, "lifetime"},
	{policy.ErrSerial, codes.Internal, "internal"},
	{policy.ErrInvalidRequest, codes.InvalidArgument, "invalid_argument"},
	{policy.ErrInvalidSpec, codes.InvalidArgument, "invalid_argument"},

	{ca.ErrPEM, codes.InvalidArgument, "invalid_argument"},
	{ca.ErrSign, codes.Internal, "internal"},
}

// classify returns the gRPC code and the metrics reason of an error.
func classify(err error) (codes.Code, string) {
	switch {
	case errors.Is(err, raftstore.ErrUnavailable):
		// A proposal that gave up waiting for a leader wraps the deadline too; the caller
		// must learn the cluster is unavailable (retry elsewhere), not that it was slow.
		return codes.Unavailable, "unavailable"
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded, "deadline_exceeded"
	case errors.Is(err, context.Canceled):
		return codes.Canceled, "canceled"
	}
	var r *refusal
	reason := ""
	if errors.As(err, &r) {
		reason = r.reason
	}
	for _, rule := range statusRules {
		if errors.Is(err, rule.err) {
			if reason == "" {
				reason = rule.reason
			}
			return rule.code, reason
		}
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return s.Code(), "other"
	}
	return codes.Internal, "internal"
}

// StatusOf maps an error to the gRPC status a client sees: the code from the one mapping
// table of this package (sentinels of raftstore, ca, policy and this package), and the error's
// message, which names the field and the rule. An error that already is a gRPC status keeps
// it. An unclassified error becomes Internal with its message; callers log it first.
func StatusOf(err error) *status.Status {
	if err == nil {
		return status.New(codes.OK, "")
	}
	if s, ok := status.FromError(err); ok {
		return s
	}
	code, _ := classify(err)
	return status.New(code, err.Error())
}
