package sds

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestStoreRefusesWhatCannotBeServed(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	good := ca.issue(t, idAPI)
	other := ca.issue(t, idWeb)
	cases := []struct {
		rule string
		svid *x509svid.SVID
	}{
		{"an SVID needs an ID", &x509svid.SVID{Certificates: good.Certificates, PrivateKey: good.PrivateKey}},
		{"an SVID needs a certificate", &x509svid.SVID{ID: idAPI, PrivateKey: good.PrivateKey}},
		{"an SVID needs a key", &x509svid.SVID{ID: idAPI, Certificates: good.Certificates}},
		{"the key must match the leaf", &x509svid.SVID{ID: idAPI, Certificates: good.Certificates, PrivateKey: other.PrivateKey}},
		{"the leaf's URI SAN must be the SVID's ID", &x509svid.SVID{ID: idAPI, Certificates: other.Certificates, PrivateKey: other.PrivateKey}},
	}
	for _, tc := range cases {
		t.Run(tc.rule, func(t *testing.T) {
			if err := NewStore().SetSVID(tc.svid); !errors.Is(err, ErrInvalidSVID) {
				t.Fatalf("err = %v, want ErrInvalidSVID", err)
			}
		})
	}
	t.Run("a bundle needs a root", func(t *testing.T) {
		if err := NewStore().SetBundle(x509bundle.New(ca.td)); !errors.Is(err, ErrInvalidBundle) {
			t.Fatalf("err = %v, want ErrInvalidBundle", err)
		}
	})
	t.Run("the store keeps its own copy of a bundle", func(t *testing.T) {
		s := NewStore()
		b := ca.bundle()
		if err := s.SetBundle(b); err != nil {
			t.Fatal(err)
		}
		b.AddX509Authority(other.Certificates[0])
		own, _ := s.View(idAPI).OwnBundle()
		if n := len(own.X509Authorities()); n != 1 {
			t.Fatalf("store bundle has %d roots after the caller edited its value, want 1", n)
		}
	})
}

func TestStoreVersionsChangeOnlyWithWhatAnIdentityIsServed(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	s := NewStore()
	mustSetBundle(t, s, ca)
	mustSetSVID(t, s, ca.issue(t, idAPI))
	api := s.View(idAPI).Version
	mustSetSVID(t, s, ca.issue(t, idWeb))
	if s.View(idAPI).Version != api {
		t.Fatal("another identity's rotation changed this identity's version")
	}
	mustSetBundle(t, s, newTestCA(t, tdFed.Name()))
	if s.View(idAPI).Version == api {
		t.Fatal("a new federated bundle did not change the version")
	}
	if NewStore().View(idAPI).Version == NewStore().View(idAPI).Version {
		t.Fatal("two stores (an agent before and after a restart) share versions")
	}
}

func TestInventoryListsWhatIsServed(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	fed := newTestCA(t, tdFed.Name())
	s := NewStore()
	mustSetBundle(t, s, ca)
	mustSetBundle(t, s, fed)
	svid := ca.issue(t, idAPI)
	mustSetSVID(t, s, svid)

	rec := httptest.NewRecorder()
	InventoryHandler(s).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/secrets", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	var inv Inventory
	if err := json.Unmarshal(rec.Body.Bytes(), &inv); err != nil {
		t.Fatal(err)
	}
	if len(inv.Identities) != 1 {
		t.Fatalf("%d identities, want 1", len(inv.Identities))
	}
	id := inv.Identities[0]
	leaf := svid.Certificates[0]
	if id.SPIFFEID != idAPI.String() || id.Serial != leaf.SerialNumber.Text(16) || !id.NotAfter.Equal(leaf.NotAfter) || len(id.Chain) != 2 {
		t.Fatalf("identity entry %+v does not describe the served SVID", id)
	}
	if len(id.Names) != 2 || id.Names[0] != NameDefault || id.Names[1] != idAPI.String() {
		t.Fatalf("names %v, want default and the SPIFFE ID", id.Names)
	}
	if len(inv.Bundles) != 2 || inv.Bundles[0].TrustDomain != tdMesh || !inv.Bundles[0].Own || inv.Bundles[1].Own {
		t.Fatalf("bundles %+v, want own mesh.example then federated partner.example", inv.Bundles)
	}
	if inv.Bundles[0].Roots[0].Serial != ca.root.SerialNumber.Text(16) {
		t.Fatal("own bundle root is not the CA root")
	}

	rec = httptest.NewRecorder()
	InventoryHandler(s).ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/secrets", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("POST status %d, want 405", rec.Code)
	}
}

func TestCallerTablePrecedence(t *testing.T) {
	a := spiffeid.RequireFromString("spiffe://mesh.example/ns/a/sa/a")
	b := spiffeid.RequireFromString("spiffe://mesh.example/ns/b/sa/b")
	c := spiffeid.RequireFromString("spiffe://mesh.example/ns/c/sa/c")
	table := &CallerTable{
		BySocket: map[string]spiffeid.ID{"/run/a.sock": a},
		ByUID:    map[uint32]spiffeid.ID{1000: b},
		ByGID:    map[uint32]spiffeid.ID{2000: c},
	}
	cases := []struct {
		rule   string
		caller Caller
		want   spiffeid.ID
		err    bool
	}{
		{"a socket bound to an identity wins over peer credentials", Caller{Socket: "/run/a.sock", UID: 1000, HasCredentials: true}, a, false},
		{"a uid mapping wins over a gid mapping", Caller{Socket: "/run/main.sock", UID: 1000, GID: 2000, HasCredentials: true}, b, false},
		{"a gid mapping applies when the uid is not mapped", Caller{UID: 1, GID: 2000, HasCredentials: true}, c, false},
		{"an unmapped caller is refused", Caller{UID: 1, GID: 1, HasCredentials: true}, spiffeid.ID{}, true},
		{"without credentials uid 0 is not assumed", Caller{Socket: "/run/main.sock"}, spiffeid.ID{}, true},
	}
	table.ByUID[0] = a
	for _, tc := range cases {
		t.Run(tc.rule, func(t *testing.T) {
			got, err := table.Lookup(tc.caller)
			if tc.err {
				if !errors.Is(err, ErrCallerUnknown) {
					t.Fatalf("err = %v, want ErrCallerUnknown", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
