package raftstore

import (
	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// Limits on manual-approval requests.
const (
	maxCSRBytes  = 64 << 10
	maxSpecBytes = 64 << 10
)

// csrTransitions lists the only moves of the request state machine: pending → approved or
// denied, approved → issued.
var csrTransitions = map[meshcav1.CSRState]meshcav1.CSRState{
	meshcav1.CSRState_CSR_STATE_APPROVED: meshcav1.CSRState_CSR_STATE_PENDING,
	meshcav1.CSRState_CSR_STATE_DENIED:   meshcav1.CSRState_CSR_STATE_PENDING,
	meshcav1.CSRState_CSR_STATE_ISSUED:   meshcav1.CSRState_CSR_STATE_APPROVED,
}

// CSRTransitionAllowed reports whether a request may move from one state to another.
func CSRTransitionAllowed(from, to meshcav1.CSRState) bool {
	want, ok := csrTransitions[to]
	return ok && from == want
}

// lookupCSRFor finds a request and checks it may move to the target state.
func (tx *txn) lookupCSRFor(field, id string, to meshcav1.CSRState) (*meshcav1.CSRRequest, *outcome) {
	r, ok := tx.csrRequests.Get(id)
	if !ok {
		return nil, deny(codeNotFound, "%s: csr request %q does not exist", field, id)
	}
	if !CSRTransitionAllowed(r.GetState(), to) {
		return nil, deny(codeFailedPrecondition, "%s: csr request %q is %s; only a %s request can become %s",
			field, id, r.GetState(), csrTransitions[to], to)
	}
	return r, nil
}

func applySubmitCSR(tx *txn, c *meshcav1.SubmitCSRCommand) outcome {
	const field = "submit_csr"
	if err := validateID(c.GetId()); err != nil {
		return refusal(codeInvalid, "%s.id: %v", field, err)
	}
	if n := len(c.GetCsr()); n == 0 || n > maxCSRBytes {
		return refusal(codeInvalid, "%s.csr: %d bytes, want a DER PKCS#10 request of 1 to %d bytes", field, n, maxCSRBytes)
	}
	if n := len(c.GetSpec()); n > maxSpecBytes {
		return refusal(codeInvalid, "%s.spec: %d bytes, at most %d", field, n, maxSpecBytes)
	}
	if err := validateID(c.GetSubmitter()); err != nil {
		return refusal(codeInvalid, "%s.submitter: %v", field, err)
	}
	if _, dup := tx.csrRequests.Get(c.GetId()); dup {
		return refusal(codeAlreadyExists, "%s.id: csr request %q already exists", field, c.GetId())
	}
	rec := &meshcav1.CSRRequest{
		Id: c.GetId(), Csr: c.GetCsr(), Spec: c.GetSpec(), State: meshcav1.CSRState_CSR_STATE_PENDING,
		Submitter: c.GetSubmitter(), Submitted: tx.now,
	}
	tx.csrRequests.Set(rec.GetId(), rec)
	tx.event(meshcav1.EventKind_EVENT_KIND_CSR_SUBMITTED, rec.GetId(), "", "submitted by "+rec.GetSubmitter())
	return success(rec)
}

func applyApproveCSR(tx *txn, c *meshcav1.ApproveCSRCommand) outcome {
	const field = "approve_csr"
	if err := validateID(c.GetApprover()); err != nil {
		return refusal(codeInvalid, "%s.approver: %v", field, err)
	}
	r, o := tx.lookupCSRFor(field+".id", c.GetId(), meshcav1.CSRState_CSR_STATE_APPROVED)
	if o != nil {
		return *o
	}
	n := clone(r)
	n.State, n.Approver, n.Decided = meshcav1.CSRState_CSR_STATE_APPROVED, c.GetApprover(), tx.now
	tx.csrRequests.Set(n.GetId(), n)
	tx.event(meshcav1.EventKind_EVENT_KIND_CSR_APPROVED, n.GetId(), "", "approved by "+n.GetApprover())
	return success(n)
}

func applyDenyCSR(tx *txn, c *meshcav1.DenyCSRCommand) outcome {
	const field = "deny_csr"
	if err := validateID(c.GetApprover()); err != nil {
		return refusal(codeInvalid, "%s.approver: %v", field, err)
	}
	if len(c.GetReason()) > maxDetailLen {
		return refusal(codeInvalid, "%s.reason: longer than %d characters", field, maxDetailLen)
	}
	r, o := tx.lookupCSRFor(field+".id", c.GetId(), meshcav1.CSRState_CSR_STATE_DENIED)
	if o != nil {
		return *o
	}
	n := clone(r)
	n.State, n.Approver, n.Decided, n.DenyReason = meshcav1.CSRState_CSR_STATE_DENIED, c.GetApprover(), tx.now, c.GetReason()
	tx.csrRequests.Set(n.GetId(), n)
	tx.event(meshcav1.EventKind_EVENT_KIND_CSR_DENIED, n.GetId(), "", "denied by "+n.GetApprover()+": "+n.GetDenyReason())
	return success(n)
}

func applyCSRIssued(tx *txn, c *meshcav1.RecordCSRIssuedCommand) outcome {
	const field = "record_csr_issued"
	if n := len(c.GetCertDer()); n == 0 || n > maxCertDER {
		return refusal(codeInvalid, "%s.cert_der: %d bytes, want a DER certificate of 1 to %d bytes", field, n, maxCertDER)
	}
	if o := tx.checkCertShape(field+".cert", c.GetCert()); o != nil {
		return *o
	}
	if id := c.GetCert().GetIdentity(); id == "" || len(id) > maxNameLen {
		return refusal(codeInvalid, "%s.cert.identity: %d characters, want the certificate's name of 1 to %d", field, len(id), maxNameLen)
	}
	if c.GetCert().GetInstance() != "" {
		return refusal(codeInvalid, "%s.cert.instance: must be empty for a manually approved certificate", field)
	}
	r, o := tx.lookupCSRFor(field+".id", c.GetId(), meshcav1.CSRState_CSR_STATE_ISSUED)
	if o != nil {
		return *o
	}
	cert := c.GetCert() // decoded for this apply alone: completed and stored as it is
	cert.Issued, cert.CsrRequest = tx.now, r.GetId()
	if o := tx.recordNewCert(field+".cert", cert, c.GetForceKeyReuse()); o != nil {
		return *o
	}
	n := clone(r)
	n.State, n.Cert, n.Serial, n.Issued = meshcav1.CSRState_CSR_STATE_ISSUED, c.GetCertDer(), cert.GetSerial(), tx.now
	tx.csrRequests.Set(n.GetId(), n)
	tx.event(meshcav1.EventKind_EVENT_KIND_CSR_ISSUED, n.GetId(), cert.GetSerial(), "issued to "+cert.GetIdentity())
	return success(n)
}
