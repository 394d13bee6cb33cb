package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/internal/clustertest"
	"github.com/meshca/meshca/internal/testenv"
)

// applyReport is `meshctl apply -o json`'s answer.
type applyReport struct {
	Entries []struct {
		Name    string `json:"name"`
		ID      string `json:"id"`
		Outcome string `json:"outcome"`
		State   string `json:"state"`
		Detail  string `json:"detail"`
	} `json:"entries"`
}

// outcomes maps entry names to outcomes.
func (r applyReport) outcomes() map[string]string {
	m := map[string]string{}
	for _, e := range r.Entries {
		m[e.Name] = e.Outcome
	}
	return m
}

func (r applyReport) id(t *testing.T, name string) string {
	t.Helper()
	for _, e := range r.Entries {
		if e.Name == name {
			return e.ID
		}
	}
	t.Fatalf("no entry %s in %+v", name, r)
	return ""
}

// writeApplyEntry writes DIR/name/tls.json and DIR/name/csr.pem: a CSR for cn signed by key.
func writeApplyEntry(t *testing.T, dir, name, spec string, key crypto.Signer, cn string) {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, DNSNames: []string{cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, name), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name, applySpecFile), []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name, applyCSRFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// The GitOps flow against a real three-node cluster: apply files what is new and leaves an
// unchanged entry alone whether it is pending or issued; a new spec reusing an issued key is
// refused (and the run exits 1) until the spec says force_issue; `csr get --out DIR` writes
// cert.pem and chain.pem with mode 0600, and the chain verifies to the cluster's roots.
func TestApplyAgainstACluster(t *testing.T) {
	c := clustertest.Start(t, clustertest.Options{
		Nodes:     3,
		Providers: []controlplane.ProviderConfig{{Name: "sys.auth.k8s", DNSSuffix: "k8s.mesh.test", ConfirmEndpoint: "https://127.0.0.1:1/confirm"}},
	})
	e := &e2e{t: t, bin: clustertest.Binary(t, "meshctl"), dir: t.TempDir()}
	adminCert, adminKey := writeCredentials(t, e.dir, "admin", c.AdminCert())
	bundle := filepath.Join(e.dir, "ca.pem")
	var bundlePEM []byte
	for _, r := range c.Bundle().X509Authorities() {
		bundlePEM = append(bundlePEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	if err := os.WriteFile(bundle, bundlePEM, 0o644); err != nil {
		t.Fatal(err)
	}
	admin := []string{envAddr + "=" + c.Followers()[0].GRPCAddr, envCert + "=" + adminCert, envKey + "=" + adminKey, envCABundle + "=" + bundle}
	apply := func(dir string, wantCode int) applyReport {
		t.Helper()
		r := e.run(admin, "apply", "-f", dir, "-o", "json")
		if r.code != wantCode {
			t.Fatalf("apply: exit %d, want %d; stderr %q", r.code, wantCode, r.stderr)
		}
		var rep applyReport
		if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
			t.Fatalf("apply printed %q: %v", r.stdout, err)
		}
		return rep
	}
	newKey := func() crypto.Signer {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}

	dir := filepath.Join(e.dir, "tls")
	webKey := newKey()
	writeApplyEntry(t, dir, "web", `{"common_name": "web.sports.example", "purposes": ["server_auth"], "lifetime": 30}`, webKey, "web.sports.example")
	writeApplyEntry(t, dir, "api", `{"common_name": "api.sports.example", "sans": ["api.sports.example", "bad name!"]}`, newKey(), "api.sports.example")

	first := apply(dir, 0)
	if got := first.outcomes(); got["web"] != applySubmitted || got["api"] != applySubmitted || len(got) != 2 {
		t.Fatalf("first apply: %+v", first)
	}
	// The SAN the CA leaves out is reported with the entry.
	for _, en := range first.Entries {
		if want := `dropped SAN "bad name!"`; en.Name == "api" && !strings.HasPrefix(en.Detail, want) {
			t.Fatalf("api entry detail %q, want it to start with %q", en.Detail, want)
		}
	}
	// Unchanged pending entries are not filed again.
	if got := apply(dir, 0).outcomes(); got["web"] != applyUnchanged || got["api"] != applyUnchanged {
		t.Fatalf("second apply: %v", got)
	}
	webID := first.id(t, "web")
	if out := e.ok(admin, "csr", "approve", webID); !strings.Contains(out, "issued") {
		t.Fatalf("csr approve printed %q", out)
	}
	// An issued entry is not issued again.
	again := apply(dir, 0)
	if got := again.outcomes(); got["web"] != applyUnchanged || again.id(t, "web") != webID {
		t.Fatalf("apply after approval: %+v", again)
	}
	for _, en := range again.Entries {
		if en.Name == "web" && en.State != "issued" {
			t.Fatalf("web is %q after approval, want issued", en.State)
		}
	}
	if n := strings.Count(e.ok(admin, "csr", "list", "--state", "issued"), "web.sports.example"); n != 1 {
		t.Fatalf("%d issued requests for web.sports.example, want 1", n)
	}

	// A new spec with the issued key: refused, the reason reported, the others unchanged.
	writeApplyEntry(t, dir, "web-v2", `{"common_name": "web.sports.example", "purposes": ["server_auth"], "lifetime": 60}`, webKey, "web.sports.example")
	rep := apply(dir, exitError)
	for _, en := range rep.Entries {
		switch en.Name {
		case "web-v2":
			if en.Outcome != applyRefused || !strings.Contains(en.Detail, "force_issue") || !strings.Contains(en.Detail, "AlreadyExists") {
				t.Fatalf("key reuse: %+v", en)
			}
		default:
			if en.Outcome != applyUnchanged {
				t.Fatalf("entry %s: %+v", en.Name, en)
			}
		}
	}
	// With force_issue the reuse is filed and issued.
	writeApplyEntry(t, dir, "web-v2", `{"common_name": "web.sports.example", "purposes": ["server_auth"], "lifetime": 60, "force_issue": true}`, webKey, "web.sports.example")
	forced := apply(dir, 0)
	if got := forced.outcomes(); got["web-v2"] != applySubmitted {
		t.Fatalf("forced reuse: %+v", forced)
	}
	if out := e.ok(admin, "csr", "approve", forced.id(t, "web-v2")); !strings.Contains(out, "issued") {
		t.Fatalf("csr approve (forced reuse) printed %q", out)
	}
	// Both issuances are published as events, in log order, each with its serial.
	lines := strings.Split(strings.TrimSpace(e.ok(admin, "events", "watch", "--from", "1", "--kind", "csr-issued", "--count", "2", "-o", "json")), "\n")
	for i, want := range []string{webID, forced.id(t, "web-v2")} {
		var ev struct {
			Kind    string `json:"kind"`
			Subject string `json:"subject"`
			Serial  string `json:"serial"`
		}
		if i >= len(lines) || json.Unmarshal([]byte(lines[i]), &ev) != nil || ev.Subject != want || ev.Serial == "" || ev.Kind != "EVENT_KIND_CSR_ISSUED" {
			t.Fatalf("csr-issued events %q, want %s then %s", lines, webID, forced.id(t, "web-v2"))
		}
	}

	// csr get --out DIR: cert.pem and chain.pem, 0600, even over a wider file left there.
	out := filepath.Join(e.dir, "out")
	if err := os.MkdirAll(out, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "cert.pem"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.ok(admin, "csr", "get", webID, "--out", out)
	var certs []*x509.Certificate
	for _, name := range []string{"cert.pem", "chain.pem"} {
		p := filepath.Join(out, name)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if m := fi.Mode().Perm(); m != 0o600 {
			t.Fatalf("%s has mode %o, want 600", name, m)
		}
		raw, _ := os.ReadFile(p)
		var got []*x509.Certificate
		for b, rest := pem.Decode(raw); b != nil; b, rest = pem.Decode(rest) {
			cert, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, cert)
		}
		if len(got) == 0 {
			t.Fatalf("%s holds no certificate", name)
		}
		certs = append(certs, got...)
	}
	leaf := certs[0]
	if !leaf.Equal(certs[1]) {
		t.Fatal("chain.pem does not start with the certificate")
	}
	inter := x509.NewCertPool()
	for _, ch := range certs[2:] {
		inter.AddCert(ch)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: c.Roots(), Intermediates: inter, DNSName: "web.sports.example", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatalf("csr get certificate: %v", err)
	}
	// Revoking the request's certificate puts its serial on the CRL; openssl then refuses it.
	// A pending request has no certificate to revoke.
	oneErrorLine(t, e.run(admin, "csr", "revoke", first.id(t, "api")), exitError, "meshctl: csr revoke: FailedPrecondition: id: csr request \""+first.id(t, "api")+"\" is CSR_STATE_PENDING")
	e.ok(admin, "csr", "revoke", webID, "--reason", "key-compromise", "--detail", "apply test")
	crlPath := filepath.Join(e.dir, "crl.der")
	var crl *x509.RevocationList
	c.Poll("the CRL lists the revoked request's serial", func() error {
		e.ok(admin, "crl", "get", "--out", crlPath)
		der, err := os.ReadFile(crlPath)
		if err != nil {
			return err
		}
		if crl, err = x509.ParseRevocationList(der); err != nil {
			return err
		}
		for _, en := range crl.RevokedCertificateEntries {
			if en.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
				if en.ReasonCode != 1 {
					return fmt.Errorf("listed with reason %d, want 1 (key compromise)", en.ReasonCode)
				}
				return nil
			}
		}
		return fmt.Errorf("serial %s not listed (%d entries)", leaf.SerialNumber.Text(16), len(crl.RevokedCertificateEntries))
	})
	openssl := testenv.RequireOpenSSL(t)
	crlPEM := filepath.Join(e.dir, "crl.pem")
	if err := os.WriteFile(crlPEM, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crl.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(openssl, "verify", "-CAfile", filepath.Join(out, "chain.pem"), filepath.Join(out, "cert.pem")).CombinedOutput(); err != nil {
		t.Fatalf("openssl verify without the CRL: %v: %s", err, out)
	}
	if out, err := exec.Command(openssl, "verify", "-crl_check", "-CAfile", filepath.Join(out, "chain.pem"), "-CRLfile", crlPEM, filepath.Join(out, "cert.pem")).CombinedOutput(); err == nil || !strings.Contains(string(out), "certificate revoked") {
		t.Fatalf("openssl verify -crl_check of the revoked certificate: %v: %s", err, out)
	}

	// A request without a certificate: a one-line refusal, nothing written.
	pending := filepath.Join(e.dir, "pending")
	oneErrorLine(t, e.run(admin, "csr", "get", first.id(t, "api"), "--out", pending), exitError, "meshctl: csr get: --out: csr request "+first.id(t, "api")+" has no certificate")
	if _, err := os.Stat(pending); !os.IsNotExist(err) {
		t.Fatalf("%s: %v, want it not created", pending, err)
	}
}
