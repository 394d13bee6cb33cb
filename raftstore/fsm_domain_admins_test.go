package raftstore

import (
	"slices"
	"strings"
	"testing"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

func TestChangeDomainAdmins(t *testing.T) {
	fx := newFSMFixture(t).setup() // sports has admin user.alice

	// Two changes built from the same read both take effect: each applies to the admins as
	// they are when it is applied, not as its sender saw them.
	fx.must(&meshcav1.ChangeDomainAdminsCommand{Name: fxDomain, Add: []string{"user.bob"}})
	res := fx.must(&meshcav1.ChangeDomainAdminsCommand{Name: fxDomain, Add: []string{"user.carol", "user.bob"}})
	if got, want := res.GetDomain().GetAdmins(), []string{"user.alice", "user.bob", "user.carol"}; !slices.Equal(got, want) {
		t.Fatalf("admins after two adds = %v, want %v", got, want)
	}
	fx.must(&meshcav1.ChangeDomainAdminsCommand{Name: fxDomain, Remove: []string{"user.alice", "user.nobody"}})
	// A principal in both lists ends up removed.
	fx.must(&meshcav1.ChangeDomainAdminsCommand{Name: fxDomain, Add: []string{"user.dave"}, Remove: []string{"user.dave"}})
	d, err := fx.state().Domain(fxDomain)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := d.GetAdmins(), []string{"user.bob", "user.carol"}; !slices.Equal(got, want) {
		t.Fatalf("admins = %v, want %v", got, want)
	}
	if d.GetCreated() == 0 || d.GetUpdated() != fx.now.UnixNano() {
		t.Fatalf("created %d, updated %d: want created kept and updated set to the command time", d.GetCreated(), d.GetUpdated())
	}

	many := make([]string, maxAdmins+1)
	for i := range many {
		many[i] = "user.u" + strings.Repeat("x", i%5) + string(rune('a'+i%26))
	}
	for name, tc := range map[string]struct {
		cmd  *meshcav1.ChangeDomainAdminsCommand
		code meshcav1.ResultCode
		msg  string
	}{
		"unknown domain": {&meshcav1.ChangeDomainAdminsCommand{Name: "news", Add: []string{"user.x"}},
			codeNotFound, `change_domain_admins.name: domain "news" does not exist`},
		"no change": {&meshcav1.ChangeDomainAdminsCommand{Name: fxDomain},
			codeInvalid, "change_domain_admins: add or remove at least one principal"},
		"bad name": {&meshcav1.ChangeDomainAdminsCommand{Name: "Sports!", Add: []string{"user.x"}},
			codeInvalid, "change_domain_admins.name:"},
		"bad principal": {&meshcav1.ChangeDomainAdminsCommand{Name: fxDomain, Add: []string{"user.x", ""}},
			codeInvalid, "change_domain_admins.add[1]:"},
		"too many": {&meshcav1.ChangeDomainAdminsCommand{Name: fxDomain, Add: many},
			codeInvalid, "change_domain_admins.add: 257 principals, at most 256"},
	} {
		res := fx.apply(tc.cmd)
		if res.GetCode() != tc.code || !strings.HasPrefix(res.GetMessage(), tc.msg) {
			t.Errorf("%s: %v %q, want %v %q", name, res.GetCode(), res.GetMessage(), tc.code, tc.msg)
		}
	}
	if d2, _ := fx.state().Domain(fxDomain); !slices.Equal(d2.GetAdmins(), d.GetAdmins()) {
		t.Fatalf("a refused change altered the admins: %v", d2.GetAdmins())
	}
}
