package raftstore

import (
	"bytes"
	"fmt"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// Limits on instance commands.
const (
	maxClientAddrLen = 256
	maxDetailLen     = 1024
	// maxNonceLifetime bounds how long a nonce is kept, so replay records cannot pile up.
	maxNonceLifetime = int64(7 * 24 * time.Hour)
)

// RefreshDecision is what the serial a refresh presents allows.
type RefreshDecision int

// The outcomes of DecideRefresh.
const (
	// RefreshRotate: the presented serial is the current one; previous := current, current := new.
	RefreshRotate RefreshDecision = iota + 1
	// RefreshRetryPrevious: the presented serial is the previous one and the client lost the
	// answer to its last refresh; current := new, accepted once.
	RefreshRetryPrevious
	// RefreshMismatch: any other serial. The credential is in more than one pair of hands: the
	// instance is revoked.
	RefreshMismatch
)

// DecideRefresh decides, from an instance record alone, what a refresh presenting a serial is
// allowed to do. sameKeyAsCurrent says whether the new certificate's key is the key of the
// instance's current certificate.
//
// The previous serial is accepted once, as the retry of a client that lost the answer to its
// last refresh. A plain refresh proves it is that retry by asking again for the same key (the
// agent resends the CSR whose answer it lost); after an extend, whose answer the client has not
// yet confirmed with an extend-verify, any key is accepted. This is what makes two parties
// refreshing with one certificate at the same time a mismatch: exactly one of them wins.
func DecideRefresh(inst *meshcav1.Instance, presented string, sameKeyAsCurrent bool) (RefreshDecision, string) {
	switch {
	case presented != "" && presented == inst.GetCurrentSerial():
		return RefreshRotate, ""
	case presented != "" && presented == inst.GetPreviousSerial():
		if inst.GetPreviousRetried() {
			return RefreshMismatch, fmt.Sprintf("previous serial %s was already presented once since serial %s was issued",
				presented, inst.GetCurrentSerial())
		}
		if !inst.GetExtendPending() && !sameKeyAsCurrent {
			return RefreshMismatch, fmt.Sprintf("previous serial %s was presented with a new key, not the key of the unanswered certificate %s",
				presented, inst.GetCurrentSerial())
		}
		return RefreshRetryPrevious, ""
	default:
		return RefreshMismatch, fmt.Sprintf("presented serial %s is neither the current serial %s nor the previous serial %q",
			presented, inst.GetCurrentSerial(), inst.GetPreviousSerial())
	}
}

// checkAddrHost bounds the free-text fields an issuance records.
func checkAddrHost(field, addr, host string) *outcome {
	if len(addr) > maxClientAddrLen {
		return deny(codeInvalid, "%s.client_addr: longer than %d characters", field, maxClientAddrLen)
	}
	if len(host) > maxNameLen {
		return deny(codeInvalid, "%s.hostname: longer than %d characters", field, maxNameLen)
	}
	return nil
}

func applyRegister(tx *txn, c *meshcav1.RecordRegisterCommand) outcome {
	const field = "record_register"
	ref, o := parseInstanceRef(field, c.GetProvider(), c.GetDomain(), c.GetService(), c.GetInstanceId())
	if o != nil {
		return *o
	}
	if o := tx.checkCertShape(field+".cert", c.GetCert()); o != nil {
		return *o
	}
	if o := checkAddrHost(field, c.GetClientAddr(), c.GetHostname()); o != nil {
		return *o
	}
	if c.GetTokenJti() != "" {
		if err := validateID(c.GetTokenJti()); err != nil {
			return refusal(codeInvalid, "%s.token_jti: %v", field, err)
		}
	}
	if _, o := tx.checkLaunch(field, ref.provider, ref.domain, ref.service); o != nil {
		return *o
	}
	existing, exists := tx.instances.Get(ref.slot())
	if exists {
		if existing.GetDomain() != ref.domain || existing.GetService() != ref.service {
			return refusal(codeAlreadyExists, "%s.instance_id: %q is already held by %q under provider %q; instance ids are unique per provider",
				field, ref.id, Identity(existing.GetDomain(), existing.GetService()), ref.provider)
		}
		if existing.GetRevoked() {
			return refusal(codeInstanceRevoked, "%s.instance_id: instance %q was revoked (%s); a revoked instance id never registers again",
				field, ref.key(), existing.GetRevokeReason())
		}
	}
	var tok *meshcav1.Token
	if c.GetTokenJti() != "" {
		if tok, o = tx.checkToken(field+".token_jti", c.GetTokenJti(), ref.domain, ref.service, ref.id); o != nil {
			return *o
		}
	}
	cert := c.GetCert() // decoded for this apply alone: completed and stored as it is
	cert.Identity, cert.Instance, cert.Issued, cert.CsrRequest = Identity(ref.domain, ref.service), ref.key(), tx.now, ""
	if o := tx.recordNewCert(field+".cert", cert, c.GetForceKeyReuse()); o != nil {
		return *o
	}

	inst := &meshcav1.Instance{
		Provider: ref.provider, Domain: ref.domain, Service: ref.service, InstanceId: ref.id,
		CurrentSerial: cert.GetSerial(), CurrentIssued: tx.now, CurrentClientAddr: c.GetClientAddr(),
		Hostname: c.GetHostname(), Created: tx.now,
	}
	detail := "registered"
	if exists {
		inst.Created = existing.GetCreated()
		detail = "registered again; serial " + existing.GetCurrentSerial() + " is no longer accepted for refresh"
	}
	tx.instances.Set(ref.slot(), inst)
	if tok != nil {
		tx.markTokenUsed(tok)
	}
	tx.event(meshcav1.EventKind_EVENT_KIND_ISSUED, ref.key(), cert.GetSerial(), detail)
	return success(inst)
}

func applyRefresh(tx *txn, c *meshcav1.RecordRefreshCommand) outcome {
	const field = "record_refresh"
	ref, o := parseInstanceRef(field, c.GetProvider(), c.GetDomain(), c.GetService(), c.GetInstanceId())
	if o != nil {
		return *o
	}
	if err := validateSerial(c.GetPresentedSerial()); err != nil {
		return refusal(codeInvalid, "%s.presented_serial: %v", field, err)
	}
	if o := tx.checkCertShape(field+".cert", c.GetCert()); o != nil {
		return *o
	}
	if o := checkAddrHost(field, c.GetClientAddr(), c.GetHostname()); o != nil {
		return *o
	}
	inst, o := tx.lookupInstance(field, ref)
	if o != nil {
		return *o
	}
	sameKey := false
	cur, haveCur := tx.certs.Get(inst.GetCurrentSerial())
	if haveCur {
		sameKey = bytes.Equal(cur.GetSpkiSha256(), c.GetCert().GetSpkiSha256())
	}
	decision, why := DecideRefresh(inst, c.GetPresentedSerial(), sameKey)
	if inst.GetRevoked() {
		if decision == RefreshMismatch {
			// Still a mismatch (e.g. the losers of a refresh race): say so; the instance is
			// revoked already, nothing more changes.
			out := refusal(codeSerialMismatch, "%s.presented_serial: %s; instance %q is revoked (%s)", field, why, ref.key(), inst.GetRevokeReason())
			out.res.Payload = &meshcav1.CommandResult_Instance{Instance: inst}
			return out
		}
		return refusal(codeInstanceRevoked, "%s: instance %q was revoked (%s) and never refreshes again; launch a new instance",
			field, ref.key(), inst.GetRevokeReason())
	}
	if decision == RefreshMismatch {
		// The refusal must persist: revoke the instance and its certificates, record the
		// detection, and commit that while answering SerialMismatch.
		revoked := tx.revokeInstance(inst, ref, meshcav1.RevocationReason_REVOCATION_REASON_KEY_COMPROMISE, "serial mismatch: "+why)
		tx.event(meshcav1.EventKind_EVENT_KIND_COMPROMISE_DETECTED, ref.key(), c.GetPresentedSerial(), why)
		out := refusal(codeSerialMismatch, "%s.presented_serial: %s; instance %q is now revoked", field, why, ref.key())
		out.res.Payload = &meshcav1.CommandResult_Instance{Instance: revoked}
		out.commit = true
		return out
	}
	if tx.IsRevoked(c.GetPresentedSerial()) {
		return refusal(codeCertRevoked, "%s.presented_serial: certificate %s is revoked", field, c.GetPresentedSerial())
	}
	pc, ok := cur, haveCur // a rotation presents the current certificate
	if c.GetPresentedSerial() != inst.GetCurrentSerial() {
		pc, ok = tx.certs.Get(c.GetPresentedSerial())
	}
	if ok && tx.now >= pc.GetNotAfter() {
		return refusal(codeCertExpired, "%s.presented_serial: certificate %s expired at %d (command time %d); an expired certificate cannot refresh, register again",
			field, c.GetPresentedSerial(), pc.GetNotAfter(), tx.now)
	}
	if _, o := tx.checkLaunch(field, ref.provider, ref.domain, ref.service); o != nil {
		return *o
	}
	cert := c.GetCert() // decoded for this apply alone: completed and stored as it is
	cert.Identity, cert.Instance, cert.Issued, cert.CsrRequest = Identity(ref.domain, ref.service), ref.key(), tx.now, ""
	reuseAllowed := c.GetForceKeyReuse() || decision == RefreshRetryPrevious && sameKey

	next := clone(inst)
	detail := "refreshed"
	if decision == RefreshRotate {
		next.PreviousSerial, next.PreviousIssued, next.PreviousClientAddr = inst.GetCurrentSerial(), inst.GetCurrentIssued(), inst.GetCurrentClientAddr()
		next.PreviousRetried = false
	} else {
		// The unanswered certificate is superseded (revoked, so no valid certificate is left
		// that its holder never confirmed); the previous serial has had its one retry.
		next.PreviousRetried = true
		detail = "refreshed with the previous serial (retry after a lost answer); unanswered serial " + inst.GetCurrentSerial() + " superseded"
		if _, added := tx.revokeSerial(inst.GetCurrentSerial(), meshcav1.RevocationReason_REVOCATION_REASON_SUPERSEDED, detail, ref.key()); added {
			tx.bumpCRL()
		}
	}
	// Last, as it records the certificate (a refusal here undoes the supersede above too).
	if o := tx.recordNewCert(field+".cert", cert, reuseAllowed); o != nil {
		return *o
	}
	next.CurrentSerial, next.CurrentIssued, next.CurrentClientAddr = cert.GetSerial(), tx.now, c.GetClientAddr()
	next.ExtendPending = c.GetExtend() || decision == RefreshRetryPrevious && inst.GetExtendPending()
	if c.GetHostname() != "" {
		next.Hostname = c.GetHostname()
	}
	tx.instances.Set(ref.slot(), next)
	tx.event(meshcav1.EventKind_EVENT_KIND_REFRESHED, ref.key(), cert.GetSerial(), detail)
	return success(next)
}

// revokeInstance marks an instance revoked and revokes its current and previous certificates.
func (tx *txn) revokeInstance(inst *meshcav1.Instance, ref instanceRef, reason meshcav1.RevocationReason, detail string) *meshcav1.Instance {
	n := clone(inst)
	n.Revoked, n.RevokeReason, n.RevokedTime, n.ExtendPending = true, detail, tx.now, false
	tx.instances.Set(ref.slot(), n)
	changed := false
	for _, serial := range []string{inst.GetCurrentSerial(), inst.GetPreviousSerial()} {
		if _, added := tx.revokeSerial(serial, reason, detail, ref.key()); added {
			changed = true
		}
	}
	if changed {
		tx.bumpCRL()
	}
	return n
}

func applyVerifyExtend(tx *txn, c *meshcav1.VerifyExtendCommand) outcome {
	const field = "verify_extend"
	ref, o := parseInstanceRef(field, c.GetProvider(), c.GetDomain(), c.GetService(), c.GetInstanceId())
	if o != nil {
		return *o
	}
	if err := validateSerial(c.GetSerial()); err != nil {
		return refusal(codeInvalid, "%s.serial: %v", field, err)
	}
	inst, o := tx.lookupInstance(field, ref)
	if o != nil {
		return *o
	}
	if inst.GetRevoked() {
		return refusal(codeInstanceRevoked, "%s: instance %q was revoked (%s)", field, ref.key(), inst.GetRevokeReason())
	}
	if !inst.GetExtendPending() {
		return refusal(codeFailedPrecondition, "%s: instance %q has no extend awaiting verification", field, ref.key())
	}
	if c.GetSerial() != inst.GetCurrentSerial() {
		return refusal(codeFailedPrecondition, "%s.serial: %s is not the certificate the extend issued (%s)", field, c.GetSerial(), inst.GetCurrentSerial())
	}
	next := clone(inst)
	retired := inst.GetPreviousSerial()
	next.PreviousSerial, next.PreviousIssued, next.PreviousClientAddr, next.PreviousRetried = "", 0, "", false
	next.ExtendPending = false
	tx.instances.Set(ref.slot(), next)
	tx.event(meshcav1.EventKind_EVENT_KIND_EXTEND_VERIFIED, ref.key(), c.GetSerial(), "previous serial "+retired+" retired")
	return success(next)
}

// validReason reports whether a revocation reason is one of the defined CRL reasons.
func validReason(r meshcav1.RevocationReason) bool {
	return r.Descriptor().Values().ByNumber(protoreflect.EnumNumber(r)) != nil
}

func applyRevoke(tx *txn, c *meshcav1.RevokeCommand) outcome {
	const field = "revoke"
	if !validReason(c.GetReason()) {
		return refusal(codeInvalid, "%s.reason: %d is not a CRL reason", field, c.GetReason())
	}
	if len(c.GetDetail()) > maxDetailLen {
		return refusal(codeInvalid, "%s.detail: longer than %d characters", field, maxDetailLen)
	}
	detail := c.GetReason().String()
	if c.GetDetail() != "" {
		detail += ": " + c.GetDetail()
	}
	switch t := c.GetTarget().(type) {
	case *meshcav1.RevokeCommand_Instance:
		ref, o := parseInstanceRef(field+".instance", t.Instance.GetProvider(), t.Instance.GetDomain(), t.Instance.GetService(), t.Instance.GetInstanceId())
		if o != nil {
			return *o
		}
		inst, o := tx.lookupInstance(field+".instance", ref)
		if o != nil {
			return *o
		}
		if inst.GetRevoked() {
			return refusal(codeInstanceRevoked, "%s.instance: instance %q is already revoked (%s)", field, ref.key(), inst.GetRevokeReason())
		}
		n := tx.revokeInstance(inst, ref, c.GetReason(), detail)
		tx.event(meshcav1.EventKind_EVENT_KIND_REVOKED, ref.key(), inst.GetCurrentSerial(), detail)
		return success(n)
	case *meshcav1.RevokeCommand_Serial:
		if err := validateSerial(t.Serial); err != nil {
			return refusal(codeInvalid, "%s.serial: %v", field, err)
		}
		cert, ok := tx.certs.Get(t.Serial)
		if !ok {
			return refusal(codeNotFound, "%s.serial: no certificate %s on record (unknown, or expired and pruned)", field, t.Serial)
		}
		if tx.IsRevoked(t.Serial) {
			return refusal(codeAlreadyExists, "%s.serial: certificate %s is already revoked", field, t.Serial)
		}
		r, _ := tx.revokeSerial(t.Serial, c.GetReason(), detail, cert.GetInstance())
		tx.bumpCRL()
		subject := cert.GetInstance()
		if subject == "" {
			subject = cert.GetIdentity()
		}
		tx.event(meshcav1.EventKind_EVENT_KIND_REVOKED, subject, t.Serial, detail)
		return success(r)
	default:
		return refusal(codeInvalid, "%s.target: an instance or a serial is required", field)
	}
}

func applyIssueToken(tx *txn, c *meshcav1.IssueTokenCommand) outcome {
	const field = "issue_token.token"
	t := c.GetToken()
	if t == nil {
		return refusal(codeInvalid, "%s: required", field)
	}
	if err := validateID(t.GetJti()); err != nil {
		return refusal(codeInvalid, "%s.jti: %v", field, err)
	}
	if err := validateIdentityParts(t.GetDomain(), t.GetService()); err != nil {
		return refusal(codeInvalid, "%s: %v", field, err)
	}
	if err := validateDNSName(t.GetInstanceId()); err != nil {
		return refusal(codeInvalid, "%s.instance_id: %v", field, err)
	}
	if err := validateID(t.GetIssuedBy()); err != nil {
		return refusal(codeInvalid, "%s.issued_by: %v", field, err)
	}
	if t.GetExpires() <= tx.now {
		return refusal(codeInvalid, "%s.expires: %d is not after the command time %d", field, t.GetExpires(), tx.now)
	}
	if _, ok := tx.services.Get(Identity(t.GetDomain(), t.GetService())); !ok {
		return refusal(codeNotFound, "%s: service %q does not exist", field, Identity(t.GetDomain(), t.GetService()))
	}
	if _, dup := tx.tokens.Get(t.GetJti()); dup {
		return refusal(codeAlreadyExists, "%s.jti: token %q already exists", field, t.GetJti())
	}
	rec := &meshcav1.Token{
		Jti: t.GetJti(), Domain: t.GetDomain(), Service: t.GetService(), InstanceId: t.GetInstanceId(),
		IssuedBy: t.GetIssuedBy(), Issued: tx.now, Expires: t.GetExpires(),
	}
	tx.tokens.Set(rec.GetJti(), rec)
	tx.tokenExpiry.Set(expiryKey(rec.GetExpires(), rec.GetJti()), struct{}{})
	tx.event(meshcav1.EventKind_EVENT_KIND_TOKEN_ISSUED, Identity(rec.GetDomain(), rec.GetService())+"/"+rec.GetInstanceId(), "", "register token issued by "+rec.GetIssuedBy())
	return success(rec)
}

// checkToken checks that a register token exists, is unused and unexpired at the command
// time, and is bound to this instance.
func (tx *txn) checkToken(field, jti, domain, service, instanceID string) (*meshcav1.Token, *outcome) {
	t, ok := tx.tokens.Get(jti)
	if !ok {
		return nil, deny(codeNotFound, "%s: token %q does not exist (never issued, or expired and pruned)", field, jti)
	}
	if t.GetUsed() {
		return nil, deny(codeTokenUsed, "%s: token %q was already used at %d; a register token works once", field, jti, t.GetUsedTime())
	}
	if tx.now >= t.GetExpires() {
		return nil, deny(codeTokenExpired, "%s: token %q expired at %d (command time %d)", field, jti, t.GetExpires(), tx.now)
	}
	if t.GetDomain() != domain || t.GetService() != service || t.GetInstanceId() != instanceID {
		return nil, deny(codeLaunchNotAuth, "%s: token %q is bound to %s/%s, not %s/%s",
			field, jti, Identity(t.GetDomain(), t.GetService()), t.GetInstanceId(), Identity(domain, service), instanceID)
	}
	return t, nil
}

// markTokenUsed consumes a token.
func (tx *txn) markTokenUsed(t *meshcav1.Token) *meshcav1.Token {
	n := clone(t)
	n.Used, n.UsedTime = true, tx.now
	tx.tokens.Set(n.GetJti(), n)
	return n
}

func applyConsumeToken(tx *txn, c *meshcav1.ConsumeTokenCommand) outcome {
	if err := validateID(c.GetJti()); err != nil {
		return refusal(codeInvalid, "consume_token.jti: %v", err)
	}
	t, o := tx.checkToken("consume_token.jti", c.GetJti(), c.GetDomain(), c.GetService(), c.GetInstanceId())
	if o != nil {
		return *o
	}
	return success(tx.markTokenUsed(t))
}

func applyUseNonce(tx *txn, c *meshcav1.UseNonceCommand) outcome {
	const field = "use_nonce"
	if _, _, err := SplitIdentity(c.GetScope()); err != nil {
		return refusal(codeInvalid, "%s.scope: %v", field, err)
	}
	if n := len(c.GetNonce()); n == 0 || n > maxNonceLen {
		return refusal(codeInvalid, "%s.nonce: %d bytes, want 1 to %d", field, n, maxNonceLen)
	}
	if c.GetExpires() <= tx.now {
		return refusal(codeInvalid, "%s.expires: %d is not after the command time %d", field, c.GetExpires(), tx.now)
	}
	if c.GetExpires()-tx.now > maxNonceLifetime {
		return refusal(codeInvalid, "%s.expires: more than %s after the command time", field, time.Duration(maxNonceLifetime))
	}
	key := nonceKey(c.GetScope(), c.GetNonce())
	if old, used := tx.nonces.Get(key); used {
		return refusal(codeNonceReused, "%s.nonce: %q was already used for %q at %d; a replayed token is refused", field, c.GetNonce(), c.GetScope(), old.GetUsed())
	}
	rec := &meshcav1.Nonce{Scope: c.GetScope(), Nonce: c.GetNonce(), Expires: c.GetExpires(), Used: tx.now}
	tx.nonces.Set(key, rec)
	tx.nonceExpiry.Set(expiryKey(rec.GetExpires(), key), struct{}{})
	return success(rec)
}
