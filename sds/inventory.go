package sds

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Inventory is what an agent serves, for `meshctl agent secrets`: one entry per workload
// identity and one per trust bundle, with the SDS resource names each is served under.
type Inventory struct {
	Identities []IdentityInventory `json:"identities"`
	Bundles    []BundleInventory   `json:"bundles"`
}

// IdentityInventory is one workload identity's certificate.
type IdentityInventory struct {
	SPIFFEID string `json:"spiffe_id"`
	// Names are the SDS resource names the certificate and key are served under.
	Names []string `json:"names"`
	// Version is the version of what this identity is served now.
	Version string `json:"version"`
	// Serial is the leaf's serial number in hex.
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// Chain is the leaf followed by its intermediates.
	Chain []CertInventory `json:"chain"`
}

// BundleInventory is one trust domain's bundle.
type BundleInventory struct {
	TrustDomain string `json:"trust_domain"`
	// Own is true for the trust domain of a served identity, false for a federated one.
	Own bool `json:"own"`
	// Names are the SDS resource names the bundle is served under ("ALL" carries every bundle).
	Names []string        `json:"names"`
	Roots []CertInventory `json:"roots"`
}

// CertInventory describes one certificate.
type CertInventory struct {
	Subject   string    `json:"subject"`
	Issuer    string    `json:"issuer"`
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// SHA256 is the fingerprint of the DER certificate, in hex.
	SHA256 string `json:"sha256"`
}

func certInventory(c *x509.Certificate) CertInventory {
	sum := sha256.Sum256(c.Raw)
	return CertInventory{
		Subject:   c.Subject.String(),
		Issuer:    c.Issuer.String(),
		Serial:    c.SerialNumber.Text(16),
		NotBefore: c.NotBefore.UTC(),
		NotAfter:  c.NotAfter.UTC(),
		SHA256:    hex.EncodeToString(sum[:]),
	}
}

// Inventory lists what the Store serves now.
func (s *Store) Inventory() Inventory {
	inv := Inventory{Identities: []IdentityInventory{}, Bundles: []BundleInventory{}}
	ownTDs := map[spiffeid.TrustDomain]bool{}
	for _, id := range s.Identities() {
		v := s.View(id)
		if v.SVID == nil {
			continue
		}
		ownTDs[id.TrustDomain()] = true
		leaf := v.SVID.Certificates[0]
		ii := IdentityInventory{
			SPIFFEID:  id.String(),
			Names:     []string{NameDefault, id.String()},
			Version:   v.Version,
			Serial:    leaf.SerialNumber.Text(16),
			NotBefore: leaf.NotBefore.UTC(),
			NotAfter:  leaf.NotAfter.UTC(),
		}
		for _, c := range v.SVID.Certificates {
			ii.Chain = append(ii.Chain, certInventory(c))
		}
		inv.Identities = append(inv.Identities, ii)
	}
	s.mu.Lock()
	set := s.bundleSet
	s.mu.Unlock()
	for _, b := range set.Bundles() {
		bi := BundleInventory{
			TrustDomain: b.TrustDomain().Name(),
			Own:         ownTDs[b.TrustDomain()],
			Names:       []string{b.TrustDomain().IDString(), NameAll},
		}
		if bi.Own {
			bi.Names = []string{NameRootCA, b.TrustDomain().IDString(), NameAll}
		}
		for _, c := range b.X509Authorities() {
			bi.Roots = append(bi.Roots, certInventory(c))
		}
		inv.Bundles = append(inv.Bundles, bi)
	}
	slices.SortFunc(inv.Bundles, func(a, b BundleInventory) int { return strings.Compare(a.TrustDomain, b.TrustDomain) })
	return inv
}

// Inventorier is anything that can list what it serves; the Store is one.
type Inventorier interface {
	Inventory() Inventory
}

// InventoryHandler serves the Inventory as JSON on GET, for an admin socket the agent mounts it
// on (an HTTP server on a Unix socket).
func InventoryHandler(src Inventorier) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method "+r.Method+": only GET is allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(src.Inventory())
	})
}
