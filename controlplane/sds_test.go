package controlplane

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
)

// TestBundleSDS pins down the bundles CA nodes stream to agents: over mutual TLS only, the own
// bundle as ROOTCA and spiffe://<td>, every bundle in ALL, and a federated trust domain pushed
// to the open stream as soon as the log records it.
func TestBundleSDS(t *testing.T) {
	f := newIdentityFixture(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	w := newWorkload(t, "sports", "api", testSuffix, "agent-1")
	cert := w.tlsCert(t, f.register(t, w))
	names := []string{"ROOTCA", "spiffe://" + testTD, "ALL", "spiffe://other.test"}

	t.Run("an agent without a client certificate is refused", func(t *testing.T) {
		st, err := secretservice.NewSecretDiscoveryServiceClient(dial(t, f.s.GRPCAddr(), f.bundlePool(), nil)).StreamSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: names})
		_, err = st.Recv()
		wantStatusCode(t, err, codes.PermissionDenied, "client certificate: none presented")
	})

	st, err := secretservice.NewSecretDiscoveryServiceClient(dial(t, f.s.GRPCAddr(), f.bundlePool(), cert)).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got := secretsOf(t, resp)
	if _, ok := got["spiffe://other.test"]; ok || len(got) != 3 {
		t.Fatalf("first answer names %v, want ROOTCA, spiffe://%s and ALL", keys(got), testTD)
	}
	if roots := trustedCA(t, got["ROOTCA"]); !slices.EqualFunc(roots, f.s.Bundle().X509Authorities(), (*x509.Certificate).Equal) {
		t.Fatal("ROOTCA is not the CA's bundle")
	}
	if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: names, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}

	other, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("other.test"), RootKey: mustSoftware(t), Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	f.apply(&meshcav1.Command{Command: &meshcav1.Command_PutFederation{PutFederation: &meshcav1.PutFederationCommand{
		Federation: &meshcav1.Federation{TrustDomain: "other.test", Bundle: federatedJWKS(t, "other.test", other), Sequence: 1},
	}}})
	resp, err = st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got = secretsOf(t, resp)
	roots := trustedCA(t, got["spiffe://other.test"])
	if len(roots) != 1 || !roots[0].Equal(other.Roots()[0]) {
		t.Fatalf("pushed answer names %v without the federated roots", keys(got))
	}
	var validator tlsv3.SPIFFECertValidatorConfig
	if err := got["ALL"].GetValidationContext().GetCustomValidatorConfig().GetTypedConfig().UnmarshalTo(&validator); err != nil {
		t.Fatal(err)
	}
	if n := len(validator.GetTrustDomains()); n != 2 {
		t.Fatalf("ALL carries %d trust domains, want 2", n)
	}
}

func secretsOf(t *testing.T, resp *discovery.DiscoveryResponse) map[string]*tlsv3.Secret {
	t.Helper()
	out := map[string]*tlsv3.Secret{}
	for _, r := range resp.GetResources() {
		var s tlsv3.Secret
		if err := r.UnmarshalTo(&s); err != nil {
			t.Fatal(err)
		}
		out[s.GetName()] = &s
	}
	return out
}

func trustedCA(t *testing.T, s *tlsv3.Secret) []*x509.Certificate {
	t.Helper()
	if s == nil {
		t.Fatal("secret missing")
	}
	var out []*x509.Certificate
	rest := s.GetValidationContext().GetTrustedCa().GetInlineBytes()
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
