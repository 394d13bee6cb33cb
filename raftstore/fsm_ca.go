package raftstore

import (
	"bytes"
	"crypto/sha256"
	"slices"
	"time"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// Limits on CA and federation records.
const (
	maxCertDER     = 64 << 10
	maxChainLen    = 8
	maxRoots       = 16
	maxBundleBytes = 1 << 20
)

// rootIndex finds a root by the SHA-256 of its DER, or -1.
func rootIndex(roots [][]byte, sum []byte) int {
	for i, r := range roots {
		h := sha256.Sum256(r)
		if bytes.Equal(h[:], sum) {
			return i
		}
	}
	return -1
}

// checkRoots validates a trust bundle: 1 to maxRoots distinct, non-empty DER certificates.
func checkRoots(field string, roots [][]byte) *outcome {
	if len(roots) == 0 || len(roots) > maxRoots {
		return deny(codeInvalid, "%s: %d roots, want 1 to %d", field, len(roots), maxRoots)
	}
	for i, r := range roots {
		if len(r) == 0 || len(r) > maxCertDER {
			return deny(codeInvalid, "%s[%d]: %d bytes, want a DER certificate of 1 to %d bytes", field, i, len(r), maxCertDER)
		}
		h := sha256.Sum256(r)
		if rootIndex(roots[:i], h[:]) >= 0 {
			return deny(codeInvalid, "%s[%d]: the same root appears twice", field, i)
		}
	}
	return nil
}

// checkIssuer validates an issuer record against the bundle it must chain to.
func (tx *txn) checkIssuer(field string, is *meshcav1.Issuer, roots [][]byte) *outcome {
	if is == nil {
		return deny(codeInvalid, "%s: required", field)
	}
	if err := validateID(is.GetId()); err != nil {
		return deny(codeInvalid, "%s.id: %v", field, err)
	}
	if n := len(is.GetChain()); n == 0 || n > maxChainLen {
		return deny(codeInvalid, "%s.chain: %d certificates, want 1 to %d", field, n, maxChainLen)
	}
	for i, der := range is.GetChain() {
		if len(der) == 0 || len(der) > maxCertDER {
			return deny(codeInvalid, "%s.chain[%d]: %d bytes, want a DER certificate of 1 to %d bytes", field, i, len(der), maxCertDER)
		}
	}
	switch k := is.GetSigner().GetKey().(type) {
	case *meshcav1.SignerRef_Pkcs11Label:
		if k.Pkcs11Label == "" {
			return deny(codeInvalid, "%s.signer.pkcs11_label: empty", field)
		}
	case *meshcav1.SignerRef_EncryptedKey:
		if len(k.EncryptedKey) == 0 {
			return deny(codeInvalid, "%s.signer.encrypted_key: empty", field)
		}
	default:
		return deny(codeInvalid, "%s.signer: a pkcs11_label or an encrypted_key is required", field)
	}
	if len(is.GetRootSha256()) != sha256.Size {
		return deny(codeInvalid, "%s.root_sha256: %d bytes, must be a 32-byte SHA-256", field, len(is.GetRootSha256()))
	}
	if rootIndex(roots, is.GetRootSha256()) < 0 {
		return deny(codeInvalid, "%s.root_sha256: %x is no root of the bundle", field, is.GetRootSha256())
	}
	if is.GetNotAfter() <= tx.now {
		return deny(codeInvalid, "%s.not_after: %d has passed at the command time %d", field, is.GetNotAfter(), tx.now)
	}
	return nil
}

func applySetCA(tx *txn, c *meshcav1.SetCACommand) outcome {
	if tx.ca != nil {
		return refusal(codeAlreadyExists, "set_ca: the CA is already set (active issuer %q); rotate it instead", tx.ca.GetActiveIssuer().GetId())
	}
	if o := checkRoots("set_ca.roots", c.GetRoots()); o != nil {
		return *o
	}
	if o := tx.checkIssuer("set_ca.active_issuer", c.GetActiveIssuer(), c.GetRoots()); o != nil {
		return *o
	}
	tx.ca = &meshcav1.CA{Roots: slices.Clone(c.GetRoots()), ActiveIssuer: c.GetActiveIssuer(), Updated: tx.now}
	tx.event(meshcav1.EventKind_EVENT_KIND_CA_SET, "ca", "", "CA set; active issuer "+c.GetActiveIssuer().GetId())
	return success(tx.ca)
}

// requireCA refuses a CA step before the CA is set.
func (tx *txn) requireCA(field string) *outcome {
	if tx.ca == nil {
		return deny(codeFailedPrecondition, "%s: the CA is not set", field)
	}
	return nil
}

func applyPrepareCARotation(tx *txn, c *meshcav1.PrepareCARotationCommand) outcome {
	const field = "prepare_ca_rotation"
	if o := tx.requireCA(field); o != nil {
		return *o
	}
	if next := tx.ca.GetNextIssuer(); next != nil {
		return refusal(codeFailedPrecondition, "%s: a rotation to issuer %q is already prepared; activate it first", field, next.GetId())
	}
	roots := tx.ca.GetRoots()
	if len(c.GetNewRoot()) > 0 {
		h := sha256.Sum256(c.GetNewRoot())
		if rootIndex(roots, h[:]) < 0 {
			roots = append([][]byte{c.GetNewRoot()}, roots...)
		}
	}
	if o := checkRoots(field+".new_root", roots); o != nil {
		return *o
	}
	next := c.GetNextIssuer()
	if o := tx.checkIssuer(field+".next_issuer", next, roots); o != nil {
		return *o
	}
	if tx.knownIssuer(next.GetId()) {
		return refusal(codeAlreadyExists, "%s.next_issuer.id: issuer %q is already an issuer of this CA", field, next.GetId())
	}
	ca := clone(tx.ca)
	ca.Roots, ca.NextIssuer, ca.Updated = slices.Clone(roots), next, tx.now
	tx.ca = ca
	tx.event(meshcav1.EventKind_EVENT_KIND_CA_ROTATION_PREPARED, "ca", "", "next issuer "+next.GetId()+" prepared; its root is in the bundle")
	return success(ca)
}

func applyActivateCAIssuer(tx *txn, c *meshcav1.ActivateCAIssuerCommand) outcome {
	const field = "activate_ca_issuer"
	if o := tx.requireCA(field); o != nil {
		return *o
	}
	next := tx.ca.GetNextIssuer()
	if next == nil {
		return refusal(codeFailedPrecondition, "%s: no rotation is prepared", field)
	}
	if c.GetIssuerId() != next.GetId() {
		return refusal(codeFailedPrecondition, "%s.issuer_id: %q is not the prepared next issuer %q", field, c.GetIssuerId(), next.GetId())
	}
	ca := clone(tx.ca)
	old := ca.ActiveIssuer
	ca.RetiredIssuers = append(ca.RetiredIssuers, old)
	ca.ActiveIssuer, ca.NextIssuer, ca.Updated = ca.NextIssuer, nil, tx.now
	// The request belongs to this activate alone: a later one without it clears it.
	ca.ReissueRequested = 0
	detail := "signing switched from issuer " + old.GetId() + " to " + next.GetId()
	if c.GetReissue() {
		ca.ReissueRequested = tx.now
		detail += "; certificates it did not sign are to be replaced now"
	}
	tx.ca = ca
	tx.event(meshcav1.EventKind_EVENT_KIND_CA_ROTATED, "ca", "", detail)
	return success(ca)
}

func applyRetireCARoot(tx *txn, c *meshcav1.RetireCARootCommand) outcome {
	const field = "retire_ca_root"
	if o := tx.requireCA(field); o != nil {
		return *o
	}
	sum := c.GetRootSha256()
	if len(sum) != sha256.Size {
		return refusal(codeInvalid, "%s.root_sha256: %d bytes, must be a 32-byte SHA-256", field, len(sum))
	}
	i := rootIndex(tx.ca.GetRoots(), sum)
	if i < 0 {
		return refusal(codeNotFound, "%s.root_sha256: %x is not in the bundle", field, sum)
	}
	if len(tx.ca.GetRoots()) == 1 {
		return refusal(codeFailedPrecondition, "%s.root_sha256: %x is the only root; the bundle cannot be emptied", field, sum)
	}
	for _, is := range []*meshcav1.Issuer{tx.ca.GetActiveIssuer(), tx.ca.GetNextIssuer()} {
		if is != nil && bytes.Equal(is.GetRootSha256(), sum) {
			return refusal(codeFailedPrecondition, "%s.root_sha256: issuer %q still chains to root %x", field, is.GetId(), sum)
		}
	}
	var keep []*meshcav1.Issuer
	var dropped []string
	for _, is := range tx.ca.GetRetiredIssuers() {
		if !bytes.Equal(is.GetRootSha256(), sum) {
			keep = append(keep, is)
			continue
		}
		if u, ok := tx.issuerUses.Get(is.GetId()); ok && u.GetLastNotAfter() > tx.now {
			return refusal(codeFailedPrecondition, "%s.root_sha256: issuer %q signed certificates valid until %s (command time %s); drop the root after that",
				field, is.GetId(), nanosUTC(u.GetLastNotAfter()), nanosUTC(tx.now))
		}
		dropped = append(dropped, is.GetId())
	}
	ca := clone(tx.ca)
	ca.Roots = slices.Delete(ca.Roots, i, i+1)
	ca.RetiredIssuers, ca.Updated = keep, tx.now
	tx.ca = ca
	for _, id := range dropped {
		tx.issuerUses.Delete(id)
	}
	tx.event(meshcav1.EventKind_EVENT_KIND_CA_ROOT_RETIRED, "ca", "", "root dropped from the bundle")
	return success(ca)
}

func applyPutFederation(tx *txn, c *meshcav1.PutFederationCommand) outcome {
	const field = "put_federation.federation"
	f := c.GetFederation()
	if f == nil {
		return refusal(codeInvalid, "%s: required", field)
	}
	if err := validateTrustDomain(f.GetTrustDomain()); err != nil {
		return refusal(codeInvalid, "%s.trust_domain: %v", field, err)
	}
	if n := len(f.GetBundle()); n == 0 || n > maxBundleBytes {
		return refusal(codeInvalid, "%s.bundle: %d bytes, want 1 to %d", field, n, maxBundleBytes)
	}
	if n := len(f.GetEndpointCa()); n > maxBundleBytes {
		return refusal(codeInvalid, "%s.endpoint_ca: %d bytes, at most %d", field, n, maxBundleBytes)
	}
	if len(f.GetEndpoint()) > maxEndpointLen || len(f.GetEndpointSpiffeId()) > maxEndpointLen {
		return refusal(codeInvalid, "%s.endpoint: longer than %d characters", field, maxEndpointLen)
	}
	old, exists := tx.federations.Get(f.GetTrustDomain())
	if exists && f.GetSequence() < old.GetSequence() {
		return refusal(codeFailedPrecondition, "%s.sequence: %d is older than the stored %d for %q", field, f.GetSequence(), old.GetSequence(), f.GetTrustDomain())
	}
	rec := &meshcav1.Federation{
		TrustDomain: f.GetTrustDomain(), Bundle: f.GetBundle(), Endpoint: f.GetEndpoint(),
		EndpointSpiffeId: f.GetEndpointSpiffeId(), LastRefresh: tx.now, Sequence: f.GetSequence(),
		EndpointCa: f.GetEndpointCa(),
	}
	tx.federations.Set(rec.GetTrustDomain(), rec)
	changed := !exists || !bytes.Equal(old.GetBundle(), rec.GetBundle()) || old.GetSequence() != rec.GetSequence() ||
		old.GetEndpoint() != rec.GetEndpoint() || old.GetEndpointSpiffeId() != rec.GetEndpointSpiffeId() ||
		!bytes.Equal(old.GetEndpointCa(), rec.GetEndpointCa())
	if changed {
		tx.event(meshcav1.EventKind_EVENT_KIND_FEDERATION_UPDATED, rec.GetTrustDomain(), "", "federated bundle updated")
	}
	return success(rec)
}

func applyRemoveFederation(tx *txn, c *meshcav1.RemoveFederationCommand) outcome {
	if _, ok := tx.federations.Get(c.GetTrustDomain()); !ok {
		return refusal(codeNotFound, "remove_federation.trust_domain: %q is not federated", c.GetTrustDomain())
	}
	tx.federations.Delete(c.GetTrustDomain())
	tx.event(meshcav1.EventKind_EVENT_KIND_FEDERATION_REMOVED, c.GetTrustDomain(), "", "federation removed")
	return success(nil)
}

// nanosUTC formats a Unix-nanosecond time for a refusal: RFC 3339 in UTC with the nanoseconds
// it has, the same on every node.
func nanosUTC(t int64) string { return time.Unix(0, t).UTC().Format(time.RFC3339Nano) }
