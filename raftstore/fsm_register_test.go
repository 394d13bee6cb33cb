package raftstore

import (
	"testing"
	"time"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

const (
	codeOK = meshcav1.ResultCode_RESULT_CODE_OK
)

func (fx *fsmFixture) issueToken(jti, instanceID string, expires time.Time) {
	fx.t.Helper()
	fx.must(&meshcav1.IssueTokenCommand{Token: &meshcav1.Token{
		Jti: jti, Domain: fxDomain, Service: fxService, InstanceId: instanceID, IssuedBy: "user.alice", Expires: expires.UnixNano(),
	}})
}

func TestRegisterPreconditions(t *testing.T) {
	runFSMCases(t, []fsmCase{
		{
			name: "register with an enabled provider and a launch grant is applied",
			when: func(fx *fsmFixture) any { return fx.register(fxInstance1, "a1", "k1") },
			want: codeOK,
			then: func(t *testing.T, fx *fsmFixture, res *meshcav1.CommandResult) {
				inst := payloadInstance(t, res)
				if inst.GetCurrentSerial() != "a1" || inst.GetPreviousSerial() != "" || inst.GetRevoked() {
					t.Fatalf("instance after register = %v", inst)
				}
				cert, err := fx.state().Cert("a1")
				if err != nil || cert.GetInstance() != InstanceKey(fxProvider, fxDomain, fxService, fxInstance1) || cert.GetIdentity() != "sports.api" {
					t.Fatalf("cert record = %v, %v", cert, err)
				}
				ku, err := fx.state().KeyUse(spki("k1"))
				if err != nil || ku.GetSerial() != "a1" {
					t.Fatalf("key use = %v, %v", ku, err)
				}
				if !hasEvent(fx.eventKinds(), meshcav1.EventKind_EVENT_KIND_ISSUED) {
					t.Fatal("no issued event")
				}
			},
		},
		{
			name:  "register is refused when the provider is not registered",
			given: func(fx *fsmFixture) { fx.must(&meshcav1.DeleteProviderCommand{Name: fxProvider}) },
			when:  func(fx *fsmFixture) any { return fx.register(fxInstance1, "a1", "k1") },
			want:  codeNotFound,
		},
		{
			name:  "register is refused when the provider is disabled at apply time",
			given: func(fx *fsmFixture) { fx.must(&meshcav1.SetProviderEnabledCommand{Name: fxProvider, Enabled: false}) },
			when:  func(fx *fsmFixture) any { return fx.register(fxInstance1, "a1", "k1") },
			want:  codeProviderDisabled,
		},
		{
			name:  "register is refused when the service does not exist",
			given: func(fx *fsmFixture) { fx.must(&meshcav1.DeleteServiceCommand{Identity: "sports.api"}) },
			when:  func(fx *fsmFixture) any { return fx.register(fxInstance1, "a1", "k1") },
			want:  codeNotFound,
		},
		{
			name: "register is refused when the launch grant was revoked between check and commit",
			given: func(fx *fsmFixture) {
				fx.must(&meshcav1.RemoveLaunchGrantCommand{Identity: "sports.api", Pattern: fxProvider})
			},
			when: func(fx *fsmFixture) any { return fx.register(fxInstance1, "a1", "k1") },
			want: codeLaunchNotAuth,
		},
		{
			name: "register is refused when the grant's wildcard does not cover the provider",
			given: func(fx *fsmFixture) {
				fx.must(&meshcav1.PutProviderCommand{Provider: &meshcav1.Provider{Name: "sys.auth.awsx", DnsSuffix: "awsx.mesh.example", Enabled: true}})
				fx.must(&meshcav1.AddLaunchGrantCommand{Identity: "sports.api", Pattern: "sys.auth.aws.*"})
			},
			when: func(fx *fsmFixture) any {
				c := fx.register(fxInstance1, "a1", "k1")
				c.Provider = "sys.auth.awsx"
				return c
			},
			want: codeLaunchNotAuth,
		},
		{
			name: "register through a wildcard grant for a provider below the pattern is applied",
			given: func(fx *fsmFixture) {
				fx.must(&meshcav1.PutProviderCommand{Provider: &meshcav1.Provider{Name: "sys.auth.aws.us-east-1", DnsSuffix: "aws.mesh.example", Enabled: true}})
				fx.must(&meshcav1.AddLaunchGrantCommand{Identity: "sports.api", Pattern: "sys.auth.aws.*"})
			},
			when: func(fx *fsmFixture) any {
				c := fx.register("i-0abc", "a1", "k1")
				c.Provider = "sys.auth.aws.us-east-1"
				return c
			},
			want: codeOK,
		},
		{
			name: "register is refused when the instance id is held by another identity",
			given: func(fx *fsmFixture) {
				fx.must(&meshcav1.PutServiceCommand{Service: &meshcav1.Service{Domain: fxDomain, Name: "web", LaunchGrants: []string{fxProvider}}})
				fx.must(fx.register(fxInstance1, "a1", "k1"))
			},
			when: func(fx *fsmFixture) any {
				c := fx.register(fxInstance1, "b1", "k2")
				c.Service = "web"
				return c
			},
			want: codeAlreadyExists,
		},
		{
			name: "register is refused for a revoked instance id",
			given: func(fx *fsmFixture) {
				fx.must(fx.register(fxInstance1, "a1", "k1"))
				fx.must(&meshcav1.RevokeCommand{Target: &meshcav1.RevokeCommand_Instance{Instance: &meshcav1.InstanceRef{
					Provider: fxProvider, Domain: fxDomain, Service: fxService, InstanceId: fxInstance1,
				}}})
			},
			when: func(fx *fsmFixture) any { return fx.register(fxInstance1, "b1", "k2") },
			want: codeInstanceRevoked,
		},
		{
			name: "register again for the same identity replaces the serials",
			given: func(fx *fsmFixture) {
				fx.must(fx.register(fxInstance1, "a1", "k1"))
				fx.must(fx.refresh(fxInstance1, "a1", "a2", "k2"))
			},
			when: func(fx *fsmFixture) any { return fx.register(fxInstance1, "b1", "k3") },
			want: codeOK,
			then: func(t *testing.T, fx *fsmFixture, res *meshcav1.CommandResult) {
				inst := payloadInstance(t, res)
				if inst.GetCurrentSerial() != "b1" || inst.GetPreviousSerial() != "" {
					t.Fatalf("instance after re-register = %v, want current b1 and no previous", inst)
				}
			},
		},
		{
			name:  "register is refused when the public key was used before",
			given: func(fx *fsmFixture) { fx.must(fx.register("pod-0", "a1", "k1")) },
			when:  func(fx *fsmFixture) any { return fx.register(fxInstance1, "b1", "k1") },
			want:  codeKeyReused,
		},
		{
			name:  "register with a used key is applied when reuse is forced",
			given: func(fx *fsmFixture) { fx.must(fx.register("pod-0", "a1", "k1")) },
			when: func(fx *fsmFixture) any {
				c := fx.register(fxInstance1, "b1", "k1")
				c.ForceKeyReuse = true
				return c
			},
			want: codeOK,
			then: func(t *testing.T, fx *fsmFixture, _ *meshcav1.CommandResult) {
				if ku, _ := fx.state().KeyUse(spki("k1")); ku.GetSerial() != "a1" {
					t.Fatalf("key use now names %s, want the first serial a1", ku.GetSerial())
				}
			},
		},
		{
			name:  "register with a token consumes it",
			given: func(fx *fsmFixture) { fx.issueToken("jti-1", fxInstance1, fx.now.Add(time.Hour)) },
			when: func(fx *fsmFixture) any {
				c := fx.register(fxInstance1, "a1", "k1")
				c.TokenJti = "jti-1"
				return c
			},
			want: codeOK,
			then: func(t *testing.T, fx *fsmFixture, _ *meshcav1.CommandResult) {
				if tok, _ := fx.state().Token("jti-1"); !tok.GetUsed() {
					t.Fatal("token not marked used")
				}
			},
		},
		{
			name: "register with a used token is refused",
			given: func(fx *fsmFixture) {
				fx.issueToken("jti-1", fxInstance1, fx.now.Add(time.Hour))
				fx.must(&meshcav1.ConsumeTokenCommand{Jti: "jti-1", Domain: fxDomain, Service: fxService, InstanceId: fxInstance1})
			},
			when: func(fx *fsmFixture) any {
				c := fx.register(fxInstance1, "a1", "k1")
				c.TokenJti = "jti-1"
				return c
			},
			want: codeTokenUsed,
		},
		{
			name:  "register with a token bound to another instance is refused",
			given: func(fx *fsmFixture) { fx.issueToken("jti-1", "pod-9", fx.now.Add(time.Hour)) },
			when: func(fx *fsmFixture) any {
				c := fx.register(fxInstance1, "a1", "k1")
				c.TokenJti = "jti-1"
				return c
			},
			want: codeLaunchNotAuth,
		},
		{
			name: "register with an expired token is refused",
			given: func(fx *fsmFixture) {
				fx.issueToken("jti-1", fxInstance1, fx.now.Add(time.Minute))
				fx.now = fx.now.Add(2 * time.Minute)
			},
			when: func(fx *fsmFixture) any {
				c := fx.register(fxInstance1, "a1", "k1")
				c.TokenJti = "jti-1"
				return c
			},
			want: codeTokenExpired,
		},
		{
			name: "register with a certificate from an unknown issuer is refused",
			when: func(fx *fsmFixture) any {
				c := fx.register(fxInstance1, "a1", "k1")
				c.Cert.IssuerId = "somebody-else"
				return c
			},
			want: codeFailedPrecondition,
		},
		{
			name:  "register with a serial already issued is refused",
			given: func(fx *fsmFixture) { fx.must(fx.register("pod-0", "a1", "k1")) },
			when:  func(fx *fsmFixture) any { return fx.register(fxInstance1, "a1", "k2") },
			want:  codeAlreadyExists,
		},
		{
			name: "register with a malformed serial is invalid",
			when: func(fx *fsmFixture) any { return fx.register(fxInstance1, "0A1", "k1") },
			want: codeInvalid,
		},
		{
			name: "register with an instance id that is no DNS name is invalid",
			when: func(fx *fsmFixture) any { return fx.register("pod_1/x", "a1", "k1") },
			want: codeInvalid,
		},
		{
			name: "register with a certificate already expired is invalid",
			when: func(fx *fsmFixture) any {
				c := fx.register(fxInstance1, "a1", "k1")
				c.Cert.NotAfter = fx.now.UnixNano()
				return c
			},
			want: codeInvalid,
		},
	})
}
