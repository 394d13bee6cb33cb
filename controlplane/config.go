package controlplane

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/internal/strictyaml"
	"github.com/meshca/meshca/raftstore"
	"github.com/meshca/meshca/sds"
)

// Config is meshca-server's configuration file. Decode it with LoadConfig or DecodeConfig:
// an unknown key is an error that names it, and Validate names the field and the rule of any
// bad value.
type Config struct {
	// NodeID names this node in the Raft group and in its SPIFFE ID
	// spiffe://<trust-domain>/meshca/server/<node-id>.
	NodeID string `yaml:"node_id"`
	// DataDir holds the Raft log, snapshots and this node's keys.
	DataDir string `yaml:"data_dir"`
	// TrustDomain is the cluster's SPIFFE trust domain, e.g. mesh.example.
	TrustDomain string `yaml:"trust_domain"`
	// Listen says where the node serves.
	Listen ListenConfig `yaml:"listen"`
	// CA says where the issuing key and certificates come from.
	CA CAConfig `yaml:"ca"`
	// Raft configures the replicated log.
	Raft RaftConfig `yaml:"raft"`
	// Admins are the system administrators: SPIFFE IDs or <domain>.<service> principals whose
	// client certificates may call every admin method.
	Admins []string `yaml:"admins"`
	// Providers are seeded into the replicated state when the cluster is first bootstrapped.
	Providers []ProviderConfig `yaml:"providers"`
	// Services are seeded, with their domains and launch grants, when the cluster is first
	// bootstrapped (demo and test clusters; later changes go through the admin API).
	Services []ServiceConfig `yaml:"services"`
	// Limits bound what one caller can ask of the node.
	Limits LimitsConfig `yaml:"limits"`
	// Prune says how the leader keeps the replicated state bounded.
	Prune PruneConfig `yaml:"prune"`
}

// ListenConfig holds the node's listen addresses.
type ListenConfig struct {
	// GRPC serves the identity and admin APIs over TLS.
	GRPC string `yaml:"grpc"`
	// Cluster serves Raft and internal forwarding over mutual TLS.
	Cluster string `yaml:"cluster"`
	// ClusterAdvertise is the cluster address other nodes dial, when it differs from Cluster.
	ClusterAdvertise string `yaml:"cluster_advertise"`
	// HTTP serves /metrics, /healthz, /readyz, /crl, /ocsp, the extend API and the SPIFFE
	// bundle endpoint over HTTPS.
	HTTP string `yaml:"http"`
	// ServerNames are extra DNS names or IP addresses put in the node certificate besides the
	// listen hosts (e.g. a load balancer's name).
	ServerNames []string `yaml:"server_names"`
}

// CA modes.
const (
	CAModeSelfSigned = "self-signed"
	CAModeCACerts    = "cacerts"
	CAModePKCS11     = "pkcs11"
)

// CAConfig says where the CA's key and certificates come from.
type CAConfig struct {
	// Mode is self-signed (a root generated at first start, like istiod), cacerts (a plug-in
	// intermediate in the Istio cacerts layout) or pkcs11 (the key in an HSM).
	Mode string `yaml:"mode"`
	// Dir holds the CA material: for self-signed, where the generated root and its encrypted
	// key are kept (shared by the cluster's nodes); for cacerts, the cacerts folder.
	Dir string `yaml:"dir"`
	// KeyType of a generated key: ecdsa-p256 (default), ecdsa-p384, rsa-2048/3072/4096, ed25519.
	KeyType string `yaml:"key_type"`
	// KEKFile or KEKEnv give the key-encryption key for software keys at rest.
	KEKFile string `yaml:"kek_file"`
	KEKEnv  string `yaml:"kek_env"`
	// PKCS11 configures the HSM in pkcs11 mode.
	PKCS11 PKCS11Config `yaml:"pkcs11"`
	// WorkloadTTL is the default workload certificate lifetime (24h).
	WorkloadTTL Duration `yaml:"workload_ttl"`
	// MaxWorkloadTTL bounds a requested lifetime (720h, 30 days).
	MaxWorkloadTTL Duration `yaml:"max_workload_ttl"`
	// DenyServerAuth refuses requests for the serverAuth purpose: workload certificates are
	// then for TLS clients only. By default a workload may ask for serverAuth, as mesh
	// sidecars serve mutual TLS with their identity certificate.
	DenyServerAuth bool `yaml:"deny_server_auth"`
	// NodeCertTTL is the lifetime of this node's own certificate (24h); it is renewed at half
	// its life.
	NodeCertTTL Duration `yaml:"node_cert_ttl"`
}

// PKCS11Config locates the CA key on a token. The PIN comes from a file or an environment
// variable, never from the config itself.
type PKCS11Config struct {
	Module     string `yaml:"module"`
	TokenLabel string `yaml:"token_label"`
	KeyLabel   string `yaml:"key_label"`
	PINFile    string `yaml:"pin_file"`
	PINEnv     string `yaml:"pin_env"`
}

// RaftConfig configures this node's membership in the Raft group.
type RaftConfig struct {
	// Bootstrap makes this node form a new cluster from Peers at first start.
	Bootstrap bool `yaml:"bootstrap"`
	// Peers are the initial voters (including this node) when bootstrapping.
	Peers []PeerConfig `yaml:"peers"`
	// HeartbeatTimeout and ElectionTimeout tune failover (defaults replace a lost leader
	// within about 2 s on loopback).
	HeartbeatTimeout Duration `yaml:"heartbeat_timeout"`
	ElectionTimeout  Duration `yaml:"election_timeout"`
}

// PeerConfig names one voter.
type PeerConfig struct {
	ID      string `yaml:"id"`
	Address string `yaml:"address"`
}

// ProviderConfig seeds a provider: a launcher service allowed to vouch for instances.
type ProviderConfig struct {
	// Name is the provider's service identity, e.g. sys.auth.example.
	Name string `yaml:"name"`
	// DNSSuffix is unique across providers; workload DNS SANs end with it.
	DNSSuffix string `yaml:"dns_suffix"`
	// ConfirmEndpoint is the provider's HTTPS confirm URL (mutual TLS); empty for the
	// built-in provider sys.auth.meshca, which the CA is itself.
	ConfirmEndpoint string `yaml:"confirm_endpoint"`
	// ConfirmRefresh asks the provider to confirm refreshes too.
	ConfirmRefresh bool `yaml:"confirm_refresh"`
}

// ServiceConfig seeds a service identity and the providers allowed to launch it.
type ServiceConfig struct {
	// Name is the service identity <domain>.<service>, e.g. sports.api.
	Name string `yaml:"name"`
	// LaunchGrants are provider patterns: a provider name or a name followed by ".*".
	LaunchGrants []string `yaml:"launch_grants"`
}

// LimitsConfig bounds what a caller can ask of a node.
type LimitsConfig struct {
	// MaxMessageBytes bounds a gRPC or HTTP request body (default 64 KiB).
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// IssuePerIdentityPerMinute and IssuePerSourcePerMinute bound issuance rates.
	IssuePerIdentityPerMinute int `yaml:"issue_per_identity_per_minute"`
	IssuePerSourcePerMinute   int `yaml:"issue_per_source_per_minute"`
	// MaxStreamsPerCaller bounds concurrent server streams (WatchEvents, bundle SDS) a caller
	// may hold.
	MaxStreamsPerCaller int `yaml:"max_streams_per_caller"`
	// MaxSDSResourceNames bounds the resource names one bundle SDS request may name (1024).
	MaxSDSResourceNames int `yaml:"max_sds_resource_names"`
	// ProviderTimeout bounds one call to a provider's confirm endpoint (5s).
	ProviderTimeout Duration `yaml:"provider_timeout"`
	// ReadHeaderTimeout bounds how long the HTTPS port waits for a request's TLS handshake
	// and headers before it closes the connection (5s), so a client trickling its headers
	// cannot hold a connection.
	ReadHeaderTimeout Duration `yaml:"read_header_timeout"`
}

// PruneConfig says how often the leader prunes expired records and how long past their end
// they are kept (so an operator can still look up a certificate that just expired).
type PruneConfig struct {
	// Interval between prunes (10m).
	Interval Duration `yaml:"interval"`
	// Grace keeps records this long after they ended (1h).
	Grace Duration `yaml:"grace"`
}

// Duration is a time.Duration written in YAML as "24h", "90s"; see strictyaml.Duration.
type Duration = strictyaml.Duration

// NewDuration makes a Duration from a time.Duration.
func NewDuration(v time.Duration) Duration { return strictyaml.NewDuration(v) }

// checkDuration reports a duration field that did not parse, as an ErrConfig.
func checkDuration(d Duration, field string) error {
	if err := d.Check(field); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return nil
}

// ErrConfig marks every configuration error.
var ErrConfig = errors.New("config")

// DecodeConfig reads YAML strictly: an unknown key is an error naming the key and its line.
// Defaults are filled in and the result validated.
func DecodeConfig(r io.Reader) (*Config, error) {
	var c Config
	if err := strictyaml.Decode(r, &c); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// LoadConfig reads and validates a config file.
func LoadConfig(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c, err := DecodeConfig(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func (c *Config) setDefaults() {
	if c.CA.Mode == "" {
		c.CA.Mode = CAModeSelfSigned
	}
	if c.CA.KeyType == "" {
		c.CA.KeyType = "ecdsa-p256"
	}
	if c.CA.WorkloadTTL.Zero() {
		c.CA.WorkloadTTL = NewDuration(24 * time.Hour)
	}
	if c.CA.MaxWorkloadTTL.Zero() {
		c.CA.MaxWorkloadTTL = NewDuration(30 * 24 * time.Hour)
	}
	if c.Prune.Interval.Zero() {
		c.Prune.Interval = NewDuration(10 * time.Minute)
	}
	if c.Prune.Grace.Zero() {
		c.Prune.Grace = NewDuration(time.Hour)
	}
	if c.Listen.ClusterAdvertise == "" {
		c.Listen.ClusterAdvertise = c.Listen.Cluster
	}
	if c.Limits.MaxMessageBytes == 0 {
		c.Limits.MaxMessageBytes = 64 << 10
	}
	if c.Limits.IssuePerIdentityPerMinute == 0 {
		c.Limits.IssuePerIdentityPerMinute = 60
	}
	if c.Limits.IssuePerSourcePerMinute == 0 {
		c.Limits.IssuePerSourcePerMinute = 6000
	}
	if c.Limits.MaxSDSResourceNames == 0 {
		c.Limits.MaxSDSResourceNames = sds.DefaultMaxResourceNames
	}
	if c.Limits.MaxStreamsPerCaller == 0 {
		c.Limits.MaxStreamsPerCaller = 16
	}
	if c.Limits.ProviderTimeout.Zero() {
		c.Limits.ProviderTimeout = NewDuration(5 * time.Second)
	}
	if c.Limits.ReadHeaderTimeout.Zero() {
		c.Limits.ReadHeaderTimeout = NewDuration(5 * time.Second)
	}
	if c.CA.NodeCertTTL.Zero() {
		c.CA.NodeCertTTL = NewDuration(24 * time.Hour)
	}
}

var nodeIDPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

var serverNamePattern = regexp.MustCompile(`^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)

// Validate checks every field, naming the field and the rule of the first bad one.
func (c *Config) Validate() error {
	bad := func(field, rule string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrConfig, field, fmt.Sprintf(rule, args...))
	}
	if !nodeIDPattern.MatchString(c.NodeID) {
		return bad("node_id", "%q must be a DNS label (lowercase letters, digits, dashes)", c.NodeID)
	}
	if c.DataDir == "" {
		return bad("data_dir", "is required")
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil || c.TrustDomain == "" {
		return bad("trust_domain", "%q is not a SPIFFE trust domain name", c.TrustDomain)
	}
	for _, l := range []struct{ field, addr string }{
		{"listen.grpc", c.Listen.GRPC}, {"listen.cluster", c.Listen.Cluster},
		{"listen.http", c.Listen.HTTP}, {"listen.cluster_advertise", c.Listen.ClusterAdvertise},
	} {
		if _, _, err := net.SplitHostPort(l.addr); err != nil {
			return bad(l.field, "%q must be host:port", l.addr)
		}
	}
	switch c.CA.Mode {
	case CAModeSelfSigned, CAModeCACerts:
		if c.CA.Dir == "" {
			return bad("ca.dir", "is required in %s mode", c.CA.Mode)
		}
	case CAModePKCS11:
		p := c.CA.PKCS11
		if p.Module == "" || p.TokenLabel == "" || p.KeyLabel == "" {
			return bad("ca.pkcs11", "module, token_label and key_label are required in pkcs11 mode")
		}
		if (p.PINFile == "") == (p.PINEnv == "") {
			return bad("ca.pkcs11", "exactly one of pin_file and pin_env is required")
		}
		if c.CA.Dir == "" {
			return bad("ca.dir", "is required in pkcs11 mode (it holds the CA certificate)")
		}
	default:
		return bad("ca.mode", "%q must be one of self-signed, cacerts, pkcs11", c.CA.Mode)
	}
	if c.CA.Mode == CAModeSelfSigned && c.CA.KEKFile == "" && c.CA.KEKEnv == "" {
		return bad("ca", "kek_file or kek_env is required: the self-signed CA key is kept encrypted at rest")
	}
	if c.CA.Mode == CAModeCACerts && c.CA.KEKFile == "" && c.CA.KEKEnv == "" {
		return bad("ca", "kek_file or kek_env is required in cacerts mode: the CA key is replicated to the other nodes sealed under the KEK")
	}
	if c.CA.KEKFile != "" && c.CA.KEKEnv != "" {
		return bad("ca", "set one of kek_file and kek_env, not both")
	}
	if _, err := signer.ParseKeyType(c.CA.KeyType); err != nil {
		return bad("ca.key_type", "%q is not one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519", c.CA.KeyType)
	}
	for i, n := range c.Listen.ServerNames {
		if net.ParseIP(n) == nil && !serverNamePattern.MatchString(n) {
			return bad(fmt.Sprintf("listen.server_names[%d]", i), "%q is neither an IP address nor a DNS name", n)
		}
	}
	for _, d := range []struct {
		field string
		d     Duration
	}{
		{"ca.workload_ttl", c.CA.WorkloadTTL}, {"ca.max_workload_ttl", c.CA.MaxWorkloadTTL},
		{"raft.heartbeat_timeout", c.Raft.HeartbeatTimeout}, {"raft.election_timeout", c.Raft.ElectionTimeout},
		{"ca.node_cert_ttl", c.CA.NodeCertTTL}, {"limits.provider_timeout", c.Limits.ProviderTimeout},
		{"limits.read_header_timeout", c.Limits.ReadHeaderTimeout},
		{"prune.interval", c.Prune.Interval}, {"prune.grace", c.Prune.Grace},
	} {
		if err := checkDuration(d.d, d.field); err != nil {
			return err
		}
	}
	if c.Prune.Interval.D() < time.Second {
		return bad("prune.interval", "%s is below 1s", c.Prune.Interval.D())
	}
	if c.CA.WorkloadTTL.D() > c.CA.MaxWorkloadTTL.D() {
		return bad("ca.workload_ttl", "%s exceeds ca.max_workload_ttl %s", c.CA.WorkloadTTL.D(), c.CA.MaxWorkloadTTL.D())
	}
	if c.CA.MaxWorkloadTTL.D() > 30*24*time.Hour {
		return bad("ca.max_workload_ttl", "%s exceeds 30 days", c.CA.MaxWorkloadTTL.D())
	}
	if c.Raft.Bootstrap {
		if len(c.Raft.Peers) == 0 {
			return bad("raft.peers", "is required with raft.bootstrap")
		}
		self := false
		seen := map[string]bool{}
		for i, p := range c.Raft.Peers {
			if !nodeIDPattern.MatchString(p.ID) {
				return bad(fmt.Sprintf("raft.peers[%d].id", i), "%q must be a DNS label", p.ID)
			}
			if seen[p.ID] {
				return bad(fmt.Sprintf("raft.peers[%d].id", i), "%q appears twice", p.ID)
			}
			seen[p.ID] = true
			if _, _, err := net.SplitHostPort(p.Address); err != nil {
				return bad(fmt.Sprintf("raft.peers[%d].address", i), "%q must be host:port", p.Address)
			}
			self = self || p.ID == c.NodeID
		}
		if !self {
			return bad("raft.peers", "must include this node (%s) when bootstrapping", c.NodeID)
		}
	}
	seenProvider := map[string]bool{}
	seenSuffix := map[string]bool{}
	for i, p := range c.Providers {
		field := fmt.Sprintf("providers[%d]", i)
		if p.Name == "" || !strings.Contains(p.Name, ".") {
			return bad(field+".name", "%q must be a service identity <domain>.<service>", p.Name)
		}
		if seenProvider[p.Name] {
			return bad(field+".name", "%q appears twice", p.Name)
		}
		seenProvider[p.Name] = true
		if p.DNSSuffix == "" {
			return bad(field+".dns_suffix", "is required")
		}
		if seenSuffix[p.DNSSuffix] {
			return bad(field+".dns_suffix", "%q is used by another provider; suffixes are unique", p.DNSSuffix)
		}
		seenSuffix[p.DNSSuffix] = true
		if p.Name == BuiltinProvider {
			if p.ConfirmEndpoint != "" {
				return bad(field+".confirm_endpoint", "%q: %s is confirmed by the CA itself; leave it empty", p.ConfirmEndpoint, BuiltinProvider)
			}
		} else if !strings.HasPrefix(p.ConfirmEndpoint, "https://") {
			return bad(field+".confirm_endpoint", "%q must be an https:// URL", p.ConfirmEndpoint)
		}
	}
	if c.CA.NodeCertTTL.D() < time.Minute {
		return bad("ca.node_cert_ttl", "%s is below the 1m minimum", c.CA.NodeCertTTL.D())
	}
	if c.Limits.ProviderTimeout.D() < 10*time.Millisecond || c.Limits.ProviderTimeout.D() > time.Minute {
		return bad("limits.provider_timeout", "%s must be between 10ms and 1m", c.Limits.ProviderTimeout.D())
	}
	if c.Limits.ReadHeaderTimeout.D() < 100*time.Millisecond || c.Limits.ReadHeaderTimeout.D() > time.Minute {
		return bad("limits.read_header_timeout", "%s must be between 100ms and 1m", c.Limits.ReadHeaderTimeout.D())
	}
	for _, l := range []struct {
		field string
		n     int
	}{
		{"limits.issue_per_identity_per_minute", c.Limits.IssuePerIdentityPerMinute},
		{"limits.issue_per_source_per_minute", c.Limits.IssuePerSourcePerMinute},
		{"limits.max_streams_per_caller", c.Limits.MaxStreamsPerCaller},
		{"limits.max_sds_resource_names", c.Limits.MaxSDSResourceNames},
	} {
		if l.n < 0 {
			return bad(l.field, "%d is negative", l.n)
		}
	}
	seenService := map[string]bool{}
	for i, sv := range c.Services {
		field := fmt.Sprintf("services[%d]", i)
		if _, _, err := raftstore.SplitIdentity(sv.Name); err != nil {
			return bad(field+".name", "%q must be a service identity <domain>.<service>", sv.Name)
		}
		if seenService[sv.Name] {
			return bad(field+".name", "%q appears twice", sv.Name)
		}
		seenService[sv.Name] = true
		for j, g := range sv.LaunchGrants {
			if err := raftstore.ValidateGrantPattern(g); err != nil {
				return bad(fmt.Sprintf("%s.launch_grants[%d]", field, j), "%q is not a provider name or a name followed by \".*\"", g)
			}
		}
	}
	if c.Limits.MaxMessageBytes < 4<<10 {
		return bad("limits.max_message_bytes", "%d is below the 4096-byte minimum", c.Limits.MaxMessageBytes)
	}
	return nil
}
