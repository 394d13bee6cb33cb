package controlplane

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
)

// caView is what a node issues with: the Authority built from the replicated CA record. Every
// node builds the same one from the same record, so a rotation (a log command) switches them
// all.
type caView struct {
	authority *ca.Authority
	// issuer is the active issuer's record; its id goes into every Cert record.
	issuer *meshcav1.Issuer
	// key identifies the record's issuing parts (active issuer and roots): the view is rebuilt
	// only when it changes, not when the CRL number moves.
	key string
	// updated is the CA record's last change (proposer time, Unix nanoseconds).
	updated int64
}

// viewKey identifies the parts of a CA record an Authority depends on.
func viewKey(rec *meshcav1.CA) string {
	h := sha256.New()
	io.WriteString(h, rec.GetActiveIssuer().GetId())
	for _, r := range rec.GetRoots() {
		s := sha256.Sum256(r)
		h.Write(s[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// signerOpener opens the CA keys the replicated record names: a key sealed under the node's
// KEK, or a PKCS#11 object by label on the node's token. Keys are opened once and kept.
type signerOpener struct {
	kek       signer.KEK
	openToken func(label string) (signer.Signer, error)

	mu     sync.Mutex
	byID   map[string]signer.Signer
	tokens []*signer.PKCS11
}

func newSignerOpener(kek signer.KEK, openToken func(string) (signer.Signer, error)) *signerOpener {
	return &signerOpener{kek: kek, openToken: openToken, byID: map[string]signer.Signer{}}
}

// add remembers a key this node already opened (its local CA key).
func (o *signerOpener) add(s signer.Signer) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.byID[s.KeyID()] = s
	if p, ok := s.(*signer.PKCS11); ok {
		o.tokens = append(o.tokens, p)
	}
}

// open returns the key a signer reference names, checking it is the key the record says.
func (o *signerOpener) open(ref *meshcav1.SignerRef) (signer.Signer, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if s, ok := o.byID[ref.GetKeyId()]; ok && ref.GetKeyId() != "" {
		return s, nil
	}
	var s signer.Signer
	switch k := ref.GetKey().(type) {
	case *meshcav1.SignerRef_EncryptedKey:
		if o.kek.IsZero() {
			return nil, errors.New("signer.encrypted_key: this node has no KEK (ca.kek_file or ca.kek_env) to open it")
		}
		sw, err := signer.ParseEncrypted(k.EncryptedKey, o.kek)
		if err != nil {
			return nil, fmt.Errorf("signer.encrypted_key: %w", err)
		}
		s = sw
	case *meshcav1.SignerRef_Pkcs11Label:
		if o.openToken == nil {
			return nil, fmt.Errorf("signer.pkcs11_label %q: this node has no PKCS#11 token configured (ca.pkcs11)", k.Pkcs11Label)
		}
		tok, err := o.openToken(k.Pkcs11Label)
		if err != nil {
			return nil, fmt.Errorf("signer.pkcs11_label %q: %w", k.Pkcs11Label, err)
		}
		if p, ok := tok.(*signer.PKCS11); ok {
			o.tokens = append(o.tokens, p)
		}
		s = tok
	default:
		return nil, errors.New("signer: the record names no key")
	}
	if id := ref.GetKeyId(); id != "" && id != s.KeyID() {
		return nil, fmt.Errorf("signer.key_id: the key opened is %s, the record says %s", s.KeyID(), id)
	}
	o.byID[s.KeyID()] = s
	return s, nil
}

// Close closes the PKCS#11 keys.
func (o *signerOpener) Close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, t := range o.tokens {
		_ = t.Close()
	}
	o.tokens = nil
}

// buildView builds the Authority of a replicated CA record at now.
func buildView(rec *meshcav1.CA, td spiffeid.TrustDomain, pol policy.Config, open func(*meshcav1.SignerRef) (signer.Signer, error), now time.Time) (*caView, error) {
	active := rec.GetActiveIssuer()
	if active == nil || len(active.GetChain()) == 0 {
		return nil, errors.New("ca.active_issuer: missing")
	}
	chain := make([]*x509.Certificate, len(active.GetChain()))
	for i, der := range active.GetChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("ca.active_issuer.chain[%d]: %w", i, err)
		}
		chain[i] = c
	}
	var own *x509.Certificate
	var others []*x509.Certificate
	for i, der := range rec.GetRoots() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("ca.roots[%d]: %w", i, err)
		}
		if sum := sha256.Sum256(der); string(sum[:]) == string(active.GetRootSha256()) {
			own = c
		} else {
			others = append(others, c)
		}
	}
	if own == nil {
		return nil, errors.New("ca.active_issuer.root_sha256: no root of the bundle has it")
	}
	key, err := open(active.GetSigner())
	if err != nil {
		return nil, fmt.Errorf("ca.active_issuer.%w", err)
	}
	iss, err := ca.NewIssuer(ca.IssuerParts{Certificate: chain[0], Key: key, Intermediates: chain[1:], Roots: []*x509.Certificate{own}}, now)
	if err != nil {
		return nil, fmt.Errorf("ca.active_issuer: %w", err)
	}
	auth, err := ca.New(ca.Config{TrustDomain: td, Issuer: iss, Policy: pol, TrustedRoots: others})
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return &caView{authority: auth, issuer: active, key: viewKey(rec), updated: rec.GetUpdated()}, nil
}

// bundleSource serves the current trust bundle to go-spiffe verifiers.
type bundleSource struct{ s *Server }

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (b bundleSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != b.s.td {
		return nil, fmt.Errorf("trust domain %q is not this cluster's %q", td.Name(), b.s.td.Name())
	}
	return b.s.Bundle(), nil
}
