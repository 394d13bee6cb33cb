package controlplane

import (
	"testing"

	"google.golang.org/grpc/codes"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// RevokeCSR: only a system admin revokes; only an issued request has a certificate to
// revoke; the revoked serial joins the revocations with its reason, once.
func TestRevokeCSRRules(t *testing.T) {
	e := newAdminEnv(t)
	e.seed()
	root := e.as(rootAdmin)
	ctx := e.ctx()
	pending, err := root.SubmitCSR(ctx, &meshcav1.SubmitCSRRequest{Csr: newCSR(t, "pending.example"), Spec: []byte(`{"common_name":"pending.example"}`)})
	ok(t, err)
	issued, err := root.SubmitCSR(ctx, &meshcav1.SubmitCSRRequest{Csr: newCSR(t, "web.example"), Spec: []byte(`{"common_name":"web.example"}`)})
	ok(t, err)
	issued, err = root.ApproveCSR(ctx, &meshcav1.ApproveCSRRequest{Id: issued.GetId()})
	ok(t, err)
	if issued.GetSerial() == "" {
		t.Fatalf("approved request has no serial: %v", issued)
	}
	keyCompromise := meshcav1.RevocationReason_REVOCATION_REASON_KEY_COMPROMISE

	t.Run("a caller who is not a system admin is refused", func(t *testing.T) {
		_, err := e.as(plainCaller).RevokeCSR(ctx, &meshcav1.RevokeCSRRequest{Id: issued.GetId()})
		wantStatus(t, err, codes.PermissionDenied, "is not a system admin")
	})
	t.Run("an unknown request is not found", func(t *testing.T) {
		_, err := root.RevokeCSR(ctx, &meshcav1.RevokeCSRRequest{Id: "nope"})
		wantStatus(t, err, codes.NotFound, `csr request "nope" does not exist`)
	})
	t.Run("a request without a certificate cannot be revoked", func(t *testing.T) {
		_, err := root.RevokeCSR(ctx, &meshcav1.RevokeCSRRequest{Id: pending.GetId()})
		wantStatus(t, err, codes.FailedPrecondition, "only an issued request has a certificate to revoke")
	})
	t.Run("an issued request's serial is revoked with its reason", func(t *testing.T) {
		_, err := root.RevokeCSR(ctx, &meshcav1.RevokeCSRRequest{Id: issued.GetId(), Reason: keyCompromise, Detail: "leaked"})
		ok(t, err)
		var found *meshcav1.Revocation
		for _, r := range e.s.Store().State().Revocations() {
			if r.GetSerial() == issued.GetSerial() {
				found = r
			}
		}
		if found == nil || found.GetReason() != keyCompromise {
			t.Fatalf("revocation of %s: %v", issued.GetSerial(), found)
		}
	})
	t.Run("a certificate is revoked once", func(t *testing.T) {
		_, err := root.RevokeCSR(ctx, &meshcav1.RevokeCSRRequest{Id: issued.GetId(), Reason: keyCompromise})
		wantStatus(t, err, codes.AlreadyExists, "already revoked")
	})
}
