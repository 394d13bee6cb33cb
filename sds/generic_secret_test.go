package sds

import (
	"bytes"
	"errors"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestGenericSecrets(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	t.Run("a generic secret is served to every identity under its name, as set", func(t *testing.T) {
		s := NewStore()
		mustSetBundle(t, s, ca)
		data := []byte("notice v1")
		if err := s.SetGeneric(NameIssuerNotice, data); err != nil {
			t.Fatal(err)
		}
		data[0] = 'X' // the store keeps its own copy
		for _, id := range []spiffeid.ID{idAPI, idWeb} {
			secrets, err := secretsFor(s.View(id))
			if err != nil {
				t.Fatal(err)
			}
			got := secrets[NameIssuerNotice].GetGenericSecret().GetSecret().GetInlineBytes()
			if !bytes.Equal(got, []byte("notice v1")) {
				t.Fatalf("%s is served %q under %s, want %q", id, got, NameIssuerNotice, "notice v1")
			}
		}
	})
	t.Run("setting one moves the version and wakes watchers; nil removes it", func(t *testing.T) {
		s := NewStore()
		mustSetBundle(t, s, ca)
		before := s.View(idAPI).Version
		changed := s.Changed()
		if err := s.SetGeneric(NameIssuerNotice, []byte("n")); err != nil {
			t.Fatal(err)
		}
		select {
		case <-changed:
		default:
			t.Fatal("watchers were not woken")
		}
		after := s.View(idAPI).Version
		if after == before {
			t.Fatal("the version did not move")
		}
		if err := s.SetGeneric(NameIssuerNotice, nil); err != nil {
			t.Fatal(err)
		}
		v := s.View(idAPI)
		secrets, err := secretsFor(v)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := secrets[NameIssuerNotice]; ok || v.Version == after {
			t.Fatalf("after removal: served %v, version %s (was %s)", ok, v.Version, after)
		}
	})
	for _, name := range []string{"", NameDefault, NameRootCA, NameAll, "spiffe://mesh.example", idAPI.String()} {
		t.Run("the name "+name+" of a certificate or bundle is refused", func(t *testing.T) {
			if err := NewStore().SetGeneric(name, []byte("x")); !errors.Is(err, ErrInvalidName) {
				t.Fatalf("SetGeneric(%q) = %v, want ErrInvalidName", name, err)
			}
		})
	}
}
