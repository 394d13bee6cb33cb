package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/internal/strictyaml"
)

// ErrConfig marks every configuration error; the message names the field and the rule.
var ErrConfig = errors.New("agent config")

// BuiltinProvider is the provider that confirms register tokens and service key tokens: the CA
// itself.
const BuiltinProvider = "sys.auth.meshca"

// Defaults of the fields a config may leave out.
const (
	DefaultRefreshFraction = 0.5
	DefaultRefreshJitter   = 0.1
	DefaultBackoffInitial  = time.Second
	DefaultBackoffMax      = 30 * time.Second
	DefaultRPCTimeout      = 10 * time.Second
	DefaultCommandTimeout  = 10 * time.Second
	// DefaultReissueJitter spreads the replacements a CA rotation with reissue asks for.
	DefaultReissueJitter = 5 * time.Second
	// MaxReissueJitter bounds refresh.reissue_jitter: a reissue is asked for at once.
	MaxReissueJitter = 5 * time.Minute
	// DefaultServerIDPrefix is the SPIFFE ID path every CA node's certificate starts with
	// (spiffe://<trust-domain>/meshca/server/<node-id>); the agent talks to nothing else.
	DefaultServerIDPrefix = "/meshca/server/"
)

// Config is meshca-agent's configuration file. Decode it with LoadConfig or DecodeConfig: an
// unknown key is an error that names it, and Validate names the field and the rule of any bad
// value.
type Config struct {
	// TrustDomain is the cluster's SPIFFE trust domain, e.g. mesh.example.
	TrustDomain string `yaml:"trust_domain"`
	// Servers are the CA nodes' gRPC addresses (host:port). The agent uses the first that
	// answers, in order, and moves to the next when one fails.
	Servers []string `yaml:"servers"`
	// ServerIDPrefix is the SPIFFE ID path a CA node's certificate must start with
	// (DefaultServerIDPrefix).
	ServerIDPrefix string `yaml:"server_id_prefix"`
	// TrustBundle is a PEM file with the roots to trust before the first bundle arrives from
	// the cluster.
	TrustBundle string `yaml:"trust_bundle"`
	// StateDir keeps each identity's current certificate, key and serial (dir 0700, files
	// 0600), so a restart refreshes instead of registering again.
	StateDir string `yaml:"state_dir"`
	// FilesDir, when set, gets one folder per identity (its name) with cert.pem, key.pem and
	// bundle.pem, rewritten on every rotation.
	FilesDir string `yaml:"files_dir"`
	// SDSSocket is the Unix socket Envoy reaches SDS on; callers are mapped to identities by
	// their uid/gid.
	SDSSocket string `yaml:"sds_socket"`
	// WorkloadAPISocket is the Unix socket of the SPIFFE Workload API (callers mapped by uid/gid).
	// It may be the same path as SDSSocket.
	WorkloadAPISocket string `yaml:"workload_api_socket"`
	// AdminSocket serves GET /v1/secrets (what the agent serves), /metrics, /healthz and
	// /readyz over HTTP.
	AdminSocket string `yaml:"admin_socket"`
	// KeyType of the keys generated on this host: ecdsa-p256 (default), ecdsa-p384,
	// rsa-2048/3072/4096, ed25519.
	KeyType string `yaml:"key_type"`
	// TTL is the certificate lifetime asked for; empty leaves it to the CA.
	TTL Duration `yaml:"ttl"`
	// Refresh says when certificates are renewed and how failures are retried.
	Refresh RefreshConfig `yaml:"refresh"`
	// Identities are the workload identities this host serves.
	Identities []IdentityConfig `yaml:"identities"`
}

// RefreshConfig says when certificates are renewed.
type RefreshConfig struct {
	// Fraction of the lifetime after which a certificate is refreshed (DefaultRefreshFraction).
	Fraction float64 `yaml:"fraction"`
	// Jitter moves each refresh by up to ±Jitter of the lifetime, at random, so the hosts of a
	// fleet started together do not refresh together (DefaultRefreshJitter).
	Jitter *float64 `yaml:"jitter"`
	// BackoffInitial is the wait after a failed attempt; it doubles up to BackoffMax.
	BackoffInitial Duration `yaml:"backoff_initial"`
	BackoffMax     Duration `yaml:"backoff_max"`
	// RPCTimeout bounds one call to a CA node (DefaultRPCTimeout).
	RPCTimeout Duration `yaml:"rpc_timeout"`
	// ReissueJitter: when a CA rotation asks for every certificate of a former issuer to be
	// replaced now, each is replaced after a random wait of up to ReissueJitter, so the hosts
	// of a large mesh do not all ask at once (DefaultReissueJitter; "0s" for none).
	ReissueJitter Duration `yaml:"reissue_jitter"`
}

// IdentityConfig is one workload identity <domain>.<service> of one instance.
type IdentityConfig struct {
	// Name names the identity in the state dir, the files dir and metrics; <domain>.<service>
	// when empty. Names are unique.
	Name string `yaml:"name"`
	// Domain and Service name the identity, e.g. sports and api.
	Domain  string `yaml:"domain"`
	Service string `yaml:"service"`
	// InstanceID is the instance's id in its provider's namespace, e.g. pod-1.ns.cluster-a.
	InstanceID string `yaml:"instance_id"`
	// ProviderDNSSuffix is the DNS suffix the provider is registered with, e.g. k8s.mesh.example.
	ProviderDNSSuffix string `yaml:"provider_dns_suffix"`
	// ServerAuth asks for the serverAuth purpose besides clientAuth.
	ServerAuth bool `yaml:"server_auth"`
	// Attestation is how the instance proves who it is when it registers.
	Attestation AttestationConfig `yaml:"attestation"`
	// Socket, when set, is a Unix socket (SDS and Workload API) bound to this identity alone:
	// whoever can connect to it gets this identity. Guard it with SocketMode.
	Socket string `yaml:"socket"`
	// SocketMode is the file mode of Socket, an octal string ("0660" when empty).
	SocketMode string `yaml:"socket_mode"`
	// UIDs and GIDs map callers on the shared sockets (SDSSocket, WorkloadAPISocket) to this
	// identity by their peer credentials. A uid mapping wins over a gid mapping.
	UIDs []uint32 `yaml:"uids"`
	GIDs []uint32 `yaml:"gids"`
}

// AttestationConfig sets exactly one attestation method.
type AttestationConfig struct {
	// Provider is the launcher that confirms IdentityDocument (e.g. sys.auth.k8s). Register
	// tokens and service key tokens are confirmed by BuiltinProvider, which is the default.
	Provider string `yaml:"provider"`
	// IdentityDocument is the provider's signed document about this instance.
	IdentityDocument *DocumentConfig `yaml:"identity_document"`
	// ServiceKey signs a fresh service key token for every registration.
	ServiceKey *ServiceKeyConfig `yaml:"service_key"`
	// RegisterTokenFile holds a one-time register token; it works once.
	RegisterTokenFile string `yaml:"register_token_file"`
}

// DocumentConfig says where a provider identity document comes from: a file, or the standard
// output of a command. It is read again for every registration.
type DocumentConfig struct {
	File    string   `yaml:"file"`
	Command []string `yaml:"command"`
	// Timeout bounds the command (DefaultCommandTimeout).
	Timeout Duration `yaml:"timeout"`
}

// ServiceKeyConfig is the service's private key registered with the CA under KeyVersion.
type ServiceKeyConfig struct {
	// KeyFile is a PEM private key (PKCS#8, PKCS#1 or SEC 1).
	KeyFile string `yaml:"key_file"`
	// KeyVersion is the version the public key is registered under.
	KeyVersion string `yaml:"key_version"`
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

// DecodeConfig reads YAML strictly: an unknown key is an error naming the key and its line.
// Defaults are filled in and the result validated.
func DecodeConfig(r io.Reader) (*Config, error) {
	var c Config
	if err := strictyaml.Decode(r, &c); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c.SetDefaults()
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

// SetDefaults fills in every field left empty that has a default.
func (c *Config) SetDefaults() {
	if c.ServerIDPrefix == "" {
		c.ServerIDPrefix = DefaultServerIDPrefix
	}
	if c.KeyType == "" {
		c.KeyType = string(signer.ECDSAP256)
	}
	if c.Refresh.Fraction == 0 {
		c.Refresh.Fraction = DefaultRefreshFraction
	}
	if c.Refresh.Jitter == nil {
		j := DefaultRefreshJitter
		c.Refresh.Jitter = &j
	}
	if c.Refresh.BackoffInitial.Zero() {
		c.Refresh.BackoffInitial = NewDuration(DefaultBackoffInitial)
	}
	if c.Refresh.BackoffMax.Zero() {
		c.Refresh.BackoffMax = NewDuration(DefaultBackoffMax)
	}
	if c.Refresh.RPCTimeout.Zero() {
		c.Refresh.RPCTimeout = NewDuration(DefaultRPCTimeout)
	}
	// Only a value left out gets the default: "0s" in the file means no jitter.
	if c.Refresh.ReissueJitter.Unset() {
		c.Refresh.ReissueJitter = NewDuration(DefaultReissueJitter)
	}
	for i := range c.Identities {
		id := &c.Identities[i]
		if id.Name == "" && id.Domain != "" && id.Service != "" {
			id.Name = id.Domain + "." + id.Service
		}
		if id.Socket != "" && id.SocketMode == "" {
			id.SocketMode = "0660"
		}
		a := &id.Attestation
		if a.Provider == "" && (a.ServiceKey != nil || a.RegisterTokenFile != "") {
			a.Provider = BuiltinProvider
		}
		if d := a.IdentityDocument; d != nil && d.Timeout.Zero() {
			d.Timeout = NewDuration(DefaultCommandTimeout)
		}
	}
}

var safeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// Validate reports the first field that breaks a rule, naming it.
func (c *Config) Validate() error {
	bad := func(field, rule string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrConfig, field, fmt.Sprintf(rule, args...))
	}
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if c.TrustDomain == "" {
		return bad("trust_domain", "is required (e.g. mesh.example)")
	}
	if err != nil {
		return bad("trust_domain", "%q is not a SPIFFE trust domain name: %v", c.TrustDomain, err)
	}
	if len(c.Servers) == 0 {
		return bad("servers", "at least one CA node address (host:port) is required")
	}
	seen := map[string]bool{}
	for i, s := range c.Servers {
		field := fmt.Sprintf("servers[%d]", i)
		host, port, err := net.SplitHostPort(s)
		if err != nil || host == "" || port == "" {
			return bad(field, "%q is not a host:port address", s)
		}
		if seen[s] {
			return bad(field, "%q is listed twice", s)
		}
		seen[s] = true
	}
	if !strings.HasPrefix(c.ServerIDPrefix, "/") {
		return bad("server_id_prefix", "%q must be a SPIFFE ID path starting with /", c.ServerIDPrefix)
	}
	if c.TrustBundle == "" {
		return bad("trust_bundle", "is required: a PEM file with the cluster's roots to start from")
	}
	if c.StateDir == "" {
		return bad("state_dir", "is required")
	}
	for _, p := range []struct{ field, path string }{
		{"trust_bundle", c.TrustBundle}, {"state_dir", c.StateDir}, {"files_dir", c.FilesDir},
		{"sds_socket", c.SDSSocket}, {"workload_api_socket", c.WorkloadAPISocket}, {"admin_socket", c.AdminSocket},
	} {
		if p.path != "" && !filepath.IsAbs(p.path) {
			return bad(p.field, "%q must be an absolute path", p.path)
		}
	}
	if c.SDSSocket == "" && c.WorkloadAPISocket == "" && !c.anyIdentitySocket() {
		return bad("sds_socket", "is required unless workload_api_socket or an identity's socket is set: the agent must serve somewhere")
	}
	if c.AdminSocket != "" && (c.AdminSocket == c.SDSSocket || c.AdminSocket == c.WorkloadAPISocket) {
		return bad("admin_socket", "%q must differ from sds_socket and workload_api_socket", c.AdminSocket)
	}
	if _, err := signer.ParseKeyType(c.KeyType); err != nil {
		return bad("key_type", "%v", err)
	}
	if err := checkDuration(c.TTL, "ttl"); err != nil {
		return err
	}
	if c.TTL.D() > policy.MaxWorkloadTTL {
		return bad("ttl", "%s exceeds the longest workload lifetime %s", c.TTL.D(), policy.MaxWorkloadTTL)
	}
	if c.TTL.D() != 0 && c.TTL.D() < 2*time.Second {
		return bad("ttl", "%s is shorter than 2s", c.TTL.D())
	}
	if err := c.Refresh.validate(bad); err != nil {
		return err
	}
	if len(c.Identities) == 0 {
		return bad("identities", "at least one workload identity is required")
	}
	names := map[string]bool{}
	sockets := map[string]string{c.SDSSocket: "sds_socket", c.WorkloadAPISocket: "workload_api_socket", c.AdminSocket: "admin_socket"}
	uids := map[uint32]string{}
	gids := map[uint32]string{}
	for i := range c.Identities {
		id := &c.Identities[i]
		field := fmt.Sprintf("identities[%d]", i)
		if err := id.validate(field, td, bad); err != nil {
			return err
		}
		if names[id.Name] {
			return bad(field+".name", "%q is used by another identity; names must be unique", id.Name)
		}
		names[id.Name] = true
		if id.Socket != "" {
			if other, ok := sockets[id.Socket]; ok && id.Socket != "" {
				return bad(field+".socket", "%q is already used by %s", id.Socket, other)
			}
			sockets[id.Socket] = field + ".socket"
		}
		for _, u := range id.UIDs {
			if other, ok := uids[u]; ok {
				return bad(field+".uids", "uid %d is already mapped by %s: a caller maps to one identity", u, other)
			}
			uids[u] = field
		}
		for _, g := range id.GIDs {
			if other, ok := gids[g]; ok {
				return bad(field+".gids", "gid %d is already mapped by %s: a caller maps to one identity", g, other)
			}
			gids[g] = field
		}
		if (len(id.UIDs) > 0 || len(id.GIDs) > 0) && c.SDSSocket == "" && c.WorkloadAPISocket == "" {
			return bad(field+".uids", "peer-credential mapping needs sds_socket or workload_api_socket")
		}
	}
	return nil
}

func (c *Config) anyIdentitySocket() bool {
	for _, id := range c.Identities {
		if id.Socket != "" {
			return true
		}
	}
	return false
}

func (r *RefreshConfig) validate(bad func(string, string, ...any) error) error {
	if r.Fraction <= 0 || r.Fraction >= 1 {
		return bad("refresh.fraction", "%v must be between 0 and 1 (exclusive)", r.Fraction)
	}
	j := *r.Jitter
	if j < 0 || r.Fraction-j <= 0 || r.Fraction+j >= 1 {
		return bad("refresh.jitter", "%v must be at least 0 and keep fraction±jitter (%v) between 0 and 1", j, r.Fraction)
	}
	for _, d := range []struct {
		field string
		v     Duration
	}{{"refresh.backoff_initial", r.BackoffInitial}, {"refresh.backoff_max", r.BackoffMax}, {"refresh.rpc_timeout", r.RPCTimeout}} {
		if err := checkDuration(d.v, d.field); err != nil {
			return err
		}
		if d.v.D() <= 0 {
			return bad(d.field, "must be positive")
		}
	}
	if err := checkDuration(r.ReissueJitter, "refresh.reissue_jitter"); err != nil {
		return err
	}
	if j := r.ReissueJitter.D(); j < 0 || j > MaxReissueJitter {
		return bad("refresh.reissue_jitter", "%s must be between 0s and %s", j, MaxReissueJitter)
	}
	if r.BackoffMax.D() < r.BackoffInitial.D() {
		return bad("refresh.backoff_max", "%s is shorter than backoff_initial %s", r.BackoffMax.D(), r.BackoffInitial.D())
	}
	return nil
}

func (id *IdentityConfig) validate(field string, td spiffeid.TrustDomain, bad func(string, string, ...any) error) error {
	if id.Domain == "" {
		return bad(field+".domain", "is required")
	}
	if id.Service == "" {
		return bad(field+".service", "is required")
	}
	if id.InstanceID == "" {
		return bad(field+".instance_id", "is required")
	}
	if id.ProviderDNSSuffix == "" {
		return bad(field+".provider_dns_suffix", "is required")
	}
	// The CA derives the certificate's names with the same function: a config it would refuse
	// is refused here, before any key is made.
	if _, err := id.request(td).Names(); err != nil {
		var vs policy.Violations
		if errors.As(err, &vs) && len(vs) > 0 {
			return bad(field+"."+strings.TrimPrefix(vs[0].Field, "request."), "%s", vs[0].Rule)
		}
		return bad(field, "%v", err)
	}
	if !safeName.MatchString(id.Name) {
		return bad(field+".name", "%q must start with a letter or digit and hold only letters, digits, '.', '_' and '-'", id.Name)
	}
	if id.Socket != "" && !filepath.IsAbs(id.Socket) {
		return bad(field+".socket", "%q must be an absolute path", id.Socket)
	}
	if id.SocketMode != "" {
		m, err := strconv.ParseUint(id.SocketMode, 8, 32)
		if err != nil || m > 0o777 {
			return bad(field+".socket_mode", "%q is not an octal file mode like \"0660\"", id.SocketMode)
		}
		if id.Socket == "" {
			return bad(field+".socket_mode", "is only meaningful with socket")
		}
	}
	return id.Attestation.validate(field + ".attestation")
}

func (a *AttestationConfig) validate(field string) error {
	bad := func(f, rule string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrConfig, f, fmt.Sprintf(rule, args...))
	}
	n := 0
	if a.IdentityDocument != nil {
		n++
	}
	if a.ServiceKey != nil {
		n++
	}
	if a.RegisterTokenFile != "" {
		n++
	}
	if n != 1 {
		return bad(field, "set exactly one of identity_document, service_key and register_token_file (%d set)", n)
	}
	switch {
	case a.IdentityDocument != nil:
		d := a.IdentityDocument
		if a.Provider == "" {
			return bad(field+".provider", "is required with identity_document: the provider that confirms it (e.g. sys.auth.k8s)")
		}
		if (d.File == "") == (len(d.Command) == 0) {
			return bad(field+".identity_document", "set exactly one of file and command")
		}
		if d.File != "" && !filepath.IsAbs(d.File) {
			return bad(field+".identity_document.file", "%q must be an absolute path", d.File)
		}
		if len(d.Command) > 0 && d.Command[0] == "" {
			return bad(field+".identity_document.command", "the program (first element) must not be empty")
		}
		if err := checkDuration(d.Timeout, field+".identity_document.timeout"); err != nil {
			return err
		}
	case a.ServiceKey != nil:
		if a.Provider != BuiltinProvider {
			return bad(field+".provider", "%q: a service key token is confirmed by %s", a.Provider, BuiltinProvider)
		}
		if a.ServiceKey.KeyFile == "" || !filepath.IsAbs(a.ServiceKey.KeyFile) {
			return bad(field+".service_key.key_file", "%q must be an absolute path to a PEM private key", a.ServiceKey.KeyFile)
		}
		if a.ServiceKey.KeyVersion == "" {
			return bad(field+".service_key.key_version", "is required: the version the public key is registered under")
		}
	default:
		if a.Provider != BuiltinProvider {
			return bad(field+".provider", "%q: a register token is confirmed by %s", a.Provider, BuiltinProvider)
		}
		if !filepath.IsAbs(a.RegisterTokenFile) {
			return bad(field+".register_token_file", "%q must be an absolute path", a.RegisterTokenFile)
		}
	}
	return nil
}

// request is the policy request the CA will decide this identity's certificates with, minus
// time and serial: the agent builds its CSRs from its Names.
func (id *IdentityConfig) request(td spiffeid.TrustDomain) policy.WorkloadRequest {
	return policy.WorkloadRequest{
		TrustDomain:       td.Name(),
		Domain:            id.Domain,
		Service:           id.Service,
		ProviderDNSSuffix: id.ProviderDNSSuffix,
		InstanceID:        id.InstanceID,
	}
}
