package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/sds/agent"
)

// serveAgentAdmin serves what an agent's admin socket serves at agent.SecretsPath (the sds
// package's inventory handler over a Store holding one SVID and its bundle) on a Unix socket.
func serveAgentAdmin(t *testing.T) (socket string, serial string) {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("mesh.example")
	rootKey, _ := signer.GenerateSoftware(signer.ECDSAP256)
	now := time.Now()
	issuer, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: td, RootKey: rootKey, Now: now.Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(ca.Config{TrustDomain: td, Issuer: issuer})
	if err != nil {
		t.Fatal(err)
	}
	req := policy.WorkloadRequest{TrustDomain: td.Name(), Domain: "sports", Service: "api", ProviderDNSSuffix: "k8s.mesh.example", InstanceID: "pod-1", Now: now}
	req.Serial, _ = ca.NewSerial(nil)
	names, _ := req.Names()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	uri, _ := url.Parse(names.SPIFFEID.String())
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: names.CommonName}, DNSNames: []string{names.ServiceDNS, names.InstanceDNS}, URIs: []*url.URL{uri}}, key)
	issued, err := authority.IssueWorkload(csr, req)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := issued.Leaf()
	store := sds.NewStore()
	if err := store.SetBundle(authority.Bundle()); err != nil {
		t.Fatal(err)
	}
	if err := store.SetSVID(&x509svid.SVID{ID: names.SPIFFEID, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "mctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	socket = filepath.Join(dir, "admin.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+agent.SecretsPath, sds.InventoryHandler(store))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return socket, leaf.SerialNumber.Text(16)
}

func runAgentCommand(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	a := &app{stdout: &stdout, stderr: &stderr, getenv: func(k string) string { return env[k] }, commands: agentCommands()}
	code := a.run(context.Background(), args)
	return code, stdout.String(), stderr.String()
}

func TestAgentSecretsListsWhatTheAgentServes(t *testing.T) {
	socket, serial := serveAgentAdmin(t)
	t.Run("a table names the resources, SPIFFE ID, serial, expiry and bundle roots", func(t *testing.T) {
		code, out, errOut := runAgentCommand(t, nil, "agent", "secrets", "--socket", socket)
		if code != exitOK {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		t.Log("\n" + out)
		for _, want := range []string{"RESOURCE NAMES", "default,spiffe://mesh.example/ns/sports/sa/api", serial, "ROOTCA,spiffe://mesh.example,ALL", "mesh.example"} {
			if !strings.Contains(out, want) {
				t.Errorf("table does not show %q:\n%s", want, out)
			}
		}
	})
	t.Run("json is the inventory, and the socket can come from the environment", func(t *testing.T) {
		code, out, errOut := runAgentCommand(t, map[string]string{envAgentSocket: socket}, "agent", "secrets", "-o", "json")
		if code != exitOK {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var inv sds.Inventory
		if err := json.Unmarshal([]byte(out), &inv); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out)
		}
		if len(inv.Identities) != 1 || inv.Identities[0].Serial != serial || len(inv.Bundles) != 1 || len(inv.Bundles[0].Roots) != 1 {
			t.Fatalf("inventory %+v", inv)
		}
	})
	t.Run("an agent that is not there is a one-line error and exit 1", func(t *testing.T) {
		code, _, errOut := runAgentCommand(t, nil, "agent", "secrets", "--socket", filepath.Join(t.TempDir(), "none.sock"))
		if code != exitError || !strings.HasPrefix(errOut, "meshctl: agent secrets: agent admin socket") || strings.Count(errOut, "\n") != 1 {
			t.Fatalf("exit %d, stderr %q", code, errOut)
		}
	})
	t.Run("an unknown output format is a usage error", func(t *testing.T) {
		code, _, errOut := runAgentCommand(t, nil, "agent", "secrets", "--socket", socket, "--output", "yaml")
		if code != exitUsage || !strings.Contains(errOut, `--output: "yaml" is not table or json`) {
			t.Fatalf("exit %d, stderr %q", code, errOut)
		}
	})
}
