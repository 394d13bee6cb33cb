package raftstore

import (
	"testing"
	"time"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// registered: instance fxInstance1 registered with serial a1 (key k1).
func registered(fx *fsmFixture) { fx.must(fx.register(fxInstance1, "a1", "k1")) }

// refreshedOnce: then refreshed a1 → a2 (key k2): current a2, previous a1.
func refreshedOnce(fx *fsmFixture) {
	registered(fx)
	fx.must(fx.refresh(fxInstance1, "a1", "a2", "k2"))
}

// expectRevokedByMismatch checks everything a serial mismatch must leave behind, committed.
func expectRevokedByMismatch(t *testing.T, fx *fsmFixture, res *meshcav1.CommandResult, serials ...string) {
	t.Helper()
	if !payloadInstance(t, res).GetRevoked() {
		t.Fatal("SerialMismatch result does not carry the revoked instance")
	}
	if !fx.instance(fxInstance1).GetRevoked() {
		t.Fatal("instance is not revoked in the state: the mismatch was not committed")
	}
	kinds := fx.eventKinds()
	if kinds[len(kinds)-1] != meshcav1.EventKind_EVENT_KIND_COMPROMISE_DETECTED {
		t.Fatalf("last event = %v, want compromise-detected", kinds[len(kinds)-1])
	}
	for _, s := range serials {
		r, err := fx.state().Revocation(s)
		if err != nil || r.GetReason() != meshcav1.RevocationReason_REVOCATION_REASON_KEY_COMPROMISE {
			t.Fatalf("serial %s: revocation %v, %v; want key compromise", s, r, err)
		}
	}
	if ca, _ := fx.state().CA(); ca.GetCrlNumber() == 0 {
		t.Fatal("CRL number did not move after revocations")
	}
}

func TestRefreshPreconditions(t *testing.T) {
	runFSMCases(t, []fsmCase{
		{
			name:  "refresh with the current serial rotates current into previous",
			given: registered,
			when:  func(fx *fsmFixture) any { return fx.refresh(fxInstance1, "a1", "a2", "k2") },
			want:  codeOK,
			then: func(t *testing.T, fx *fsmFixture, res *meshcav1.CommandResult) {
				inst := fx.instance(fxInstance1)
				if inst.GetCurrentSerial() != "a2" || inst.GetPreviousSerial() != "a1" || inst.GetPreviousRetried() {
					t.Fatalf("instance = %v, want current a2, previous a1 not retried", inst)
				}
				if !equalProto(inst, payloadInstance(t, res)) {
					t.Fatal("result payload differs from the stored instance")
				}
			},
		},
		{
			name:  "refresh with previous serial is allowed once",
			given: refreshedOnce,
			// The client lost the answer carrying a2 and asks again for the same key.
			when: func(fx *fsmFixture) any { return fx.refresh(fxInstance1, "a1", "a3", "k2") },
			want: codeOK,
			then: func(t *testing.T, fx *fsmFixture, _ *meshcav1.CommandResult) {
				inst := fx.instance(fxInstance1)
				if inst.GetCurrentSerial() != "a3" || inst.GetPreviousSerial() != "a1" || !inst.GetPreviousRetried() {
					t.Fatalf("instance = %v, want current a3, previous a1 retried", inst)
				}
				if r, err := fx.state().Revocation("a2"); err != nil || r.GetReason() != meshcav1.RevocationReason_REVOCATION_REASON_SUPERSEDED {
					t.Fatalf("unanswered certificate a2: revocation %v, %v; want superseded", r, err)
				}
			},
		},
		{
			name: "refresh with previous serial a second time revokes the instance",
			given: func(fx *fsmFixture) {
				refreshedOnce(fx)
				fx.must(fx.refresh(fxInstance1, "a1", "a3", "k2"))
			},
			when: func(fx *fsmFixture) any { return fx.refresh(fxInstance1, "a1", "a4", "k3") },
			want: codeSerialMismatch,
			then: func(t *testing.T, fx *fsmFixture, res *meshcav1.CommandResult) {
				expectRevokedByMismatch(t, fx, res, "a3", "a1")
			},
		},
		{
			name:  "refresh with previous serial and a new key is a mismatch",
			given: refreshedOnce,
			when:  func(fx *fsmFixture) any { return fx.refresh(fxInstance1, "a1", "a3", "k9") },
			want:  codeSerialMismatch,
			then: func(t *testing.T, fx *fsmFixture, res *meshcav1.CommandResult) {
				expectRevokedByMismatch(t, fx, res, "a2", "a1")
			},
		},
		{
			name:  "refresh with any other serial revokes the instance and records compromise-detected",
			given: refreshedOnce,
			when:  func(fx *fsmFixture) any { return fx.refresh(fxInstance1, "ff", "a3", "k3") },
			want:  codeSerialMismatch,
			then: func(t *testing.T, fx *fsmFixture, res *meshcav1.CommandResult) {
				expectRevokedByMismatch(t, fx, res, "a2", "a1")
				if _, err := fx.state().Cert("a3"); err == nil {
					t.Fatal("the refused certificate was recorded")
				}
			},
		},
		{
			name: "a revoked instance never refreshes again, not even with its current serial",
			given: func(fx *fsmFixture) {
				refreshedOnce(fx)
				fx.apply(fx.refresh(fxInstance1, "ff", "a3", "k3"))
			},
			when: func(fx *fsmFixture) any { return fx.refresh(fxInstance1, "a2", "a4", "k4") },
			want: codeInstanceRevoked,
		},
		{
			name: "a revoked instance answers a stale serial with SerialMismatch and changes nothing more",
			given: func(fx *fsmFixture) {
				refreshedOnce(fx)
				fx.apply(fx.refresh(fxInstance1, "ff", "a3", "k3"))
			},
			when: func(fx *fsmFixture) any { return fx.refresh(fxInstance1, "a1", "a4", "k4") },
			want: codeSerialMismatch,
			then: func(t *testing.T, fx *fsmFixture, res *meshcav1.CommandResult) {
				if !payloadInstance(t, res).GetRevoked() {
					t.Fatal("result does not carry the revoked instance")
				}
				before := contentHash(fx.state())
				expectCode(t, fx.apply(fx.refresh(fxInstance1, "a1", "a5", "k5")), codeSerialMismatch)
				if contentHash(fx.state()) != before {
					t.Fatal("a mismatch on an already revoked instance changed the state")
				}
			},
		},
		{
			name: "refresh is refused when the launch grant is gone at apply time",
			given: func(fx *fsmFixture) {
				registered(fx)
				fx.must(&meshcav1.RemoveLaunchGrantCommand{Identity: "sports.api", Pattern: fxProvider})
			},
			when: func(fx *fsmFixture) any { return fx.refresh(fxInstance1, "a1", "a2", "k2") },
			want: codeLaunchNotAuth,
		},
		{
			name: "refresh is refused when the provider is disabled",
			given: func(fx *fsmFixture) {
				registered(fx)
				fx.must(&meshcav1.SetProviderEnabledCommand{Name: fxProvider})
			},
			when: func(fx *fsmFixture) any { return fx.refresh(fxInstance1, "a1", "a2", "k2") },
			want: codeProviderDisabled,
		},
		{
			name: "refresh with a revoked certificate is refused",
			given: func(fx *fsmFixture) {
				registered(fx)
				fx.must(&meshcav1.RevokeCommand{Target: &meshcav1.RevokeCommand_Serial{Serial: "a1"}})
			},
			when: func(fx *fsmFixture) any { return fx.refresh(fxInstance1, "a1", "a2", "k2") },
			want: codeCertRevoked,
		},
		{
			name: "refresh with an expired certificate is refused",
			given: func(fx *fsmFixture) {
				registered(fx)
				fx.now = fx.now.Add(fxCertLife + time.Second)
			},
			when: func(fx *fsmFixture) any { return fx.refresh(fxInstance1, "a1", "a2", "k2") },
			want: codeCertExpired,
		},
		{
			name:  "refresh reusing the current key is refused",
			given: registered,
			when:  func(fx *fsmFixture) any { return fx.refresh(fxInstance1, "a1", "a2", "k1") },
			want:  codeKeyReused,
		},
		{
			name:  "refresh of an unknown instance is refused",
			given: registered,
			when:  func(fx *fsmFixture) any { return fx.refresh("pod-404", "a1", "a2", "k2") },
			want:  codeNotFound,
		},
		{
			name:  "refresh naming another identity for the instance is refused",
			given: registered,
			when: func(fx *fsmFixture) any {
				c := fx.refresh(fxInstance1, "a1", "a2", "k2")
				c.Service = "web"
				return c
			},
			want: codeNotFound,
		},
		{
			name:  "refresh with a malformed new certificate is invalid and revokes nothing",
			given: refreshedOnce,
			when: func(fx *fsmFixture) any {
				c := fx.refresh(fxInstance1, "ff", "a3", "k3")
				c.Cert.SpkiSha256 = []byte{1, 2, 3}
				return c
			},
			want: codeInvalid,
		},
	})
}

func TestExtendFlow(t *testing.T) {
	extended := func(fx *fsmFixture) {
		registered(fx)
		c := fx.refresh(fxInstance1, "a1", "a2", "k2")
		c.Extend = true
		fx.must(c)
	}
	verify := func(serial string) func(fx *fsmFixture) any {
		return func(fx *fsmFixture) any {
			return &meshcav1.VerifyExtendCommand{Provider: fxProvider, Domain: fxDomain, Service: fxService, InstanceId: fxInstance1, Serial: serial}
		}
	}
	runFSMCases(t, []fsmCase{
		{
			name:  "after an extend the old serial stays acceptable once, with any key",
			given: extended,
			when:  func(fx *fsmFixture) any { return fx.refresh(fxInstance1, "a1", "a3", "k3") },
			want:  codeOK,
			then: func(t *testing.T, fx *fsmFixture, _ *meshcav1.CommandResult) {
				inst := fx.instance(fxInstance1)
				if inst.GetCurrentSerial() != "a3" || !inst.GetExtendPending() || !inst.GetPreviousRetried() {
					t.Fatalf("instance = %v", inst)
				}
			},
		},
		{
			name:  "extend-verify retires the old serial",
			given: extended,
			when:  verify("a2"),
			want:  codeOK,
			then: func(t *testing.T, fx *fsmFixture, _ *meshcav1.CommandResult) {
				inst := fx.instance(fxInstance1)
				if inst.GetPreviousSerial() != "" || inst.GetExtendPending() {
					t.Fatalf("instance after verify = %v", inst)
				}
				res := fx.apply(fx.refresh(fxInstance1, "a1", "a3", "k2"))
				expectCode(t, res, codeSerialMismatch)
			},
		},
		{
			name: "after extend-verify the new certificate refreshes normally",
			given: func(fx *fsmFixture) {
				extended(fx)
				fx.must(verify("a2")(fx))
			},
			when: func(fx *fsmFixture) any { return fx.refresh(fxInstance1, "a2", "a3", "k3") },
			want: codeOK,
		},
		{
			name:  "extend-verify with another certificate is refused",
			given: extended,
			when:  verify("a1"),
			want:  codeFailedPrecondition,
		},
		{
			name:  "extend-verify without a pending extend is refused",
			given: refreshedOnce,
			when:  verify("a2"),
			want:  codeFailedPrecondition,
		},
	})
}

func TestDecideRefresh(t *testing.T) {
	inst := func(mod func(*meshcav1.Instance)) *meshcav1.Instance {
		i := &meshcav1.Instance{CurrentSerial: "c2", PreviousSerial: "c1"}
		if mod != nil {
			mod(i)
		}
		return i
	}
	tests := []struct {
		name      string
		inst      *meshcav1.Instance
		presented string
		sameKey   bool
		want      RefreshDecision
	}{
		{"the current serial rotates", inst(nil), "c2", false, RefreshRotate},
		{"the previous serial with the unanswered key is a retry", inst(nil), "c1", true, RefreshRetryPrevious},
		{"the previous serial with another key is a mismatch", inst(nil), "c1", false, RefreshMismatch},
		{"the previous serial after an extend is a retry with any key", inst(func(i *meshcav1.Instance) { i.ExtendPending = true }), "c1", false, RefreshRetryPrevious},
		{"the previous serial retried once is a mismatch", inst(func(i *meshcav1.Instance) { i.PreviousRetried = true }), "c1", true, RefreshMismatch},
		{"an unknown serial is a mismatch", inst(nil), "c0", true, RefreshMismatch},
		{"an empty serial never matches an empty previous", inst(func(i *meshcav1.Instance) { i.PreviousSerial = "" }), "", true, RefreshMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := DecideRefresh(tt.inst, tt.presented, tt.sameKey)
			if got != tt.want {
				t.Fatalf("DecideRefresh = %v (%s), want %v", got, why, tt.want)
			}
			if (got == RefreshMismatch) != (why != "") {
				t.Fatalf("mismatch reason %q for decision %v", why, got)
			}
		})
	}
}
