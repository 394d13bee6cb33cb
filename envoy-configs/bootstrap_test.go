package envoyconfigs

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// The typed_config payloads the bootstraps use; importing them registers their types so
// protojson can resolve each "@type".
var (
	_ = tcpproxyv3.TcpProxy{}
	_ = httpv3.HttpProtocolOptions{}
)

func loadBootstrap(t *testing.T, path string) *bootstrapv3.Bootstrap {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: yaml: %v", path, err)
	}
	js, err := json.Marshal(doc)
	if err != nil {
		t.Fatalf("%s: to json: %v", path, err)
	}
	var b bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, &b); err != nil {
		t.Fatalf("%s: strict protojson: %v", path, err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("%s: Validate: %v", path, err)
	}
	return &b
}

// sdsNames lists the SDS secret names a TLS context asks for, with the cluster they come from.
func sdsNames(t *testing.T, c *tlsv3.CommonTlsContext) (names []string, clusters []string) {
	t.Helper()
	configs := append([]*tlsv3.SdsSecretConfig{}, c.GetTlsCertificateSdsSecretConfigs()...)
	if v := c.GetValidationContextSdsSecretConfig(); v != nil {
		configs = append(configs, v)
	}
	if v := c.GetCombinedValidationContext().GetValidationContextSdsSecretConfig(); v != nil {
		configs = append(configs, v)
	}
	for _, s := range configs {
		names = append(names, s.GetName())
		for _, g := range s.GetSdsConfig().GetApiConfigSource().GetGrpcServices() {
			clusters = append(clusters, g.GetEnvoyGrpc().GetClusterName())
		}
	}
	return names, clusters
}

func TestBootstrapsLoadStrictlyAndValidate(t *testing.T) {
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("want the inbound, outbound and federated bootstraps, found %v", files)
	}
	want := map[string][]string{
		"sidecar-inbound.yaml":   {"default", "ROOTCA"},
		"sidecar-outbound.yaml":  {"default", "ROOTCA"},
		"sidecar-federated.yaml": {"default", "ALL"},
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			b := loadBootstrap(t, f)
			var ctxs []*tlsv3.CommonTlsContext
			for _, l := range b.GetStaticResources().GetListeners() {
				for _, fc := range l.GetFilterChains() {
					ctxs = append(ctxs, downstreamContext(t, fc)...)
				}
			}
			for _, c := range b.GetStaticResources().GetClusters() {
				if ts := c.GetTransportSocket(); ts != nil {
					var up tlsv3.UpstreamTlsContext
					if err := ts.GetTypedConfig().UnmarshalTo(&up); err != nil {
						t.Fatalf("cluster %s: %v", c.GetName(), err)
					}
					ctxs = append(ctxs, up.GetCommonTlsContext())
				}
			}
			if len(ctxs) != 1 {
				t.Fatalf("want exactly one mTLS context, got %d", len(ctxs))
			}
			names, clusters := sdsNames(t, ctxs[0])
			if strings.Join(names, ",") != strings.Join(want[f], ",") {
				t.Errorf("SDS names = %v, want %v", names, want[f])
			}
			sdsCluster := ""
			for _, c := range b.GetStaticResources().GetClusters() {
				if c.GetName() == "meshca_sds" {
					sdsCluster = c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath()
				}
			}
			if sdsCluster == "" {
				t.Fatal("no meshca_sds cluster on a Unix socket")
			}
			for _, c := range clusters {
				if c != "meshca_sds" {
					t.Errorf("SDS from cluster %q, want meshca_sds", c)
				}
			}
		})
	}
}

func downstreamContext(t *testing.T, fc *listenerv3.FilterChain) []*tlsv3.CommonTlsContext {
	t.Helper()
	ts := fc.GetTransportSocket()
	if ts == nil {
		return nil
	}
	var down tlsv3.DownstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&down); err != nil {
		t.Fatalf("filter chain: %v", err)
	}
	if !down.GetRequireClientCertificate().GetValue() {
		t.Error("inbound listener must require a client certificate (mTLS)")
	}
	return []*tlsv3.CommonTlsContext{down.GetCommonTlsContext()}
}

func TestStrictDecodingRefusesUnknownField(t *testing.T) {
	js := []byte(`{"node":{"id":"x","clusterr":"typo"}}`)
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err == nil {
		t.Fatal("a misspelt field must be refused, or the bootstrap test proves nothing")
	}
}
