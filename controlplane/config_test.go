package controlplane

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const validConfig = `
node_id: n1
data_dir: /var/lib/meshca/n1
trust_domain: mesh.example
listen:
  grpc: 127.0.0.1:7443
  cluster: 127.0.0.1:7444
  http: 127.0.0.1:7080
ca:
  mode: self-signed
  dir: /var/lib/meshca/ca
  kek_env: MESHCA_KEK
  workload_ttl: 1h
raft:
  bootstrap: true
  peers:
  - {id: n1, address: 127.0.0.1:7444}
  - {id: n2, address: 127.0.0.1:7454}
admins: [spiffe://mesh.example/ns/sys.auth/sa/admin]
providers:
- name: sys.auth.example
  dns_suffix: example.mesh.example
  confirm_endpoint: https://127.0.0.1:9443/confirm
`

func TestDecodeConfig(t *testing.T) {
	c, err := DecodeConfig(strings.NewReader(validConfig))
	if err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	if c.CA.WorkloadTTL.D().String() != "1h0m0s" || c.CA.MaxWorkloadTTL.D().Hours() != 720 {
		t.Errorf("ttl = %s / max %s", c.CA.WorkloadTTL.D(), c.CA.MaxWorkloadTTL.D())
	}
	if c.Listen.ClusterAdvertise != c.Listen.Cluster {
		t.Errorf("cluster_advertise defaults to listen.cluster, got %q", c.Listen.ClusterAdvertise)
	}
	if c.Limits.MaxMessageBytes != 64<<10 || c.Limits.IssuePerIdentityPerMinute == 0 || c.Limits.ProviderTimeout.D() != 5*time.Second || c.Limits.ReadHeaderTimeout.D() != 5*time.Second {
		t.Errorf("limits not defaulted: %+v", c.Limits)
	}
	if c.CA.NodeCertTTL.D() != 24*time.Hour || c.CA.DenyServerAuth {
		t.Errorf("node certificate lifetime %s, deny_server_auth %v: not the defaults", c.CA.NodeCertTTL.D(), c.CA.DenyServerAuth)
	}
}

func TestDecodeConfigRefusals(t *testing.T) {
	cases := []struct {
		name, from, to, want string
	}{
		{"unknown key is named with its line", "data_dir:", "data_dri:", `unknown key "data_dri"`},
		{"unknown nested key is named", "  kek_env: MESHCA_KEK", "  kek_envv: MESHCA_KEK", `unknown key "kek_envv"`},
		{"node id must be a DNS label", "node_id: n1", "node_id: N_1", "node_id:"},
		{"trust domain must be a SPIFFE trust domain", "trust_domain: mesh.example", "trust_domain: Mesh Example", "trust_domain:"},
		{"listen address must be host:port", "grpc: 127.0.0.1:7443", "grpc: nowhere", "listen.grpc:"},
		{"ca mode must be known", "mode: self-signed", "mode: magic", "ca.mode:"},
		{"self-signed key needs a KEK", "  kek_env: MESHCA_KEK\n", "", "kek_file or kek_env"},
		{"duration must parse", "workload_ttl: 1h", "workload_ttl: soon", "workload_ttl"},
		{"ttl above 30 days refused", "workload_ttl: 1h", "max_workload_ttl: 800h", "ca.max_workload_ttl"},
		{"bootstrap peers include self", "{id: n1, address: 127.0.0.1:7444}", "{id: n3, address: 127.0.0.1:7444}", "must include this node"},
		{"peer ids unique", "{id: n2, address: 127.0.0.1:7454}", "{id: n1, address: 127.0.0.1:7454}", "appears twice"},
		{"provider confirm endpoint must be https", "https://127.0.0.1:9443/confirm", "http://127.0.0.1:9443/confirm", "providers[0].confirm_endpoint"},
		{"provider name is a service identity", "name: sys.auth.example", "name: example", "providers[0].name"},
		{"cacerts mode needs a KEK to replicate the key", "  mode: self-signed\n  dir: /var/lib/meshca/ca\n  kek_env: MESHCA_KEK", "  mode: cacerts\n  dir: /etc/cacerts", "kek_file or kek_env is required in cacerts mode"},
		{"one KEK source only", "  kek_env: MESHCA_KEK", "  kek_env: MESHCA_KEK\n  kek_file: /k", "set one of kek_file and kek_env"},
		{"CA key type must be known", "  workload_ttl: 1h", "  workload_ttl: 1h\n  key_type: rsa-1024", "ca.key_type"},
		{"node certificate lifetime has a floor", "  workload_ttl: 1h", "  workload_ttl: 1h\n  node_cert_ttl: 10s", "ca.node_cert_ttl: 10s is below the 1m minimum"},
		{"server names are DNS names or IPs", "  http: 127.0.0.1:7080", "  http: 127.0.0.1:7080\n  server_names: [\"bad name\"]", "listen.server_names[0]"},
		{"provider timeout is bounded", "admins:", "limits: {provider_timeout: 5m}\nadmins:", "limits.provider_timeout"},
		{"header read timeout has a floor", "admins:", "limits: {read_header_timeout: 10ms}\nadmins:", "limits.read_header_timeout: 10ms must be between 100ms and 1m"},
		{"header read timeout has a ceiling", "admins:", "limits: {read_header_timeout: 2m}\nadmins:", "limits.read_header_timeout: 2m0s must be between 100ms and 1m"},
		{"seeded service is a service identity", "admins:", "services: [{name: api}]\nadmins:", "services[0].name"},
		{"seeded grant is a provider pattern", "admins:", "services: [{name: sports.api, launch_grants: [\"*\"]}]\nadmins:", "services[0].launch_grants[0]"},
		{"rate limits are not negative", "admins:", "limits: {issue_per_source_per_minute: -1}\nadmins:", "limits.issue_per_source_per_minute: -1 is negative"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(validConfig, tc.from, tc.to, 1)
			if src == validConfig {
				t.Fatalf("case does not change the config (%q not found)", tc.from)
			}
			_, err := DecodeConfig(strings.NewReader(src))
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name %q", err, tc.want)
			}
		})
	}
}

func FuzzDecodeConfig(f *testing.F) {
	f.Add([]byte(validConfig))
	f.Add([]byte("node_id: [1, 2\n"))
	f.Add([]byte("ca: {mode: pkcs11, pkcs11: {module: x}}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeConfig(strings.NewReader(string(data)))
		if err == nil && c.Validate() != nil {
			t.Fatal("DecodeConfig returned a config that does not validate")
		}
	})
}

// TestConfigRoundTrip pins down that a Config written as YAML reads back the same: test
// harnesses and tools write configs this way.
func TestConfigRoundTrip(t *testing.T) {
	c, err := DecodeConfig(strings.NewReader(validConfig))
	if err != nil {
		t.Fatal(err)
	}
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeConfig(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("written config does not read back: %v\n%s", err, out)
	}
	if back.CA.WorkloadTTL.D() != time.Hour || back.Limits.ProviderTimeout.D() != 5*time.Second ||
		back.Providers[0].ConfirmEndpoint != c.Providers[0].ConfirmEndpoint || len(back.Raft.Peers) != 2 {
		t.Fatalf("round trip changed the config:\n%s", out)
	}
}

func TestSDSResourceNameLimit(t *testing.T) {
	c, err := DecodeConfig(strings.NewReader(validConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.Limits.MaxSDSResourceNames != 1024 {
		t.Errorf("default max_sds_resource_names = %d, want 1024", c.Limits.MaxSDSResourceNames)
	}
	_, err = DecodeConfig(strings.NewReader(validConfig + "limits:\n  max_sds_resource_names: -1\n"))
	if err == nil || !strings.Contains(err.Error(), "limits.max_sds_resource_names") {
		t.Fatalf("a negative limit must be refused naming the field, got %v", err)
	}
}
