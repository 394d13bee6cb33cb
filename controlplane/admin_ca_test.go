package controlplane

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// A manual-approval request: a domain admin submits it and can read only its own; only a
// system admin approves, which issues the certificate under the spec and records it; a denied
// or issued request cannot be approved; a reused key needs force_issue.
func TestAdminCSRRequestsAreApprovedOnlyBySystemAdmins(t *testing.T) {
	e := newAdminEnv(t)
	e.seed()
	sports, news, root := e.as(sportsAdmin), e.as(newsAdmin), e.as(rootAdmin)
	ctx := e.ctx()
	key := newKey(t)
	csrPEM := csrFor(t, key, "db.sports.example")
	spec := `{"common_name":"db.sports.example","sans":["db.sports.example","bad name"],"purposes":["client_auth","server_auth"],"lifetime":7,"organization":"Sports"}`
	req, err := sports.SubmitCSR(ctx, &meshcav1.SubmitCSRRequest{Csr: csrPEM, Spec: []byte(spec)})
	ok(t, err)
	if req.GetState() != meshcav1.CSRState_CSR_STATE_PENDING || req.GetSubmitter() != sportsAdmin || req.GetId() == "" {
		t.Fatalf("submitted %v", req)
	}
	if _, err := sports.GetCSR(ctx, &meshcav1.GetCSRRequest{Id: req.GetId()}); err != nil {
		t.Fatalf("the submitter reads its request: %v", err)
	}
	_, err = news.GetCSR(ctx, &meshcav1.GetCSRRequest{Id: req.GetId()})
	wantStatus(t, err, codes.PermissionDenied, "caller "+newsAdmin+" is neither a system admin nor the submitter")
	list, err := news.ListCSRs(ctx, &meshcav1.ListCSRsRequest{})
	ok(t, err)
	if len(list.GetRequests()) != 0 {
		t.Fatalf("the news admin lists %v", list.GetRequests())
	}
	list, err = root.ListCSRs(ctx, &meshcav1.ListCSRsRequest{State: meshcav1.CSRState_CSR_STATE_PENDING})
	ok(t, err)
	if len(list.GetRequests()) != 1 {
		t.Fatalf("root lists %d pending requests", len(list.GetRequests()))
	}
	_, err = sports.ApproveCSR(ctx, &meshcav1.ApproveCSRRequest{Id: req.GetId()})
	wantStatus(t, err, codes.PermissionDenied, "caller "+sportsAdmin+" is not a system admin")

	issued, err := root.ApproveCSR(ctx, &meshcav1.ApproveCSRRequest{Id: req.GetId()})
	ok(t, err)
	if issued.GetState() != meshcav1.CSRState_CSR_STATE_ISSUED || issued.GetApprover() != rootAdmin {
		t.Fatalf("approved %v", issued)
	}
	cert, err := x509.ParseCertificate(issued.GetCert())
	ok(t, err)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: e.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatalf("issued certificate does not verify for server auth: %v", err)
	}
	if cert.Subject.CommonName != "db.sports.example" || !slices.Equal(cert.DNSNames, []string{"db.sports.example"}) ||
		!slices.Equal(cert.Subject.Organization, []string{"Sports"}) || cert.NotAfter.Sub(cert.NotBefore) > 7*24*time.Hour+time.Hour {
		t.Fatalf("issued %v %v %v %v..%v", cert.Subject, cert.DNSNames, cert.Subject.Organization, cert.NotBefore, cert.NotAfter)
	}
	if cert.SerialNumber.Text(16) != issued.GetSerial() {
		t.Fatalf("serial %s, record %s", cert.SerialNumber.Text(16), issued.GetSerial())
	}
	st := e.s.Store().State()
	if rec, err := st.Cert(issued.GetSerial()); err != nil || rec.GetIdentity() != "db.sports.example" || rec.GetCsrRequest() != req.GetId() {
		t.Fatalf("cert record %v, %v", rec, err)
	}
	if !slices.ContainsFunc(st.Events(1, 0), func(ev *meshcav1.Event) bool {
		return ev.GetKind() == meshcav1.EventKind_EVENT_KIND_CSR_ISSUED && ev.GetSubject() == req.GetId() && ev.GetSerial() == issued.GetSerial()
	}) {
		t.Fatal("no csr-issued event")
	}
	_, err = root.ApproveCSR(ctx, &meshcav1.ApproveCSRRequest{Id: req.GetId()})
	wantStatus(t, err, codes.AlreadyExists, "csr: public key", "force_issue")

	// The same key again: refused at submission unless the spec forces reuse.
	_, err = sports.SubmitCSR(ctx, &meshcav1.SubmitCSRRequest{Csr: csrFor(t, key, "db2.sports.example"), Spec: []byte(`{"common_name":"db2.sports.example"}`)})
	wantStatus(t, err, codes.AlreadyExists, "csr: public key", "first certified by serial "+issued.GetSerial())
	forced, err := sports.SubmitCSR(ctx, &meshcav1.SubmitCSRRequest{Id: "db2", Csr: csrFor(t, key, "db2.sports.example"), Spec: []byte(`{"common_name":"db2.sports.example","force_issue":true}`)})
	ok(t, err)
	var decoded map[string]any
	ok(t, json.Unmarshal(forced.GetSpec(), &decoded))
	if decoded["force_issue"] != true || forced.GetId() != "db2" {
		t.Fatalf("stored spec %s, id %s", forced.GetSpec(), forced.GetId())
	}
	denied, err := root.DenyCSR(ctx, &meshcav1.DenyCSRRequest{Id: "db2", Reason: "not needed"})
	ok(t, err)
	if denied.GetState() != meshcav1.CSRState_CSR_STATE_DENIED || denied.GetDenyReason() != "not needed" {
		t.Fatalf("denied %v", denied)
	}
	_, err = root.ApproveCSR(ctx, &meshcav1.ApproveCSRRequest{Id: "db2"})
	wantStatus(t, err, codes.FailedPrecondition, "id: ", `csr request "db2" is CSR_STATE_DENIED`)
	_, err = root.ApproveCSR(ctx, &meshcav1.ApproveCSRRequest{Id: "nope"})
	wantStatus(t, err, codes.NotFound, `id: csr request "nope" does not exist`)
}

// The CA status describes the bundle and the active issuer from the replicated record; the
// CRL lists a revoked instance's serials and is signed by the CA.
func TestAdminCAStatusAndCRL(t *testing.T) {
	e := newAdminEnv(t)
	e.seed()
	serial := e.register("sports", "api", "pod-1")
	ctx := e.ctx()

	// Any caller holding a certificate of this CA may read them.
	status, err := e.as(plainCaller).GetCAStatus(ctx, &meshcav1.GetCAStatusRequest{})
	ok(t, err)
	_, issuer, err := e.s.Authority()
	ok(t, err)
	root := e.iss.Roots()[0]
	sum := sha256.Sum256(root.Raw)
	if status.GetRotationState() != meshcav1.CARotationState_CA_ROTATION_STATE_STABLE || status.GetTrustDomain() != testTD ||
		len(status.GetRoots()) != 1 || status.GetRoots()[0].GetSha256() != hex.EncodeToString(sum[:]) ||
		status.GetRoots()[0].GetNotAfter() != root.NotAfter.Unix() {
		t.Fatalf("CA status %v", status)
	}
	ai := status.GetActiveIssuer()
	if ai.GetId() != issuer.GetId() || ai.GetSigner() != "software" || ai.GetKeyType() != "ecdsa-p256" || ai.GetNotAfter() <= time.Now().Unix() ||
		ai.GetRootSha256() != hex.EncodeToString(sum[:]) || ai.GetLastNotAfter() == 0 {
		t.Fatalf("active issuer %v", ai)
	}

	if _, err := e.as(sportsAdmin).RevokeInstance(ctx, &meshcav1.RevokeInstanceRequest{Provider: "sys.auth.k8s", InstanceId: "pod-1", Reason: meshcav1.RevocationReason_REVOCATION_REASON_KEY_COMPROMISE}); err != nil {
		t.Fatal(err)
	}
	resp, err := e.as(plainCaller).GetCRL(ctx, &meshcav1.GetCRLRequest{})
	ok(t, err)
	crl, err := x509.ParseRevocationList(resp.GetDer())
	ok(t, err)
	if err := crl.CheckSignatureFrom(e.iss.Certificate()); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	if !slices.ContainsFunc(crl.RevokedCertificateEntries, func(r x509.RevocationListEntry) bool {
		return r.SerialNumber.Cmp(bigSerial(t, serial)) == 0
	}) {
		t.Fatalf("CRL does not list %s", serial)
	}
}

// The cluster calls describe and operate the local Raft node, for system admins only.
func TestAdminClusterCalls(t *testing.T) {
	e := newAdminEnv(t)
	ctx := e.ctx()
	robot := e.as(robotAdmin) // a system admin by its service principal ops.robot
	st, err := robot.ClusterStatus(ctx, &meshcav1.ClusterStatusRequest{})
	ok(t, err)
	if st.GetNodeId() != "n1" || st.GetState() != "Leader" || st.GetLeaderId() != "n1" || len(st.GetPeers()) != 1 ||
		!st.GetPeers()[0].GetSelf() || !st.GetPeers()[0].GetLeader() || st.GetLastEventIndex() == 0 {
		t.Fatalf("cluster status %v", st)
	}
	snap, err := robot.TakeSnapshot(ctx, &meshcav1.TakeSnapshotRequest{})
	ok(t, err)
	if snap.GetNodeId() != "n1" || snap.GetIndex() == 0 || snap.GetId() == "" {
		t.Fatalf("snapshot %v", snap)
	}
	_, err = robot.RemoveNode(ctx, &meshcav1.RemoveNodeRequest{Id: "ghost"})
	wantStatus(t, err, codes.NotFound, "id: ", "ghost")
	_, err = robot.TransferLeader(ctx, &meshcav1.TransferLeaderRequest{Id: "ghost"})
	wantStatus(t, err, codes.NotFound, "id: ", "ghost")
	_, err = e.as(sportsAdmin).ClusterStatus(ctx, &meshcav1.ClusterStatusRequest{})
	wantStatus(t, err, codes.PermissionDenied, "is not a system admin")
}
