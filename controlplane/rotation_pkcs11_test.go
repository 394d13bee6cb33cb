//go:build cgo

package controlplane

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/internal/testenv"
)

// TestRotationGeneratesTheNewKeyOnTheToken rotates a PKCS#11 CA: prepare generates the next
// root's key on the token under a new label, the record names it by that label, and after
// activate the node signs with that token key.
func TestRotationGeneratesTheNewKeyOnTheToken(t *testing.T) {
	tok := testenv.NewSoftHSMToken(t, "meshca-rotate")
	ts := startServer(t, func(c *Config) {
		c.Admins = []string{rootAdmin}
		c.CA = CAConfig{Mode: CAModePKCS11, Dir: filepath.Join(t.TempDir(), "ca"), KeyType: "ecdsa-p256", PKCS11: PKCS11Config{
			Module: tok.ModulePath, TokenLabel: tok.Label, KeyLabel: "meshca-root", PINFile: tok.PINFile,
		}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	admin := rotationClient(t, ts.s, &testClock{}, rootAdmin)
	st, err := admin.Prepare(ctx, &meshcav1.PrepareRotationRequest{})
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	next := st.GetCa().GetNextIssuer()
	label := next.GetPkcs11Label()
	if next.GetSigner() != "pkcs11" || !strings.HasPrefix(label, "meshca-root-") {
		t.Fatalf("next issuer's key: signer %q label %q, want a new label on the token", next.GetSigner(), label)
	}
	if _, err := admin.Activate(ctx, &meshcav1.ActivateRotationRequest{IssuerId: next.GetId()}); err != nil {
		t.Fatalf("Activate: %v", err)
	}
	waitFor(t, "signing with the new token key", func() error {
		auth, rec, err := ts.s.Authority()
		if err != nil {
			return err
		}
		p, ok := auth.Issuer().Signer().(*signer.PKCS11)
		if rec.GetId() != next.GetId() || !ok || p.Label() != label {
			return fmt.Errorf("active issuer %s signs with %T, want %s on the token under %q", rec.GetId(), auth.Issuer().Signer(), next.GetId(), label)
		}
		return nil
	})
}
