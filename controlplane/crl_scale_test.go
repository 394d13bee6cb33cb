package controlplane

import (
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/internal/testenv"
	"github.com/meshca/meshca/raftstore"
)

// crlScale is a state machine fed, outside Raft, with n registered and then revoked
// certificates, and a Server view of it that builds CRLs with the CA of a real node.
type crlScale struct {
	t       testing.TB
	fsm     *raftstore.FSM
	s       *Server
	now     time.Time
	index   uint64
	seq     int
	issuer  *x509.Certificate
	entries []int // the size of every revoke entry, in log order
	largest int   // the largest log entry applied
}

// newCRLScale starts a single node for its replicated CA record, then feeds a fresh FSM the
// same record and n register + revoke-by-serial commands in batches as Raft would. Every
// shortEvery-th certificate lives for short; the others for long.
func newCRLScale(t testing.TB, n, shortEvery int, short, long time.Duration) *crlScale {
	t.Helper()
	ts := startServer(t, nil)
	rec, err := ts.s.fsm.State().CA()
	if err != nil {
		t.Fatal(err)
	}
	fsm, err := raftstore.NewFSM(raftstore.DefaultFSMConfig())
	if err != nil {
		t.Fatal(err)
	}
	x := &crlScale{t: t, fsm: fsm, now: time.Now().UTC(), issuer: ts.iss.Certificate()}
	x.s = &Server{cfg: ts.s.cfg, fsm: fsm, now: func() time.Time { return x.now }}
	x.s.view.Store(ts.s.view.Load())

	var batch []*raft.Log
	apply := func(body proto.Message, revoke bool) {
		batch = x.add(batch, body, revoke)
		if len(batch) == 512 {
			x.flush(batch)
			batch = batch[:0]
		}
	}
	apply(&meshcav1.SetCACommand{Roots: rec.GetRoots(), ActiveIssuer: rec.GetActiveIssuer()}, false)
	apply(&meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: "sports", Admins: []string{"sys.admin.root"}}}, false)
	apply(&meshcav1.PutProviderCommand{Provider: &meshcav1.Provider{Name: "sys.auth.k8s", DnsSuffix: "k8s.mesh.example", Enabled: true}}, false)
	apply(&meshcav1.PutServiceCommand{Service: &meshcav1.Service{Domain: "sports", Name: "api", LaunchGrants: []string{"sys.auth.k8s"}}}, false)
	for i := 0; i < n; i++ {
		life := long
		if shortEvery > 0 && i%shortEvery == 0 {
			life = short
		}
		spki := sha256.Sum256(fmt.Appendf(nil, "key-%d", i))
		serial := fmt.Sprintf("5ca1e%011x", i)
		apply(&meshcav1.RecordRegisterCommand{
			Provider: "sys.auth.k8s", Domain: "sports", Service: "api", InstanceId: fmt.Sprintf("pod-%d.scale", i),
			Cert: &meshcav1.Cert{
				Serial: serial, SpkiSha256: spki[:], IssuerId: rec.GetActiveIssuer().GetId(),
				NotBefore: x.now.Add(-time.Minute).UnixNano(), NotAfter: x.now.Add(life).UnixNano(),
				Purposes: []meshcav1.Purpose{meshcav1.Purpose_PURPOSE_CLIENT_AUTH},
			},
			ClientAddr: "10.0.0.1:5000",
		}, false)
		apply(&meshcav1.RevokeCommand{Target: &meshcav1.RevokeCommand_Serial{Serial: serial},
			Reason: meshcav1.RevocationReason_REVOCATION_REASON_KEY_COMPROMISE}, true)
	}
	x.flush(batch)
	return x
}

// add appends a log entry carrying body at the scale's time to batch, recording its size.
func (x *crlScale) add(batch []*raft.Log, body proto.Message, revoke bool) []*raft.Log {
	x.t.Helper()
	x.seq++
	cmd, err := raftstore.NewCommand(fmt.Sprintf("scale-%07d", x.seq), x.now, body)
	if err != nil {
		x.t.Fatal(err)
	}
	data, err := proto.Marshal(cmd)
	if err != nil {
		x.t.Fatal(err)
	}
	x.largest = max(x.largest, len(data))
	if revoke {
		x.entries = append(x.entries, len(data))
	}
	x.index++
	return append(batch, &raft.Log{Index: x.index, Term: 1, Type: raft.LogCommand, Data: data})
}

// flush applies a batch and fails on any refusal, so the numbers never measure refusals.
func (x *crlScale) flush(batch []*raft.Log) {
	x.t.Helper()
	for i, out := range x.fsm.ApplyBatch(batch) {
		res := new(meshcav1.CommandResult)
		if err := proto.Unmarshal(out.([]byte), res); err != nil {
			x.t.Fatal(err)
		}
		if res.GetCode() != meshcav1.ResultCode_RESULT_CODE_OK {
			x.t.Fatalf("entry %d: %v: %s", batch[i].Index, res.GetCode(), res.GetMessage())
		}
	}
}

// crl builds the CRL at the scale's time and checks it parses and is signed by the issuer.
func (x *crlScale) crl() (*x509.RevocationList, int, time.Duration) {
	x.t.Helper()
	start := time.Now()
	der, err := x.s.CRL()
	took := time.Since(start)
	if err != nil {
		x.t.Fatal(err)
	}
	l, err := x509.ParseRevocationList(der)
	if err != nil {
		x.t.Fatal(err)
	}
	if err := l.CheckSignatureFrom(x.issuer); err != nil {
		x.t.Fatalf("CRL signature: %v", err)
	}
	return l, len(der), took
}

// 100,000 certificates revoked through the state machine: the CRL lists them all, signed by
// the active issuer; once a quarter of them has expired a rebuilt CRL leaves those out (and a
// prune drops their records); and no log entry grows with the list — every revoke entry is
// as large as the first, all far smaller than the CRL.
func TestCRLOf100000Revocations(t *testing.T) {
	testenv.SkipIfShort(t, "builds a state of 100,000 revoked certificates")
	const n = 100_000
	x := newCRLScale(t, n, 4, time.Hour, 30*24*time.Hour)
	if got := len(x.fsm.State().Revocations()); got != n {
		t.Fatalf("%d revocation records, want %d", got, n)
	}

	l, size, took := x.crl()
	if len(l.RevokedCertificateEntries) != n {
		t.Fatalf("CRL lists %d certificates, want %d", len(l.RevokedCertificateEntries), n)
	}
	t.Logf("CRL of %d revoked certificates: %d bytes (%.1f bytes/entry), built in %s", n, size, float64(size)/n, took)

	if len(x.entries) != n || x.entries[0] != x.entries[n-1] {
		t.Fatalf("revoke entries: first %d bytes, last %d bytes; want the same size", x.entries[0], x.entries[n-1])
	}
	if x.largest*100 > size {
		t.Fatalf("the largest log entry is %d bytes, not far below the CRL's %d", x.largest, size)
	}
	t.Logf("log entries: revoke %d bytes each, largest %d bytes", x.entries[0], x.largest)

	// Past the short lifetime and the cache's refresh: the expired quarter drops out.
	x.now = x.now.Add(crlRefresh + time.Hour)
	l, size, took = x.crl()
	if want := n - n/4; len(l.RevokedCertificateEntries) != want {
		t.Fatalf("after expiry the CRL lists %d certificates, want %d", len(l.RevokedCertificateEntries), want)
	}
	for _, e := range l.RevokedCertificateEntries {
		var i int
		if _, err := fmt.Sscanf(e.SerialNumber.Text(16), "5ca1e%x", &i); err != nil || i%4 == 0 {
			t.Fatalf("serial %s listed after it expired", e.SerialNumber.Text(16))
		}
	}
	t.Logf("after a quarter expired: %d entries, %d bytes, built in %s", len(l.RevokedCertificateEntries), size, took)

	// The leader's prune drops the expired revocation records themselves.
	x.flush(x.add(nil, &meshcav1.PruneCommand{Cutoff: x.now.UnixNano()}, false))
	if got, want := len(x.fsm.State().Revocations()), n-n/4; got != want {
		t.Fatalf("%d revocation records after the prune, want %d", got, want)
	}
}

// BenchmarkCRLBuild measures building and signing the CRL of 100,000 revoked certificates
// (the cache is cleared before each build) and reports its size.
func BenchmarkCRLBuild(b *testing.B) {
	x := newCRLScale(b, 100_000, 0, 0, 30*24*time.Hour)
	var size int
	for b.Loop() {
		x.s.crl.key = ""
		der, err := x.s.CRL()
		if err != nil {
			b.Fatal(err)
		}
		size = len(der)
	}
	b.ReportMetric(float64(size), "crl-bytes")
}
