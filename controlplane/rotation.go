package controlplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/raftstore"
)

// ActionCARotate is a step of a CA rotation (prepare, activate, retire): system admins only.
const ActionCARotate Action = "ca.rotate"

// rotationFlow serves meshca.v1.CARotation on the gRPC port.
func rotationFlow(s *Server) error {
	meshcav1.RegisterCARotationServer(s.GRPCServer(), &rotationService{s: s})
	return nil
}

// rotationService drives a CA rotation: each step is one log command, so every node switches
// together when it applies it.
type rotationService struct {
	meshcav1.UnimplementedCARotationServer
	s *Server
}

// authorize authenticates the caller and decides action for it.
func (r *rotationService) authorize(ctx context.Context, action Action) error {
	c, err := r.s.Authenticate(ctx)
	if err != nil {
		return err
	}
	d := Authorize(r.s.SystemAdmins(), NewPrincipal(c.ID, r.s.TrustDomain()), action, Resource{Kind: "ca", Name: "rotation"})
	if !d.Allowed {
		r.s.Logger().Info("ca rotation call refused", "caller", c.ID.String(), "action", action, "reason", d.Reason)
	}
	return d.Err()
}

// currentCA reads the replicated CA record.
func (r *rotationService) currentCA() (*meshcav1.CA, error) {
	rec, err := r.s.Store().State().CA()
	if errors.Is(err, raftstore.ErrNotFound) {
		return nil, refuse(raftstore.ErrFailedPrecondition, "ca", "the cluster's CA is not set yet")
	}
	return rec, err
}

// Prepare generates a new root and publishes it as the next issuer.
func (r *rotationService) Prepare(ctx context.Context, _ *meshcav1.PrepareRotationRequest) (*meshcav1.RotationStatus, error) {
	if err := r.authorize(ctx, ActionCARotate); err != nil {
		return nil, err
	}
	rec, err := r.currentCA()
	if err != nil {
		return nil, err
	}
	if next := rec.GetNextIssuer(); next != nil {
		return nil, refuse(raftstore.ErrFailedPrecondition, "ca.next_issuer", "a rotation to issuer %s is already prepared; activate it first", next.GetId())
	}
	iss, ref, err := r.newRoot(r.s.Now())
	if err != nil {
		return nil, err
	}
	next, err := issuerRecord(iss, ref)
	if err != nil {
		return nil, err
	}
	// This node generated the key: keep it open so activating needs no second unseal.
	r.s.signers.add(iss.Signer())
	cmd := &meshcav1.Command{Command: &meshcav1.Command_PrepareCaRotation{PrepareCaRotation: &meshcav1.PrepareCARotationCommand{
		NewRoot: iss.Certificate().Raw, NextIssuer: next,
	}}}
	if err := r.apply(ctx, cmd); err != nil {
		return nil, err
	}
	r.s.Logger().Info("ca rotation prepared", "next_issuer", next.GetId())
	return r.status()
}

// apply commits a rotation step and waits until this node applied it, so the status it
// answers with shows the step even when a follower forwarded it to the leader.
func (r *rotationService) apply(ctx context.Context, cmd *meshcav1.Command) error {
	res, err := r.s.Apply(ctx, cmd)
	if err != nil {
		return err
	}
	fsm := r.s.Store().FSM()
	for {
		changed := fsm.Changed()
		if fsm.State().AppliedIndex() >= res.GetIndex() {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("ca rotation: committed at index %d, not yet applied on this node: %w", res.GetIndex(), ctx.Err())
		}
	}
}

// newRoot generates the next root's key and its self-signed certificate, and says where the
// key is: sealed under the KEK in the record, or on the PKCS#11 token under a new label.
func (r *rotationService) newRoot(now time.Time) (*ca.Issuer, *meshcav1.SignerRef, error) {
	cfg := r.s.Config()
	kt, err := signer.ParseKeyType(cfg.CA.KeyType)
	if err != nil {
		return nil, nil, fmt.Errorf("ca.key_type: %w", err)
	}
	var key signer.Signer
	var ref *meshcav1.SignerRef
	switch cfg.CA.Mode {
	case CAModeSelfSigned:
		sw, err := signer.GenerateSoftware(kt)
		if err != nil {
			return nil, nil, fmt.Errorf("ca.key_type %s: %w", kt, err)
		}
		sealed, err := signer.MarshalEncrypted(sw, r.s.signers.kek)
		if err != nil {
			return nil, nil, fmt.Errorf("ca.kek: sealing the new root key: %w", err)
		}
		key, ref = sw, &meshcav1.SignerRef{Key: &meshcav1.SignerRef_EncryptedKey{EncryptedKey: sealed}}
	case CAModePKCS11:
		label := cfg.CA.PKCS11.KeyLabel + "-" + now.UTC().Format("20060102T150405Z")
		tok, err := openOrGenerateToken(cfg, label, r.s.Logger())
		if err != nil {
			return nil, nil, fmt.Errorf("ca.pkcs11: generating key %q on the token: %w", label, err)
		}
		key, ref = tok, &meshcav1.SignerRef{Key: &meshcav1.SignerRef_Pkcs11Label{Pkcs11Label: label}}
	default:
		// A plug-in (cacerts) intermediate is rotated by signing a new one under the offline
		// root, which this cluster does not hold.
		return nil, nil, refuse(raftstore.ErrFailedPrecondition, "ca.mode",
			"%q: this node cannot make a new issuer; rotate a plug-in intermediate under its offline root", cfg.CA.Mode)
	}
	iss, err := ca.NewSelfSigned(ca.SelfSignedConfig{
		TrustDomain: r.s.TrustDomain(), RootKey: key, RootTTL: ca.DefaultRootTTL, Now: now,
		// A distinct subject per root, so no TLS stack mistakes one root for the other.
		Organization: "meshca " + now.UTC().Format(time.RFC3339),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("ca: generating the next root: %w", err)
	}
	return iss, ref, nil
}

// Activate switches signing to the prepared next issuer.
func (r *rotationService) Activate(ctx context.Context, req *meshcav1.ActivateRotationRequest) (*meshcav1.RotationStatus, error) {
	if err := r.authorize(ctx, ActionCARotate); err != nil {
		return nil, err
	}
	rec, err := r.currentCA()
	if err != nil {
		return nil, err
	}
	id := req.GetIssuerId()
	if id == "" {
		if rec.GetNextIssuer() == nil {
			return nil, refuse(raftstore.ErrFailedPrecondition, "ca.next_issuer", "no rotation is prepared; run prepare first")
		}
		id = rec.GetNextIssuer().GetId()
	}
	// Open the key before the switch, so a node that cannot open it fails here, not after
	// every node has started signing with an issuer it cannot use.
	if next := rec.GetNextIssuer(); next != nil && next.GetId() == id {
		if _, err := r.s.signers.open(next.GetSigner()); err != nil {
			return nil, refuse(raftstore.ErrFailedPrecondition, "ca.next_issuer.signer", "this node cannot open the next issuer's key: %v", err)
		}
	}
	cmd := &meshcav1.Command{Command: &meshcav1.Command_ActivateCaIssuer{ActivateCaIssuer: &meshcav1.ActivateCAIssuerCommand{
		IssuerId: id, Reissue: req.GetReissue(),
	}}}
	if err := r.apply(ctx, cmd); err != nil {
		return nil, err
	}
	r.s.Logger().Info("ca rotation activated", "issuer", id, "reissue", req.GetReissue())
	return r.status()
}

// Retire drops a root that only retired issuers chain to, once their certificates expired.
func (r *rotationService) Retire(ctx context.Context, req *meshcav1.RetireRotationRequest) (*meshcav1.RotationStatus, error) {
	if err := r.authorize(ctx, ActionCARotate); err != nil {
		return nil, err
	}
	rec, err := r.currentCA()
	if err != nil {
		return nil, err
	}
	st := r.s.Store().State()
	candidates, err := retirableRoots(st, rec)
	if err != nil {
		return nil, err
	}
	var pick *meshcav1.RetirableRoot
	if req.GetRootSha256() == "" {
		if len(candidates) == 0 {
			return nil, refuse(raftstore.ErrFailedPrecondition, "root_sha256", "no root can be retired: the active or next issuer chains to every root")
		}
		pick = candidates[0]
	} else {
		for _, c := range candidates {
			if c.GetSha256() == req.GetRootSha256() {
				pick = c
			}
		}
		if pick == nil {
			return nil, refuse(raftstore.ErrFailedPrecondition, "root_sha256", "%s is no root that only retired issuers chain to", req.GetRootSha256())
		}
	}
	now := r.s.Now()
	if at := pick.GetRetireAfter(); at != 0 && now.Unix() < at {
		return nil, refuse(raftstore.ErrFailedPrecondition, "root_sha256",
			"root %s: a certificate signed under it may be valid until then; retire becomes possible at %s",
			pick.GetSha256(), time.Unix(at, 0).UTC().Format(time.RFC3339))
	}
	sum, err := hex.DecodeString(pick.GetSha256())
	if err != nil {
		return nil, fmt.Errorf("root_sha256: %w", err)
	}
	// The state machine checks the same bound again at the command's time.
	cmd := &meshcav1.Command{Time: now.UnixNano(), Command: &meshcav1.Command_RetireCaRoot{RetireCaRoot: &meshcav1.RetireCARootCommand{RootSha256: sum}}}
	if err := r.apply(ctx, cmd); err != nil {
		return nil, err
	}
	r.s.Logger().Info("ca root retired", "root_sha256", pick.GetSha256())
	return r.status()
}

// Status describes the CA and its retirable roots.
func (r *rotationService) Status(ctx context.Context, _ *meshcav1.RotationStatusRequest) (*meshcav1.RotationStatus, error) {
	if err := r.authorize(ctx, ActionCARead); err != nil {
		return nil, err
	}
	return r.status()
}

// status reads this node's copy of the CA record.
func (r *rotationService) status() (*meshcav1.RotationStatus, error) {
	st := r.s.Store().State()
	rec, err := r.currentCA()
	if err != nil {
		return nil, err
	}
	out := &meshcav1.RotationStatus{Ca: &meshcav1.CAStatus{
		TrustDomain: r.s.TrustDomain().Name(), RotationState: rotationState(rec),
		CrlNumber: rec.GetCrlNumber(), Updated: time.Unix(0, rec.GetUpdated()).Unix(),
	}}
	for i, der := range rec.GetRoots() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("ca.roots[%d]: %w", i, err)
		}
		sum := sha256.Sum256(der)
		out.Ca.Roots = append(out.Ca.Roots, &meshcav1.CARoot{
			Subject: c.Subject.String(), Sha256: hex.EncodeToString(sum[:]),
			NotBefore: c.NotBefore.Unix(), NotAfter: c.NotAfter.Unix(), Der: der,
		})
	}
	if out.Ca.ActiveIssuer, err = issuerInfo(st, "ca.active_issuer", rec.GetActiveIssuer()); err != nil {
		return nil, err
	}
	if rec.GetNextIssuer() != nil {
		if out.Ca.NextIssuer, err = issuerInfo(st, "ca.next_issuer", rec.GetNextIssuer()); err != nil {
			return nil, err
		}
	}
	for i, is := range rec.GetRetiredIssuers() {
		info, err := issuerInfo(st, fmt.Sprintf("ca.retired_issuers[%d]", i), is)
		if err != nil {
			return nil, err
		}
		out.Ca.RetiredIssuers = append(out.Ca.RetiredIssuers, info)
	}
	if out.RetirableRoots, err = retirableRoots(st, rec); err != nil {
		return nil, err
	}
	if at := rec.GetReissueRequested(); at != 0 {
		out.Reissue = &meshcav1.ReissueStatus{IssuerId: rec.GetActiveIssuer().GetId(), Requested: time.Unix(0, at).Unix()}
	}
	return out, nil
}

// retirableRoots lists the roots no active or next issuer chains to, oldest first, each with
// the time the last certificate its retired issuers signed expires.
func retirableRoots(st *raftstore.State, rec *meshcav1.CA) ([]*meshcav1.RetirableRoot, error) {
	var out []*meshcav1.RetirableRoot
	roots := rec.GetRoots()
	// The bundle is newest first; retire the oldest first.
	for i := len(roots) - 1; i >= 0; i-- {
		sum := sha256.Sum256(roots[i])
		inUse := false
		for _, is := range []*meshcav1.Issuer{rec.GetActiveIssuer(), rec.GetNextIssuer()} {
			if is != nil && bytes.Equal(is.GetRootSha256(), sum[:]) {
				inUse = true
			}
		}
		if inUse {
			continue
		}
		c, err := x509.ParseCertificate(roots[i])
		if err != nil {
			return nil, fmt.Errorf("ca.roots[%d]: %w", i, err)
		}
		rr := &meshcav1.RetirableRoot{Sha256: hex.EncodeToString(sum[:]), Subject: c.Subject.String()}
		for _, is := range rec.GetRetiredIssuers() {
			if !bytes.Equal(is.GetRootSha256(), sum[:]) {
				continue
			}
			if u, err := st.IssuerUse(is.GetId()); err == nil {
				// The state machine refuses while last_not_after > command time: the first
				// whole second at or after it is when retiring is accepted.
				at := (u.GetLastNotAfter() + int64(time.Second) - 1) / int64(time.Second)
				rr.RetireAfter = max(rr.RetireAfter, at)
			}
		}
		out = append(out, rr)
	}
	return out, nil
}
