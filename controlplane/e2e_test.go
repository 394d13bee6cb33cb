package controlplane_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/internal/clustertest"
)

// TestEndToEnd runs the identity flows on three meshca-server processes: register through a
// follower, refresh three times through the leader and the followers (surviving the leader's
// SIGKILL on the way), then a refresh presenting a superseded serial revokes the instance, a
// later refresh with its current certificate is refused, and the revocation is in every
// node's CRL.
func TestEndToEnd(t *testing.T) {
	c := startE2E(t, nil)
	ctx := context.Background()
	td := c.TrustDomain()
	leader := c.Leader()
	followers := c.Followers()
	identity := func(n *clustertest.Node, cert *tls.Certificate) meshcav1.IdentityClient {
		return meshcav1.NewIdentityClient(c.Dial(n, cert))
	}
	check := func(step string, resp *meshcav1.IdentityResponse, in *instance) *x509.Certificate {
		t.Helper()
		chain, err := ca.ParseCertificatesPEM([]byte(resp.GetCertificate() + resp.GetChain()))
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		bundle, err := ca.ParseBundlePEM(td, []byte(resp.GetBundle()))
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if !bundle.Equal(c.Bundle()) {
			t.Fatalf("%s: the response's bundle is not the cluster's", step)
		}
		id, _, err := x509svid.Verify(chain, bundle)
		if err != nil || id != in.names.SPIFFEID || chain[0].Subject.CommonName != "sports.api" {
			t.Fatalf("%s: leaf verifies as %s (CN %q): %v", step, id, chain[0].Subject.CommonName, err)
		}
		return chain[0]
	}

	in := newInstance(t, td, "pod-1.e2e")
	resp, err := identity(followers[0], nil).Register(ctx, in.registerReq(t))
	if err != nil {
		t.Fatalf("register through follower %s: %v", followers[0].ID, err)
	}
	first := in.tlsCert(t, resp)
	served := []string{check("register via "+followers[0].ID, resp, in).SerialNumber.Text(16)}
	cert := first

	route := []*clustertest.Node{leader, followers[1], followers[0]}
	for i, n := range route {
		if i == 2 {
			// The leader dies between two refreshes; the next one goes through a follower to
			// whichever node leads now.
			c.Kill(leader)
			next := c.Leader()
			t.Logf("leader %s killed; %s leads", leader.ID, next.ID)
		}
		in.key = newKey(t)
		resp, err := identity(n, cert).Refresh(ctx, &meshcav1.RefreshRequest{Csr: in.csr(t)})
		if err != nil {
			t.Fatalf("refresh %d through %s: %v", i+1, n.ID, err)
		}
		leaf := check(fmt.Sprintf("refresh %d via %s", i+1, n.ID), resp, in)
		served = append(served, leaf.SerialNumber.Text(16))
		cert = in.tlsCert(t, resp)
	}
	c.StartNode(leader)
	c.WaitReady(leader)

	// The certificate from the registration is three serials old: presenting it is what a
	// stolen credential looks like.
	in.key = newKey(t)
	_, err = identity(followers[1], first).Refresh(ctx, &meshcav1.RefreshRequest{Csr: in.csr(t)})
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied ||
		!strings.Contains(st.Message(), "presented serial "+served[0]+" is neither the current serial "+served[3]) ||
		!strings.Contains(st.Message(), "is now revoked") {
		t.Fatalf("stale serial: %v, want PermissionDenied naming the serial rule", err)
	}

	// The compromise is published: an admin watching events on another node sees it, with the
	// serial that was presented.
	admin := c.AdminCert()
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	events, err := meshcav1.NewAdminClient(c.Dial(followers[0], &admin)).WatchEvents(wctx, &meshcav1.WatchEventsRequest{
		FromIndex: 1, Kinds: []meshcav1.EventKind{meshcav1.EventKind_EVENT_KIND_COMPROMISE_DETECTED},
	})
	if err != nil {
		t.Fatalf("WatchEvents: %v", err)
	}
	ev, err := events.Recv()
	if err != nil {
		t.Fatalf("WatchEvents: no compromise-detected event: %v", err)
	}
	if ev.GetKind() != meshcav1.EventKind_EVENT_KIND_COMPROMISE_DETECTED || !strings.Contains(ev.GetSubject(), "pod-1.e2e") {
		t.Fatalf("event = %v, want compromise-detected for pod-1.e2e", ev)
	}
	wcancel()

	// The instance's current certificate no longer refreshes, through any node.
	in.key = newKey(t)
	for _, n := range c.Nodes {
		_, err = identity(n, cert).Refresh(ctx, &meshcav1.RefreshRequest{Csr: in.csr(t)})
		if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied {
			t.Fatalf("refresh of the revoked instance through %s: %v, want PermissionDenied", n.ID, err)
		}
	}

	// Every node's CRL lists the current and the previous serial.
	for _, n := range c.Nodes {
		c.Poll(n.ID+" CRL lists the revoked serials", func() error {
			l, err := fetchCRL(c, n)
			if err != nil {
				return err
			}
			listed := map[string]bool{}
			for _, e := range l.RevokedCertificateEntries {
				listed[e.SerialNumber.Text(16)] = true
			}
			for _, s := range served[2:] {
				if !listed[s] {
					return fmt.Errorf("serial %s not listed (%d entries)", s, len(l.RevokedCertificateEntries))
				}
			}
			return nil
		})
	}
	if v, err := c.Metric(followers[1], "meshca_refused_total", map[string]string{"reason": "serial_mismatch"}); err != nil || v != 1 {
		t.Fatalf("meshca_refused_total{reason=serial_mismatch} on %s: %v, %v", followers[1].ID, v, err)
	}
}

// fetchCRL reads and checks a node's CRL.
func fetchCRL(c *e2eCluster, n *clustertest.Node) (*x509.RevocationList, error) {
	resp, err := c.HTTPClient(nil).Get(n.URL(controlplane.PathCRL))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	der, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/crl: %s: %s", resp.Status, der)
	}
	l, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, err
	}
	return l, l.CheckSignatureFrom(c.Issuer().Certificate())
}
