package raftstore

import (
	"strings"
	"testing"
	"time"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

var fxRoot2 = []byte("root-2 DER")

func fxPrepare(id string, root []byte) func(fx *fsmFixture) any {
	return func(fx *fsmFixture) any {
		return &meshcav1.PrepareCARotationCommand{NewRoot: root, NextIssuer: fxIssuer(id, root, fx.now.Add(365*24*time.Hour))}
	}
}

func fxActivate(id string, reissue bool) func(fx *fsmFixture) any {
	return func(fx *fsmFixture) any { return &meshcav1.ActivateCAIssuerCommand{IssuerId: id, Reissue: reissue} }
}

func (fx *fsmFixture) ca() *meshcav1.CA {
	fx.t.Helper()
	ca, err := fx.state().CA()
	if err != nil {
		fx.t.Fatalf("CA: %v", err)
	}
	return ca
}

func TestActivateWithReissue(t *testing.T) {
	prepared := func(fx *fsmFixture) { fx.must(fxPrepare("issuer-2", fxRoot2)(fx)) }
	reissued := func(fx *fsmFixture) {
		prepared(fx)
		fx.must(fxActivate("issuer-2", true)(fx))
		fx.now = fx.now.Add(time.Minute)
	}
	runFSMCases(t, []fsmCase{
		{
			name:  "activate with reissue records the command time on the CA",
			given: prepared,
			when:  fxActivate("issuer-2", true),
			want:  codeOK,
			then: func(t *testing.T, fx *fsmFixture, _ *meshcav1.CommandResult) {
				ca := fx.ca()
				if ca.GetActiveIssuer().GetId() != "issuer-2" || ca.GetReissueRequested() != fx.now.UnixNano() {
					t.Fatalf("CA after activate with reissue: active %q, reissue_requested %d, want issuer-2 at %d",
						ca.GetActiveIssuer().GetId(), ca.GetReissueRequested(), fx.now.UnixNano())
				}
				events := fx.state().Events(0, 0)
				if last := events[len(events)-1]; last.GetKind() != meshcav1.EventKind_EVENT_KIND_CA_ROTATED || !strings.Contains(last.GetDetail(), "replaced now") {
					t.Fatalf("last event %v %q, want a CA rotation that says certificates are replaced now", last.GetKind(), last.GetDetail())
				}
			},
		},
		{
			name:  "activate without reissue leaves certificates to their schedule",
			given: prepared,
			when:  fxActivate("issuer-2", false),
			want:  codeOK,
			then: func(t *testing.T, fx *fsmFixture, _ *meshcav1.CommandResult) {
				if got := fx.ca().GetReissueRequested(); got != 0 {
					t.Fatalf("reissue_requested %d after an activate without reissue, want 0", got)
				}
			},
		},
		{
			name: "a later activate without reissue clears the earlier request",
			given: func(fx *fsmFixture) {
				reissued(fx)
				fx.must(fxPrepare("issuer-3", []byte("root-3 DER"))(fx))
			},
			when: fxActivate("issuer-3", false),
			want: codeOK,
			then: func(t *testing.T, fx *fsmFixture, _ *meshcav1.CommandResult) {
				if ca := fx.ca(); ca.GetActiveIssuer().GetId() != "issuer-3" || ca.GetReissueRequested() != 0 {
					t.Fatalf("CA: active %q, reissue_requested %d, want issuer-3 and no request", ca.GetActiveIssuer().GetId(), ca.GetReissueRequested())
				}
			},
		},
		{
			name: "a refused activate with reissue records nothing",
			when: fxActivate("issuer-2", true),
			want: codeFailedPrecondition,
		},
		{
			name:  "prepare after a reissue keeps the request of the active issuer",
			given: reissued,
			when:  fxPrepare("issuer-3", []byte("root-3 DER")),
			want:  codeOK,
			then: func(t *testing.T, fx *fsmFixture, _ *meshcav1.CommandResult) {
				if got := fx.ca().GetReissueRequested(); got != fx.now.Add(-time.Minute).UnixNano() {
					t.Fatalf("reissue_requested %d after prepare, want the activate's time %d", got, fx.now.Add(-time.Minute).UnixNano())
				}
			},
		},
	})
}

func TestReissueRequestSurvivesSnapshotAndRestore(t *testing.T) {
	fx := newFSMFixture(t).setup()
	fx.must(fxPrepare("issuer-2", fxRoot2)(fx))
	fx.must(fxActivate("issuer-2", true)(fx))
	restored := restoreInto(t, snapshotBytes(t, fx.fsm))
	ca, err := restored.State().CA()
	if err != nil {
		t.Fatal(err)
	}
	if ca.GetReissueRequested() != fx.now.UnixNano() {
		t.Fatalf("restored reissue_requested %d, want %d", ca.GetReissueRequested(), fx.now.UnixNano())
	}
	if restored.StateHash() != fx.fsm.StateHash() {
		t.Fatal("restored state hashes differently")
	}
}

func TestRetireBoundIsTheExactLastExpiry(t *testing.T) {
	// Off the hour and off the second, as real issuance times are.
	start := fxT0.Add(17*time.Minute + 23*time.Second + 500*time.Millisecond)
	const life = 60 * time.Second
	setup := func(t *testing.T) (*fsmFixture, time.Time) {
		fx := newFSMFixture(t).setup()
		fx.now = start
		c := fx.cert("a1", "k1")
		c.NotAfter = start.Add(life).UnixNano()
		fx.must(&meshcav1.RecordRegisterCommand{
			Provider: fxProvider, Domain: fxDomain, Service: fxService, InstanceId: fxInstance1, Cert: c, ClientAddr: "10.0.0.1:5000",
		})
		// A certificate with an earlier expiry, recorded later, does not lower the bound.
		fx.now = start.Add(time.Second)
		early := fx.cert("a2", "k2")
		early.NotAfter = start.Add(life / 2).UnixNano()
		fx.must(&meshcav1.RecordRegisterCommand{
			Provider: fxProvider, Domain: fxDomain, Service: fxService, InstanceId: "pod-2.ns.cluster-a", Cert: early, ClientAddr: "10.0.0.1:5000",
		})
		fx.must(fxPrepare("issuer-2", fxRoot2)(fx))
		fx.must(fxActivate("issuer-2", true)(fx))
		return fx, start.Add(life)
	}
	retire := &meshcav1.RetireCARootCommand{RootSha256: fxRootSum(fxRoot)}

	t.Run("the issuer's bound is the last not_after, not rounded", func(t *testing.T) {
		fx, last := setup(t)
		u, err := fx.state().IssuerUse(fxIssuerID)
		if err != nil {
			t.Fatal(err)
		}
		if u.GetLastNotAfter() != last.UnixNano() {
			t.Fatalf("last_not_after %s, want exactly %s", time.Unix(0, u.GetLastNotAfter()).UTC(), last)
		}
	})
	t.Run("retire one nanosecond before the last expiry is refused, naming it", func(t *testing.T) {
		fx, last := setup(t)
		fx.now = last.Add(-time.Nanosecond)
		res := fx.apply(retire)
		expectCode(t, res, codeFailedPrecondition)
		if want := last.Format(time.RFC3339Nano); !strings.Contains(res.GetMessage(), "valid until "+want) {
			t.Fatalf("refusal %q does not name the last expiry %s", res.GetMessage(), want)
		}
		if len(fx.ca().GetRoots()) != 2 {
			t.Fatal("a refused retire dropped a root")
		}
	})
	t.Run("retire at the last expiry drops the root", func(t *testing.T) {
		fx, last := setup(t)
		fx.now = last
		fx.must(retire)
		ca := fx.ca()
		if len(ca.GetRoots()) != 1 || string(ca.GetRoots()[0]) != string(fxRoot2) || len(ca.GetRetiredIssuers()) != 0 {
			t.Fatalf("CA after retire: %d roots, retired %v", len(ca.GetRoots()), ca.GetRetiredIssuers())
		}
		if _, err := fx.state().IssuerUse(fxIssuerID); err == nil {
			t.Fatal("the retired issuer's bound is still stored")
		}
	})
}
