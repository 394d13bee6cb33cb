package controlplane

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"time"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/raftstore"
)

// pendingCSR is a manual-approval request decoded and checked against the policy in force.
type pendingCSR struct {
	der  []byte
	csr  *x509.CertificateRequest
	spec policy.Spec
}

// checkCSR decodes a request's CSR and spec and decides them with the policy of the active
// authority at now, without signing: a request that could never be issued is refused when it
// is submitted, and again before it is approved. It also refuses a public key that was used
// before unless the spec forces reuse.
func (a *Admin) checkCSR(st *raftstore.State, csrData, specJSON []byte, now time.Time) (*pendingCSR, error) {
	der, csr, err := parseCSR(csrData)
	if err != nil {
		return nil, err
	}
	if len(specJSON) == 0 {
		return nil, required("spec", "")
	}
	spec, err := policy.DecodeSpec(specJSON)
	if err != nil {
		return nil, err
	}
	auth, _, err := a.cfg.CA.Authority()
	if err != nil {
		return nil, err
	}
	// The serial only has to be valid here; the real one is drawn when the request is issued.
	dry := policy.SpecRequest{Spec: spec, Now: now, Serial: big.NewInt(1)}
	if _, err := auth.Policy().CheckSpec(csr, dry, auth.Issuer().Certificate()); err != nil {
		return nil, err
	}
	fp := policy.FingerprintSPKI(csr.RawSubjectPublicKeyInfo)
	if ku, err := st.KeyUse(fp[:]); err == nil {
		first, ok := new(big.Int).SetString(ku.GetSerial(), 16)
		if !ok {
			first = big.NewInt(0)
		}
		if err := policy.CheckKeyReuse(fp, first, spec.ForceIssue); err != nil {
			return nil, refuse(raftstore.ErrKeyReused, "csr", "public key %s was first certified by serial %s; set force_issue in the spec to reuse it: %v", fp, ku.GetSerial(), err)
		}
	}
	return &pendingCSR{der: der, csr: csr, spec: spec}, nil
}

// csrResource describes a request for authorization.
func csrResource(r *meshcav1.CSRRequest, id string) Resource {
	return Resource{Kind: "csr request", Name: id, Owner: r.GetSubmitter()}
}

// SubmitCSR files a manual-approval request after checking that it could be issued.
func (a *Admin) SubmitCSR(ctx context.Context, req *meshcav1.SubmitCSRRequest) (*meshcav1.CSRRequest, error) {
	st := a.store.State()
	c, err := a.authorize(ctx, st, ActionCSRSubmit, Resource{Kind: "csr request", Name: req.GetId()})
	if err != nil {
		return nil, err
	}
	p, err := a.checkCSR(st, req.GetCsr(), req.GetSpec(), a.now())
	if err != nil {
		return nil, err
	}
	id := req.GetId()
	if id == "" {
		if id, err = randomID(); err != nil {
			return nil, err
		}
	}
	// The stored spec is the decoded one, so every reader sees the same normal form.
	spec, err := json.Marshal(p.spec)
	if err != nil {
		return nil, fmt.Errorf("spec: encoding: %w", err)
	}
	out, err := a.commit(ctx, c, "submit_csr.", &meshcav1.Command{Command: &meshcav1.Command_SubmitCsr{SubmitCsr: &meshcav1.SubmitCSRCommand{
		Id: id, Csr: p.der, Spec: spec, Submitter: c.SPIFFEID,
	}}})
	if err != nil {
		return nil, err
	}
	return out.GetCsrRequest(), nil
}

// ApproveCSR approves a pending request, issues its certificate under the spec and records
// it. A request left approved by an issuance that failed is issued by approving it again.
func (a *Admin) ApproveCSR(ctx context.Context, req *meshcav1.ApproveCSRRequest) (*meshcav1.CSRRequest, error) {
	st := a.store.State()
	r, rerr := st.CSRRequest(req.GetId())
	c, err := a.authorize(ctx, st, ActionCSRDecide, csrResource(r, req.GetId()))
	if err != nil {
		return nil, err
	}
	if rerr != nil {
		return nil, notFound("id", "csr request %q does not exist", req.GetId())
	}
	now := a.now()
	p, err := a.checkCSR(st, r.GetCsr(), r.GetSpec(), now)
	if err != nil {
		return nil, fmt.Errorf("csr request %s cannot be issued (deny it instead): %w", r.GetId(), err)
	}
	if r.GetState() != meshcav1.CSRState_CSR_STATE_APPROVED {
		if _, err := a.commit(ctx, c, "approve_csr.", &meshcav1.Command{Command: &meshcav1.Command_ApproveCsr{ApproveCsr: &meshcav1.ApproveCSRCommand{
			Id: r.GetId(), Approver: c.SPIFFEID,
		}}}); err != nil {
			return nil, err
		}
	}
	auth, issuer, err := a.cfg.CA.Authority()
	if err != nil {
		return nil, err
	}
	serial, err := ca.NewSerial(nil)
	if err != nil {
		return nil, err
	}
	now = a.now()
	issued, err := auth.IssueSpec(p.der, policy.SpecRequest{Spec: p.spec, Now: now, Serial: serial})
	if err != nil {
		return nil, err
	}
	rec := certRecord(issued, issuer.GetId())
	rec.Identity = p.spec.CommonName
	out, err := a.commit(ctx, c, "record_csr_issued.", &meshcav1.Command{
		Time: now.UnixNano(),
		Command: &meshcav1.Command_RecordCsrIssued{RecordCsrIssued: &meshcav1.RecordCSRIssuedCommand{
			Id: r.GetId(), CertDer: issued.Chain[0], Cert: rec,
			ForceKeyReuse: p.spec.ForceIssue,
		}},
	})
	if err != nil {
		return nil, err
	}
	return out.GetCsrRequest(), nil
}

// DenyCSR denies a pending request.
func (a *Admin) DenyCSR(ctx context.Context, req *meshcav1.DenyCSRRequest) (*meshcav1.CSRRequest, error) {
	st := a.store.State()
	r, _ := st.CSRRequest(req.GetId())
	c, err := a.authorize(ctx, st, ActionCSRDecide, csrResource(r, req.GetId()))
	if err != nil {
		return nil, err
	}
	out, err := a.commit(ctx, c, "deny_csr.", &meshcav1.Command{Command: &meshcav1.Command_DenyCsr{DenyCsr: &meshcav1.DenyCSRCommand{
		Id: req.GetId(), Approver: c.SPIFFEID, Reason: req.GetReason(),
	}}})
	if err != nil {
		return nil, err
	}
	return out.GetCsrRequest(), nil
}

// ListCSRs lists the requests the caller may read.
func (a *Admin) ListCSRs(ctx context.Context, req *meshcav1.ListCSRsRequest) (*meshcav1.ListCSRsResponse, error) {
	st := a.store.State()
	c, err := a.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	out := &meshcav1.ListCSRsResponse{}
	for _, r := range st.CSRRequests(req.GetState()) {
		if a.allowed(c, ActionCSRRead, csrResource(r, r.GetId())) {
			out.Requests = append(out.Requests, r)
		}
	}
	return out, nil
}

// GetCSR returns a request.
func (a *Admin) GetCSR(ctx context.Context, req *meshcav1.GetCSRRequest) (*meshcav1.CSRRequest, error) {
	st := a.store.State()
	r, err := st.CSRRequest(req.GetId())
	if _, aerr := a.authorize(ctx, st, ActionCSRRead, csrResource(r, req.GetId())); aerr != nil {
		return nil, aerr
	}
	if errors.Is(err, raftstore.ErrNotFound) {
		return nil, notFound("id", "csr request %q does not exist", req.GetId())
	}
	return r, nil
}
