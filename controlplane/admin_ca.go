package controlplane

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/raftstore"
)

// GetCAStatus describes the CA from the replicated CA record.
func (a *Admin) GetCAStatus(ctx context.Context, _ *meshcav1.GetCAStatusRequest) (*meshcav1.CAStatus, error) {
	st := a.store.State()
	if _, err := a.authorize(ctx, st, ActionCARead, Resource{Kind: "ca", Name: "status"}); err != nil {
		return nil, err
	}
	out := &meshcav1.CAStatus{TrustDomain: a.cfg.TrustDomain.Name()}
	rec, err := st.CA()
	if errors.Is(err, raftstore.ErrNotFound) {
		out.RotationState = meshcav1.CARotationState_CA_ROTATION_STATE_NOT_SET
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	out.RotationState = rotationState(rec)
	out.CrlNumber = rec.GetCrlNumber()
	out.Updated = time.Unix(0, rec.GetUpdated()).Unix()
	for i, der := range rec.GetRoots() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("ca.roots[%d]: %w", i, err)
		}
		sum := sha256.Sum256(der)
		out.Roots = append(out.Roots, &meshcav1.CARoot{
			Subject: c.Subject.String(), Sha256: hex.EncodeToString(sum[:]),
			NotBefore: c.NotBefore.Unix(), NotAfter: c.NotAfter.Unix(), Der: der,
		})
	}
	if out.ActiveIssuer, err = issuerInfo(st, "ca.active_issuer", rec.GetActiveIssuer()); err != nil {
		return nil, err
	}
	if rec.GetNextIssuer() != nil {
		if out.NextIssuer, err = issuerInfo(st, "ca.next_issuer", rec.GetNextIssuer()); err != nil {
			return nil, err
		}
	}
	for i, is := range rec.GetRetiredIssuers() {
		info, err := issuerInfo(st, fmt.Sprintf("ca.retired_issuers[%d]", i), is)
		if err != nil {
			return nil, err
		}
		out.RetiredIssuers = append(out.RetiredIssuers, info)
	}
	return out, nil
}

// rotationState says where a rotation stands: prepared while a next issuer is published,
// retiring while a former issuer's root is still in the bundle, stable otherwise.
func rotationState(rec *meshcav1.CA) meshcav1.CARotationState {
	switch {
	case rec.GetNextIssuer() != nil:
		return meshcav1.CARotationState_CA_ROTATION_STATE_PREPARED
	case len(rec.GetRetiredIssuers()) > 0:
		return meshcav1.CARotationState_CA_ROTATION_STATE_RETIRING
	}
	return meshcav1.CARotationState_CA_ROTATION_STATE_STABLE
}

// issuerInfo describes an issuer record.
func issuerInfo(st *raftstore.State, field string, is *meshcav1.Issuer) (*meshcav1.CAIssuer, error) {
	if len(is.GetChain()) == 0 {
		return nil, fmt.Errorf("%s.chain: empty", field)
	}
	c, err := x509.ParseCertificate(is.GetChain()[0])
	if err != nil {
		return nil, fmt.Errorf("%s.chain[0]: %w", field, err)
	}
	info := &meshcav1.CAIssuer{
		Id: is.GetId(), Subject: c.Subject.String(), NotAfter: c.NotAfter.Unix(),
		KeyType: is.GetSigner().GetKeyType(), KeyId: is.GetSigner().GetKeyId(),
		RootSha256: hex.EncodeToString(is.GetRootSha256()),
	}
	switch k := is.GetSigner().GetKey().(type) {
	case *meshcav1.SignerRef_Pkcs11Label:
		info.Signer, info.Pkcs11Label = "pkcs11", k.Pkcs11Label
	case *meshcav1.SignerRef_EncryptedKey:
		info.Signer = "software"
	}
	if u, err := st.IssuerUse(is.GetId()); err == nil {
		info.LastNotAfter = time.Unix(0, u.GetLastNotAfter()).Unix()
	}
	return info, nil
}

// GetCRL returns the current CRL.
func (a *Admin) GetCRL(ctx context.Context, _ *meshcav1.GetCRLRequest) (*meshcav1.GetCRLResponse, error) {
	if _, err := a.authorize(ctx, a.store.State(), ActionCARead, Resource{Kind: "ca", Name: "crl"}); err != nil {
		return nil, err
	}
	der, err := a.cfg.CA.CRL()
	if err != nil {
		return nil, err
	}
	return &meshcav1.GetCRLResponse{Der: der}, nil
}
