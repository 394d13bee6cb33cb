package controlplane

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/sds"
)

// servedNotice is the issuer notice the node serves agents now, decoded.
func servedNotice(s *Server) (*meshcav1.IssuerNotice, error) {
	raw, ok := s.bundles.View(s.td.ID()).Generic[sds.NameIssuerNotice]
	if !ok {
		return nil, fmt.Errorf("no %s secret is served", sds.NameIssuerNotice)
	}
	n := &meshcav1.IssuerNotice{}
	if err := proto.Unmarshal(raw, n); err != nil {
		return nil, fmt.Errorf("%s: %w", sds.NameIssuerNotice, err)
	}
	return n, nil
}

// waitNotice waits until the node serves the notice of issuer id with reissue requested or not,
// and checks that it carries the issuer's certificate.
func waitNotice(t *testing.T, s *Server, id string, reissue bool) *meshcav1.IssuerNotice {
	t.Helper()
	var n *meshcav1.IssuerNotice
	waitFor(t, "the issuer notice of "+id, func() error {
		var err error
		if n, err = servedNotice(s); err != nil {
			return err
		}
		if n.GetIssuerId() != id || (n.GetReissueRequested() != 0) != reissue {
			return fmt.Errorf("notice of issuer %s reissue_requested %d, want %s reissue %v", n.GetIssuerId(), n.GetReissueRequested(), id, reissue)
		}
		return nil
	})
	auth, _, err := s.Authority()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(n.GetIssuerCertificate(), auth.Issuer().Certificate().Raw) {
		t.Fatal("the notice does not carry the active issuer's certificate")
	}
	return n
}

// TestActivateWithReissueIsRecordedAndServedToAgents walks two rotations on a one-node cluster:
// an activate without reissue leaves agents to their schedule, one with reissue shows in the
// status and in the notice agents get beside their bundles; and the status names the exact
// second the old root may be retired.
func TestActivateWithReissueIsRecordedAndServedToAgents(t *testing.T) {
	clk := &testClock{}
	s := startClockedServer(t, clk, rootAdmin)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	admin := rotationClient(t, s, clk, rootAdmin)
	_, first, err := s.Authority()
	if err != nil {
		t.Fatal(err)
	}
	waitNotice(t, s, first.GetId(), false)

	// A workload certificate of the first issuer, expiring off the whole second.
	ts := &testServer{t: t, s: s}
	ts.addProvider("sys.auth.k8s", "k8s.mesh.test", "https://127.0.0.1:1/confirm")
	ts.addService("sports", "api", "sys.auth.k8s")
	spki := make([]byte, 32)
	rand.Read(spki)
	lastExpiry := clk.Now().Truncate(time.Second).Add(20*time.Second + 300*time.Millisecond)
	ts.apply(&meshcav1.Command{Command: &meshcav1.Command_RecordRegister{RecordRegister: &meshcav1.RecordRegisterCommand{
		Provider: "sys.auth.k8s", Domain: "sports", Service: "api", InstanceId: "i-1", ClientAddr: "127.0.0.1",
		Cert: &meshcav1.Cert{
			Serial: newSerialHex(t), NotBefore: clk.Now().Add(-time.Minute).UnixNano(), NotAfter: lastExpiry.UnixNano(),
			SpkiSha256: spki, Purposes: []meshcav1.Purpose{meshcav1.Purpose_PURPOSE_CLIENT_AUTH}, IssuerId: first.GetId(),
		},
	}}})

	rotate := func(reissue bool) *meshcav1.RotationStatus {
		t.Helper()
		prepared, err := admin.Prepare(ctx, &meshcav1.PrepareRotationRequest{})
		if err != nil {
			t.Fatalf("Prepare: %v", err)
		}
		st, err := admin.Activate(ctx, &meshcav1.ActivateRotationRequest{IssuerId: prepared.GetCa().GetNextIssuer().GetId(), Reissue: reissue})
		if err != nil {
			t.Fatalf("Activate(reissue %v): %v", reissue, err)
		}
		return st
	}

	t.Run("activate without reissue leaves certificates to their schedule", func(t *testing.T) {
		st := rotate(false)
		if st.GetReissue() != nil {
			t.Fatalf("status after an activate without reissue shows %v", st.GetReissue())
		}
		waitNotice(t, s, st.GetCa().GetActiveIssuer().GetId(), false)
	})
	t.Run("the old root's retire time is the old issuer's last expiry, to the second", func(t *testing.T) {
		st, err := admin.Status(ctx, &meshcav1.RotationStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		oldRoot := hex.EncodeToString(first.GetRootSha256())
		var got int64
		for _, r := range st.GetRetirableRoots() {
			if r.GetSha256() == oldRoot {
				got = r.GetRetireAfter()
			}
		}
		// Rounded up to the whole second, not to the hour.
		if want := lastExpiry.Truncate(time.Second).Add(time.Second).Unix(); got != want {
			t.Fatalf("retire_after %s, want %s (the last certificate expires at %s)", time.Unix(got, 0).UTC(), time.Unix(want, 0).UTC(), lastExpiry.UTC())
		}
	})
	t.Run("activate with reissue shows in the status and the notice agents get", func(t *testing.T) {
		before := clk.Now()
		st := rotate(true)
		active := st.GetCa().GetActiveIssuer().GetId()
		r := st.GetReissue()
		if r.GetIssuerId() != active || r.GetRequested() < before.Unix() || r.GetRequested() > clk.Now().Unix() {
			t.Fatalf("status reissue %v, want issuer %s requested between %d and %d", r, active, before.Unix(), clk.Now().Unix())
		}
		n := waitNotice(t, s, active, true)
		if got := time.Unix(0, n.GetReissueRequested()).Unix(); got != r.GetRequested() {
			t.Fatalf("notice reissue_requested %d s, status %d s", got, r.GetRequested())
		}
		again, err := admin.Status(ctx, &meshcav1.RotationStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(again.GetReissue(), r) {
			t.Fatalf("Status reissue %v, Activate answered %v", again.GetReissue(), r)
		}
	})
}
