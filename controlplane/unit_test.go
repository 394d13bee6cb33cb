package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/raftstore"
)

// TestStatusMapping pins down the one table that maps errors to gRPC codes and refusal
// reasons, and that the message is the error's, naming the field and the rule.
func TestStatusMapping(t *testing.T) {
	cmdErr := func(code meshcav1.ResultCode, msg string) error {
		return raftstore.ResultError(&meshcav1.CommandResult{Code: code, Message: msg})
	}
	cases := []struct {
		name   string
		err    error
		code   codes.Code
		reason string
	}{
		{"serial mismatch from the log is permission denied", cmdErr(meshcav1.ResultCode_RESULT_CODE_SERIAL_MISMATCH, "record_refresh.presented_serial: x"), codes.PermissionDenied, "serial_mismatch"},
		{"revoked instance is permission denied", cmdErr(meshcav1.ResultCode_RESULT_CODE_INSTANCE_REVOKED, "record_refresh: x"), codes.PermissionDenied, "instance_revoked"},
		{"key reused in the log is already exists", cmdErr(meshcav1.ResultCode_RESULT_CODE_KEY_REUSED, "record_register.cert.spki_sha256: x"), codes.AlreadyExists, "key_reused"},
		{"instance id held by another identity is already exists", cmdErr(meshcav1.ResultCode_RESULT_CODE_ALREADY_EXISTS, "record_register.instance_id: x"), codes.AlreadyExists, "already_exists"},
		{"launch not authorized is permission denied", cmdErr(meshcav1.ResultCode_RESULT_CODE_LAUNCH_NOT_AUTHORIZED, "x"), codes.PermissionDenied, "launch_not_authorized"},
		{"provider disabled is permission denied", cmdErr(meshcav1.ResultCode_RESULT_CODE_PROVIDER_DISABLED, "x"), codes.PermissionDenied, "provider_disabled"},
		{"failed precondition stays failed precondition", cmdErr(meshcav1.ResultCode_RESULT_CODE_FAILED_PRECONDITION, "x"), codes.FailedPrecondition, "failed_precondition"},
		{"invalid command is invalid argument", cmdErr(meshcav1.ResultCode_RESULT_CODE_INVALID_COMMAND, "x"), codes.InvalidArgument, "invalid_argument"},
		{"no quorum is unavailable", fmt.Errorf("propose: %w", raftstore.ErrNoLeader), codes.Unavailable, "unavailable"},
		{"no quorum after waiting is still unavailable", fmt.Errorf("propose: %w (gave up: %w)", raftstore.ErrNoLeader, context.DeadlineExceeded), codes.Unavailable, "unavailable"},
		{"policy violation is invalid argument", policy.Violations{{Field: "csr", Rule: "x", Err: policy.ErrSANNotAllowed}}, codes.InvalidArgument, "csr_san"},
		{"rate limit is resource exhausted", refuse(ErrRateLimited, "instance", "x"), codes.ResourceExhausted, "rate_limited"},
		{"an explicit reason wins", refuseAs("provider_unknown", raftstore.ErrNotFound, "provider", "x"), codes.NotFound, "provider_unknown"},
		{"deadline is deadline exceeded", fmt.Errorf("apply: %w", context.DeadlineExceeded), codes.DeadlineExceeded, "deadline_exceeded"},
		{"an unknown error is internal", errors.New("boom"), codes.Internal, "internal"},
		{"a gRPC status is kept", status.Error(codes.Aborted, "x"), codes.Aborted, "other"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, reason := classify(tc.err)
			st := StatusOf(tc.err)
			if code != tc.code || st.Code() != tc.code || reason != tc.reason {
				t.Fatalf("classify = %v %q, StatusOf = %v; want %v %q", code, reason, st.Code(), tc.code, tc.reason)
			}
			if want := status.Convert(tc.err).Message(); st.Code() != codes.Aborted && st.Message() != tc.err.Error() {
				t.Fatalf("message %q, want the error's %q (%q)", st.Message(), tc.err.Error(), want)
			}
		})
	}
}

// TestKeyedLimiter pins down the issuance rate limits with an injected clock.
func TestKeyedLimiter(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	l := newKeyedLimiter(2)
	for i := range 2 {
		if ok, _ := l.allow("a", t0); !ok {
			t.Fatalf("token %d of a burst of 2 refused", i)
		}
	}
	ok, wait := l.allow("a", t0)
	if ok || wait != 30*time.Second {
		t.Fatalf("third token in the same instant: ok=%v wait=%s, want refused for 30s", ok, wait)
	}
	if ok, _ := l.allow("b", t0); !ok {
		t.Fatal("another key shares a's bucket")
	}
	if ok, _ := l.allow("a", t0.Add(29*time.Second)); ok {
		t.Fatal("a token came back before its time")
	}
	if ok, _ := l.allow("a", t0.Add(30*time.Second)); !ok {
		t.Fatal("a token did not come back after 30s")
	}
	l.sweep(t0.Add(89 * time.Second))
	if l.size() != 1 {
		t.Fatalf("sweep after 89s keeps %d keys, want only a (used at 30s)", l.size())
	}
	l.sweep(t0.Add(2 * time.Minute))
	if l.size() != 0 {
		t.Fatalf("sweep of idle keys keeps %d", l.size())
	}
}

// TestNodeCertificate pins down the node certificate: its SPIFFE ID and names, that it
// verifies to the CA, and when it is renewed.
func TestNodeCertificate(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString(testTD)
	now := time.Now()
	iss, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: td, RootKey: mustSoftware(t), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	id, err := NodeSPIFFEID(td, "n2")
	if err != nil || id.String() != "spiffe://mesh.test/meshca/server/n2" {
		t.Fatalf("node SPIFFE ID %s, %v", id, err)
	}
	cfg := &Config{NodeID: "n2", Listen: ListenConfig{GRPC: "10.0.0.7:7443", HTTP: ":7080", ClusterAdvertise: "ca-2.example:7444", ServerNames: []string{"ca.example"}}}
	cfg.CA.NodeCertTTL = NewDuration(24 * time.Hour)
	n := newNodeSVID(id, cfg)
	if err := n.issue(iss, "issuer-1", now); err != nil {
		t.Fatal(err)
	}
	svid, err := n.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	leaf := svid.Certificates[0]
	got, _, err := x509svid.Verify(svid.Certificates, x509bundle.FromX509Authorities(td, iss.Roots()))
	if err != nil || got != id {
		t.Fatalf("node certificate verifies as %s: %v", got, err)
	}
	for _, name := range []string{"ca-2.example", "ca.example", "localhost"} {
		if !slices.Contains(leaf.DNSNames, name) {
			t.Errorf("DNS SANs %v lack %s", leaf.DNSNames, name)
		}
	}
	if !slices.ContainsFunc(leaf.IPAddresses, net.ParseIP("10.0.0.7").Equal) || !slices.ContainsFunc(leaf.IPAddresses, net.ParseIP("127.0.0.1").Equal) {
		t.Errorf("IP SANs %v lack the listen address or loopback (HTTP listens on all interfaces)", leaf.IPAddresses)
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("ext key usage %v", leaf.ExtKeyUsage)
	}
	if d := leaf.NotAfter.Sub(now); d > 24*time.Hour || d < 23*time.Hour {
		t.Errorf("lifetime ends %s after issue, want 24h", d)
	}
	for _, c := range []struct {
		name   string
		issuer string
		at     time.Time
		want   bool
	}{
		{"not due before half its life", "issuer-1", now.Add(11 * time.Hour), false},
		{"due at half its life", "issuer-1", now.Add(12 * time.Hour), true},
		{"due at once when another issuer signs", "issuer-2", now, true},
	} {
		if due, _ := n.due(c.issuer, c.at); due != c.want {
			t.Errorf("%s: due = %v", c.name, due)
		}
	}
}

// TestBuildView pins down how a node turns the replicated CA record into its Authority.
func TestBuildView(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString(testTD)
	now := time.Now()
	key := mustSoftware(t)
	iss, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: td, RootKey: key, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	local, err := newLocalCA(iss, &meshcav1.SignerRef{Key: &meshcav1.SignerRef_Pkcs11Label{Pkcs11Label: "k"}})
	if err != nil {
		t.Fatal(err)
	}
	next, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: td, RootKey: mustSoftware(t), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	open := func(ref *meshcav1.SignerRef) (signer.Signer, error) { return key, nil }
	rec := &meshcav1.CA{Roots: [][]byte{next.Roots()[0].Raw, iss.Roots()[0].Raw}, ActiveIssuer: local.record}
	v, err := buildView(rec, td, policy.DefaultConfig(), open, now)
	if err != nil {
		t.Fatal(err)
	}
	if v.authority.Issuer().Certificate().Raw == nil || len(v.authority.Bundle().X509Authorities()) != 2 {
		t.Fatal("the view does not trust both roots of the bundle")
	}
	bad := &meshcav1.CA{Roots: [][]byte{next.Roots()[0].Raw}, ActiveIssuer: local.record}
	if _, err := buildView(bad, td, policy.DefaultConfig(), open, now); err == nil {
		t.Fatal("an issuer whose root is not in the bundle was accepted")
	}
	if viewKey(rec) == viewKey(bad) {
		t.Fatal("the view key ignores the roots")
	}
	bumped := &meshcav1.CA{Roots: rec.Roots, ActiveIssuer: local.record, CrlNumber: 7, Updated: 9}
	if viewKey(rec) != viewKey(bumped) {
		t.Fatal("a CRL bump would rebuild the Authority")
	}
}
