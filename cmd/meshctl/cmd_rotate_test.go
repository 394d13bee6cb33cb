package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/clustertest"
)

// TestCARotateAgainstACluster drives a rotation with meshctl on three real nodes: a step is
// refused out of order and for a caller who is not a system admin, status shows the CA, and
// --auto runs prepare, waits for every node, activates and retires the old root (no workload
// certificate was issued under it, so retiring needs no wait).
func TestCARotateAgainstACluster(t *testing.T) {
	c := clustertest.Start(t, clustertest.Options{Nodes: 3})
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
	leader := c.Leader()
	admin := []string{envAddr + "=" + leader.GRPCAddr, envCert + "=" + adminCert, envKey + "=" + adminKey, envCABundle + "=" + bundle}

	oneErrorLine(t, e.run(admin, "ca", "rotate", "activate"), exitError,
		"meshctl: ca rotate: FailedPrecondition: ca.next_issuer: no rotation is prepared")
	if r := e.run(admin, "ca", "rotate"); r.code != exitUsage || !strings.Contains(r.stderr, "name a step") {
		t.Fatalf("ca rotate without a step: exit %d, stderr %q", r.code, r.stderr)
	}
	var before struct {
		CA struct {
			RotationState string `json:"rotation_state"`
			Roots         []struct {
				Sha256 string `json:"sha256"`
			} `json:"roots"`
		} `json:"ca"`
	}
	if err := json.Unmarshal([]byte(e.ok(admin, "ca", "rotate", "status", "-o", "json")), &before); err != nil {
		t.Fatal(err)
	}
	if before.CA.RotationState != "CA_ROTATION_STATE_STABLE" || len(before.CA.Roots) != 1 {
		t.Fatalf("status before the rotation: %+v", before)
	}
	oldRoot := before.CA.Roots[0].Sha256

	newBundle := filepath.Join(e.dir, "new-ca.pem")
	args := []string{"ca", "rotate", "--auto", "--poll", "100ms", "--bundle-out", newBundle}
	for _, n := range c.Nodes {
		args = append(args, "--node", n.GRPCAddr)
	}
	out := e.ok(admin, args...)
	for _, want := range []string{"prepared: next issuer", "serves the new root", "activated: new certificates are signed by issuer", "retired root " + short(oldRoot), "done:"} {
		if !strings.Contains(out, want) {
			t.Fatalf("ca rotate --auto printed no %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "serves the new root"); n != len(c.Nodes) {
		t.Fatalf("--auto confirmed %d nodes, want %d:\n%s", n, len(c.Nodes), out)
	}
	// The final table lists the new root only: the old one appears in the "retired" line alone.
	if n := strings.Count(out, short(oldRoot)); n != 1 {
		t.Fatalf("the old root %s appears %d times, want only in the line that retired it:\n%s", oldRoot, n, out)
	}
	raw, err := os.ReadFile(newBundle)
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(raw)
	if block == nil || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("--bundle-out wrote %q, want one certificate", raw)
	}
	if sum := sha256.Sum256(block.Bytes); hex.EncodeToString(sum[:]) == oldRoot || !strings.Contains(out, short(hex.EncodeToString(sum[:]))) {
		t.Fatalf("--bundle-out holds root %x, want the new root the output names", sum)
	}
	if strings.Contains(out, "\nretired ") || !strings.Contains(out, "rotation  stable") {
		t.Fatalf("after --auto the CA is not stable with no retired issuer:\n%s", out)
	}
}
