package main

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/internal/bundletest"
	"github.com/meshca/meshca/internal/clustertest"
)

// TestFederationEndpointCA federates a real cluster with a SPIFFE bundle endpoint served over
// HTTPS under a private CA that no system trusts. `meshctl federation add` without
// --endpoint-ca fails and says why; with it the bundle is fetched, every node serves the
// peer's root, and a refresh through another node (which starts from the replicated record)
// trusts the same CA.
func TestFederationEndpointCA(t *testing.T) {
	peerTD := spiffeid.RequireTrustDomainFromString("peer.test")
	c := clustertest.Start(t, clustertest.Options{Nodes: 3, TrustDomain: "mesh.test"})
	viaFollower := newFedCluster(t, c, c.Followers()[0])
	viaLeader := newFedCluster(t, c, c.Leader())

	rootKey, err := signer.GenerateSoftware(signer.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	peerCA, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: peerTD, RootKey: rootKey, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	peerBundle := spiffebundle.FromX509Authorities(peerTD, []*x509.Certificate{peerCA.Certificate()})
	peerBundle.SetRefreshHint(time.Minute)
	peerBundle.SetSequenceNumber(3)
	url, caPEM := bundletest.ServeUnderPrivateCA(t, peerTD, peerBundle)
	caFile := filepath.Join(t.TempDir(), "endpoint-ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}

	code, _, errOut := runMeshctl(t, append([]string{"federation", "add", peerTD.Name(), "--endpoint", url}, viaFollower.conn...)...)
	if code != exitError || !strings.Contains(errOut, "certificate signed by unknown authority") || !strings.Contains(errOut, "set endpoint_ca") {
		t.Fatalf("federation add without --endpoint-ca: exit %d, stderr %q; want a failure naming the unknown authority and endpoint_ca", code, errOut)
	}

	out := viaFollower.meshctl(t, "federation", "add", peerTD.Name(), "--endpoint", url, "--endpoint-ca", caFile)
	if !strings.Contains(out, "web PKI (endpoint CA)") {
		t.Fatalf("federation add printed %q; want the endpoint CA as the authentication", out)
	}
	waitServed(t, c, "peer.test's root", func(set *x509bundle.Set) error {
		got := federatedRoots(set, peerTD)
		if len(got) != 1 || !got[0].Equal(peerCA.Certificate()) {
			return fmt.Errorf("%d roots of peer.test, want its one root", len(got))
		}
		return nil
	})
	if out := viaLeader.meshctl(t, "federation", "refresh", peerTD.Name()); !strings.Contains(out, "web PKI (endpoint CA)") {
		t.Fatalf("federation refresh through the leader printed %q", out)
	}
}
