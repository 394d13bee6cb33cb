package ca_test

import (
	"crypto/x509"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
)

func TestCRL(t *testing.T) {
	a := newAuthority(t, selfSigned(t, signer.ECDSAP256, true))
	revoked := []ca.Revocation{
		{Serial: big.NewInt(11), RevokedAt: t0.Add(-time.Hour), Reason: ca.ReasonKeyCompromise, NotAfter: t0.Add(time.Hour)},
		{Serial: big.NewInt(12), RevokedAt: t0.Add(-48 * time.Hour), Reason: ca.ReasonSuperseded, NotAfter: t0.Add(-time.Minute)},
		{Serial: big.NewInt(13), RevokedAt: t0.Add(-2 * time.Hour)},
	}
	req := ca.CRLRequest{Number: big.NewInt(7), Previous: big.NewInt(6), ThisUpdate: t0, NextUpdate: t0.Add(time.Hour), Revoked: revoked}
	der, err := a.CRL(req)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(a.Issuer().Certificate()); err != nil {
		t.Errorf("CRL not signed by the active issuer: %v", err)
	}
	if crl.Number.Int64() != 7 || !crl.ThisUpdate.Equal(t0) || !crl.NextUpdate.Equal(t0.Add(time.Hour)) {
		t.Errorf("number %v this %s next %s", crl.Number, crl.ThisUpdate, crl.NextUpdate)
	}
	t.Run("entries for certificates expired at this update are dropped", func(t *testing.T) {
		var serials []int64
		for _, e := range crl.RevokedCertificateEntries {
			serials = append(serials, e.SerialNumber.Int64())
		}
		if len(serials) != 2 || serials[0] != 11 || serials[1] != 13 {
			t.Errorf("serials %v, want [11 13]", serials)
		}
		if e := crl.RevokedCertificateEntries[0]; e.ReasonCode != ca.ReasonKeyCompromise || !e.RevocationTime.Equal(t0.Add(-time.Hour)) {
			t.Errorf("entry 11: reason %d at %s", e.ReasonCode, e.RevocationTime)
		}
	})

	for _, tc := range []struct {
		name string
		edit func(*ca.CRLRequest)
		msg  string
	}{
		{"a CRL number not above the previous one is refused", func(r *ca.CRLRequest) { r.Number = big.NewInt(6) }, "number 6: invalid CRL request: not greater than the previous CRL's 6"},
		{"a CRL number below the previous one is refused", func(r *ca.CRLRequest) { r.Number = big.NewInt(2) }, "not greater than"},
		{"a missing CRL number is refused", func(r *ca.CRLRequest) { r.Number = nil }, "number: invalid CRL request: must be positive"},
		{"a zero CRL number is refused", func(r *ca.CRLRequest) { r.Number, r.Previous = big.NewInt(0), nil }, "must be positive"},
		{"a CRL number over 20 octets is refused", func(r *ca.CRLRequest) { r.Number = new(big.Int).Lsh(big.NewInt(1), 160) }, "longer than 20 octets"},
		{"next update not after this update is refused", func(r *ca.CRLRequest) { r.NextUpdate = r.ThisUpdate }, "next_update"},
		{"a missing this update is refused", func(r *ca.CRLRequest) { r.ThisUpdate = time.Time{} }, "this_update"},
		{"reason code 7 (unused in RFC 5280) is refused", func(r *ca.CRLRequest) { r.Revoked = []ca.Revocation{{Serial: big.NewInt(1), RevokedAt: t0, Reason: 7}} }, "revoked[0].reason"},
		{"an entry without a serial is refused", func(r *ca.CRLRequest) { r.Revoked = []ca.Revocation{{RevokedAt: t0}} }, "revoked[0].serial"},
		{"an entry without a revocation time is refused", func(r *ca.CRLRequest) { r.Revoked = []ca.Revocation{{Serial: big.NewInt(1)}} }, "revoked[0].revoked_at"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := req
			tc.edit(&r)
			_, err := a.CRL(r)
			if !errors.Is(err, ca.ErrCRL) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %v, want ErrCRL saying %q", err, tc.msg)
			}
		})
	}
	t.Run("the first CRL needs no previous number", func(t *testing.T) {
		r := req
		r.Number, r.Previous = big.NewInt(1), nil
		if _, err := a.CRL(r); err != nil {
			t.Error(err)
		}
	})
	t.Run("an issuer without cRLSign is refused", func(t *testing.T) {
		key := softKey(t, signer.ECDSAP256, "no-crlsign")
		root := makeCA(t, "root", key, nil, keyUsage(x509.KeyUsageCertSign))
		iss, err := ca.NewIssuer(ca.IssuerParts{Certificate: root.cert, Key: key, Roots: []*x509.Certificate{root.cert}}, t0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := iss.CRL(req, nil); !errors.Is(err, ca.ErrCRL) || !strings.Contains(err.Error(), "cRLSign") {
			t.Errorf("error %v, want ErrCRL naming cRLSign", err)
		}
	})
}
