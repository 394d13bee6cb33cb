package sds

import (
	"crypto"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ErrInvalidSVID is returned by Store.SetSVID for an SVID that cannot be served.
var ErrInvalidSVID = errors.New("invalid SVID")

// ErrInvalidBundle is returned by Store.SetBundle for a bundle that cannot be served.
var ErrInvalidBundle = errors.New("invalid bundle")

// ErrInvalidName is returned by Store.SetGeneric for a name that is not a generic secret's.
var ErrInvalidName = errors.New("invalid secret name")

// View is what one workload identity is served at one moment. A View is immutable: the Store
// replaces, never edits, what a View points to.
type View struct {
	// ID is the workload identity.
	ID spiffeid.ID
	// Version changes whenever anything in the View changes, and is never reused by another
	// Store (it starts with a random epoch), so a client that reconnects with a version from
	// before an agent restart never looks up to date.
	Version string
	// SVID is the identity's certificate chain and key; nil until one is set.
	SVID *x509svid.SVID
	// Bundles holds every trust bundle: the identity's own trust domain and the federated ones.
	Bundles *x509bundle.Set
	// Generic holds opaque secrets by resource name, served to every identity as Envoy generic
	// secrets: a CA node tells agents its issuer this way (NameIssuerNotice). Never edited.
	Generic map[string][]byte
}

// OwnBundle returns the bundle of the identity's own trust domain.
func (v View) OwnBundle() (*x509bundle.Bundle, bool) {
	if v.Bundles == nil {
		return nil, false
	}
	return v.Bundles.Get(v.ID.TrustDomain())
}

// AllBundles returns the own and federated bundles, sorted by trust domain.
func (v View) AllBundles() []*x509bundle.Bundle {
	if v.Bundles == nil {
		return nil
	}
	return v.Bundles.Bundles()
}

// Source is where the transports read secrets from: the Store on an agent, the replicated state
// on a CA node. Changed returns a channel that is closed at the next change after the call; take
// it before reading Views so no change is missed.
type Source interface {
	View(id spiffeid.ID) View
	Changed() <-chan struct{}
}

var _ Source = (*Store)(nil)

type svidEntry struct {
	svid *x509svid.SVID // nil after RemoveSVID
	seq  uint64
}

// Store holds the secrets an agent serves: per workload identity its X.509 SVID, and the trust
// bundles (own and federated) keyed by trust domain. Every change gets a new sequence number and
// wakes every watcher (SDS streams, Workload API streams, file writers) at once. It is safe for
// concurrent use.
type Store struct {
	mu        sync.Mutex
	epoch     string
	seq       uint64
	svids     map[spiffeid.ID]svidEntry
	bundles   map[spiffeid.TrustDomain]*x509bundle.Bundle
	bundleSet *x509bundle.Set // rebuilt on every bundle change, never edited after
	bundleSeq uint64
	generic   map[string][]byte // replaced, never edited
	changed   chan struct{}
}

// NewStore returns an empty Store with a fresh random version epoch.
func NewStore() *Store {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand never fails on supported platforms.
		panic(fmt.Sprintf("sds: reading random epoch: %v", err))
	}
	return &Store{
		epoch:     hex.EncodeToString(b[:]),
		svids:     make(map[spiffeid.ID]svidEntry),
		bundles:   make(map[spiffeid.TrustDomain]*x509bundle.Bundle),
		bundleSet: x509bundle.NewSet(),
		changed:   make(chan struct{}),
	}
}

// SetSVID sets (or replaces, on rotation) the SVID of svid.ID. The SVID is copied; the caller
// may reuse its value.
func (s *Store) SetSVID(svid *x509svid.SVID) error {
	if err := checkSVID(svid); err != nil {
		return err
	}
	cp := &x509svid.SVID{
		ID:           svid.ID,
		Certificates: slices.Clone(svid.Certificates),
		PrivateKey:   svid.PrivateKey,
		Hint:         svid.Hint,
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	s.svids[cp.ID] = svidEntry{svid: cp, seq: s.seq}
	s.notifyLocked()
	return nil
}

// RemoveSVID removes the SVID of id. It reports whether there was one.
func (s *Store) RemoveSVID(id spiffeid.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.svids[id]
	if !ok || e.svid == nil {
		return false
	}
	s.seq++
	s.svids[id] = svidEntry{seq: s.seq}
	s.notifyLocked()
	return true
}

// SetBundle sets (or replaces) the bundle of b's trust domain: the own trust domain or a
// federated one. The bundle is copied.
func (s *Store) SetBundle(b *x509bundle.Bundle) error {
	if b == nil {
		return fmt.Errorf("bundle: must not be nil: %w", ErrInvalidBundle)
	}
	if b.TrustDomain().IsZero() {
		return fmt.Errorf("bundle: trust domain must be set: %w", ErrInvalidBundle)
	}
	if len(b.X509Authorities()) == 0 {
		return fmt.Errorf("bundle %q: x509 authorities: must hold at least one root: %w", b.TrustDomain(), ErrInvalidBundle)
	}
	cp := b.Clone()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bundles[cp.TrustDomain()] = cp
	s.bundlesChangedLocked()
	return nil
}

// RemoveBundle removes the bundle of td (typically a federated trust domain that is no longer
// trusted). It reports whether there was one.
func (s *Store) RemoveBundle(td spiffeid.TrustDomain) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.bundles[td]; !ok {
		return false
	}
	delete(s.bundles, td)
	s.bundlesChangedLocked()
	return true
}

// SetGeneric serves data to every identity as the generic secret name, replacing what was there;
// nil data removes it. The names of certificates and bundles are refused. Generic secrets
// version with the bundles.
func (s *Store) SetGeneric(name string, data []byte) error {
	if name == "" || name == NameDefault || name == NameRootCA || name == NameAll || strings.HasPrefix(name, "spiffe://") {
		return fmt.Errorf("generic secret %q: must be a non-empty name other than default, ROOTCA, ALL or a SPIFFE ID: %w", name, ErrInvalidName)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	next := maps.Clone(s.generic)
	if data == nil {
		delete(next, name)
	} else {
		if next == nil {
			next = map[string][]byte{}
		}
		next[name] = slices.Clone(data)
	}
	s.generic = next
	s.seq++
	s.bundleSeq = s.seq
	s.notifyLocked()
	return nil
}

func (s *Store) bundlesChangedLocked() {
	set := x509bundle.NewSet()
	for _, b := range s.bundles {
		set.Add(b)
	}
	s.bundleSet = set
	s.seq++
	s.bundleSeq = s.seq
	s.notifyLocked()
}

func (s *Store) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// View returns what id is served now.
func (s *Store) View(id spiffeid.ID) View {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.svids[id]
	return View{
		ID:      id,
		Version: fmt.Sprintf("%s-%d-%d", s.epoch, e.seq, s.bundleSeq),
		SVID:    e.svid,
		Bundles: s.bundleSet,
		Generic: s.generic,
	}
}

// Changed returns a channel closed at the next change to the Store.
func (s *Store) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Identities returns the identities that currently have an SVID, sorted.
func (s *Store) Identities() []spiffeid.ID {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]spiffeid.ID, 0, len(s.svids))
	for id, e := range s.svids {
		if e.svid != nil {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, func(a, b spiffeid.ID) int { return strings.Compare(a.String(), b.String()) })
	return ids
}

// publicKeyEqualer is what every crypto public key type in the standard library implements.
type publicKeyEqualer interface {
	Equal(x crypto.PublicKey) bool
}

func checkSVID(svid *x509svid.SVID) error {
	if svid == nil {
		return fmt.Errorf("svid: must not be nil: %w", ErrInvalidSVID)
	}
	if svid.ID.IsZero() {
		return fmt.Errorf("svid.ID: must be a SPIFFE ID: %w", ErrInvalidSVID)
	}
	if len(svid.Certificates) == 0 || svid.Certificates[0] == nil {
		return fmt.Errorf("svid %q: certificates: must hold the leaf first: %w", svid.ID, ErrInvalidSVID)
	}
	if svid.PrivateKey == nil {
		return fmt.Errorf("svid %q: private key: must be set: %w", svid.ID, ErrInvalidSVID)
	}
	leaf := svid.Certificates[0]
	pub, ok := svid.PrivateKey.Public().(publicKeyEqualer)
	if !ok || !pub.Equal(leaf.PublicKey) {
		return fmt.Errorf("svid %q: private key: does not match the leaf certificate's public key: %w", svid.ID, ErrInvalidSVID)
	}
	leafID, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return fmt.Errorf("svid %q: leaf URI SAN: %v: %w", svid.ID, err, ErrInvalidSVID)
	}
	if leafID != svid.ID {
		return fmt.Errorf("svid %q: leaf URI SAN %q: must equal the SVID's ID: %w", svid.ID, leafID, ErrInvalidSVID)
	}
	return nil
}
