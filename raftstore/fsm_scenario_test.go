package raftstore

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// scenario generates a reproducible log: the world of setup(), then n commands drawn from a
// seeded generator over every command type, including refusals (wrong serials, replays,
// illegal transitions), retries of earlier command ids and garbage entries. It applies them to
// its own FSM (to know the current serials) and returns the entries as they would sit in the
// Raft log.
func scenario(t testing.TB, seed uint64, n int) [][]byte {
	t.Helper()
	fx := newFSMFixtureWith(t, scenarioConfig())
	var entries [][]byte
	emit := func(c *meshcav1.Command) *meshcav1.CommandResult {
		data, err := proto.Marshal(c)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		entries = append(entries, data)
		return decodeResult(t, fx.raw(data))
	}
	for _, body := range []any{
		&meshcav1.SetCACommand{Roots: [][]byte{fxRoot}, ActiveIssuer: fxIssuer(fxIssuerID, fxRoot, fxT0.Add(10*365*24*time.Hour))},
		&meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: fxDomain, Admins: []string{"user.alice"}}},
		&meshcav1.PutServiceCommand{Service: &meshcav1.Service{Domain: fxDomain, Name: fxService, LaunchGrants: []string{"sys.auth.*"}}},
		&meshcav1.PutProviderCommand{Provider: &meshcav1.Provider{Name: fxProvider, DnsSuffix: "k8s.mesh.example", Enabled: true}},
	} {
		emit(fx.cmd(body))
	}

	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var instances []string
	var csrs []string
	serial := 0x1000
	newSerial := func() string { serial++; return fmt.Sprintf("%x", serial) }
	key := 0
	newKey := func() string { key++; return fmt.Sprintf("key-%d", key) }
	var lastCmd *meshcav1.Command

	for i := 0; i < n; i++ {
		fx.now = fx.now.Add(time.Duration(r.IntN(int(5 * time.Minute))))
		var body any
		switch k := r.IntN(20); {
		case k < 4 || len(instances) == 0:
			id := fmt.Sprintf("pod-%d", i)
			lastCmd = fx.cmd(fx.register(id, newSerial(), newKey()))
			if emit(lastCmd).GetCode() == codeOK {
				instances = append(instances, id)
			}
			continue
		case k < 9:
			id := instances[r.IntN(len(instances))]
			inst, err := fx.state().InstanceByID(fxProvider, id)
			if err != nil {
				t.Fatalf("instance %s: %v", id, err)
			}
			presented := inst.GetCurrentSerial()
			switch r.IntN(6) {
			case 0:
				presented = inst.GetPreviousSerial()
			case 1:
				presented = newSerial() // never issued: a mismatch
			}
			if presented == "" {
				presented = inst.GetCurrentSerial()
			}
			c := fx.refresh(id, presented, newSerial(), newKey())
			c.Extend = r.IntN(4) == 0
			body = c
		case k < 10:
			id := instances[r.IntN(len(instances))]
			inst, _ := fx.state().InstanceByID(fxProvider, id)
			body = &meshcav1.VerifyExtendCommand{Provider: fxProvider, Domain: fxDomain, Service: fxService, InstanceId: id, Serial: inst.GetCurrentSerial()}
		case k < 11:
			id := instances[r.IntN(len(instances))]
			body = &meshcav1.RevokeCommand{Target: &meshcav1.RevokeCommand_Instance{Instance: &meshcav1.InstanceRef{
				Provider: fxProvider, Domain: fxDomain, Service: fxService, InstanceId: id,
			}}, Reason: meshcav1.RevocationReason_REVOCATION_REASON_CESSATION_OF_OPERATION}
		case k < 12:
			jti := fmt.Sprintf("jti-%d", r.IntN(8))
			if r.IntN(2) == 0 {
				body = &meshcav1.IssueTokenCommand{Token: &meshcav1.Token{Jti: jti, Domain: fxDomain, Service: fxService, InstanceId: "pod-t", IssuedBy: "user.alice", Expires: fx.now.Add(time.Hour).UnixNano()}}
			} else {
				body = &meshcav1.ConsumeTokenCommand{Jti: jti, Domain: fxDomain, Service: fxService, InstanceId: "pod-t"}
			}
		case k < 13:
			body = &meshcav1.UseNonceCommand{Scope: "sports.api", Nonce: fmt.Sprintf("n-%d", r.IntN(16)), Expires: fx.now.Add(2 * time.Hour).UnixNano()}
		case k < 15:
			switch {
			case len(csrs) == 0 || r.IntN(3) == 0:
				id := fmt.Sprintf("csr-%d", len(csrs))
				csrs = append(csrs, id)
				body = &meshcav1.SubmitCSRCommand{Id: id, Csr: []byte("csr " + id), Spec: []byte(`{}`), Submitter: "user.alice"}
			default:
				id := csrs[r.IntN(len(csrs))]
				switch r.IntN(3) {
				case 0:
					body = &meshcav1.ApproveCSRCommand{Id: id, Approver: "user.bob"}
				case 1:
					body = &meshcav1.DenyCSRCommand{Id: id, Approver: "user.bob", Reason: "no"}
				default:
					body = fx.csrIssued(id, newSerial(), newKey())
				}
			}
		case k < 16:
			body = &meshcav1.PutFederationCommand{Federation: &meshcav1.Federation{
				TrustDomain: fmt.Sprintf("td%d.example", r.IntN(3)), Bundle: []byte(fmt.Sprintf("bundle-%d", i)), Sequence: uint64(r.IntN(10)),
			}}
		case k < 17:
			body = &meshcav1.PruneCommand{Cutoff: fx.now.Add(-time.Duration(r.IntN(48)) * time.Hour).UnixNano(), Limit: uint32(r.IntN(5))}
		case k < 18:
			if lastCmd != nil {
				emit(lastCmd) // a retry of the previous command id: answered from its receipt
				continue
			}
			body = &meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: "weather"}}
		case k < 19:
			garbage := make([]byte, r.IntN(40))
			for j := range garbage {
				garbage[j] = byte(r.Uint32())
			}
			entries = append(entries, garbage)
			fx.raw(garbage)
			continue
		default:
			g := "sys.auth.*"
			if r.IntN(2) == 0 {
				body = &meshcav1.RemoveLaunchGrantCommand{Identity: "sports.api", Pattern: g}
			} else {
				body = &meshcav1.AddLaunchGrantCommand{Identity: "sports.api", Pattern: g}
			}
		}
		lastCmd = fx.cmd(body)
		emit(lastCmd)
	}
	return entries
}

// replay applies entries to a new FSM, one Apply per entry or in ApplyBatch chunks of
// batch entries, and returns it with the results.
func replay(t testing.TB, entries [][]byte, batch int) (*FSM, [][]byte) {
	t.Helper()
	f, err := NewFSM(scenarioConfig())
	if err != nil {
		t.Fatal(err)
	}
	logs := make([]*raft.Log, len(entries))
	for i, e := range entries {
		logs[i] = &raft.Log{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: e}
	}
	var results [][]byte
	for start := 0; start < len(logs); {
		end := min(start+max(batch, 1), len(logs))
		if batch <= 1 {
			results = append(results, f.Apply(logs[start]).([]byte))
		} else {
			for _, r := range f.ApplyBatch(logs[start:end]) {
				results = append(results, r.([]byte))
			}
		}
		start = end
	}
	return f, results
}

// scenarioConfig keeps the windows small, so the scenario evicts receipts (by count and by
// size) and events, and replays must agree on that too.
func scenarioConfig() FSMConfig {
	return FSMConfig{ReceiptWindow: 64, ReceiptBytes: 8 << 10, EventRetention: 200}
}
