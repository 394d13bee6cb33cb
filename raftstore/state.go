package raftstore

import (
	"encoding/binary"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// ErrNotFound is returned (wrapped) when a record does not exist, by the read accessors and for
// the NOT_FOUND result code.
var ErrNotFound = errors.New("raftstore: not found")

// State is an immutable view of the replicated state after one applied log index. Reads from it
// are consistent with each other and need no lock. Every record it returns is a copy: changing
// it changes nothing in the state.
//
// Inside the package a State is also the FSM's working state (its tables are working tables,
// see table), which only the FSM's writer touches and which is never handed out.
type State struct {
	stateVars

	domains     table[string, *meshcav1.Domain]
	services    table[string, *meshcav1.Service]  // domain.service
	providers   table[string, *meshcav1.Provider] // name
	instances   table[string, *meshcav1.Instance] // instanceSlot: provider/instance-id
	certs       table[string, *meshcav1.Cert]     // serial
	keyUses     table[string, *meshcav1.KeyUse]   // string(spki_sha256)
	revocations table[string, *meshcav1.Revocation]
	issuerUses  table[string, *meshcav1.IssuerUse]
	federations table[string, *meshcav1.Federation]
	tokens      table[string, *meshcav1.Token]
	nonces      table[string, *meshcav1.Nonce] // scope NUL nonce
	csrRequests table[string, *meshcav1.CSRRequest]
	events      table[uint64, *meshcav1.Event]
	// receipts by sequence: the window is appended at one end and forgotten at the other.
	receipts table[uint64, *meshcav1.CommandReceipt]

	// writerState is what only the working state has; nil in a frozen (published) state.
	*writerState
}

// writerState is what only the FSM's working state has: the journal of the running command,
// and the derived indexes only the writer reads. The indexes are rebuilt on restore and are no
// part of snapshots, the state hash or a published view; as nobody else holds them, they are
// changed in place and never copied.
type writerState struct {
	j *journal
	// receiptSeq finds a command id's receipt, to answer a retried command.
	receiptSeq map[string]uint64
	// certExpiry also prunes the key use a certificate first made and its revocation: both
	// end with the certificate.
	certExpiry  table[string, struct{}] // expiryKey(not_after, serial)
	tokenExpiry table[string, struct{}] // expiryKey(expires, jti)
	nonceExpiry table[string, struct{}] // expiryKey(expires, nonce key)
}

// newWriterState returns empty indexes.
func newWriterState() *writerState {
	return &writerState{
		receiptSeq:  map[string]uint64{},
		certExpiry:  newTable[string, struct{}](),
		tokenExpiry: newTable[string, struct{}](),
		nonceExpiry: newTable[string, struct{}](),
	}
}

// stateVars are the fields of a State outside its tables: a command that does not commit
// restores them as they were.
type stateVars struct {
	appliedIndex uint64
	// nextEvent is the index the next event gets; nextReceipt the sequence of the next receipt.
	nextEvent, nextReceipt uint64
	receiptBytes           int // total size of the remembered results (derived)
	ca                     *meshcav1.CA
}

// emptyState is the state of a new cluster, frozen.
func emptyState() *State {
	return &State{
		stateVars:   stateVars{nextEvent: 1, nextReceipt: 1},
		domains:     newTable[string, *meshcav1.Domain](),
		services:    newTable[string, *meshcav1.Service](),
		providers:   newTable[string, *meshcav1.Provider](),
		instances:   newTable[string, *meshcav1.Instance](),
		certs:       newTable[string, *meshcav1.Cert](),
		keyUses:     newTable[string, *meshcav1.KeyUse](),
		revocations: newTable[string, *meshcav1.Revocation](),
		issuerUses:  newTable[string, *meshcav1.IssuerUse](),
		federations: newTable[string, *meshcav1.Federation](),
		tokens:      newTable[string, *meshcav1.Token](),
		nonces:      newTable[string, *meshcav1.Nonce](),
		csrRequests: newTable[string, *meshcav1.CSRRequest](),
		events:      newTable[uint64, *meshcav1.Event](),
		receipts:    newTable[uint64, *meshcav1.CommandReceipt](),
	}
}

// freeze returns a frozen view of the working state s in O(1): it shares every node with s,
// and s copies a node before it next changes it.
func (s *State) freeze() *State {
	return &State{
		stateVars: s.stateVars,
		domains:   s.domains.frozen(), services: s.services.frozen(), providers: s.providers.frozen(),
		instances: s.instances.frozen(), certs: s.certs.frozen(), keyUses: s.keyUses.frozen(),
		revocations: s.revocations.frozen(), issuerUses: s.issuerUses.frozen(),
		federations: s.federations.frozen(), tokens: s.tokens.frozen(), nonces: s.nonces.frozen(),
		csrRequests: s.csrRequests.frozen(), events: s.events.frozen(), receipts: s.receipts.frozen(),
	}
}

// thaw returns a working state holding what the frozen state s holds, with w, the indexes of
// s's records (which it takes over). It must be called before s is published (see
// table.working).
func (s *State) thaw(w *writerState) *State {
	j := &journal{}
	w.j = j
	w.certExpiry.j, w.tokenExpiry.j, w.nonceExpiry.j = j, j, j
	clear(w.receiptSeq)
	s.receipts.scan(func(n uint64, r *meshcav1.CommandReceipt) bool {
		w.receiptSeq[r.GetId()] = n
		return true
	})
	return &State{
		stateVars: s.stateVars, writerState: w,
		domains: s.domains.working(j), services: s.services.working(j), providers: s.providers.working(j),
		instances: s.instances.working(j), certs: s.certs.working(j), keyUses: s.keyUses.working(j),
		revocations: s.revocations.working(j), issuerUses: s.issuerUses.working(j),
		federations: s.federations.working(j), tokens: s.tokens.working(j), nonces: s.nonces.working(j),
		csrRequests: s.csrRequests.working(j), events: s.events.working(j), receipts: s.receipts.working(j),
	}
}

// expiryKey orders records by a time, then by their key: the big-endian time with its sign bit
// flipped sorts like the signed number.
func expiryKey(t int64, key string) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(t)^(1<<63))
	return string(b[:]) + key
}

// expiryTime reads the time back from an expiryKey.
func expiryTime(k string) int64 {
	return int64(binary.BigEndian.Uint64([]byte(k[:8])) ^ (1 << 63))
}

// nonceKey is where a nonce is stored.
func nonceKey(scope, nonce string) string { return scope + "\x00" + nonce }

func clone[M proto.Message](m M) M {
	// The generated copy (see decodeCommand) is several times faster than proto.Clone.
	if c, ok := any(m).(interface{ CloneMessageVT() proto.Message }); ok {
		return c.CloneMessageVT().(M)
	}
	return proto.Clone(m).(M)
}

func notFound(what string, key any) error {
	return fmt.Errorf("%s %q: %w", what, key, ErrNotFound)
}

// get looks a key up and returns a copy of the record.
func get[K string | uint64, V proto.Message](t *table[K, V], what string, key K) (V, error) {
	v, ok := t.Get(key)
	if !ok {
		var zero V
		return zero, notFound(what, key)
	}
	return clone(v), nil
}

// list copies the records whose keys run from start (inclusive) while keep accepts them, at
// most limit of them (0: no limit).
func list[K string | uint64, V proto.Message](t *table[K, V], start K, keep func(K, V) bool, limit int) []V {
	var out []V
	t.ascend(start, func(k K, v V) bool {
		if limit > 0 && len(out) >= limit || keep != nil && !keep(k, v) {
			return false
		}
		out = append(out, clone(v))
		return true
	})
	return out
}

// AppliedIndex is the last Raft log index applied to this state.
func (s *State) AppliedIndex() uint64 { return s.appliedIndex }

// CA returns the CA record, or ErrNotFound before the CA is set.
func (s *State) CA() (*meshcav1.CA, error) {
	if s.ca == nil {
		return nil, fmt.Errorf("ca: not set: %w", ErrNotFound)
	}
	return clone(s.ca), nil
}

// Domain returns a domain by name.
func (s *State) Domain(name string) (*meshcav1.Domain, error) {
	return get(&s.domains, "domain", name)
}

// Domains lists every domain, sorted by name.
func (s *State) Domains() []*meshcav1.Domain { return list(&s.domains, "", nil, 0) }

// Service returns a service by identity "<domain>.<service>".
func (s *State) Service(identity string) (*meshcav1.Service, error) {
	return get(&s.services, "service", identity)
}

// Services lists the services of a domain (every service if domain is empty), sorted by identity.
func (s *State) Services(domain string) []*meshcav1.Service {
	if domain == "" {
		return list(&s.services, "", nil, 0)
	}
	prefix := domain + "."
	return filterList(&s.services, prefix, func(k string, v *meshcav1.Service) (bool, bool) {
		return len(k) >= len(prefix) && k[:len(prefix)] == prefix, v.GetDomain() == domain
	})
}

// filterList copies records from start while inRange holds, keeping those take accepts.
func filterList[V proto.Message](t *table[string, V], start string, f func(string, V) (inRange, take bool)) []V {
	var out []V
	t.ascend(start, func(k string, v V) bool {
		inRange, take := f(k, v)
		if inRange && take {
			out = append(out, clone(v))
		}
		return inRange
	})
	return out
}

// Provider returns a provider by name.
func (s *State) Provider(name string) (*meshcav1.Provider, error) {
	return get(&s.providers, "provider", name)
}

// Providers lists every provider, sorted by name.
func (s *State) Providers() []*meshcav1.Provider { return list(&s.providers, "", nil, 0) }

// Instance returns the instance provider/domain.service/instance-id.
func (s *State) Instance(provider, domain, service, instanceID string) (*meshcav1.Instance, error) {
	inst, ok := s.instances.Get(instanceSlot(provider, instanceID))
	if !ok || inst.GetDomain() != domain || inst.GetService() != service {
		return nil, notFound("instance", InstanceKey(provider, domain, service, instanceID))
	}
	return clone(inst), nil
}

// InstanceByID returns the instance a provider launched under an instance id, whatever its
// identity (an instance id is unique in its provider's namespace).
func (s *State) InstanceByID(provider, instanceID string) (*meshcav1.Instance, error) {
	return get(&s.instances, "instance", instanceSlot(provider, instanceID))
}

// Instances lists up to limit instances (0: all) in the order of provider then instance id,
// starting after the cursor (empty: from the first). It returns the cursor for the next page,
// empty when there is none.
func (s *State) Instances(cursor string, limit int) (page []*meshcav1.Instance, next string) {
	from := ""
	if cursor != "" {
		from = cursor + "\x00"
	}
	more := false
	s.instances.ascend(from, func(k string, v *meshcav1.Instance) bool {
		if limit > 0 && len(page) == limit {
			more = true
			return false
		}
		page = append(page, clone(v))
		next = k
		return true
	})
	if !more {
		next = ""
	}
	return page, next
}

// Cert returns the certificate record of a serial.
func (s *State) Cert(serial string) (*meshcav1.Cert, error) {
	return get(&s.certs, "cert", serial)
}

// KeyUse returns the first use of a public key by the SHA-256 of its SubjectPublicKeyInfo.
func (s *State) KeyUse(spkiSHA256 []byte) (*meshcav1.KeyUse, error) {
	v, ok := s.keyUses.Get(string(spkiSHA256))
	if !ok {
		return nil, fmt.Errorf("key use %x: %w", spkiSHA256, ErrNotFound)
	}
	return clone(v), nil
}

// Revocation returns the revocation of a serial.
func (s *State) Revocation(serial string) (*meshcav1.Revocation, error) {
	return get(&s.revocations, "revocation", serial)
}

// IsRevoked reports whether a serial is revoked.
func (s *State) IsRevoked(serial string) bool {
	_, ok := s.revocations.Get(serial)
	return ok
}

// Revocations lists every revocation, sorted by serial: the content of the CRL.
func (s *State) Revocations() []*meshcav1.Revocation { return list(&s.revocations, "", nil, 0) }

// IssuerUse returns the latest expiry of the certificates an issuer signed.
func (s *State) IssuerUse(issuerID string) (*meshcav1.IssuerUse, error) {
	return get(&s.issuerUses, "issuer use", issuerID)
}

// Federation returns a foreign trust domain's bundle.
func (s *State) Federation(trustDomain string) (*meshcav1.Federation, error) {
	return get(&s.federations, "federation", trustDomain)
}

// Federations lists every federated trust domain, sorted by name.
func (s *State) Federations() []*meshcav1.Federation { return list(&s.federations, "", nil, 0) }

// Token returns a register token by jti.
func (s *State) Token(jti string) (*meshcav1.Token, error) {
	return get(&s.tokens, "token", jti)
}

// Nonce returns a used service-key token nonce.
func (s *State) Nonce(scope, nonce string) (*meshcav1.Nonce, error) {
	v, ok := s.nonces.Get(nonceKey(scope, nonce))
	if !ok {
		return nil, fmt.Errorf("nonce %q of %q: %w", nonce, scope, ErrNotFound)
	}
	return clone(v), nil
}

// CSRRequest returns a manual-approval request by id.
func (s *State) CSRRequest(id string) (*meshcav1.CSRRequest, error) {
	return get(&s.csrRequests, "csr request", id)
}

// CSRRequests lists the requests in a state (every request for CSR_STATE_UNSPECIFIED), sorted
// by id.
func (s *State) CSRRequests(state meshcav1.CSRState) []*meshcav1.CSRRequest {
	return filterList(&s.csrRequests, "", func(_ string, v *meshcav1.CSRRequest) (bool, bool) {
		return true, state == meshcav1.CSRState_CSR_STATE_UNSPECIFIED || v.GetState() == state
	})
}

// Events lists up to limit events (0: all) with index ≥ from, oldest first.
func (s *State) Events(from uint64, limit int) []*meshcav1.Event {
	return list(&s.events, from, nil, limit)
}

// LastEventIndex is the index of the newest event, 0 if none was ever recorded.
func (s *State) LastEventIndex() uint64 { return s.nextEvent - 1 }

// Receipt returns the remembered result of a command id, if it is still in the window. It walks
// the window, newest last: a diagnostic read (the state machine finds a retried command's
// receipt through its own index).
func (s *State) Receipt(commandID string) (*meshcav1.CommandReceipt, error) {
	var found *meshcav1.CommandReceipt
	s.receipts.scan(func(_ uint64, r *meshcav1.CommandReceipt) bool {
		if r.GetId() == commandID {
			found = r
		}
		return found == nil
	})
	if found == nil {
		return nil, notFound("command", commandID)
	}
	return clone(found), nil
}

// Sizes counts the records of each kind.
type Sizes struct {
	Domains, Services, Providers, Instances, Certs, KeyUses, Revocations   int
	IssuerUses, Federations, Tokens, Nonces, CSRRequests, Events, Receipts int
}

// Sizes counts the records of each kind.
func (s *State) Sizes() Sizes {
	return Sizes{
		Domains: s.domains.Len(), Services: s.services.Len(), Providers: s.providers.Len(),
		Instances: s.instances.Len(), Certs: s.certs.Len(), KeyUses: s.keyUses.Len(),
		Revocations: s.revocations.Len(), IssuerUses: s.issuerUses.Len(),
		Federations: s.federations.Len(), Tokens: s.tokens.Len(), Nonces: s.nonces.Len(),
		CSRRequests: s.csrRequests.Len(), Events: s.events.Len(), Receipts: s.receipts.Len(),
	}
}
