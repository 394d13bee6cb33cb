package sds

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func mustSetBundle(t *testing.T, s *Store, ca *testCA) {
	t.Helper()
	if err := s.SetBundle(ca.bundle()); err != nil {
		t.Fatal(err)
	}
}

func mustSetSVID(t *testing.T, s *Store, svid *x509svid.SVID) {
	t.Helper()
	if err := s.SetSVID(svid); err != nil {
		t.Fatal(err)
	}
}

func leafSerial(svid *x509svid.SVID) string { return svid.Certificates[0].SerialNumber.String() }

func TestSDSDefaultAndROOTCAGiveAMatchingKeyAndAChainToTheRoot(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	store := NewStore()
	mustSetBundle(t, store, ca)
	svid := ca.issue(t, idAPI)
	mustSetSVID(t, store, svid)
	srv := startServer(t, store, byUID(idAPI))

	st := openSotW(t, sdsClient(t, srv.sock))
	st.subscribe(NameDefault, NameRootCA)
	resp := st.recv()
	if resp.VersionInfo == "" || resp.Nonce == "" {
		t.Fatalf("response lacks version_info %q or nonce %q", resp.VersionInfo, resp.Nonce)
	}
	got := sotwSecrets(t, resp)
	if !sameNames(got, NameDefault, NameRootCA) {
		t.Fatalf("names %v, want exactly default and ROOTCA", names(got))
	}
	chain := leafOf(t, got[NameDefault])
	if err := verifies(chain, rootsOf(t, got[NameRootCA])); err != nil {
		t.Fatalf("chain does not verify to ROOTCA: %v", err)
	}
	if len(chain) != 2 {
		t.Fatalf("chain has %d certificates, want leaf + intermediate", len(chain))
	}
	if id, err := x509svid.IDFromCert(chain[0]); err != nil || id != idAPI {
		t.Fatalf("leaf identity %v (%v), want %v", id, err, idAPI)
	}
	if chain[0].SerialNumber.String() != leafSerial(svid) {
		t.Fatal("served a certificate other than the one set in the store")
	}
}

func TestSDSRotationIsPushedOnTheSameStreamWithoutAsking(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	store := NewStore()
	mustSetBundle(t, store, ca)
	mustSetSVID(t, store, ca.issue(t, idAPI))
	srv := startServer(t, store, byUID(idAPI))

	st := openSotW(t, sdsClient(t, srv.sock))
	st.subscribe(NameDefault, NameRootCA)
	r1 := st.recv()
	st.ack(r1, NameDefault, NameRootCA)

	for i := range 3 {
		next := ca.issue(t, idAPI)
		mustSetSVID(t, store, next)
		r2 := st.recv()
		if r2.VersionInfo == r1.VersionInfo {
			t.Fatalf("rotation %d: version %q did not change", i, r2.VersionInfo)
		}
		got := sotwSecrets(t, r2)
		if !sameNames(got, NameDefault, NameRootCA) {
			t.Fatalf("rotation %d: names %v, want exactly default and ROOTCA", i, names(got))
		}
		chain := leafOf(t, got[NameDefault])
		if chain[0].SerialNumber.String() != leafSerial(next) {
			t.Fatalf("rotation %d: pushed serial %s, want the rotated %s", i, chain[0].SerialNumber, leafSerial(next))
		}
		st.ack(r2, NameDefault, NameRootCA)
		r1 = r2
	}
	if n := testutil.ToFloat64(srv.sds.pushes); n < 4 {
		t.Fatalf("meshca_sds_pushes_total = %v, want at least 4", n)
	}
}

func TestSDSNACKIsCountedAndTheStreamKeepsWorking(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	store := NewStore()
	mustSetBundle(t, store, ca)
	mustSetSVID(t, store, ca.issue(t, idAPI))
	srv := startServer(t, store, byUID(idAPI))

	st := openSotW(t, sdsClient(t, srv.sock))
	st.subscribe(NameDefault)
	r1 := st.recv()
	st.send(&discovery.DiscoveryRequest{
		ResponseNonce: r1.Nonce, ResourceNames: []string{NameDefault},
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "certificate rejected by the proxy"},
	})
	poll(t, "the NACK to be counted", func() bool { return testutil.ToFloat64(srv.sds.nacks) == 1 })
	// The server must now wait for a new version, not send the rejected one again: its watch
	// stays open in the SnapshotCache.
	poll(t, "the watch after the NACK to be open", func() bool {
		info := srv.sds.cache.inner.GetStatusInfo(idAPI.String())
		return info != nil && info.GetNumWatches() == 1
	})

	next := ca.issue(t, idAPI)
	mustSetSVID(t, store, next)
	r2 := st.recv()
	if r2.VersionInfo == r1.VersionInfo {
		t.Fatalf("after the NACK the rejected version %q was sent again", r1.VersionInfo)
	}
	if got := leafOf(t, sotwSecrets(t, r2)[NameDefault]); got[0].SerialNumber.String() != leafSerial(next) {
		t.Fatal("after the NACK the next push does not carry the new certificate")
	}
	st.ack(r2, NameDefault)
	again := ca.issue(t, idAPI)
	mustSetSVID(t, store, again)
	if got := leafOf(t, sotwSecrets(t, st.recv())[NameDefault]); got[0].SerialNumber.String() != leafSerial(again) {
		t.Fatal("stream stopped following rotations after a NACK")
	}
	if n := testutil.ToFloat64(srv.sds.nacks); n != 1 {
		t.Fatalf("meshca_sds_nacks_total = %v, want 1", n)
	}
	if logs := srv.logs.String(); !strings.Contains(logs, "NACK") || !strings.Contains(logs, "certificate rejected by the proxy") {
		t.Fatalf("the NACK was not logged with its error detail; logs:\n%s", logs)
	}
}

func TestSDSUnknownNamesAreHarmless(t *testing.T) {
	cases := []struct {
		rule    string
		unknown string
	}{
		{"another identity's SPIFFE ID is never served to this caller", idWeb.String()},
		{"a trust domain without a bundle is not served", "spiffe://nowhere.example"},
		{"a misspelt name is not served", "ROOTCA2"},
	}
	for _, tc := range cases {
		t.Run(tc.rule, func(t *testing.T) {
			ca := newTestCA(t, tdMesh)
			store := NewStore()
			mustSetBundle(t, store, ca)
			mustSetSVID(t, store, ca.issue(t, idAPI))
			mustSetSVID(t, store, ca.issue(t, idWeb))
			srv := startServer(t, store, byUID(idAPI))
			client := sdsClient(t, srv.sock)

			// Beside a known name: the known name is answered, the unknown one left out.
			st := openSotW(t, client)
			st.subscribe(NameDefault, tc.unknown)
			r1 := st.recv()
			if got := sotwSecrets(t, r1); !sameNames(got, NameDefault) {
				t.Fatalf("names %v, want only default", names(got))
			}
			st.ack(r1, NameDefault, tc.unknown)
			next := ca.issue(t, idAPI)
			mustSetSVID(t, store, next)
			got := sotwSecrets(t, st.recv())
			if !sameNames(got, NameDefault) || leafOf(t, got[NameDefault])[0].SerialNumber.String() != leafSerial(next) {
				t.Fatalf("after a rotation: names %v, want default with the new certificate", names(got))
			}

			// Alone: nothing is sent (an empty answer would mean "removed"), the stream stays
			// open and answers the next request.
			alone := openSotW(t, client)
			alone.subscribe(tc.unknown)
			poll(t, "the unknown-only subscription to be held", func() bool { return srv.heldWatches(idAPI) == 1 })
			alone.send(&discovery.DiscoveryRequest{ResourceNames: []string{tc.unknown, NameRootCA}})
			if got := sotwSecrets(t, alone.recv()); !sameNames(got, NameRootCA) {
				t.Fatalf("names %v, want only ROOTCA", names(got))
			}
		})
	}
}

func TestSDSHoldsTheAnswerUntilTheSecretExists(t *testing.T) {
	cases := []struct {
		rule  string
		first func(*testing.T, *Store, *testCA)
		last  func(*testing.T, *Store, *testCA)
	}{
		{
			"certificate arriving after the bundle: default and ROOTCA come together",
			func(t *testing.T, s *Store, ca *testCA) { mustSetBundle(t, s, ca) },
			func(t *testing.T, s *Store, ca *testCA) { mustSetSVID(t, s, ca.issue(t, idAPI)) },
		},
		{
			"bundle arriving after the certificate: default and ROOTCA come together",
			func(t *testing.T, s *Store, ca *testCA) { mustSetSVID(t, s, ca.issue(t, idAPI)) },
			func(t *testing.T, s *Store, ca *testCA) { mustSetBundle(t, s, ca) },
		},
		{
			"nothing yet: default and ROOTCA come together",
			func(*testing.T, *Store, *testCA) {},
			func(t *testing.T, s *Store, ca *testCA) {
				mustSetBundle(t, s, ca)
				mustSetSVID(t, s, ca.issue(t, idAPI))
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.rule, func(t *testing.T) {
			ca := newTestCA(t, tdMesh)
			store := NewStore()
			tc.first(t, store, ca)
			srv := startServer(t, store, byUID(idAPI))
			client := sdsClient(t, srv.sock)

			st := openSotW(t, client)
			st.subscribe(NameDefault, NameRootCA)
			ds, err := client.DeltaSecrets(streamCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			if err := ds.Send(&discovery.DeltaDiscoveryRequest{Node: envoyNode("sidecar"), TypeUrl: resource.SecretType,
				ResourceNamesSubscribe: []string{NameDefault, NameRootCA}}); err != nil {
				t.Fatal(err)
			}
			poll(t, "both subscriptions to be held", func() bool { return srv.heldWatches(idAPI) == 2 })

			// The first response either stream sees must already hold both names: had the
			// server answered with what it had, it would hold one.
			tc.last(t, store, ca)
			got := sotwSecrets(t, st.recv())
			if !sameNames(got, NameDefault, NameRootCA) {
				t.Fatalf("SotW first answer names %v, want default and ROOTCA", names(got))
			}
			if err := verifies(leafOf(t, got[NameDefault]), rootsOf(t, got[NameRootCA])); err != nil {
				t.Fatal(err)
			}
			dr, err := ds.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if got := deltaSecrets(t, dr); !sameNames(got, NameDefault, NameRootCA) {
				t.Fatalf("Delta first answer names %v, want default and ROOTCA", names(got))
			}
		})
	}
}

func TestSDSDeltaServesRotatesRemovesAndResendsOnReconnect(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	fed := newTestCA(t, tdFed.Name())
	store := NewStore()
	mustSetBundle(t, store, ca)
	mustSetBundle(t, store, fed)
	mustSetSVID(t, store, ca.issue(t, idAPI))
	srv := startServer(t, store, byUID(idAPI))
	client := sdsClient(t, srv.sock)
	all := []string{NameDefault, NameRootCA, fedIDStr}

	ds, err := client.DeltaSecrets(streamCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	send := func(req *discovery.DeltaDiscoveryRequest) {
		t.Helper()
		req.TypeUrl = resource.SecretType
		if err := ds.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	recv := func() *discovery.DeltaDiscoveryResponse {
		t.Helper()
		r, err := ds.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	send(&discovery.DeltaDiscoveryRequest{Node: envoyNode("sidecar"), ResourceNamesSubscribe: all})
	r1 := recv()
	got := deltaSecrets(t, r1)
	if !sameNames(got, all...) {
		t.Fatalf("names %v, want %v", names(got), all)
	}
	versions := map[string]string{}
	for _, r := range r1.Resources {
		if r.Version == "" {
			t.Fatalf("resource %q has no version", r.Name)
		}
		versions[r.Name] = r.Version
	}
	if err := verifies(leafOf(t, got[NameDefault]), rootsOf(t, got[NameRootCA])); err != nil {
		t.Fatal(err)
	}
	send(&discovery.DeltaDiscoveryRequest{ResponseNonce: r1.Nonce})

	next := ca.issue(t, idAPI)
	mustSetSVID(t, store, next)
	r2 := recv()
	got = deltaSecrets(t, r2)
	if !sameNames(got, NameDefault) {
		t.Fatalf("rotation sent %v, want only the changed default", names(got))
	}
	if leafOf(t, got[NameDefault])[0].SerialNumber.String() != leafSerial(next) {
		t.Fatal("rotation did not carry the new certificate")
	}
	send(&discovery.DeltaDiscoveryRequest{ResponseNonce: r2.Nonce})

	store.RemoveBundle(tdFed)
	r3 := recv()
	if len(r3.Resources) != 0 || !slices.Equal(r3.RemovedResources, []string{fedIDStr}) {
		t.Fatalf("after removing the federated bundle: resources %d, removed %v; want none and [%s]", len(r3.Resources), r3.RemovedResources, fedIDStr)
	}
	send(&discovery.DeltaDiscoveryRequest{ResponseNonce: r3.Nonce})

	// A reconnecting Envoy tells what it has; it still gets every name it subscribes to.
	again, err := client.DeltaSecrets(streamCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Send(&discovery.DeltaDiscoveryRequest{Node: envoyNode("sidecar"), TypeUrl: resource.SecretType,
		ResourceNamesSubscribe: []string{NameDefault, NameRootCA}, InitialResourceVersions: versions}); err != nil {
		t.Fatal(err)
	}
	ra, err := again.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := deltaSecrets(t, ra); !sameNames(got, NameDefault, NameRootCA) {
		t.Fatalf("reconnected delta stream got %v, want default and ROOTCA again", names(got))
	}
}

func TestSDSStateOfTheWorldDropsARemovedFederatedBundle(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	fed := newTestCA(t, tdFed.Name())
	store := NewStore()
	mustSetBundle(t, store, ca)
	mustSetBundle(t, store, fed)
	srv := startServer(t, store, byUID(idAPI))
	client := sdsClient(t, srv.sock)

	both := openSotW(t, client)
	both.subscribe(NameRootCA, fedIDStr)
	r := both.recv()
	got := sotwSecrets(t, r)
	if !sameNames(got, NameRootCA, fedIDStr) {
		t.Fatalf("names %v, want ROOTCA and %s", names(got), fedIDStr)
	}
	fedPool := rootsOf(t, got[fedIDStr])
	if err := verifies([]*x509.Certificate{fed.inter}, fedPool); err != nil {
		t.Fatalf("federated bundle does not hold the partner root: %v", err)
	}
	both.ack(r, NameRootCA, fedIDStr)

	only := openSotW(t, client)
	only.subscribe(fedIDStr)
	ro := only.recv()
	if got := sotwSecrets(t, ro); !sameNames(got, fedIDStr) {
		t.Fatalf("names %v, want %s", names(got), fedIDStr)
	}
	only.ack(ro, fedIDStr)

	store.RemoveBundle(tdFed)
	if got := sotwSecrets(t, both.recv()); !sameNames(got, NameRootCA) {
		t.Fatalf("after removal: names %v, want only ROOTCA", names(got))
	}
	r2 := only.recv()
	if len(r2.Resources) != 0 || r2.VersionInfo == ro.VersionInfo {
		t.Fatalf("after removal: %d resources at version %q, want an empty answer at a new version", len(r2.Resources), r2.VersionInfo)
	}
}

func TestSDSReconnectAfterAgentRestartWithStaleVersionAndNonceGetsLaterPushes(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	svid := ca.issue(t, idAPI)
	before := NewStore()
	mustSetBundle(t, before, ca)
	mustSetSVID(t, before, svid)
	srv1 := startServer(t, before, byUID(idAPI))
	st := openSotW(t, sdsClient(t, srv1.sock))
	st.subscribe(NameDefault, NameRootCA)
	stale := st.recv()
	st.ack(stale, NameDefault, NameRootCA)

	// The agent restarts with the same secrets: a new Store, a new server.
	after := NewStore()
	mustSetBundle(t, after, ca)
	mustSetSVID(t, after, svid)
	srv2 := startServer(t, after, byUID(idAPI))
	re := openSotW(t, sdsClient(t, srv2.sock))
	re.send(&discovery.DiscoveryRequest{Node: envoyNode("sidecar"), VersionInfo: stale.VersionInfo,
		ResponseNonce: stale.Nonce, ResourceNames: []string{NameDefault, NameRootCA}})
	cur := re.recv()
	if got := sotwSecrets(t, cur); !sameNames(got, NameDefault, NameRootCA) {
		t.Fatalf("reconnect got %v, want the current default and ROOTCA", names(got))
	}
	if cur.VersionInfo == stale.VersionInfo {
		t.Fatalf("a restarted agent reused version %q", cur.VersionInfo)
	}
	re.ack(cur, NameDefault, NameRootCA)
	for range 2 {
		next := ca.issue(t, idAPI)
		mustSetSVID(t, after, next)
		r := re.recv()
		if leafOf(t, sotwSecrets(t, r)[NameDefault])[0].SerialNumber.String() != leafSerial(next) {
			t.Fatal("reconnected stream missed a push")
		}
		re.ack(r, NameDefault, NameRootCA)
	}
}

func TestSDSFetchAnswersWithTheNamedSecrets(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	store := NewStore()
	mustSetBundle(t, store, ca)
	mustSetSVID(t, store, ca.issue(t, idAPI))
	srv := startServer(t, store, byUID(idAPI))
	client := sdsClient(t, srv.sock)

	resp, err := client.FetchSecrets(streamCtx(t), &discovery.DiscoveryRequest{Node: envoyNode("sidecar"),
		ResourceNames: []string{NameDefault, NameRootCA}})
	if err != nil {
		t.Fatal(err)
	}
	got := sotwSecrets(t, resp)
	if !sameNames(got, NameDefault, NameRootCA) {
		t.Fatalf("names %v, want default and ROOTCA", names(got))
	}
	if err := verifies(leafOf(t, got[NameDefault]), rootsOf(t, got[NameRootCA])); err != nil {
		t.Fatal(err)
	}
	// A name the agent will have shortly is never answered partially: the fetch waits for it
	// within its deadline.
	resp2, err := client.FetchSecrets(streamCtx(t), &discovery.DiscoveryRequest{Node: envoyNode(idWeb.String()),
		ResourceNames: []string{NameDefault, NameRootCA, NameAll, idAPI.String(), "spiffe://mesh.example/ns/other/sa/x"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := sotwSecrets(t, resp2); !sameNames(got, NameDefault, NameRootCA, NameAll, idAPI.String()) {
		t.Fatalf("names %v: want the four the caller may have, whatever node.id claims", names(got))
	}
	_, err = client.FetchSecrets(streamCtx(t), &discovery.DiscoveryRequest{VersionInfo: resp.VersionInfo,
		ResourceNames: []string{NameDefault}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("fetch at the current version: %v, want FailedPrecondition", err)
	}
}

func TestSDSFetchWaitsForASecretTheAgentWillHave(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	store := NewStore()
	mustSetBundle(t, store, ca)
	srv := startServer(t, store, byUID(idAPI))
	client := sdsClient(t, srv.sock)

	short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := client.FetchSecrets(short, &discovery.DiscoveryRequest{ResourceNames: []string{NameDefault, NameRootCA}})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("fetch before the certificate exists: %v, want DeadlineExceeded (never a partial answer)", err)
	}
	type result struct {
		resp *discovery.DiscoveryResponse
		err  error
	}
	done := make(chan result, 1)
	ctx := streamCtx(t)
	go func() {
		resp, err := client.FetchSecrets(ctx, &discovery.DiscoveryRequest{ResourceNames: []string{NameDefault, NameRootCA}})
		done <- result{resp, err}
	}()
	mustSetSVID(t, store, ca.issue(t, idAPI))
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if got := sotwSecrets(t, r.resp); !sameNames(got, NameDefault, NameRootCA) {
		t.Fatalf("names %v, want default and ROOTCA", names(got))
	}
}

func TestSDSALLCarriesEveryTrustedAndFederatedBundle(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	fed := newTestCA(t, tdFed.Name())
	store := NewStore()
	mustSetBundle(t, store, ca)
	mustSetBundle(t, store, fed)
	srv := startServer(t, store, byUID(idAPI))

	st := openSotW(t, sdsClient(t, srv.sock))
	st.subscribe(NameAll)
	got := sotwSecrets(t, st.recv())
	cv := got[NameAll].GetValidationContext().GetCustomValidatorConfig()
	if cv.GetName() != SPIFFEValidatorName {
		t.Fatalf("custom validator %q, want %q", cv.GetName(), SPIFFEValidatorName)
	}
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	if err := cv.GetTypedConfig().UnmarshalTo(cfg); err != nil {
		t.Fatal(err)
	}
	want := map[string]*testCA{tdMesh: ca, tdFed.Name(): fed}
	if len(cfg.TrustDomains) != len(want) {
		t.Fatalf("%d trust domains, want %d", len(cfg.TrustDomains), len(want))
	}
	for _, td := range cfg.TrustDomains {
		c, ok := want[td.Name]
		if !ok {
			t.Fatalf("unexpected trust domain %q", td.Name)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(td.TrustBundle.GetInlineBytes())
		if err := verifies([]*x509.Certificate{c.inter}, pool); err != nil {
			t.Fatalf("trust domain %q: bundle does not hold its root: %v", td.Name, err)
		}
	}
}

func TestSDSCallerGetsOnlyItsOwnIdentity(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	store := NewStore()
	mustSetBundle(t, store, ca)
	mustSetSVID(t, store, ca.issue(t, idAPI))
	webSVID := ca.issue(t, idWeb)
	mustSetSVID(t, store, webSVID)
	srv := startServer(t, store, func(p map[string]string) *CallerTable {
		return &CallerTable{
			BySocket: map[string]spiffeid.ID{p["web"]: idWeb},
			ByUID:    map[uint32]spiffeid.ID{uint32(os.Getuid()) + 1: idAPI},
		}
	}, "web")

	t.Run("an unmapped uid gets PermissionDenied and nothing else", func(t *testing.T) {
		client := sdsClient(t, srv.sock)
		st := openSotW(t, client)
		// The server may refuse the stream before the request is sent: Send then reports
		// io.EOF, and the refusal itself comes from Recv.
		err := st.st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, Node: envoyNode("sidecar"), ResourceNames: []string{NameDefault}})
		if err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("send: %v", err)
		}
		if _, err := st.st.Recv(); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("stream: %v, want PermissionDenied", err)
		}
		ds, err := client.DeltaSecrets(streamCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ds.Recv(); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("delta: %v, want PermissionDenied", err)
		}
		if _, err := client.FetchSecrets(streamCtx(t), &discovery.DiscoveryRequest{ResourceNames: []string{NameDefault}}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("fetch: %v, want PermissionDenied", err)
		}
	})

	t.Run("a socket bound to an identity serves that identity whatever node.id claims", func(t *testing.T) {
		st := openSotW(t, sdsClient(t, srv.socket["web"]))
		st.send(&discovery.DiscoveryRequest{Node: envoyNode(idAPI.String()), ResourceNames: []string{NameDefault, idWeb.String(), idAPI.String()}})
		got := sotwSecrets(t, st.recv())
		if !sameNames(got, NameDefault, idWeb.String()) {
			t.Fatalf("names %v, want default and its own SPIFFE ID only", names(got))
		}
		for _, n := range []string{NameDefault, idWeb.String()} {
			if leafOf(t, got[n])[0].SerialNumber.String() != leafSerial(webSVID) {
				t.Fatalf("%s: not the caller's own certificate", n)
			}
		}
	})
}

func TestSDSStreamsOpenGaugeFollowsStreams(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	store := NewStore()
	mustSetBundle(t, store, ca)
	srv := startServer(t, store, byUID(idAPI))
	client := sdsClient(t, srv.sock)

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	st, err := client.StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{NameRootCA}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(srv.sds.streamsOpen); n != 1 {
		t.Fatalf("meshca_sds_streams_open = %v with one stream open", n)
	}
	cancel()
	poll(t, "the gauge to drop when the stream closes", func() bool { return testutil.ToFloat64(srv.sds.streamsOpen) == 0 })
	if n, err := testutil.GatherAndCount(srv.reg, "meshca_sds_streams_open", "meshca_sds_pushes_total", "meshca_sds_nacks_total"); err != nil || n != 3 {
		t.Fatalf("registered metrics: %d (%v), want 3", n, err)
	}
}

func TestAnswerable(t *testing.T) {
	have := map[string]bool{NameRootCA: true, "spiffe://mesh.example": true}
	present := func(n string) bool { return have[n] }
	cases := []struct {
		rule     string
		names    []string
		returned map[string]string
		want     bool
	}{
		{"a wildcard subscription is answered once anything exists", nil, nil, true},
		{"names that all exist are answered", []string{NameRootCA}, nil, true},
		{"an expected name still missing holds the answer", []string{NameRootCA, NameDefault}, nil, false},
		{"the caller's own SPIFFE ID is expected", []string{NameRootCA, idAPI.String()}, nil, false},
		{"ALL is expected", []string{NameAll}, nil, false},
		{"an unknown name beside an existing one does not hold the answer", []string{NameRootCA, "bogus"}, nil, true},
		{"only unknown names are not answered", []string{"bogus", idWeb.String()}, nil, false},
		{"an unknown name sent before is answered, to say it is gone", []string{fedIDStr}, map[string]string{fedIDStr: "v1"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.rule, func(t *testing.T) {
			if got := answerable(idAPI, tc.names, present, true, tc.returned); got != tc.want {
				t.Fatalf("answerable(%v) = %v, want %v", tc.names, got, tc.want)
			}
		})
	}
	if answerable(idAPI, nil, present, false, nil) {
		t.Fatal("a wildcard subscription was answered with nothing to send")
	}
}
