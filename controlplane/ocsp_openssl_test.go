package controlplane_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/internal/testenv"
)

// TestOCSPCheckedByOpenSSL asks the OCSP responder of real server processes with `openssl
// ocsp` (a POST over HTTPS, the answer verified against the cluster's roots): a certificate
// the cluster issued is good on every node; once the admin revokes it, every node answers
// revoked with the key-compromise reason and the revocation time.
func TestOCSPCheckedByOpenSSL(t *testing.T) {
	bin := testenv.RequireOpenSSL(t)
	c := startE2E(t, nil)
	ctx := context.Background()
	dir := t.TempDir()

	in := newInstance(t, c.TrustDomain(), "pod-ocsp.e2e")
	resp, err := meshcav1.NewIdentityClient(c.Dial(c.Leader(), nil)).Register(ctx, in.registerReq(t))
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	leaf, err := ca.ParseCertificatesPEM([]byte(resp.GetCertificate()))
	if err != nil {
		t.Fatal(err)
	}
	var rootDER [][]byte
	for _, r := range c.Bundle().X509Authorities() {
		rootDER = append(rootDER, r.Raw)
	}
	leafFile := writePEM(t, dir, "leaf.pem", "CERTIFICATE", leaf[0].Raw)
	rootsFile := writePEM(t, dir, "roots.pem", "CERTIFICATE", rootDER...)
	issuerFile := writePEM(t, dir, "issuer.pem", "CERTIFICATE", c.Issuer().Certificate().Raw)

	// ask runs openssl ocsp against one node; the TLS connection and the answer's signature
	// are both checked against the cluster's roots.
	ask := func(nodeURL string) (string, error) {
		out, ok := opensslRun(t, bin, "ocsp", "-issuer", issuerFile, "-cert", leafFile, "-url", nodeURL,
			"-CAfile", rootsFile, "-no_nonce")
		if !ok {
			return out, fmt.Errorf("openssl ocsp failed:\n%s", out)
		}
		if !strings.Contains(out, "Response verify OK") {
			return out, fmt.Errorf("the answer's signature was not verified:\n%s", out)
		}
		return out, nil
	}
	// A follower answers unknown until the certificate's record reaches it.
	for _, n := range c.Nodes {
		c.Poll(n.ID+" answers good", func() error {
			out, err := ask(n.URL(controlplane.PathOCSP))
			if err != nil {
				return err
			}
			if !strings.Contains(out, leafFile+": good") {
				return fmt.Errorf("the issued certificate is not good:\n%s", out)
			}
			return nil
		})
	}

	admin := c.AdminCert()
	if _, err := meshcav1.NewAdminClient(c.Dial(c.Followers()[0], &admin)).RevokeInstance(ctx, &meshcav1.RevokeInstanceRequest{
		Provider: e2eProvider, InstanceId: "pod-ocsp.e2e",
		Reason: meshcav1.RevocationReason_REVOCATION_REASON_KEY_COMPROMISE, Detail: "ocsp proof",
	}); err != nil {
		t.Fatalf("RevokeInstance: %v", err)
	}
	for _, n := range c.Nodes {
		c.Poll(n.ID+" answers revoked", func() error {
			out, err := ask(n.URL(controlplane.PathOCSP))
			if err != nil {
				return err
			}
			if !strings.Contains(out, leafFile+": revoked") {
				return fmt.Errorf("not revoked yet:\n%s", out)
			}
			if !strings.Contains(out, "Reason: keyCompromise") || !strings.Contains(out, "Revocation Time:") {
				return fmt.Errorf("the revocation lacks its reason or time:\n%s", out)
			}
			return nil
		})
	}
}
