package raftstore

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// Test fixture: one FSM fed log entries with increasing indexes, and builders for the commands
// a control plane would propose. Time is explicit: fx.now moves only when a test moves it.

var fxT0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

const (
	fxProvider  = "sys.auth.k8s"
	fxDomain    = "sports"
	fxService   = "api"
	fxIssuerID  = "issuer-1"
	fxCertLife  = 24 * time.Hour
	fxInstance1 = "pod-1.ns.cluster-a"
)

var fxRoot = []byte("root-1 DER")

type fsmFixture struct {
	t     testing.TB
	fsm   *FSM
	index uint64
	now   time.Time
	seq   int
}

func newFSMFixture(t testing.TB) *fsmFixture {
	t.Helper()
	return newFSMFixtureWith(t, DefaultFSMConfig())
}

func newFSMFixtureWith(t testing.TB, cfg FSMConfig) *fsmFixture {
	t.Helper()
	f, err := NewFSM(cfg)
	if err != nil {
		t.Fatalf("NewFSM: %v", err)
	}
	return &fsmFixture{t: t, fsm: f, now: fxT0}
}

// nextID returns a fresh command id.
func (fx *fsmFixture) nextID() string {
	fx.seq++
	return fmt.Sprintf("cmd-%06d", fx.seq)
}

// cmd wraps a command body in an envelope with a fresh id and the fixture's time.
func (fx *fsmFixture) cmd(body any) *meshcav1.Command {
	return fxCommand(fx.nextID(), fx.now, body)
}

// fxCommand builds an envelope around one command body (nil: an envelope without one).
func fxCommand(id string, now time.Time, body any) *meshcav1.Command {
	if body == nil {
		return &meshcav1.Command{Version: CommandVersion, Id: id, Time: now.UnixNano()}
	}
	c, err := NewCommand(id, now, body.(proto.Message))
	if err != nil {
		panic(err)
	}
	return c
}

// raw applies raw entry bytes and returns what Apply returned.
func (fx *fsmFixture) raw(data []byte) []byte {
	fx.t.Helper()
	fx.index++
	out := fx.fsm.Apply(&raft.Log{Index: fx.index, Term: 1, Type: raft.LogCommand, Data: data})
	b, ok := out.([]byte)
	if !ok {
		fx.t.Fatalf("Apply returned %T, want []byte", out)
	}
	checkEncoding(fx.t, b)
	return b
}

// checkEncoding fails the test unless a result's bytes are what the protobuf runtime's
// deterministic encoding of the same result gives (the state machine encodes with generated
// code; replicas of another build must remember the same bytes).
func checkEncoding(t testing.TB, b []byte) {
	t.Helper()
	res := new(meshcav1.CommandResult)
	if err := proto.Unmarshal(b, res); err != nil {
		t.Fatalf("result does not decode: %v", err)
	}
	if want, err := (proto.MarshalOptions{Deterministic: true}).Marshal(res); err != nil || !bytes.Equal(b, want) {
		t.Fatalf("result bytes differ from proto.Marshal's (%v):\n got %x\nwant %x", err, b, want)
	}
}

// applyCmd marshals and applies an envelope, and decodes the result.
func (fx *fsmFixture) applyCmd(c *meshcav1.Command) *meshcav1.CommandResult {
	fx.t.Helper()
	data, err := proto.Marshal(c)
	if err != nil {
		fx.t.Fatalf("marshal command: %v", err)
	}
	return decodeResult(fx.t, fx.raw(data))
}

// apply applies one command body in a fresh envelope.
func (fx *fsmFixture) apply(body any) *meshcav1.CommandResult {
	fx.t.Helper()
	return fx.applyCmd(fx.cmd(body))
}

// must applies a command body and fails the test unless it is OK.
func (fx *fsmFixture) must(body any) *meshcav1.CommandResult {
	fx.t.Helper()
	res := fx.apply(body)
	if res.GetCode() != meshcav1.ResultCode_RESULT_CODE_OK {
		fx.t.Fatalf("%T: %v: %s", body, res.GetCode(), res.GetMessage())
	}
	return res
}

func decodeResult(t testing.TB, b []byte) *meshcav1.CommandResult {
	t.Helper()
	res := new(meshcav1.CommandResult)
	if err := proto.Unmarshal(b, res); err != nil {
		t.Fatalf("result does not decode: %v", err)
	}
	return res
}

func (fx *fsmFixture) state() *State { return fx.fsm.State() }

// expectCode fails the test unless the result has the code.
func expectCode(t testing.TB, res *meshcav1.CommandResult, want meshcav1.ResultCode) {
	t.Helper()
	if res.GetCode() != want {
		t.Fatalf("code = %v (%s), want %v", res.GetCode(), res.GetMessage(), want)
	}
	if want != meshcav1.ResultCode_RESULT_CODE_OK && res.GetMessage() == "" {
		t.Fatalf("refusal %v has no message", res.GetCode())
	}
}

// spki returns a distinct 32-byte key fingerprint per label.
func spki(label string) []byte {
	s := sha256.Sum256([]byte("spki:" + label))
	return s[:]
}

// fxCert returns a certificate record valid for fxCertLife from the fixture's time.
func (fx *fsmFixture) cert(serial, key string) *meshcav1.Cert {
	return &meshcav1.Cert{
		Serial: serial, SpkiSha256: spki(key), IssuerId: fxIssuerID,
		NotBefore: fx.now.Add(-time.Minute).UnixNano(), NotAfter: fx.now.Add(fxCertLife).UnixNano(),
		Purposes: []meshcav1.Purpose{meshcav1.Purpose_PURPOSE_CLIENT_AUTH},
	}
}

func fxRootSum(root []byte) []byte {
	s := sha256.Sum256(root)
	return s[:]
}

func fxIssuer(id string, root []byte, notAfter time.Time) *meshcav1.Issuer {
	return &meshcav1.Issuer{
		Id: id, Chain: [][]byte{[]byte(id + " DER")}, RootSha256: fxRootSum(root), NotAfter: notAfter.UnixNano(),
		Signer: &meshcav1.SignerRef{Key: &meshcav1.SignerRef_Pkcs11Label{Pkcs11Label: id}, KeyType: "ecdsa-p256"},
	}
}

// setup makes the usual world: a CA, domain sports, service sports.api that grants launch to
// sys.auth.k8s, and that provider enabled.
func (fx *fsmFixture) setup() *fsmFixture {
	fx.t.Helper()
	fx.must(&meshcav1.SetCACommand{Roots: [][]byte{fxRoot}, ActiveIssuer: fxIssuer(fxIssuerID, fxRoot, fxT0.Add(365*24*time.Hour))})
	fx.must(&meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: fxDomain, Admins: []string{"user.alice"}}})
	fx.must(&meshcav1.PutServiceCommand{Service: &meshcav1.Service{Domain: fxDomain, Name: fxService, LaunchGrants: []string{fxProvider}}})
	fx.must(&meshcav1.PutProviderCommand{Provider: &meshcav1.Provider{Name: fxProvider, DnsSuffix: "k8s.mesh.example", Enabled: true}})
	return fx
}

func (fx *fsmFixture) register(instanceID, serial, key string) *meshcav1.RecordRegisterCommand {
	return &meshcav1.RecordRegisterCommand{
		Provider: fxProvider, Domain: fxDomain, Service: fxService, InstanceId: instanceID,
		Cert: fx.cert(serial, key), ClientAddr: "10.0.0.1:5000", Hostname: "node-1",
	}
}

func (fx *fsmFixture) refresh(instanceID, presented, serial, key string) *meshcav1.RecordRefreshCommand {
	return &meshcav1.RecordRefreshCommand{
		Provider: fxProvider, Domain: fxDomain, Service: fxService, InstanceId: instanceID,
		PresentedSerial: presented, Cert: fx.cert(serial, key), ClientAddr: "10.0.0.1:5001",
	}
}

func (fx *fsmFixture) instance(instanceID string) *meshcav1.Instance {
	fx.t.Helper()
	inst, err := fx.state().Instance(fxProvider, fxDomain, fxService, instanceID)
	if err != nil {
		fx.t.Fatalf("instance %s: %v", instanceID, err)
	}
	return inst
}

// eventsOf returns the kinds of every kept event, oldest first.
func (fx *fsmFixture) eventKinds() []meshcav1.EventKind {
	var kinds []meshcav1.EventKind
	for _, e := range fx.state().Events(0, 0) {
		kinds = append(kinds, e.GetKind())
	}
	return kinds
}

func hasEvent(kinds []meshcav1.EventKind, k meshcav1.EventKind) bool {
	for _, x := range kinds {
		if x == k {
			return true
		}
	}
	return false
}
