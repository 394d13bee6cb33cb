package raftstore

import (
	"testing"
	"time"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

func TestTokenAndNoncePreconditions(t *testing.T) {
	consume := func(jti string) func(fx *fsmFixture) any {
		return func(fx *fsmFixture) any {
			return &meshcav1.ConsumeTokenCommand{Jti: jti, Domain: fxDomain, Service: fxService, InstanceId: fxInstance1}
		}
	}
	nonce := func(n string, ttl time.Duration) func(fx *fsmFixture) any {
		return func(fx *fsmFixture) any {
			return &meshcav1.UseNonceCommand{Scope: "sports.api", Nonce: n, Expires: fx.now.Add(ttl).UnixNano()}
		}
	}
	runFSMCases(t, []fsmCase{
		{
			name:  "a token is consumed once by jti",
			given: func(fx *fsmFixture) { fx.issueToken("jti-1", fxInstance1, fx.now.Add(time.Hour)) },
			when:  consume("jti-1"),
			want:  codeOK,
			then: func(t *testing.T, fx *fsmFixture, res *meshcav1.CommandResult) {
				if !res.GetToken().GetUsed() {
					t.Fatal("result token not used")
				}
				expectCode(t, fx.apply(consume("jti-1")(fx)), codeTokenUsed)
			},
		},
		{
			name: "an unknown token is not found",
			when: consume("jti-x"),
			want: codeNotFound,
		},
		{
			name: "an expired token is refused",
			given: func(fx *fsmFixture) {
				fx.issueToken("jti-1", fxInstance1, fx.now.Add(time.Minute))
				fx.now = fx.now.Add(time.Minute)
			},
			when: consume("jti-1"),
			want: codeTokenExpired,
		},
		{
			name:  "a token issued twice under one jti is refused",
			given: func(fx *fsmFixture) { fx.issueToken("jti-1", fxInstance1, fx.now.Add(time.Hour)) },
			when: func(fx *fsmFixture) any {
				return &meshcav1.IssueTokenCommand{Token: &meshcav1.Token{Jti: "jti-1", Domain: fxDomain, Service: fxService, InstanceId: "pod-2", IssuedBy: "user.bob", Expires: fx.now.Add(time.Hour).UnixNano()}}
			},
			want: codeAlreadyExists,
		},
		{
			name: "a token for an unknown service is refused",
			when: func(fx *fsmFixture) any {
				return &meshcav1.IssueTokenCommand{Token: &meshcav1.Token{Jti: "jti-1", Domain: fxDomain, Service: "nope", InstanceId: "pod-2", IssuedBy: "user.bob", Expires: fx.now.Add(time.Hour).UnixNano()}}
			},
			want: codeNotFound,
		},
		{
			name: "a nonce is accepted the first time",
			when: nonce("n-1", time.Minute),
			want: codeOK,
		},
		{
			name:  "a replayed nonce is refused",
			given: func(fx *fsmFixture) { fx.must(nonce("n-1", time.Minute)(fx)) },
			when:  nonce("n-1", time.Minute),
			want:  codeNonceReused,
		},
		{
			name:  "the same nonce for another service is a different nonce",
			given: func(fx *fsmFixture) { fx.must(nonce("n-1", time.Minute)(fx)) },
			when: func(fx *fsmFixture) any {
				return &meshcav1.UseNonceCommand{Scope: "sports.web", Nonce: "n-1", Expires: fx.now.Add(time.Minute).UnixNano()}
			},
			want: codeOK,
		},
		{
			name: "a nonce kept longer than the bound is invalid",
			when: nonce("n-1", 8*24*time.Hour),
			want: codeInvalid,
		},
		{
			name: "a nonce already expired is invalid",
			when: nonce("n-1", 0),
			want: codeInvalid,
		},
	})
}

func TestCSRRequestStateMachine(t *testing.T) {
	const (
		pending  = meshcav1.CSRState_CSR_STATE_PENDING
		approved = meshcav1.CSRState_CSR_STATE_APPROVED
		denied   = meshcav1.CSRState_CSR_STATE_DENIED
		issued   = meshcav1.CSRState_CSR_STATE_ISSUED
	)
	// reach puts request "r1" in a state through the only path that leads there.
	reach := func(state meshcav1.CSRState) func(fx *fsmFixture) {
		return func(fx *fsmFixture) {
			fx.must(&meshcav1.SubmitCSRCommand{Id: "r1", Csr: []byte("csr DER"), Spec: []byte(`{"common_name":"db.example"}`), Submitter: "user.alice"})
			switch state {
			case approved, issued:
				fx.must(&meshcav1.ApproveCSRCommand{Id: "r1", Approver: "user.bob"})
				if state == issued {
					fx.must(fx.csrIssued("r1", "c1", "k-csr"))
				}
			case denied:
				fx.must(&meshcav1.DenyCSRCommand{Id: "r1", Approver: "user.bob", Reason: "no"})
			}
		}
	}
	approve := func(fx *fsmFixture) any { return &meshcav1.ApproveCSRCommand{Id: "r1", Approver: "user.carol"} }
	deny := func(fx *fsmFixture) any { return &meshcav1.DenyCSRCommand{Id: "r1", Approver: "user.carol"} }
	issue := func(fx *fsmFixture) any { return fx.csrIssued("r1", "c2", "k-csr2") }
	submitAgain := func(fx *fsmFixture) any {
		return &meshcav1.SubmitCSRCommand{Id: "r1", Csr: []byte("other"), Submitter: "user.alice"}
	}
	stateIs := func(want meshcav1.CSRState) func(t *testing.T, fx *fsmFixture, _ *meshcav1.CommandResult) {
		return func(t *testing.T, fx *fsmFixture, _ *meshcav1.CommandResult) {
			if r, _ := fx.state().CSRRequest("r1"); r.GetState() != want {
				t.Fatalf("request state = %v, want %v", r.GetState(), want)
			}
		}
	}
	runFSMCases(t, []fsmCase{
		{name: "a pending request can be approved", given: reach(pending), when: approve, want: codeOK, then: stateIs(approved)},
		{name: "a pending request can be denied", given: reach(pending), when: deny, want: codeOK, then: stateIs(denied)},
		{name: "a pending request cannot be issued", given: reach(pending), when: issue, want: codeFailedPrecondition},
		{name: "an approved request can be issued", given: reach(approved), when: issue, want: codeOK, then: func(t *testing.T, fx *fsmFixture, res *meshcav1.CommandResult) {
			stateIs(issued)(t, fx, res)
			if c, err := fx.state().Cert("c2"); err != nil || c.GetCsrRequest() != "r1" {
				t.Fatalf("issued cert record = %v, %v", c, err)
			}
		}},
		{name: "an approved request cannot be approved again", given: reach(approved), when: approve, want: codeFailedPrecondition},
		{name: "an approved request cannot be denied", given: reach(approved), when: deny, want: codeFailedPrecondition},
		{name: "a denied request cannot be approved", given: reach(denied), when: approve, want: codeFailedPrecondition},
		{name: "a denied request cannot be issued", given: reach(denied), when: issue, want: codeFailedPrecondition},
		{name: "an issued request cannot be approved", given: reach(issued), when: approve, want: codeFailedPrecondition},
		{name: "an issued request cannot be denied", given: reach(issued), when: deny, want: codeFailedPrecondition},
		{name: "an issued request cannot be issued again", given: reach(issued), when: issue, want: codeFailedPrecondition},
		{name: "a request id cannot be submitted twice", given: reach(pending), when: submitAgain, want: codeAlreadyExists},
		{name: "an unknown request cannot be approved", when: approve, want: codeNotFound},
		{
			name:  "issuing with a used key is refused unless forced",
			given: func(fx *fsmFixture) { reach(approved)(fx); fx.must(fx.register(fxInstance1, "a1", "k-csr2")) },
			when:  issue,
			want:  codeKeyReused,
		},
	})
}

func (fx *fsmFixture) csrIssued(id, serial, key string) *meshcav1.RecordCSRIssuedCommand {
	c := fx.cert(serial, key)
	c.Identity = "db.example"
	return &meshcav1.RecordCSRIssuedCommand{Id: id, CertDer: []byte("cert DER " + serial), Cert: c}
}

func TestCSRTransitionAllowed(t *testing.T) {
	all := []meshcav1.CSRState{
		meshcav1.CSRState_CSR_STATE_UNSPECIFIED, meshcav1.CSRState_CSR_STATE_PENDING, meshcav1.CSRState_CSR_STATE_APPROVED,
		meshcav1.CSRState_CSR_STATE_DENIED, meshcav1.CSRState_CSR_STATE_ISSUED,
	}
	allowed := map[[2]meshcav1.CSRState]bool{
		{meshcav1.CSRState_CSR_STATE_PENDING, meshcav1.CSRState_CSR_STATE_APPROVED}: true,
		{meshcav1.CSRState_CSR_STATE_PENDING, meshcav1.CSRState_CSR_STATE_DENIED}:   true,
		{meshcav1.CSRState_CSR_STATE_APPROVED, meshcav1.CSRState_CSR_STATE_ISSUED}:  true,
	}
	for _, from := range all {
		for _, to := range all {
			if got := CSRTransitionAllowed(from, to); got != allowed[[2]meshcav1.CSRState{from, to}] {
				t.Errorf("CSRTransitionAllowed(%v, %v) = %v", from, to, got)
			}
		}
	}
}

func TestCARotation(t *testing.T) {
	root2 := []byte("root-2 DER")
	year := 365 * 24 * time.Hour
	prepare := func(fx *fsmFixture) any {
		return &meshcav1.PrepareCARotationCommand{NewRoot: root2, NextIssuer: fxIssuer("issuer-2", root2, fx.now.Add(year))}
	}
	activate := func(id string) func(fx *fsmFixture) any {
		return func(fx *fsmFixture) any { return &meshcav1.ActivateCAIssuerCommand{IssuerId: id} }
	}
	retire := func(root []byte) func(fx *fsmFixture) any {
		return func(fx *fsmFixture) any { return &meshcav1.RetireCARootCommand{RootSha256: fxRootSum(root)} }
	}
	prepared := func(fx *fsmFixture) { fx.must(prepare(fx)) }
	activated := func(fx *fsmFixture) {
		registered(fx) // a certificate signed by issuer-1, valid for fxCertLife
		prepared(fx)
		fx.must(activate("issuer-2")(fx))
	}
	runFSMCases(t, []fsmCase{
		{
			name: "the CA is set once: a second bootstrap loses",
			when: func(fx *fsmFixture) any {
				return &meshcav1.SetCACommand{Roots: [][]byte{root2}, ActiveIssuer: fxIssuer("issuer-2", root2, fx.now.Add(year))}
			},
			want: codeAlreadyExists,
		},
		{
			name: "prepare publishes the new root first in the bundle",
			when: prepare,
			want: codeOK,
			then: func(t *testing.T, fx *fsmFixture, _ *meshcav1.CommandResult) {
				ca, _ := fx.state().CA()
				if len(ca.GetRoots()) != 2 || string(ca.GetRoots()[0]) != string(root2) || ca.GetNextIssuer().GetId() != "issuer-2" || ca.GetActiveIssuer().GetId() != fxIssuerID {
					t.Fatalf("CA after prepare = %v", ca)
				}
			},
		},
		{name: "a second prepare during a rotation is refused", given: prepared, when: prepare, want: codeFailedPrecondition},
		{name: "activate without a prepared rotation is refused", when: activate("issuer-2"), want: codeFailedPrecondition},
		{name: "activate of another issuer than the prepared one is refused", given: prepared, when: activate("issuer-3"), want: codeFailedPrecondition},
		{
			name:  "activate switches signing to the next issuer",
			given: prepared,
			when:  activate("issuer-2"),
			want:  codeOK,
			then: func(t *testing.T, fx *fsmFixture, _ *meshcav1.CommandResult) {
				ca, _ := fx.state().CA()
				if ca.GetActiveIssuer().GetId() != "issuer-2" || ca.GetNextIssuer() != nil || len(ca.GetRetiredIssuers()) != 1 {
					t.Fatalf("CA after activate = %v", ca)
				}
			},
		},
		{name: "the root of the active issuer cannot be dropped", given: activated, when: retire(root2), want: codeFailedPrecondition},
		{name: "a root cannot be dropped while a certificate under it is valid", given: activated, when: retire(fxRoot), want: codeFailedPrecondition},
		{
			name: "a root is dropped once every certificate under it has expired",
			given: func(fx *fsmFixture) {
				activated(fx)
				fx.now = fx.now.Add(fxCertLife)
			},
			when: retire(fxRoot),
			want: codeOK,
			then: func(t *testing.T, fx *fsmFixture, _ *meshcav1.CommandResult) {
				ca, _ := fx.state().CA()
				if len(ca.GetRoots()) != 1 || string(ca.GetRoots()[0]) != string(root2) || len(ca.GetRetiredIssuers()) != 0 {
					t.Fatalf("CA after retire = %v", ca)
				}
				// A certificate from the dropped issuer can no longer be recorded.
				expectCode(t, fx.apply(fx.register("pod-7", "b7", "k7")), codeFailedPrecondition)
			},
		},
		{name: "the only root cannot be dropped", when: retire(fxRoot), want: codeFailedPrecondition},
		{name: "an unknown root is not found", given: prepared, when: retire([]byte("nope")), want: codeNotFound},
		{
			name: "a certificate signed by the retired issuer during the switch is still recorded",
			given: func(fx *fsmFixture) {
				prepared(fx)
				fx.must(activate("issuer-2")(fx))
			},
			when: func(fx *fsmFixture) any { return fx.register(fxInstance1, "a1", "k1") },
			want: codeOK,
		},
	})
}

func TestFederationAndAdmin(t *testing.T) {
	fed := func(seq uint64, bundle string) func(fx *fsmFixture) any {
		return func(fx *fsmFixture) any {
			return &meshcav1.PutFederationCommand{Federation: &meshcav1.Federation{
				TrustDomain: "other.example", Bundle: []byte(bundle), Endpoint: "https://other.example/bundle", Sequence: seq,
			}}
		}
	}
	runFSMCases(t, []fsmCase{
		{name: "a federated bundle is stored", when: fed(3, "b3"), want: codeOK},
		{name: "a federated bundle with an older sequence is refused", given: func(fx *fsmFixture) { fx.must(fed(5, "b5")(fx)) }, when: fed(4, "b4"), want: codeFailedPrecondition},
		{name: "a federated bundle with a newer sequence replaces it", given: func(fx *fsmFixture) { fx.must(fed(5, "b5")(fx)) }, when: fed(6, "b6"), want: codeOK,
			then: func(t *testing.T, fx *fsmFixture, _ *meshcav1.CommandResult) {
				if f, _ := fx.state().Federation("other.example"); string(f.GetBundle()) != "b6" {
					t.Fatalf("bundle = %q", f.GetBundle())
				}
			}},
		{name: "a trust domain that is not canonical is invalid", when: func(fx *fsmFixture) any {
			return &meshcav1.PutFederationCommand{Federation: &meshcav1.Federation{TrustDomain: "spiffe://other.example", Bundle: []byte("b")}}
		}, want: codeInvalid},
		{name: "removing an unknown federation is not found", when: func(fx *fsmFixture) any {
			return &meshcav1.RemoveFederationCommand{TrustDomain: "other.example"}
		}, want: codeNotFound},
		{name: "a domain with services cannot be deleted", when: func(fx *fsmFixture) any {
			return &meshcav1.DeleteDomainCommand{Name: fxDomain}
		}, want: codeFailedPrecondition},
		{name: "create mode refuses an existing domain", when: func(fx *fsmFixture) any {
			return &meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: fxDomain}, Mode: meshcav1.PutMode_PUT_MODE_CREATE}
		}, want: codeAlreadyExists},
		{name: "update mode refuses a missing domain", when: func(fx *fsmFixture) any {
			return &meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: "weather"}, Mode: meshcav1.PutMode_PUT_MODE_UPDATE}
		}, want: codeNotFound},
		{name: "an update keeps the creation time and sorts admins", when: func(fx *fsmFixture) any {
			fx.now = fx.now.Add(time.Hour)
			return &meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: fxDomain, Admins: []string{"user.zed", "user.bob", "user.zed"}}}
		}, want: codeOK, then: func(t *testing.T, fx *fsmFixture, res *meshcav1.CommandResult) {
			d := res.GetDomain()
			if d.GetCreated() != fxT0.UnixNano() || d.GetUpdated() != fx.now.UnixNano() || len(d.GetAdmins()) != 2 || d.GetAdmins()[0] != "user.bob" {
				t.Fatalf("domain = %v", d)
			}
		}},
		{name: "a service needs its domain", when: func(fx *fsmFixture) any {
			return &meshcav1.PutServiceCommand{Service: &meshcav1.Service{Domain: "weather", Name: "api"}}
		}, want: codeNotFound},
		{name: "an invalid launch grant pattern is refused", when: func(fx *fsmFixture) any {
			return &meshcav1.AddLaunchGrantCommand{Identity: "sports.api", Pattern: "*"}
		}, want: codeInvalid},
		{name: "a launch grant cannot be added twice", when: func(fx *fsmFixture) any {
			return &meshcav1.AddLaunchGrantCommand{Identity: "sports.api", Pattern: fxProvider}
		}, want: codeAlreadyExists},
		{name: "a DNS suffix used by another provider is refused", when: func(fx *fsmFixture) any {
			return &meshcav1.PutProviderCommand{Provider: &meshcav1.Provider{Name: "sys.auth.other", DnsSuffix: "k8s.mesh.example"}}
		}, want: codeAlreadyExists},
		{name: "a DNS suffix nesting within another provider's is refused", when: func(fx *fsmFixture) any {
			return &meshcav1.PutProviderCommand{Provider: &meshcav1.Provider{Name: "sys.auth.other", DnsSuffix: "mesh.example"}}
		}, want: codeAlreadyExists},
		{name: "a provider may keep its own DNS suffix on update", when: func(fx *fsmFixture) any {
			return &meshcav1.PutProviderCommand{Provider: &meshcav1.Provider{Name: fxProvider, DnsSuffix: "k8s.mesh.example", RefreshNeedsConfirmation: true, Enabled: true}}
		}, want: codeOK},
		{name: "service keys are added by version once", given: func(fx *fsmFixture) {
			fx.must(&meshcav1.AddServiceKeyCommand{Identity: "sports.api", Key: &meshcav1.ServiceKey{Version: "v1", PublicKey: []byte("pk1")}})
		}, when: func(fx *fsmFixture) any {
			return &meshcav1.AddServiceKeyCommand{Identity: "sports.api", Key: &meshcav1.ServiceKey{Version: "v1", PublicKey: []byte("pk2")}}
		}, want: codeAlreadyExists},
		{name: "a service key is removed by version", given: func(fx *fsmFixture) {
			fx.must(&meshcav1.AddServiceKeyCommand{Identity: "sports.api", Key: &meshcav1.ServiceKey{Version: "v1", PublicKey: []byte("pk1")}})
		}, when: func(fx *fsmFixture) any {
			return &meshcav1.RemoveServiceKeyCommand{Identity: "sports.api", Version: "v1"}
		}, want: codeOK, then: func(t *testing.T, fx *fsmFixture, _ *meshcav1.CommandResult) {
			if s, _ := fx.state().Service("sports.api"); len(s.GetKeys()) != 0 {
				t.Fatalf("keys after remove = %v", s.GetKeys())
			}
		}},
	})
}
