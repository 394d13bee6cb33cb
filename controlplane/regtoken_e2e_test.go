package controlplane_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/internal/clustertest"
	"github.com/meshca/meshca/internal/testenv"
	"github.com/meshca/meshca/sds/agent"
)

// builtinE2ESuffix is the DNS suffix the cluster seeds sys.auth.meshca with.
const builtinE2ESuffix = "meshca.mesh.test"

// builtinInstance is an instance of sports.api launched through the built-in provider.
func builtinInstance(t testing.TB, c *clustertest.Cluster, id string) *instance {
	t.Helper()
	names, err := policy.WorkloadRequest{TrustDomain: c.TrustDomain().Name(), Domain: "sports", Service: "api", ProviderDNSSuffix: builtinE2ESuffix, InstanceID: id}.Names()
	if err != nil {
		t.Fatal(err)
	}
	return &instance{id: id, key: newKey(t), names: names}
}

// wantCode asserts a gRPC status code and message parts.
func wantCode(t testing.TB, err error, code codes.Code, parts ...string) {
	t.Helper()
	s, _ := status.FromError(err)
	if err == nil || s.Code() != code {
		t.Fatalf("error %v, want %v", err, code)
	}
	for _, p := range parts {
		if !strings.Contains(s.Message(), p) {
			t.Fatalf("message %q does not contain %q", s.Message(), p)
		}
	}
}

// extendCall is one extend API request to a node; it returns the status and the envelope.
func extendCall(t testing.TB, c *clustertest.Cluster, n *clustertest.Node, cert *tls.Certificate, method, path string, body any) (int, map[string]json.RawMessage) {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	ctx, cancel := context.WithTimeout(context.Background(), clustertest.WaitTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, n.URL(path), rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.HTTPClient(cert).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var env map[string]json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		t.Fatalf("%s %s: not JSON: %v", method, path, err)
	}
	if string(env["meta"]) != "{}" {
		t.Fatalf("%s %s: meta %s, want {}", method, path, env["meta"])
	}
	return resp.StatusCode, env
}

// The token flows and the extend API on three real processes: a register token issued
// through the leader registers once through a follower and its replay through the other
// follower is refused; a service key token (signed by the agent's own code) registers once
// and its replay through another node is refused; an unknown key version is refused naming
// it; the register-token instance extends over HTTPS on a follower (openssl verifies the new
// chain), confirms it on the other follower, and its old certificate can no longer extend;
// an expired certificate is told to register again.
func TestTokenFlowsAndExtendOnThreeNodes(t *testing.T) {
	c := clustertest.Start(t, clustertest.Options{
		Providers: []controlplane.ProviderConfig{{Name: controlplane.BuiltinProvider, DNSSuffix: builtinE2ESuffix}},
		Tune: func(_ int, cfg *controlplane.Config) {
			cfg.Services = []controlplane.ServiceConfig{{Name: "sports.api", LaunchGrants: []string{controlplane.BuiltinProvider}}}
		},
	})
	leader := c.Leader()
	followers := c.Followers()
	f1, f2 := followers[0], followers[1]
	adminCert := c.AdminCert()
	admin := meshcav1.NewAdminClient(c.Dial(leader, &adminCert))
	ctx, cancel := context.WithTimeout(context.Background(), clustertest.WaitTimeout)
	defer cancel()
	identity := func(n *clustertest.Node) meshcav1.IdentityClient {
		return meshcav1.NewIdentityClient(c.Dial(n, nil))
	}

	// A register token works once, across nodes.
	tok, err := admin.IssueRegisterToken(ctx, &meshcav1.IssueRegisterTokenRequest{Domain: "sports", Service: "api", InstanceId: "vm-1"})
	if err != nil {
		t.Fatal(err)
	}
	vm1 := builtinInstance(t, c, "vm-1")
	regReq := func(in *instance, token string) *meshcav1.RegisterRequest {
		return &meshcav1.RegisterRequest{Provider: controlplane.BuiltinProvider, Domain: "sports", Service: "api", Csr: in.csr(t), AttestationData: []byte(token)}
	}
	resp, err := identity(f1).Register(ctx, regReq(vm1, tok.GetToken()))
	if err != nil {
		t.Fatalf("register with a token through %s: %v", f1.ID, err)
	}
	certA := vm1.tlsCert(t, resp)
	_, err = identity(f2).Register(ctx, regReq(builtinInstance(t, c, "vm-1"), tok.GetToken()))
	wantCode(t, err, codes.PermissionDenied, "was already used at", "a register token works once")

	// A service key token works once, across nodes; an unknown key version is named.
	skey := newKey(t)
	spki, err := x509.MarshalPKIXPublicKey(skey.Public())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AddServiceKey(ctx, &meshcav1.AddServiceKeyRequest{Identity: "sports.api", Key: &meshcav1.ServiceKey{Version: "v1", PublicKey: spki}}); err != nil {
		t.Fatal(err)
	}
	sign := func(version, id string) string {
		s, err := agent.SignServiceToken(skey, agent.ServiceTokenRequest{Domain: "sports", Service: "api", KeyVersion: version, InstanceID: id, TrustDomain: c.TrustDomain()}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	skReq := func(in *instance, token string) *meshcav1.RegisterRequest {
		return &meshcav1.RegisterRequest{Provider: controlplane.BuiltinProvider, Domain: "sports", Service: "api", Csr: in.csr(t), ServiceToken: token}
	}
	st := sign("v1", "vm-2")
	// The key was added through the leader; poll until the follower has it.
	c.Poll("service key token registration through "+f2.ID, func() error {
		_, err := identity(f2).Register(ctx, skReq(builtinInstance(t, c, "vm-2"), st))
		if status.Code(err) == codes.PermissionDenied && strings.Contains(err.Error(), `key version "v1" is not registered`) {
			return err
		}
		if err != nil {
			t.Fatalf("register with a service key token through %s: %v", f2.ID, err)
		}
		return nil
	})
	_, err = identity(f1).Register(ctx, skReq(builtinInstance(t, c, "vm-2"), st))
	wantCode(t, err, codes.PermissionDenied, `was already used for "sports.api"`, "a replayed token is refused")
	_, err = identity(leader).Register(ctx, skReq(builtinInstance(t, c, "vm-3"), sign("v7", "vm-3")))
	wantCode(t, err, codes.PermissionDenied, `service_token: key version "v7" is not registered for service "sports.api" (registered: v1)`)

	// Extend on a follower, verify on the other, the old certificate is retired.
	id := controlplane.AuthenticatorID(controlplane.BuiltinProvider, "sports", "api", "vm-1")
	code, env := extendCall(t, c, f1, certA, http.MethodGet, controlplane.PathAuthenticators, nil)
	var list []controlplane.CertAuthenticator
	if err := json.Unmarshal(env["data"], &list); code != http.StatusOK || err != nil || len(list) != 1 || list[0].ID != id || list[0].Serial != resp.GetSerial() {
		t.Fatalf("list: %d %s (%v)", code, env["data"], err)
	}
	vm1.key = newKey(t)
	code, env = extendCall(t, c, f1, certA, http.MethodPost, controlplane.PathAuthenticators+"/"+id+"/extend",
		map[string]string{controlplane.FieldClientCertCSR: string(vm1.csr(t))})
	var ext controlplane.ExtendResult
	if err := json.Unmarshal(env["data"], &ext); code != http.StatusOK || err != nil || ext.CA == "" || ext.ClientCert == "" {
		t.Fatalf("extend: %d %s %s (%v)", code, env["data"], env["error"], err)
	}
	verifyWithOpenSSL(t, ext)
	certB, err := tls.X509KeyPair([]byte(ext.ClientCert), pemOfKey(t, vm1))
	if err != nil {
		t.Fatal(err)
	}
	code, env = extendCall(t, c, f2, &certB, http.MethodPost, controlplane.PathAuthenticators+"/"+id+"/extend-verify",
		map[string]string{controlplane.FieldClientCert: ext.ClientCert})
	if code != http.StatusOK {
		t.Fatalf("extend-verify through %s: %d %s", f2.ID, code, env["error"])
	}
	vm1.key = newKey(t)
	code, env = extendCall(t, c, leader, certA, http.MethodPost, controlplane.PathAuthenticators+"/"+id+"/extend",
		map[string]string{controlplane.FieldClientCertCSR: string(vm1.csr(t))})
	var apiErr controlplane.APIError
	if err := json.Unmarshal(env["error"], &apiErr); code != http.StatusForbidden || err != nil || apiErr.Code != "SERIAL_MISMATCH" ||
		!strings.Contains(apiErr.Message, "presented serial "+resp.GetSerial()+" is neither the current serial") {
		t.Fatalf("extend with the retired certificate: %d %s", code, env["error"])
	}

	// An expired certificate of ours is told to register again.
	expired := expiredCert(t, c, vm1)
	code, env = extendCall(t, c, f2, &expired, http.MethodPost, controlplane.PathAuthenticators+"/"+id+"/extend",
		map[string]string{controlplane.FieldClientCertCSR: string(vm1.csr(t))})
	if err := json.Unmarshal(env["error"], &apiErr); code != http.StatusUnauthorized || err != nil || apiErr.Code != "CERT_EXPIRED" ||
		!strings.Contains(apiErr.Message, "register again") || !strings.Contains(apiErr.Hint, "re-register") {
		t.Fatalf("extend with an expired certificate: %d %s", code, env["error"])
	}
}

// expiredCert is a certificate of the instance, signed with the cluster's CA key, that
// expired a minute ago.
func expiredCert(t testing.TB, c *clustertest.Cluster, in *instance) tls.Certificate {
	t.Helper()
	iss := c.Issuer()
	serial, err := ca.NewSerial(nil)
	if err != nil {
		t.Fatal(err)
	}
	uri, _ := url.Parse(in.names.SPIFFEID.String())
	now := time.Now()
	der, err := signer.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: in.names.CommonName},
		NotBefore: now.Add(-2 * time.Minute), NotAfter: now.Add(-time.Minute),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true, URIs: []*url.URL{uri}, DNSNames: []string{in.names.ServiceDNS, in.names.InstanceDNS},
		SignatureAlgorithm: iss.Signer().SignatureAlgorithm(),
	}, iss.Certificate(), in.key.Public(), iss.Signer())
	if err != nil {
		t.Fatal(err)
	}
	out := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: in.key}
	for _, ch := range iss.Chain() {
		out.Certificate = append(out.Certificate, ch.Raw)
	}
	return out
}

// pemOfKey is an instance's current key in PEM.
func pemOfKey(t testing.TB, in *instance) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(in.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// verifyWithOpenSSL checks with openssl that an extend's certificate chains to its bundle.
func verifyWithOpenSSL(t *testing.T, r controlplane.ExtendResult) {
	t.Helper()
	bin := testenv.RequireOpenSSL(t)
	certs, err := ca.ParseCertificatesPEM([]byte(r.ClientCert))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, data := range map[string][]byte{"ca.pem": []byte(r.CA), "chain.pem": []byte(r.ClientCert), "leaf.pem": ca.EncodeCertificatesPEM(certs[0].Raw)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(bin, "verify", "-CAfile", filepath.Join(dir, "ca.pem"), "-untrusted", filepath.Join(dir, "chain.pem"),
		"-purpose", "sslclient", filepath.Join(dir, "leaf.pem")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "leaf.pem: OK") {
		t.Fatalf("openssl verify: %v: %s", err, out)
	}
}
