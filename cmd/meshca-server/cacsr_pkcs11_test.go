//go:build cgo

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/internal/clustertest"
	"github.com/meshca/meshca/internal/testenv"
)

const (
	hsmTrustDomain = "mesh.test"
	hsmKeyLabel    = "meshca-intermediate"
	hsmSuffix      = "meshca.mesh.test"
)

// TestHSMIntermediateUnderAnOfflineRoot is the whole path of an intermediate whose key never
// leaves the HSM, over real processes: `meshctl ca init-root` makes the offline root,
// `meshca-server ca csr` generates the key on a SoftHSM2 token and exports only its CSR,
// `meshctl ca sign-intermediate --csr` signs it, a meshca-server in pkcs11 mode starts from the
// signed certificate and the root, and the workload certificate it issues is accepted by
// `openssl verify -CAfile root -untrusted intermediate`. The key on the token is sensitive and
// never extractable, and no key file is written anywhere.
func TestHSMIntermediateUnderAnOfflineRoot(t *testing.T) {
	openssl := testenv.RequireOpenSSL(t)
	tok := testenv.NewSoftHSMToken(t, "meshca-int")
	meshctl := clustertest.Binary(t, "meshctl")
	server := clustertest.Binary(t, "meshca-server")
	dir := t.TempDir()
	rootDir, csrPath, cacerts := filepath.Join(dir, "root"), filepath.Join(dir, "int-csr.pem"), filepath.Join(dir, "cacerts")
	run := func(bin string, args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), tok.Env()...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	run(meshctl, "ca", "init-root", "--out", rootDir, "--trust-domain", hsmTrustDomain, "--insecure-plaintext-key")
	csrArgs := []string{"ca", "csr", "--pkcs11-module", tok.ModulePath, "--token-label", tok.Label, "--pin-file", tok.PINFile,
		"--key-label", hsmKeyLabel, "--key-type", "ecdsa-p256", "--trust-domain", hsmTrustDomain, "--out", csrPath}
	if out := run(server, csrArgs...); !strings.Contains(out, "generated ecdsa-p256 key") {
		t.Fatalf("first ca csr did not generate the key:\n%s", out)
	}
	first := readCSR(t, csrPath)
	// A second run finds the key by its label and asks for the same public key.
	if out := run(server, csrArgs...); !strings.Contains(out, "found ecdsa-p256 key") {
		t.Fatalf("second ca csr did not find the key:\n%s", out)
	}
	if second := readCSR(t, csrPath); !second.PublicKey.(*ecdsa.PublicKey).Equal(first.PublicKey) {
		t.Fatal("the second CSR is for another key")
	}
	if len(first.URIs) != 1 || first.URIs[0].String() != "spiffe://"+hsmTrustDomain {
		t.Fatalf("CSR URI SANs %v, want spiffe://%s", first.URIs, hsmTrustDomain)
	}
	run(meshctl, "ca", "sign-intermediate", "--root", rootDir, "--csr", csrPath, "--out", cacerts)
	if _, err := os.Stat(filepath.Join(cacerts, ca.CAKeyFile)); err == nil {
		t.Fatalf("sign-intermediate wrote %s without --key", ca.CAKeyFile)
	}

	c := clustertest.Start(t, clustertest.Options{
		Nodes: 1, TrustDomain: hsmTrustDomain, Env: tok.Env(),
		Providers: []controlplane.ProviderConfig{{Name: controlplane.BuiltinProvider, DNSSuffix: hsmSuffix}},
		Tune: func(_ int, cfg *controlplane.Config) {
			copyFiles(t, cacerts, cfg.CA.Dir)
			cfg.CA.Mode, cfg.CA.KeyType = controlplane.CAModePKCS11, "ecdsa-p256"
			cfg.CA.PKCS11 = controlplane.PKCS11Config{Module: tok.ModulePath, TokenLabel: tok.Label, KeyLabel: hsmKeyLabel, PINFile: tok.PINFile}
			cfg.Services = []controlplane.ServiceConfig{{Name: "sports.api", LaunchGrants: []string{controlplane.BuiltinProvider}}}
		},
	})
	node := c.Nodes[0]

	// The admin's client certificate comes from the offline root's holder: the test has no
	// other key, the cluster's is on the token.
	admin := rootSignedCert(t, rootDir, c.AdminID())
	ctx, cancel := context.WithTimeout(context.Background(), clustertest.WaitTimeout)
	defer cancel()
	tokResp, err := meshcav1.NewAdminClient(c.Dial(node, &admin)).IssueRegisterToken(ctx,
		&meshcav1.IssueRegisterTokenRequest{Domain: "sports", Service: "api", InstanceId: "pod-1"})
	if err != nil {
		t.Fatalf("IssueRegisterToken: %v", err)
	}
	resp, err := meshcav1.NewIdentityClient(c.Dial(node, nil)).Register(ctx, &meshcav1.RegisterRequest{
		Provider: controlplane.BuiltinProvider, Domain: "sports", Service: "api",
		Csr: workloadCSR(t, "pod-1"), AttestationData: []byte(tokResp.GetToken()),
	})
	if err != nil {
		t.Fatalf("Register: %v", err)
	}
	leafPath := filepath.Join(dir, "leaf.pem")
	if err := os.WriteFile(leafPath, []byte(resp.GetCertificate()), 0o600); err != nil {
		t.Fatal(err)
	}
	intermediate := readCert(t, filepath.Join(cacerts, ca.CACertFile))
	leaf := readCert(t, leafPath)
	if string(leaf.RawIssuer) != string(intermediate.RawSubject) || leaf.CheckSignatureFrom(intermediate) != nil {
		t.Fatalf("the workload certificate (issuer %s) is not signed by the HSM intermediate %s", leaf.Issuer, intermediate.Subject)
	}
	out, err := exec.Command(openssl, "verify", "-CAfile", filepath.Join(rootDir, ca.RootCertFile),
		"-untrusted", filepath.Join(cacerts, ca.CACertFile), leafPath).CombinedOutput()
	if err != nil || !strings.Contains(string(out), leafPath+": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	// Without the intermediate the root alone does not vouch for the leaf: the chain really
	// goes through the HSM's certificate.
	if out, err := exec.Command(openssl, "verify", "-CAfile", filepath.Join(rootDir, ca.RootCertFile), leafPath).CombinedOutput(); err == nil {
		t.Fatalf("openssl verify without the intermediate accepted the leaf:\n%s", out)
	}

	assertKeyStaysOnToken(t, tok, hsmKeyLabel)
	// No private key was written by ca csr or sign-intermediate, nor put in the node's ca.dir.
	if _, err := os.Stat(filepath.Join(c.CADir(), ca.CAKeyFile)); err == nil {
		t.Errorf("the node's ca.dir holds %s", ca.CAKeyFile)
	}
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || path == filepath.Join(rootDir, "root-key.pem") {
			return err
		}
		if b, err := os.ReadFile(path); err == nil && strings.Contains(string(b), "PRIVATE KEY") {
			t.Errorf("%s holds a private key", path)
		}
		return nil
	})
}

// assertKeyStaysOnToken opens the token as a second PKCS#11 client and checks that the key
// labelled label is sensitive and never extractable, and that the token refuses its value.
func assertKeyStaysOnToken(t *testing.T, tok testenv.SoftHSMToken, label string) {
	t.Helper()
	p := pkcs11.New(tok.ModulePath)
	if p == nil {
		t.Fatalf("load %s", tok.ModulePath)
	}
	if err := p.Initialize(); err != nil {
		t.Fatal(err)
	}
	defer p.Destroy()
	defer p.Finalize()
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	var slot uint
	found := false
	for _, s := range slots {
		if info, err := p.GetTokenInfo(s); err == nil && info.Label == tok.Label {
			slot, found = s, true
		}
	}
	if !found {
		t.Fatalf("token %q not found", tok.Label)
	}
	sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer p.CloseSession(sh)
	if err := p.Login(sh, pkcs11.CKU_USER, tok.UserPIN); err != nil {
		t.Fatal(err)
	}
	defer p.Logout(sh)
	if err := p.FindObjectsInit(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}); err != nil {
		t.Fatal(err)
	}
	objs, _, err := p.FindObjects(sh, 2)
	p.FindObjectsFinal(sh)
	if err != nil || len(objs) != 1 {
		t.Fatalf("private keys labelled %q: %d (%v), want 1", label, len(objs), err)
	}
	attrs, err := p.GetAttributeValue(sh, objs[0], []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_ALWAYS_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_NEVER_EXTRACTABLE, nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		name string
		val  bool
	}{{"CKA_SENSITIVE", true}, {"CKA_EXTRACTABLE", false}, {"CKA_ALWAYS_SENSITIVE", true}, {"CKA_NEVER_EXTRACTABLE", true}} {
		got := len(attrs[i].Value) == 1 && attrs[i].Value[0] != 0
		if got != want.val {
			t.Errorf("%s = %t, want %t", want.name, got, want.val)
		}
	}
	if _, err := p.GetAttributeValue(sh, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); !errors.Is(err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_SENSITIVE)) {
		t.Errorf("reading the key's value: err = %v, want CKR_ATTRIBUTE_SENSITIVE", err)
	}
}

// rootSignedCert is a one-hour client certificate for id signed directly by the offline root.
func rootSignedCert(t *testing.T, rootDir string, id spiffeid.ID) tls.Certificate {
	t.Helper()
	root := readCert(t, filepath.Join(rootDir, ca.RootCertFile))
	rootKey, err := signer.ReadPlaintextFile(filepath.Join(rootDir, "root-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := ca.NewSerial(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := signer.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: id.Path()},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs: []*url.URL{id.URL()}, SignatureAlgorithm: rootKey.SignatureAlgorithm(),
	}, root, key.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// workloadCSR is a sports.api CSR of instance id through the built-in provider.
func workloadCSR(t *testing.T, id string) []byte {
	t.Helper()
	names, err := policy.WorkloadRequest{TrustDomain: hsmTrustDomain, Domain: "sports", Service: "api", ProviderDNSSuffix: hsmSuffix, InstanceID: id}.Names()
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: names.CommonName}, DNSNames: []string{names.ServiceDNS, names.InstanceDNS},
		URIs: []*url.URL{names.SPIFFEID.URL()},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func readCSR(t *testing.T, path string) *x509.CertificateRequest {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	der, err := ca.DecodeCSR(raw)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("%s: the token's signature does not verify: %v", path, err)
	}
	return csr
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ca.ParseCertificatesPEM(raw)
	if err != nil || len(certs) == 0 {
		t.Fatalf("%s: %v", path, err)
	}
	return certs[0]
}

func copyFiles(t *testing.T, from, to string) {
	t.Helper()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
