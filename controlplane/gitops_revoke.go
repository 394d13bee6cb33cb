package controlplane

import (
	"context"
	"errors"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/raftstore"
)

// RevokeCSR revokes the certificate a manually approved request was issued: its serial joins
// the revocations (and so the CRL) with the reason given. The request itself stays issued.
func (a *Admin) RevokeCSR(ctx context.Context, req *meshcav1.RevokeCSRRequest) (*meshcav1.CSRRequest, error) {
	st := a.store.State()
	r, rerr := st.CSRRequest(req.GetId())
	c, err := a.authorize(ctx, st, ActionCSRDecide, csrResource(r, req.GetId()))
	if err != nil {
		return nil, err
	}
	if errors.Is(rerr, raftstore.ErrNotFound) {
		return nil, notFound("id", "csr request %q does not exist", req.GetId())
	}
	if r.GetState() != meshcav1.CSRState_CSR_STATE_ISSUED || r.GetSerial() == "" {
		return nil, refuse(raftstore.ErrFailedPrecondition, "id", "csr request %q is %s; only an issued request has a certificate to revoke", r.GetId(), r.GetState())
	}
	detail := req.GetDetail()
	if detail == "" {
		detail = "revoked by " + c.SPIFFEID
	}
	if _, err := a.commit(ctx, c, "revoke.", &meshcav1.Command{Command: &meshcav1.Command_Revoke{Revoke: &meshcav1.RevokeCommand{
		Target: &meshcav1.RevokeCommand_Serial{Serial: r.GetSerial()},
		Reason: req.GetReason(),
		Detail: detail,
	}}}); err != nil {
		return nil, err
	}
	return r, nil
}
