package raftstore

import (
	"fmt"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// txn is the working copy of the state one command changes. Handlers check every precondition
// first and change the copy only after; the copy is kept if the handler's outcome commits.
type txn struct {
	*State
	cfg   *FSMConfig
	cmdID string
	// now is the command's time, set by the proposer.
	now int64
}

// Result codes, short names for the handlers.
const (
	codeInvalid            = meshcav1.ResultCode_RESULT_CODE_INVALID_COMMAND
	codeNotFound           = meshcav1.ResultCode_RESULT_CODE_NOT_FOUND
	codeAlreadyExists      = meshcav1.ResultCode_RESULT_CODE_ALREADY_EXISTS
	codeFailedPrecondition = meshcav1.ResultCode_RESULT_CODE_FAILED_PRECONDITION
	codeSerialMismatch     = meshcav1.ResultCode_RESULT_CODE_SERIAL_MISMATCH
	codeLaunchNotAuth      = meshcav1.ResultCode_RESULT_CODE_LAUNCH_NOT_AUTHORIZED
	codeProviderDisabled   = meshcav1.ResultCode_RESULT_CODE_PROVIDER_DISABLED
	codeKeyReused          = meshcav1.ResultCode_RESULT_CODE_KEY_REUSED
	codeInstanceRevoked    = meshcav1.ResultCode_RESULT_CODE_INSTANCE_REVOKED
	codeCertRevoked        = meshcav1.ResultCode_RESULT_CODE_CERT_REVOKED
	codeCertExpired        = meshcav1.ResultCode_RESULT_CODE_CERT_EXPIRED
	codeTokenUsed          = meshcav1.ResultCode_RESULT_CODE_TOKEN_USED
	codeTokenExpired       = meshcav1.ResultCode_RESULT_CODE_TOKEN_EXPIRED
	codeNonceReused        = meshcav1.ResultCode_RESULT_CODE_NONCE_REUSED
)

// event appends an audit event and drops the oldest beyond the retention count.
func (tx *txn) event(kind meshcav1.EventKind, subject, serial, detail string) {
	idx := tx.nextEvent
	tx.nextEvent++
	tx.events.Set(idx, &meshcav1.Event{
		Index: idx, Kind: kind, Subject: subject, Serial: serial, Time: tx.now, Detail: detail, CommandId: tx.cmdID,
	})
	for tx.events.Len() > tx.cfg.EventRetention {
		oldest, _, _ := tx.events.first()
		tx.events.Delete(oldest)
	}
}

// revokeSerial adds a revocation for a serial that has a certificate record and none yet;
// it reports whether it added one. The CRL number moves once per command (bumpCRL).
func (tx *txn) revokeSerial(serial string, reason meshcav1.RevocationReason, detail, instance string) (*meshcav1.Revocation, bool) {
	if serial == "" {
		return nil, false
	}
	if _, done := tx.revocations.Get(serial); done {
		return nil, false
	}
	cert, ok := tx.certs.Get(serial)
	if !ok {
		// No record: the certificate expired and was pruned, so the CRL need not list it.
		return nil, false
	}
	r := &meshcav1.Revocation{
		Serial: serial, Time: tx.now, Reason: reason, Detail: detail, NotAfter: cert.GetNotAfter(), Instance: instance,
	}
	tx.revocations.Set(serial, r)
	return r, true
}

// bumpCRL moves the CRL number after the revocation list changed.
func (tx *txn) bumpCRL() {
	if tx.ca == nil {
		return
	}
	ca := clone(tx.ca)
	ca.CrlNumber++
	ca.Updated = tx.now
	tx.ca = ca
}

// knownIssuer reports whether an issuer id is the CA's active, next or a retired issuer.
func (tx *txn) knownIssuer(id string) bool {
	if tx.ca == nil {
		return false
	}
	if tx.ca.GetActiveIssuer().GetId() == id || tx.ca.GetNextIssuer().GetId() == id {
		return true
	}
	for _, is := range tx.ca.GetRetiredIssuers() {
		if is.GetId() == id {
			return true
		}
	}
	return false
}

// checkCertShape validates the fields of a certificate record carried by a command, without
// looking at the state.
func (tx *txn) checkCertShape(field string, c *meshcav1.Cert) *outcome {
	if c == nil {
		return deny(codeInvalid, "%s: required", field)
	}
	if err := validateSerial(c.GetSerial()); err != nil {
		return deny(codeInvalid, "%s.serial: %v", field, err)
	}
	if n := len(c.GetSpkiSha256()); n != 32 {
		return deny(codeInvalid, "%s.spki_sha256: %d bytes, must be a 32-byte SHA-256", field, n)
	}
	if c.GetNotAfter() <= c.GetNotBefore() {
		return deny(codeInvalid, "%s.not_after: %d is not after not_before %d", field, c.GetNotAfter(), c.GetNotBefore())
	}
	if c.GetNotAfter() <= tx.now {
		return deny(codeInvalid, "%s.not_after: %d has passed at the command time %d", field, c.GetNotAfter(), tx.now)
	}
	if len(c.GetPurposes()) == 0 {
		return deny(codeInvalid, "%s.purposes: at least one purpose is required", field)
	}
	for _, p := range c.GetPurposes() {
		if p != meshcav1.Purpose_PURPOSE_CLIENT_AUTH && p != meshcav1.Purpose_PURPOSE_SERVER_AUTH {
			return deny(codeInvalid, "%s.purposes: %v is not client_auth or server_auth", field, p)
		}
	}
	if c.GetIssuerId() == "" {
		return deny(codeInvalid, "%s.issuer_id: required (root retirement depends on it)", field)
	}
	return nil
}

// recordNewCert validates a certificate record carried by a command against the rules every
// new certificate follows (a fresh serial, a known issuer, and a public key not used before
// unless reuseAllowed) and records it: the certificate, the first use of its key (when new)
// and the issuer's latest expiry. The serial and the key are checked by inserting them, one
// walk of each table instead of a lookup and an insert; on a refusal the command's journal
// undoes the inserts. Handlers call it after every other check, checkCertShape among them.
func (tx *txn) recordNewCert(field string, c *meshcav1.Cert, reuseAllowed bool) *outcome {
	if !tx.knownIssuer(c.GetIssuerId()) {
		return deny(codeFailedPrecondition, "%s.issuer_id: %q is not an issuer of this CA (active, next or retired)", field, c.GetIssuerId())
	}
	if _, dup := tx.certs.swap(c.GetSerial(), c); dup {
		return deny(codeAlreadyExists, "%s.serial: %s was already issued", field, c.GetSerial())
	}
	key := string(c.GetSpkiSha256())
	first := &meshcav1.KeyUse{
		SpkiSha256: c.GetSpkiSha256(), Serial: c.GetSerial(), Instance: c.GetInstance(),
		FirstUsed: tx.now, NotAfter: c.GetNotAfter(),
	}
	if ku, used := tx.keyUses.swap(key, first); used {
		if !reuseAllowed {
			return deny(codeKeyReused, "%s.spki_sha256: public key %x was first used by serial %s; a new key is required unless reuse is forced",
				field, c.GetSpkiSha256(), ku.GetSerial())
		}
		tx.keyUses.Set(key, ku) // the first use stays on record
	}
	tx.certExpiry.Set(expiryKey(c.GetNotAfter(), c.GetSerial()), struct{}{})
	// The bound is exact, so a root can be retired the moment its last certificate expires.
	if u, ok := tx.issuerUses.Get(c.GetIssuerId()); !ok || u.GetLastNotAfter() < c.GetNotAfter() {
		tx.issuerUses.Set(c.GetIssuerId(), &meshcav1.IssuerUse{IssuerId: c.GetIssuerId(), LastNotAfter: c.GetNotAfter()})
	}
	return nil
}

// checkLaunch checks at apply time that a provider exists, is enabled, and that the service
// grants it launch.
func (tx *txn) checkLaunch(field, provider, domain, service string) (*meshcav1.Service, *outcome) {
	p, ok := tx.providers.Get(provider)
	if !ok {
		return nil, deny(codeNotFound, "%s.provider: %q is not a registered provider", field, provider)
	}
	if !p.GetEnabled() {
		return nil, deny(codeProviderDisabled, "%s.provider: %q is disabled", field, provider)
	}
	svc, ok := tx.services.Get(Identity(domain, service))
	if !ok {
		return nil, deny(codeNotFound, "%s.service: %q is not a registered service", field, Identity(domain, service))
	}
	if !AnyGrantMatches(svc.GetLaunchGrants(), provider) {
		return nil, deny(codeLaunchNotAuth, "%s.provider: service %q grants launch to no pattern matching %q (grants: %v)",
			field, Identity(domain, service), provider, svc.GetLaunchGrants())
	}
	return svc, nil
}

// checkPutMode applies a PutMode to whether the record exists.
func checkPutMode(field string, mode meshcav1.PutMode, exists bool, name string) *outcome {
	switch mode {
	case meshcav1.PutMode_PUT_MODE_UPSERT:
	case meshcav1.PutMode_PUT_MODE_CREATE:
		if exists {
			return deny(codeAlreadyExists, "%s: %q already exists (mode create)", field, name)
		}
	case meshcav1.PutMode_PUT_MODE_UPDATE:
		if !exists {
			return deny(codeNotFound, "%s: %q does not exist (mode update)", field, name)
		}
	default:
		return deny(codeInvalid, "%s.mode: unknown put mode %d", field, mode)
	}
	return nil
}

// instanceRef is a validated instance name, with its full name and its storage slot.
type instanceRef struct{ provider, domain, service, id, fullKey, slotKey string }

func (r instanceRef) key() string  { return r.fullKey }
func (r instanceRef) slot() string { return r.slotKey }

// parseInstanceRef validates the four parts of an instance name.
func parseInstanceRef(field, provider, domain, service, id string) (instanceRef, *outcome) {
	if err := validateProviderName(provider); err != nil {
		return instanceRef{}, deny(codeInvalid, "%s.provider: %v", field, err)
	}
	if err := validateIdentityParts(domain, service); err != nil {
		return instanceRef{}, deny(codeInvalid, "%s: %v", field, err)
	}
	if err := validateDNSName(id); err != nil {
		return instanceRef{}, deny(codeInvalid, "%s.instance_id: %v", field, err)
	}
	return instanceRef{
		provider: provider, domain: domain, service: service, id: id,
		fullKey: InstanceKey(provider, domain, service, id), slotKey: instanceSlot(provider, id),
	}, nil
}

// lookupInstance finds an instance by its full name.
func (tx *txn) lookupInstance(field string, ref instanceRef) (*meshcav1.Instance, *outcome) {
	inst, ok := tx.instances.Get(ref.slot())
	if !ok || inst.GetDomain() != ref.domain || inst.GetService() != ref.service {
		return nil, deny(codeNotFound, "%s: instance %q is not registered", field, ref.key())
	}
	return inst, nil
}

// deny is a refusal for the check helpers, which answer nil when the check passes.
func deny(code meshcav1.ResultCode, format string, args ...any) *outcome {
	o := refusal(code, format, args...)
	return &o
}

// indexed names an element of a repeated field.
func indexed(field string, i int) string { return fmt.Sprintf("%s[%d]", field, i) }
