package clustertest

import (
	"context"
	"crypto/x509"
	"os"
	"testing"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// TestCluster pins down the harness itself: three processes elect one leader, survive the
// leader's SIGKILL, take a restarted node back, and share one CA whose bundle every node
// serves.
func TestCluster(t *testing.T) {
	c := Start(t, Options{})
	leader := c.Leader()
	if len(c.Followers()) != 2 {
		t.Fatalf("followers %d, want 2", len(c.Followers()))
	}
	admin := c.AdminCert()
	if id, _, err := x509svid.Verify([]*x509.Certificate{admin.Leaf}, c.Bundle()); err != nil || id != c.AdminID() {
		t.Fatalf("admin certificate verifies as %s: %v", id, err)
	}
	for _, n := range c.Nodes {
		resp, err := meshcav1.NewIdentityClient(c.Dial(n, nil)).GetBundle(context.Background(), &meshcav1.GetBundleRequest{})
		if err != nil {
			t.Fatalf("%s: %v", n.ID, err)
		}
		if resp.GetTrustDomain() != c.TrustDomain().Name() || resp.GetBundle() == "" {
			t.Fatalf("%s serves %v", n.ID, resp)
		}
	}

	c.Kill(leader)
	next := c.Leader()
	if next == leader {
		t.Fatal("a killed node still leads")
	}
	c.StartNode(leader)
	c.WaitReady(leader)
	if v, err := c.Metric(leader, "meshca_raft_is_leader", nil); err != nil || v != 0 {
		t.Fatalf("restarted node: is_leader %v, %v", v, err)
	}
}
