package controlplane_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clustertest"
	"github.com/meshca/meshca/internal/testenv"
)

// opensslRun runs openssl and returns its combined output and whether it exited 0.
func opensslRun(t *testing.T, bin string, args ...string) (string, bool) {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if _, exit := err.(*exec.ExitError); err != nil && !exit {
		t.Fatalf("openssl %s: %v", strings.Join(args, " "), err)
	}
	return string(out), err == nil
}

// writePEM writes DER blocks of one type as a PEM file in dir.
func writePEM(t *testing.T, dir, name, typ string, ders ...[]byte) string {
	t.Helper()
	var b bytes.Buffer
	for _, der := range ders {
		pem.Encode(&b, &pem.Block{Type: typ, Bytes: der})
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// listed reports which of serials a CRL lists.
func listed(l *x509.RevocationList, serials ...*big.Int) error {
	in := map[string]bool{}
	for _, e := range l.RevokedCertificateEntries {
		in[e.SerialNumber.Text(16)] = true
	}
	for _, s := range serials {
		if !in[s.Text(16)] {
			return fmt.Errorf("serial %s not listed (%d entries)", s.Text(16), len(l.RevokedCertificateEntries))
		}
	}
	return nil
}

// Revocation proofs over a real three-node cluster: an instance revoked by the admin call and
// one revoked automatically when it presents a stale serial both land in the CRL, which every
// node serves over HTTP and the admin API, rebuilt with a higher number on each change and
// signed by the active issuer. openssl accepts the CRL's signature (`openssl crl -verify`) and
// refuses the revoked certificates under `openssl verify -crl_check` while accepting a
// certificate that was not revoked.
func TestCRLRevocationsCheckedByOpenSSL(t *testing.T) {
	bin := testenv.RequireOpenSSL(t)
	c := startE2E(t, nil)
	ctx := context.Background()
	dir := t.TempDir()
	admin := c.AdminCert()
	adminAPI := meshcav1.NewAdminClient(c.Dial(c.Followers()[0], &admin))
	identity := func(n *clustertest.Node) meshcav1.IdentityClient {
		return meshcav1.NewIdentityClient(c.Dial(n, nil))
	}
	register := func(id string) (*instance, *meshcav1.IdentityResponse, []*x509.Certificate) {
		t.Helper()
		in := newInstance(t, c.TrustDomain(), id)
		resp, err := identity(c.Leader()).Register(ctx, in.registerReq(t))
		if err != nil {
			t.Fatalf("register %s: %v", id, err)
		}
		chain, err := ca.ParseCertificatesPEM([]byte(resp.GetCertificate() + resp.GetChain()))
		if err != nil {
			t.Fatal(err)
		}
		return in, resp, chain
	}
	// crlEverywhere polls every node's /crl and the admin API until each lists serials, and
	// returns the admin API's list.
	crlEverywhere := func(what string, serials ...*big.Int) (*x509.RevocationList, []byte) {
		t.Helper()
		for _, n := range c.Nodes {
			c.Poll(n.ID+" /crl lists "+what, func() error {
				l, err := fetchCRL(c, n)
				if err != nil {
					return err
				}
				return listed(l, serials...)
			})
		}
		var l *x509.RevocationList
		var der []byte
		c.Poll("the admin API's CRL lists "+what, func() error {
			r, err := adminAPI.GetCRL(ctx, &meshcav1.GetCRLRequest{})
			if err != nil {
				return err
			}
			if l, err = x509.ParseRevocationList(r.GetDer()); err != nil {
				return err
			}
			if err := l.CheckSignatureFrom(c.Issuer().Certificate()); err != nil {
				return err
			}
			der = r.GetDer()
			return listed(l, serials...)
		})
		return l, der
	}

	_, _, revokedChain := register("pod-revoked.e2e")
	_, goodResp, goodChain := register("pod-good.e2e")
	if _, err := adminAPI.RevokeInstance(ctx, &meshcav1.RevokeInstanceRequest{
		Provider: e2eProvider, InstanceId: "pod-revoked.e2e",
		Reason: meshcav1.RevocationReason_REVOCATION_REASON_KEY_COMPROMISE, Detail: "crl proof",
	}); err != nil {
		t.Fatalf("RevokeInstance: %v", err)
	}
	first, _ := crlEverywhere("the admin revocation", revokedChain[0].SerialNumber)
	if err := listed(first, goodChain[0].SerialNumber); err == nil {
		t.Fatal("the CRL lists a certificate that was never revoked")
	}

	// A serial mismatch: the registration's certificate presented after two refreshes is a
	// stolen credential, and the instance is revoked automatically.
	stolen, resp, chain := register("pod-stolen.e2e")
	firstCert := stolen.tlsCert(t, resp)
	cert := firstCert
	var serials []*big.Int
	for i := 0; i < 2; i++ {
		stolen.key = newKey(t)
		resp, err := meshcav1.NewIdentityClient(c.Dial(c.Leader(), cert)).Refresh(ctx, &meshcav1.RefreshRequest{Csr: stolen.csr(t)})
		if err != nil {
			t.Fatalf("refresh %d: %v", i+1, err)
		}
		if chain, err = ca.ParseCertificatesPEM([]byte(resp.GetCertificate() + resp.GetChain())); err != nil {
			t.Fatal(err)
		}
		serials = append(serials, chain[0].SerialNumber)
		cert = stolen.tlsCert(t, resp)
	}
	stolen.key = newKey(t)
	_, err := meshcav1.NewIdentityClient(c.Dial(c.Leader(), firstCert)).Refresh(ctx, &meshcav1.RefreshRequest{Csr: stolen.csr(t)})
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "is now revoked") {
		t.Fatalf("stale serial: %v, want PermissionDenied revoking the instance", err)
	}
	second, der := crlEverywhere("the automatic revocation", append(serials, revokedChain[0].SerialNumber)...)
	if second.Number.Cmp(first.Number) <= 0 {
		t.Fatalf("CRL number %s after a new revocation, want above %s", second.Number, first.Number)
	}
	if !second.NextUpdate.After(second.ThisUpdate) {
		t.Fatalf("CRL next update %s not after this update %s", second.NextUpdate, second.ThisUpdate)
	}

	// openssl: the CRL verifies against the issuer; revoked certificates are refused.
	var caDER [][]byte
	for _, r := range c.Bundle().X509Authorities() {
		caDER = append(caDER, r.Raw)
	}
	for _, ic := range goodChain[1:] {
		caDER = append(caDER, ic.Raw)
	}
	caFile := writePEM(t, dir, "ca.pem", "CERTIFICATE", caDER...)
	crlFile := writePEM(t, dir, "crl.pem", "X509 CRL", der)
	if out, ok := opensslRun(t, bin, "crl", "-in", crlFile, "-CAfile", caFile, "-noout", "-verify"); !ok || !strings.Contains(out, "verify OK") {
		t.Fatalf("openssl crl -verify: %s", out)
	}
	good := writePEM(t, dir, "good.pem", "CERTIFICATE", goodChain[0].Raw)
	if goodResp.GetCertificate() == "" {
		t.Fatal("no certificate for the good instance")
	}
	if out, ok := opensslRun(t, bin, "verify", "-crl_check", "-CAfile", caFile, "-CRLfile", crlFile, good); !ok || !strings.Contains(out, "OK") {
		t.Fatalf("openssl verify -crl_check of a certificate never revoked: %s", out)
	}
	for name, der := range map[string][]byte{"admin-revoked.pem": revokedChain[0].Raw, "mismatch-revoked.pem": chain[0].Raw} {
		p := writePEM(t, dir, name, "CERTIFICATE", der)
		// Without the CRL the certificate verifies, so the refusal below is the CRL's doing.
		if out, ok := opensslRun(t, bin, "verify", "-CAfile", caFile, p); !ok {
			t.Fatalf("openssl verify %s without a CRL: %s", name, out)
		}
		if out, ok := opensslRun(t, bin, "verify", "-crl_check", "-CAfile", caFile, "-CRLfile", crlFile, p); ok || !strings.Contains(out, "certificate revoked") {
			t.Fatalf("openssl verify -crl_check %s: ok=%v %s, want certificate revoked", name, ok, out)
		}
	}
}
