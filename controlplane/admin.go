package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/raftstore"
)

// ClusterControl is what the admin API asks of the local Raft node. *raftstore.Node
// implements it.
type ClusterControl interface {
	Status() raftstore.Status
	Join(ctx context.Context, id, addr string) error
	Remove(ctx context.Context, id string) error
	TransferLeadership(ctx context.Context, to string) error
	Snapshot() (raftstore.SnapshotInfo, error)
}

// TokenIssuer signs one-time register tokens. The admin API chooses the token's jti, binding
// and expiry, has the issuer sign it, and records the jti in the log before it returns the
// token, so the built-in provider sys.auth.meshca can consume it once.
type TokenIssuer interface {
	// SignRegisterToken returns the token string that carries tok's jti, domain, service,
	// instance id, issue time and expiry under the CA's signature.
	SignRegisterToken(tok *meshcav1.Token) (string, error)
}

// AdminCA is what the admin API asks of the CA engine. *Server implements it.
type AdminCA interface {
	// Authority returns the authority that signs now and its issuer record, for approved CSR
	// requests.
	Authority() (*ca.Authority, *meshcav1.Issuer, error)
	// CRL returns the current certificate revocation list in DER, the one /crl serves.
	CRL() ([]byte, error)
}

// Authenticator authenticates a call by its client certificate. *Server implements it.
type Authenticator interface {
	Authenticate(ctx context.Context) (*Caller, error)
}

// Applier commits a command to the replicated log. *Server (which times it) and
// *raftstore.Store implement it.
type Applier interface {
	Apply(ctx context.Context, cmd *meshcav1.Command) (*meshcav1.CommandResult, error)
}

// AdminConfig is what the admin service needs.
type AdminConfig struct {
	// TrustDomain is the cluster's trust domain; service principals are read from its
	// workload IDs.
	TrustDomain spiffeid.TrustDomain
	// SystemAdmins may call every method: SPIFFE IDs or <domain>.<service> principals.
	SystemAdmins []string
	// Auth authenticates callers.
	Auth Authenticator
	// Store is the replicated state: reads are local, and its state machine signals new
	// events.
	Store *raftstore.Store
	// Applier commits mutations; Store when nil.
	Applier Applier
	// Cluster is the local Raft node.
	Cluster ClusterControl
	// CA signs approved CSR requests and provides the CRL.
	CA AdminCA
	// Tokens signs register tokens; without it IssueRegisterToken answers UNIMPLEMENTED.
	Tokens TokenIssuer
	// Now is the clock; commands carry its time. time.Now when nil.
	Now func() time.Time
	// Logger receives the audit records of admin calls; slog.Default() when nil.
	Logger *slog.Logger
}

// Validate names the first missing or malformed field.
func (c *AdminConfig) Validate() error {
	switch {
	case c.TrustDomain.IsZero():
		return fmt.Errorf("%w: admin: trust domain: required", ErrConfig)
	case c.Auth == nil:
		return fmt.Errorf("%w: admin: authenticator: required", ErrConfig)
	case c.Store == nil:
		return fmt.Errorf("%w: admin: store: required", ErrConfig)
	case c.Cluster == nil:
		return fmt.Errorf("%w: admin: cluster: required", ErrConfig)
	case c.CA == nil:
		return fmt.Errorf("%w: admin: ca: required", ErrConfig)
	}
	for i, a := range c.SystemAdmins {
		if err := checkPrincipalEntry(a); err != nil {
			return fmt.Errorf("%w: admins[%d]: %w", ErrConfig, i, err)
		}
	}
	return nil
}

// Admin implements the meshca.v1.Admin gRPC service. It returns plain errors; the server's
// interceptors map them to gRPC statuses with StatusOf and bound the streams a caller holds.
type Admin struct {
	meshcav1.UnimplementedAdminServer

	cfg   AdminConfig
	store *raftstore.Store
	apply Applier
	now   func() time.Time
	log   *slog.Logger

	stop      chan struct{} // closed by Close: WatchEvents streams end
	closeOnce sync.Once
}

// NewAdmin validates cfg and returns the admin service.
func NewAdmin(cfg AdminConfig) (*Admin, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Applier == nil {
		cfg.Applier = cfg.Store
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Admin{cfg: cfg, store: cfg.Store, apply: cfg.Applier, now: cfg.Now, log: cfg.Logger.With("api", "admin"),
		stop: make(chan struct{}),
	}, nil
}

// Register adds the service to a gRPC server.
func (a *Admin) Register(s grpc.ServiceRegistrar) { meshcav1.RegisterAdminServer(s, a) }

// adminFlow wires the admin API into a server: system admins from the config, the server's
// authentication, clock, CA and timed Apply, the Raft node, and a TokenIssuer when the server
// has one. Its WatchEvents streams end when the server stops.
func adminFlow(s *Server) error {
	cfg := AdminConfig{
		TrustDomain: s.TrustDomain(), SystemAdmins: s.SystemAdmins(), Auth: s, Store: s.Store(),
		Applier: s, Cluster: s.Node(), CA: s, Now: s.Now, Logger: s.Logger(),
	}
	if t, ok := any(s).(TokenIssuer); ok {
		cfg.Tokens = t
	}
	a, err := NewAdmin(cfg)
	if err != nil {
		return err
	}
	a.Register(s.GRPCServer())
	// Watch streams never end by themselves; a stopping server ends them before it drains.
	s.OnStop(a.Close)
	return nil
}

// checkPrincipalEntry checks an admin list entry: a SPIFFE ID or a <domain>.<service>
// principal.
func checkPrincipalEntry(entry string) error {
	if strings.HasPrefix(entry, "spiffe://") {
		if _, err := spiffeid.FromString(entry); err != nil {
			return fmt.Errorf("%q is not a valid SPIFFE ID: %w", entry, err)
		}
		return nil
	}
	if _, _, err := raftstore.SplitIdentity(entry); err != nil {
		return fmt.Errorf("%q is neither a SPIFFE ID nor a <domain>.<service> principal: %w", entry, err)
	}
	return nil
}

// caller is an authenticated admin API caller.
type caller struct {
	Principal
	*Caller
}

// authenticate reads the caller from the connection's client certificate.
func (a *Admin) authenticate(ctx context.Context) (caller, error) {
	c, err := a.cfg.Auth.Authenticate(ctx)
	if err != nil {
		return caller{}, err
	}
	return caller{Principal: NewPrincipal(c.ID, a.cfg.TrustDomain), Caller: c}, nil
}

// authorize authenticates the caller and decides action on res. It fills in the facts the
// decision needs from st.
func (a *Admin) authorize(ctx context.Context, st *raftstore.State, action Action, res Resource) (caller, error) {
	c, err := a.authenticate(ctx)
	if err != nil {
		return caller{}, err
	}
	return c, a.decide(st, c, action, res)
}

// decide authorizes an authenticated caller and logs refusals.
func (a *Admin) decide(st *raftstore.State, c caller, action Action, res Resource) error {
	if ScopeOf(action) == ScopeAnyAdmin {
		res.CallerAdminsSomeDomain = adminsSomeDomain(st, c.Principal)
	}
	d := Authorize(a.cfg.SystemAdmins, c.Principal, action, res)
	if !d.Allowed {
		a.log.Info("admin call refused", "caller", c.SPIFFEID, "action", action, "reason", d.Reason)
	}
	return d.Err()
}

// allowed reports whether c may perform action on res, without logging: the filter of list
// calls and event streams.
func (a *Admin) allowed(c caller, action Action, res Resource) bool {
	return Authorize(a.cfg.SystemAdmins, c.Principal, action, res).Allowed
}

// adminsSomeDomain reports whether any domain lists p as an admin.
func adminsSomeDomain(st *raftstore.State, p Principal) bool {
	for _, d := range st.Domains() {
		if p.in(d.GetAdmins()) {
			return true
		}
	}
	return false
}

// inDomain describes a resource of a domain with the domain's admins from st (none when the
// domain does not exist).
func inDomain(st *raftstore.State, kind, name, domain string) Resource {
	r := Resource{Kind: kind, Name: name, Domain: domain}
	if d, err := st.Domain(domain); err == nil {
		r.DomainAdmins = d.GetAdmins()
	}
	return r
}

// serviceResource describes a service by identity; an identity that does not parse belongs to
// no domain, so only system admins get past authorization to see the refusal of its syntax.
func serviceResource(st *raftstore.State, identity string) Resource {
	domain, _, err := raftstore.SplitIdentity(identity)
	if err != nil {
		return Resource{Kind: "service", Name: identity}
	}
	return inDomain(st, "service", identity, domain)
}

// commandError is a command the state machine refused, with the message rewritten to name
// the admin request's field: the command's name is cut from the front of the field path
// ("put_provider.provider.dns_suffix: ..." becomes "provider.dns_suffix: ..."), because the
// request messages mirror the commands' fields.
type commandError struct {
	msg string
	err error
}

func (e *commandError) Error() string { return e.msg }
func (e *commandError) Unwrap() error { return e.err }

// apply commits cmd with a fresh command id and the clock's time (unless cmd has a time) and
// logs the change. A refusal's message has prefix (the command's name and a dot) removed.
func (a *Admin) commit(ctx context.Context, c caller, prefix string, cmd *meshcav1.Command) (*meshcav1.CommandResult, error) {
	cmd.Id = raftstore.NewCommandID()
	if cmd.Time == 0 {
		cmd.Time = a.now().UnixNano()
	}
	res, err := a.apply.Apply(ctx, cmd)
	if err != nil {
		var ce *raftstore.CommandError
		if errors.As(err, &ce) {
			return res, &commandError{msg: strings.TrimPrefix(ce.Message, prefix), err: err}
		}
		return nil, err
	}
	a.log.Info("admin change", "caller", c.SPIFFEID, "command", strings.TrimSuffix(prefix, "."), "index", res.GetIndex())
	a.waitApplied(ctx, res.GetIndex())
	return res, nil
}

// waitApplied waits until the local state machine has applied index, so that a caller that
// changed something through this node reads its change here next (a follower applies a
// command shortly after the leader answers for it). It waits on the state machine's change
// notification; when ctx ends first it returns anyway, since the change is committed.
func (a *Admin) waitApplied(ctx context.Context, index uint64) {
	for {
		changed := a.store.FSM().Changed()
		if a.store.State().AppliedIndex() >= index {
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// randomID returns 128 random bits in hex: register token ids and CSR request ids.
func randomID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("%w: %w", ca.ErrRandom, err)
	}
	return hex.EncodeToString(b[:]), nil
}

// required refuses an empty request field.
func required(field, value string) error {
	if value == "" {
		return refuse(raftstore.ErrInvalidCommand, field, "required")
	}
	return nil
}

// notFound is the refusal of a read whose record does not exist.
func notFound(field, format string, args ...any) error {
	return refuse(raftstore.ErrNotFound, field, format, args...)
}
