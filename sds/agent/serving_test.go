package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/sds"
)

func TestAnUnmappedUIDGetsNothingAndAnIdentitySocketServesItsIdentity(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	dir := shortDir(t)
	cfg := testConfig(t, cluster, dir)
	// Map another uid than ours on the shared sockets, and give the identity its own socket.
	cfg.Identities[0].UIDs = []uint32{uint32(os.Getuid()) + 1}
	cfg.Identities[0].Socket = filepath.Join(dir, "api.sock")
	cfg.SetDefaults()
	a := startAgent(t, cfg, clock)
	poll(t, "a registration", func() bool { return a.servedSerial(idAPI) != "" })

	t.Run("SDS on the shared socket refuses the unmapped caller", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		c := secretservice.NewSecretDiscoveryServiceClient(dialUnix(t, cfg.SDSSocket))
		_, err := c.FetchSecrets(ctx, &discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{sds.NameDefault}})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("fetch: %v, want PermissionDenied", err)
		}
		st, err := c.StreamSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{sds.NameDefault}}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("stream: %v, want PermissionDenied", err)
		}
	})
	t.Run("the Workload API refuses the unmapped caller", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+cfg.WorkloadAPISocket))
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("FetchX509SVID: %v, want PermissionDenied", err)
		}
	})
	t.Run("the identity's own socket serves it to whoever connects", func(t *testing.T) {
		e := openEnvoy(t, cfg.Identities[0].Socket, sds.NameDefault)
		if got := serialOf(t, e.recv()[sds.NameDefault]); got != a.servedSerial(idAPI) {
			t.Fatalf("served %s, want %s", got, a.servedSerial(idAPI))
		}
		assertMode(t, cfg.Identities[0].Socket, 0o660)
	})
}

func TestACallerIsMappedByItsGroup(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	cfg := testConfig(t, cluster, shortDir(t))
	cfg.Identities[0].UIDs = nil
	cfg.Identities[0].GIDs = []uint32{uint32(os.Getgid())}
	a := startAgent(t, cfg, clock)
	e := openEnvoy(t, cfg.SDSSocket, sds.NameDefault)
	if got := serialOf(t, e.recv()[sds.NameDefault]); got != a.servedSerial(idAPI) {
		t.Fatalf("served %s, want %s", got, a.servedSerial(idAPI))
	}
}

func TestAGoSPIFFEX509SourceSeesTheRotation(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	cfg := testConfig(t, cluster, shortDir(t))
	a := startAgent(t, cfg, clock)

	ctx, cancel := context.WithTimeout(context.Background(), 2*waitFor)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+cfg.WorkloadAPISocket)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != idAPI {
		t.Fatalf("X509Source holds %s, want %s", svid.ID, idAPI)
	}
	first := svid.Certificates[0].SerialNumber.Text(16)
	if first != a.servedSerial(idAPI) {
		t.Fatalf("X509Source holds %s, agent serves %s", first, a.servedSerial(idAPI))
	}
	advanceToRefresh(t, clock, cluster)
	issued := cluster.okCalls("Refresh")[0].issued
	poll(t, "the X509Source to hold the rotated SVID", func() bool {
		s, err := src.GetX509SVID()
		return err == nil && s.Certificates[0].SerialNumber.Text(16) == issued
	})
	b, err := src.GetX509BundleForTrustDomain(cluster.td)
	if err != nil || len(b.X509Authorities()) != 1 {
		t.Fatalf("X509Source bundle: %v %v", b, err)
	}
}

func TestBundleChangesOnTheClusterArePushedThroughTheAgent(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	cfg := testConfig(t, cluster, shortDir(t))
	a := startAgent(t, cfg, clock)
	poll(t, "a registration", func() bool { return a.servedSerial(idAPI) != "" })
	poll(t, "the bundle stream", func() bool { return a.agent.streamed.Load() })

	e := openEnvoy(t, cfg.SDSSocket, sds.NameRootCA, sds.NameAll, "spiffe://partner.example")
	first := e.recv()
	if n := len(rootsOf(t, first[sds.NameRootCA])); n != 1 {
		t.Fatalf("ROOTCA holds %d roots, want 1", n)
	}

	t.Run("a root published for a rotation reaches ROOTCA", func(t *testing.T) {
		root := cluster.newRoot()
		cluster.publishRoot(root)
		got := e.recvUntil("two roots", func(m map[string]*tlsv3.Secret) bool {
			return m[sds.NameRootCA] != nil && len(rootsOf(t, m[sds.NameRootCA])) == 2
		})
		if !rootsOf(t, got[sds.NameRootCA])[0].Equal(root) && !rootsOf(t, got[sds.NameRootCA])[1].Equal(root) {
			t.Fatal("the new root is not in ROOTCA")
		}
	})
	t.Run("a federated trust domain appears in ALL and under its own name", func(t *testing.T) {
		cluster.federate("partner.example")
		got := e.recvUntil("the federated bundle", func(m map[string]*tlsv3.Secret) bool {
			return m["spiffe://partner.example"] != nil && len(allTrustDomains(t, m[sds.NameAll])) == 2
		})
		if n := len(rootsOf(t, got["spiffe://partner.example"])); n != 1 {
			t.Fatalf("partner.example holds %d roots", n)
		}
	})
	t.Run("a federated trust domain removed on the cluster is removed for Envoy", func(t *testing.T) {
		cluster.bundles.RemoveBundle(spiffeid.RequireTrustDomainFromString("partner.example"))
		e.recvUntil("the federated bundle gone", func(m map[string]*tlsv3.Secret) bool {
			return m["spiffe://partner.example"] == nil && m[sds.NameAll] != nil && len(allTrustDomains(t, m[sds.NameAll])) == 1
		})
		if inv := a.agent.Inventory(); len(inv.Bundles) != 1 {
			t.Fatalf("the agent still holds %d bundles", len(inv.Bundles))
		}
	})
}

// allTrustDomains lists the trust domains of an ALL secret's SPIFFE validator config.
func allTrustDomains(t *testing.T, s *tlsv3.Secret) []string {
	t.Helper()
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	if err := s.GetValidationContext().GetCustomValidatorConfig().GetTypedConfig().UnmarshalTo(cfg); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, td := range cfg.GetTrustDomains() {
		out = append(out, td.GetName())
	}
	return out
}

// The bundle stream needs a client certificate: it starts once the first identity holds one,
// and a response it cannot use is NACKed without touching the store.
func TestBundleResponsesThatDoNotDecodeAreRejected(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	td := cluster.td
	cfg := testConfig(t, cluster, shortDir(t))
	startAgent(t, cfg, clock)
	// A real response in the format CA nodes send: the agent's own SDS serves ROOTCA and ALL
	// with the same code.
	sample := openEnvoy(t, cfg.SDSSocket, sds.NameRootCA, sds.NameAll).recvRaw()
	good := func() *discovery.DiscoveryResponse { return proto.Clone(sample).(*discovery.DiscoveryResponse) }
	cases := []struct {
		name   string
		mutate func(*discovery.DiscoveryResponse)
		want   string
	}{
		{"another resource type", func(r *discovery.DiscoveryResponse) { r.TypeUrl = resource.ClusterType }, "type_url"},
		{"a secret that was not asked for", func(r *discovery.DiscoveryResponse) {
			r.Resources = append(r.Resources, anySecret(t, &tlsv3.Secret{Name: "default"}))
		}, `secret "default" was not asked for`},
		{"a ROOTCA without a certificate", func(r *discovery.DiscoveryResponse) {
			r.Resources = append(r.Resources, anySecret(t, &tlsv3.Secret{Name: sds.NameRootCA, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{}}}))
		}, "ROOTCA: trusted_ca"},
		{"an ALL with another validator", func(r *discovery.DiscoveryResponse) {
			r.Resources = append(r.Resources, anySecret(t, &tlsv3.Secret{Name: sds.NameAll, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{}}}))
		}, "custom_validator_config"},
	}
	own, fed, err := decodeBundles(td, good())
	if err != nil || own == nil || fed == nil || len(fed) != 0 {
		t.Fatalf("a good response: own %v federated %v: %v", own, fed, err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := good()
			tc.mutate(r)
			_, _, err := decodeBundles(td, r)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func anySecret(t *testing.T, s *tlsv3.Secret) *anypb.Any {
	t.Helper()
	a, err := anypb.New(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// What the sds package proves for its server holds on the agent's socket too: Fetch and Delta
// work, an unknown name is left out without harm, and a NACK leaves the stream getting pushes.
func TestTheAgentSocketSpeaksFetchDeltaAndSurvivesNACKsAndUnknownNames(t *testing.T) {
	clock := newFakeClock(testStart())
	cluster := newTestCluster(t, clock.Now, 1)
	cfg := testConfig(t, cluster, shortDir(t))
	a := startAgent(t, cfg, clock)
	c := secretservice.NewSecretDiscoveryServiceClient(dialUnix(t, cfg.SDSSocket))
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()

	t.Run("Fetch answers ROOTCA", func(t *testing.T) {
		resp, err := c.FetchSecrets(ctx, &discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{sds.NameRootCA}})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetResources()) != 1 {
			t.Fatalf("%d resources, want ROOTCA", len(resp.GetResources()))
		}
	})
	t.Run("Delta answers default", func(t *testing.T) {
		st, err := c.DeltaSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.SecretType, ResourceNamesSubscribe: []string{sds.NameDefault}}); err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetResources()) != 1 || resp.GetResources()[0].GetName() != sds.NameDefault {
			t.Fatalf("delta answer %v", resp.GetResources())
		}
	})
	t.Run("an unknown name is left out and a NACK keeps the stream", func(t *testing.T) {
		other := "spiffe://mesh.example/ns/sports/sa/other"
		e := openEnvoy(t, cfg.SDSSocket, sds.NameDefault, other)
		first := e.st
		resp, err := first.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetResources()) != 1 {
			t.Fatalf("%d resources, want default alone", len(resp.GetResources()))
		}
		nack := &discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: e.names, ResponseNonce: resp.GetNonce(),
			ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "rejected by the test"}}
		if err := first.Send(nack); err != nil {
			t.Fatal(err)
		}
		before := a.servedSerial(idAPI)
		advanceToRefresh(t, clock, cluster)
		got := e.recvUntil("the rotated certificate after the NACK", func(m map[string]*tlsv3.Secret) bool {
			return m[sds.NameDefault] != nil && serialOf(t, m[sds.NameDefault]) != before
		})
		if _, ok := got[other]; ok {
			t.Fatal("another identity's certificate was served")
		}
		poll(t, "the NACK logged", logged(a, "NACK"))
	})
}
