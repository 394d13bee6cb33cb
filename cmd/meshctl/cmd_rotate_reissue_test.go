package main

import (
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/clustertest"
)

// reissueCluster starts a one-node cluster and returns meshctl's environment for its admin,
// trusting the bundle at caBundle (the cluster's own when empty).
func reissueCluster(t *testing.T, e *e2e) (*clustertest.Cluster, func(caBundle string) []string, string) {
	t.Helper()
	c := clustertest.Start(t, clustertest.Options{Nodes: 1})
	adminCert, adminKey := writeCredentials(t, e.dir, "admin", c.AdminCert())
	bundle := filepath.Join(e.dir, "ca.pem")
	var bundlePEM []byte
	for _, r := range c.Bundle().X509Authorities() {
		bundlePEM = append(bundlePEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	if err := os.WriteFile(bundle, bundlePEM, 0o644); err != nil {
		t.Fatal(err)
	}
	env := func(caBundle string) []string {
		return []string{envAddr + "=" + c.Leader().GRPCAddr, envCert + "=" + adminCert, envKey + "=" + adminKey, envCABundle + "=" + caBundle}
	}
	return c, env, bundle
}

// TestCARotateReissue drives `--reissue` with meshctl on a real node: it is refused on a step
// other than activate, `activate --reissue` records it and status shows it for the active
// issuer, and `--auto --reissue` asks for it on the way to retiring the old root.
func TestCARotateReissue(t *testing.T) {
	bin := clustertest.Binary(t, "meshctl")
	t.Run("activate --reissue", func(t *testing.T) {
		e := &e2e{t: t, bin: bin, dir: t.TempDir()}
		_, env, bundle := reissueCluster(t, e)
		admin := env(bundle)
		for _, step := range []string{"prepare", "retire", "status"} {
			if r := e.run(admin, "ca", "rotate", step, "--reissue"); r.code != exitUsage || !strings.Contains(r.stderr, "--reissue: only with activate or --auto, not "+step) {
				t.Fatalf("ca rotate %s --reissue: exit %d, stderr %q", step, r.code, r.stderr)
			}
		}
		// Once activate switches the node's certificate to the new root, meshctl needs both roots.
		both := filepath.Join(e.dir, "both.pem")
		e.ok(admin, "ca", "rotate", "prepare", "--bundle-out", both)
		admin = env(both)
		out := e.ok(admin, "ca", "rotate", "activate", "--reissue")
		if !hasReissueRow(out) {
			t.Fatalf("activate --reissue shows no reissue request:\n%s", out)
		}
		var st struct {
			CA struct {
				ActiveIssuer struct {
					ID string `json:"id"`
				} `json:"active_issuer"`
			} `json:"ca"`
			Reissue *struct {
				IssuerID  string `json:"issuer_id"`
				Requested string `json:"requested"`
			} `json:"reissue"`
		}
		raw := e.ok(admin, "ca", "rotate", "status", "-o", "json")
		if err := json.Unmarshal([]byte(raw), &st); err != nil {
			t.Fatalf("status JSON: %v\n%s", err, raw)
		}
		if st.Reissue == nil || st.Reissue.IssuerID == "" || st.Reissue.IssuerID != st.CA.ActiveIssuer.ID || st.Reissue.Requested == "" {
			t.Fatalf("status after activate --reissue: %s", raw)
		}
	})
	t.Run("--auto --reissue", func(t *testing.T) {
		e := &e2e{t: t, bin: bin, dir: t.TempDir()}
		_, env, bundle := reissueCluster(t, e)
		out := e.ok(env(bundle), "ca", "rotate", "--auto", "--reissue", "--poll", "100ms")
		for _, want := range []string{"activated: new certificates are signed by issuer", "reissue requested: agents replace every certificate the old issuer signed now", "retired root", "done:"} {
			if !strings.Contains(out, want) {
				t.Fatalf("ca rotate --auto --reissue printed no %q:\n%s", want, out)
			}
		}
		if !hasReissueRow(out) {
			t.Fatalf("the final status shows no reissue request:\n%s", out)
		}
	})
}

// hasReissueRow reports whether a rotation table shows a reissue request.
func hasReissueRow(out string) bool {
	return slices.ContainsFunc(strings.Split(out, "\n"), func(l string) bool {
		f := strings.Fields(l)
		return len(f) > 2 && f[0] == "reissue" && f[1] == "requested" && strings.Contains(l, "did not sign now")
	})
}
