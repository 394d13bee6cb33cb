package agent

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const validConfig = `
trust_domain: mesh.example
servers: ["ca-1.mesh.example:8443", "ca-2.mesh.example:8443"]
trust_bundle: /etc/meshca/bundle.pem
state_dir: /var/lib/meshca-agent
files_dir: /run/meshca/files
sds_socket: /run/meshca/sds.sock
workload_api_socket: /run/meshca/workload.sock
admin_socket: /run/meshca/admin.sock
ttl: 1h
refresh:
  fraction: 0.6
  jitter: 0.05
  backoff_initial: 2s
  backoff_max: 1m
identities:
- domain: sports
  service: api
  instance_id: pod-1.ns.cluster-a
  provider_dns_suffix: k8s.mesh.example
  server_auth: true
  uids: [1000]
  attestation:
    provider: sys.auth.k8s
    identity_document:
      file: /var/run/secrets/identity.jwt
- name: web
  domain: sports
  service: web
  instance_id: pod-2.ns.cluster-a
  provider_dns_suffix: meshca.mesh.example
  socket: /run/meshca/web.sock
  attestation:
    register_token_file: /etc/meshca/web.token
- domain: sys.auth
  service: batch
  instance_id: host-7
  provider_dns_suffix: meshca.mesh.example
  gids: [200]
  attestation:
    service_key:
      key_file: /etc/meshca/batch.key
      key_version: "2"
`

func TestValidConfigDecodesWithDefaults(t *testing.T) {
	c, err := DecodeConfig(strings.NewReader(validConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.KeyType != "ecdsa-p256" || c.ServerIDPrefix != DefaultServerIDPrefix {
		t.Errorf("defaults: key_type %q, server_id_prefix %q", c.KeyType, c.ServerIDPrefix)
	}
	if c.TTL.D() != time.Hour || c.Refresh.Fraction != 0.6 || *c.Refresh.Jitter != 0.05 || c.Refresh.BackoffMax.D() != time.Minute {
		t.Errorf("values not kept: %+v", c.Refresh)
	}
	if c.Refresh.RPCTimeout.D() != DefaultRPCTimeout {
		t.Errorf("rpc_timeout default: %s", c.Refresh.RPCTimeout.D())
	}
	if got := c.Identities[0].Name; got != "sports.api" {
		t.Errorf("default name %q, want sports.api", got)
	}
	if got := c.Identities[1].Attestation.Provider; got != BuiltinProvider {
		t.Errorf("register token provider %q, want %s", got, BuiltinProvider)
	}
	if got := c.Identities[1].SocketMode; got != "0660" {
		t.Errorf("socket_mode default %q", got)
	}
	if got := c.Identities[0].Attestation.IdentityDocument.Timeout.D(); got != DefaultCommandTimeout {
		t.Errorf("identity_document.timeout default %s", got)
	}
}

func TestDefaultsWhenRefreshIsLeftOut(t *testing.T) {
	c, err := DecodeConfig(strings.NewReader(strings.Replace(validConfig, `refresh:
  fraction: 0.6
  jitter: 0.05
  backoff_initial: 2s
  backoff_max: 1m
`, "", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if c.Refresh.Fraction != DefaultRefreshFraction || *c.Refresh.Jitter != DefaultRefreshJitter ||
		c.Refresh.BackoffInitial.D() != DefaultBackoffInitial || c.Refresh.BackoffMax.D() != DefaultBackoffMax {
		t.Errorf("refresh defaults: %+v jitter %v", c.Refresh, *c.Refresh.Jitter)
	}
}

// Each case changes the valid config in one place; the error must name the field (or key) and
// the rule.
func TestConfigErrorsNameTheFieldAndTheRule(t *testing.T) {
	cases := []struct {
		name     string
		old, new string
		want     []string
	}{
		{"an unknown top-level key is refused by name", "state_dir:", "statedir: /x\nstate_dir:", []string{`unknown key "statedir"`, "line"}},
		{"an unknown nested key is refused by name", "  fraction: 0.6", "  fraction: 0.6\n  fractoin: 0.5", []string{`unknown key "fractoin"`}},
		{"an unknown attestation key is refused by name", "      key_version: \"2\"", "      key_version: \"2\"\n      key_pass: x", []string{`unknown key "key_pass"`}},
		{"trust_domain is required", "trust_domain: mesh.example", "", []string{"trust_domain", "required"}},
		{"trust_domain must be a trust domain name", "trust_domain: mesh.example", "trust_domain: Mesh Example", []string{"trust_domain", "not a SPIFFE trust domain"}},
		{"servers are required", `servers: ["ca-1.mesh.example:8443", "ca-2.mesh.example:8443"]`, "servers: []", []string{"servers", "at least one"}},
		{"a server is host:port", `"ca-2.mesh.example:8443"]`, `"ca-2.mesh.example"]`, []string{"servers[1]", "host:port"}},
		{"a server is listed once", `"ca-2.mesh.example:8443"]`, `"ca-1.mesh.example:8443"]`, []string{"servers[1]", "twice"}},
		{"trust_bundle is required", "trust_bundle: /etc/meshca/bundle.pem", "", []string{"trust_bundle", "required"}},
		{"state_dir is required", "state_dir: /var/lib/meshca-agent", "", []string{"state_dir", "required"}},
		{"paths are absolute", "state_dir: /var/lib/meshca-agent", "state_dir: state", []string{"state_dir", "absolute"}},
		{"admin_socket differs from sds_socket", "admin_socket: /run/meshca/admin.sock", "admin_socket: /run/meshca/sds.sock", []string{"admin_socket", "must differ"}},
		{"key_type is one meshca knows", "ttl: 1h", "ttl: 1h\nkey_type: dsa-1024", []string{"key_type", "dsa-1024", "ecdsa-p256"}},
		{"ttl is a duration", "ttl: 1h", "ttl: one hour", []string{"ttl", "not a non-negative duration"}},
		{"ttl is at most 30 days", "ttl: 1h", "ttl: 800h", []string{"ttl", "exceeds"}},
		{"refresh.fraction is between 0 and 1", "  fraction: 0.6", "  fraction: 1.5", []string{"refresh.fraction", "between 0 and 1"}},
		{"refresh.jitter keeps the refresh inside the lifetime", "  jitter: 0.05", "  jitter: 0.5", []string{"refresh.jitter", "between 0 and 1"}},
		{"refresh.backoff_max is not below backoff_initial", "  backoff_max: 1m", "  backoff_max: 1s", []string{"refresh.backoff_max", "shorter than backoff_initial"}},
		{"refresh.backoff_initial is a duration", "  backoff_initial: 2s", "  backoff_initial: soon", []string{"refresh.backoff_initial", "duration"}},
		{"refresh.reissue_jitter is a few seconds, at most 5m", "  backoff_max: 1m", "  backoff_max: 1m\n  reissue_jitter: 1h", []string{"refresh.reissue_jitter", "between 0s and 5m0s"}},
		{"refresh.reissue_jitter is a duration", "  backoff_max: 1m", "  backoff_max: 1m\n  reissue_jitter: soon", []string{"refresh.reissue_jitter", "duration"}},
		{"an identity needs an instance id", "  instance_id: pod-1.ns.cluster-a\n", "", []string{"identities[0].instance_id", "required"}},
		{"an identity's service is one DNS label", "  service: api\n", "  service: api.v2\n", []string{"identities[0].service", "single DNS label"}},
		{"an identity's domain is DNS labels", "- domain: sports\n  service: api", "- domain: sp_orts\n  service: api", []string{"identities[0].domain", "DNS labels"}},
		{"identity names are unique", "- name: web", "- name: sports.api", []string{"identities[1].name", "unique"}},
		{"a uid maps to one identity", "  gids: [200]", "  uids: [1000]", []string{"identities[2].uids", "uid 1000", "identities[0]"}},
		{"an identity socket is not a shared socket", "  socket: /run/meshca/web.sock", "  socket: /run/meshca/sds.sock", []string{"identities[1].socket", "sds_socket"}},
		{"socket_mode is octal", "  socket: /run/meshca/web.sock", "  socket: /run/meshca/web.sock\n  socket_mode: rw-rw----", []string{"identities[1].socket_mode", "octal"}},
		{"exactly one attestation method", "    register_token_file: /etc/meshca/web.token", "    register_token_file: /etc/meshca/web.token\n    service_key: {key_file: /k, key_version: \"1\"}", []string{"identities[1].attestation", "exactly one", "2 set"}},
		{"no attestation method is refused", "    register_token_file: /etc/meshca/web.token", "    provider: sys.auth.meshca", []string{"identities[1].attestation", "exactly one", "0 set"}},
		{"an identity document needs its provider", "    provider: sys.auth.k8s\n", "", []string{"identities[0].attestation.provider", "required with identity_document"}},
		{"an identity document comes from a file or a command", "      file: /var/run/secrets/identity.jwt", "      file: /var/run/secrets/identity.jwt\n      command: [/bin/doc]", []string{"identities[0].attestation.identity_document", "exactly one of file and command"}},
		{"a register token is confirmed by the CA itself", "    register_token_file: /etc/meshca/web.token", "    provider: sys.auth.k8s\n    register_token_file: /etc/meshca/web.token", []string{"identities[1].attestation.provider", BuiltinProvider}},
		{"a service key needs its version", "      key_version: \"2\"", "", []string{"identities[2].attestation.service_key.key_version", "required"}},
		{"peer-credential mapping needs a shared socket", "sds_socket: /run/meshca/sds.sock\nworkload_api_socket: /run/meshca/workload.sock\n", "", []string{"identities[0].uids", "needs sds_socket"}},
		{"two documents are refused", "identities:", "---\nidentities:", []string{"config"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(validConfig, tc.old) {
				t.Fatalf("test bug: %q not in the valid config", tc.old)
			}
			_, err := DecodeConfig(strings.NewReader(strings.Replace(validConfig, tc.old, tc.new, 1)))
			if err == nil {
				t.Fatal("config accepted")
			}
			t.Log(err)
			if !errors.Is(err, ErrConfig) {
				t.Errorf("error %v does not wrap ErrConfig", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestZeroJitterIsAllowedAndNoIdentityIsNot(t *testing.T) {
	c, err := DecodeConfig(strings.NewReader(strings.Replace(validConfig, "  jitter: 0.05", "  jitter: 0", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if *c.Refresh.Jitter != 0 {
		t.Fatalf("jitter %v, want an explicit 0 kept", *c.Refresh.Jitter)
	}
	head := validConfig[:strings.Index(validConfig, "identities:")]
	_, err = DecodeConfig(strings.NewReader(head + "identities: []\n"))
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "identities: at least one") {
		t.Fatalf("no identities: %v", err)
	}
}

func TestAConfigWrittenAsYAMLDecodesToTheSameValues(t *testing.T) {
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
		t.Fatalf("%v\n%s", err, out)
	}
	again, err := yaml.Marshal(back)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, again) {
		t.Fatalf("round trip changed the config:\n%s\nbecame\n%s", out, again)
	}
	if back.TTL.D() != time.Hour || back.Refresh.BackoffMax.D() != time.Minute || *back.Refresh.Jitter != 0.05 {
		t.Fatalf("values changed: ttl %s backoff_max %s jitter %v", back.TTL.D(), back.Refresh.BackoffMax.D(), *back.Refresh.Jitter)
	}
}

// The documented example config is a valid config.
func TestTheExampleConfigLoads(t *testing.T) {
	c, err := LoadConfig(filepath.Join("..", "..", "examples", "meshca-agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Identities) != 3 || c.Identities[1].Name != "web" || c.Identities[2].Name != "sys.auth.batch" {
		t.Fatalf("identities %+v", c.Identities)
	}
}

func TestLoadConfigNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte("trust_domain: mesh.example\nservres: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadConfig(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), `unknown key "servres"`) {
		t.Fatalf("got %v", err)
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, ErrConfig) {
		t.Fatalf("missing file: %v", err)
	}
}
