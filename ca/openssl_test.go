package ca_test

import (
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/internal/testenv"
)

// openssl runs the openssl command and returns its combined output.
func openssl(t testing.TB, bin string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	return string(out), err
}

func writeFile(t testing.TB, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// attime is when openssl checks validity: an hour into the certificates' life, whatever the
// machine's clock says.
var attime = fmt.Sprint(t0.Add(time.Hour).Unix())

// checkWithOpenSSL issues two workload certificates from a, revokes one in a CRL, and has
// openssl judge all of it: the chains verify to the bundle's root, the text form shows
// exactly the expected SANs, CA:FALSE and key usages, the CRL's signature verifies, and
// -crl_check refuses the revoked certificate while accepting the other.
func checkWithOpenSSL(t *testing.T, a *ca.Authority) {
	bin := testenv.RequireOpenSSL(t)
	dir := t.TempDir()

	bundlePEM, err := a.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	root := writeFile(t, filepath.Join(dir, "root.pem"), bundlePEM)
	// -untrusted chain.pem, or nothing when the root signs leaves itself (openssl refuses an
	// empty file).
	var untrusted []string
	if chainPEM := a.ChainPEM(); len(chainPEM) > 0 {
		untrusted = []string{"-untrusted", writeFile(t, filepath.Join(dir, "chain.pem"), chainPEM)}
	}
	verify := func(args ...string) (string, error) {
		full := append([]string{"verify", "-attime", attime, "-CAfile", root}, untrusted...)
		return openssl(t, bin, append(full, args...)...)
	}
	// openssl crl -CAfile needs the CRL's signer (the issuing CA) in the file it reads.
	signerAndRoot := writeFile(t, filepath.Join(dir, "issuer-and-root.pem"), append(ca.EncodeCertificatesPEM(a.Issuer().Certificate().Raw), bundlePEM...))

	issue := func(serial int64) (string, *big.Int) {
		got, err := a.IssueWorkload(workloadCSR(t, workloadKey(t)), workloadRequest(serial))
		if err != nil {
			t.Fatal(err)
		}
		return writeFile(t, filepath.Join(dir, fmt.Sprintf("leaf-%d.pem", serial)), ca.EncodeCertificatesPEM(got.Chain[0])), got.Template.SerialNumber
	}
	leaf, _ := issue(1001)
	revokedLeaf, revokedSerial := issue(1002)

	t.Run("openssl verify accepts the leaf through the chain to the root", func(t *testing.T) {
		out, err := verify("-purpose", "sslclient", leaf)
		if err != nil || strings.TrimSpace(out) != leaf+": OK" {
			t.Fatalf("openssl verify: %v\n%s", err, out)
		}
	})
	t.Run("openssl verify refuses the leaf as a server certificate (clientAuth only)", func(t *testing.T) {
		out, err := verify("-purpose", "sslserver", leaf)
		if err == nil {
			t.Fatalf("openssl accepted a clientAuth-only certificate for sslserver:\n%s", out)
		}
	})
	t.Run("openssl verify refuses the leaf under another root", func(t *testing.T) {
		other := newAuthority(t, selfSigned(t, signer.ECDSAP256, false))
		otherPEM, _ := other.Bundle().Marshal()
		otherRoot := writeFile(t, filepath.Join(dir, "other-root.pem"), otherPEM)
		out, err := openssl(t, bin, append(append([]string{"verify", "-attime", attime, "-CAfile", otherRoot}, untrusted...), leaf)...)
		if err == nil {
			t.Fatalf("openssl accepted the leaf under an unrelated root:\n%s", out)
		}
	})
	t.Run("openssl x509 -text shows exactly the SANs, CA:FALSE and the key usages", func(t *testing.T) {
		out, err := openssl(t, bin, "x509", "-in", leaf, "-noout", "-text")
		if err != nil {
			t.Fatalf("openssl x509: %v\n%s", err, out)
		}
		sans := strings.Split(extensionValue(t, out, "X509v3 Subject Alternative Name:"), ", ")
		slices.Sort(sans)
		want := []string{"DNS:" + testInstDNS, "DNS:" + testSvcDNS, "URI:" + testSPIFFE}
		slices.Sort(want)
		if !slices.Equal(sans, want) {
			t.Errorf("SANs %q, want exactly %q", sans, want)
		}
		if got := extensionValue(t, out, "X509v3 Basic Constraints: critical"); got != "CA:FALSE" {
			t.Errorf("basic constraints %q, want CA:FALSE", got)
		}
		if got := extensionValue(t, out, "X509v3 Key Usage: critical"); got != "Digital Signature" {
			t.Errorf("key usage %q, want Digital Signature", got)
		}
		if got := extensionValue(t, out, "X509v3 Extended Key Usage:"); got != "TLS Web Client Authentication" {
			t.Errorf("extended key usage %q, want TLS Web Client Authentication", got)
		}
		if !strings.Contains(out, "Subject: CN = sports.api\n") {
			t.Errorf("subject is not CN = sports.api:\n%s", out)
		}
	})

	crl, err := a.CRL(ca.CRLRequest{
		Number: big.NewInt(1), ThisUpdate: t0, NextUpdate: t0.Add(24 * time.Hour),
		Revoked: []ca.Revocation{{Serial: revokedSerial, RevokedAt: t0, Reason: ca.ReasonKeyCompromise, NotAfter: t0.Add(24 * time.Hour)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	crlPath := writeFile(t, filepath.Join(dir, "crl.pem"), ca.EncodeCRLPEM(crl))
	t.Run("openssl crl verifies the CRL's signature", func(t *testing.T) {
		out, err := openssl(t, bin, "crl", "-in", crlPath, "-CAfile", signerAndRoot, "-noout")
		if err != nil || !strings.Contains(out, "verify OK") {
			t.Fatalf("openssl crl: %v\n%s", err, out)
		}
	})
	t.Run("openssl crl refuses a CRL checked against another CA", func(t *testing.T) {
		other := newAuthority(t, selfSigned(t, signer.ECDSAP384, false))
		otherPEM, _ := other.Bundle().Marshal()
		otherRoot := writeFile(t, filepath.Join(dir, "other-ca.pem"), otherPEM)
		out, _ := openssl(t, bin, "crl", "-in", crlPath, "-CAfile", otherRoot, "-noout")
		if strings.Contains(out, "verify OK") {
			t.Fatalf("openssl verified the CRL against an unrelated CA:\n%s", out)
		}
	})
	t.Run("openssl verify -crl_check refuses the revoked certificate", func(t *testing.T) {
		out, err := verify("-crl_check", "-CRLfile", crlPath, revokedLeaf)
		if err == nil || !strings.Contains(out, "certificate revoked") {
			t.Fatalf("openssl verify -crl_check: %v\n%s", err, out)
		}
	})
	t.Run("openssl verify -crl_check accepts the certificate not revoked", func(t *testing.T) {
		out, err := verify("-crl_check", "-CRLfile", crlPath, leaf)
		if err != nil || strings.TrimSpace(out) != leaf+": OK" {
			t.Fatalf("openssl verify -crl_check: %v\n%s", err, out)
		}
	})
}

// extensionValue returns the line after an extension's heading ("X509v3 Key Usage: critical")
// in openssl's text form.
func extensionValue(t *testing.T, text, heading string) string {
	t.Helper()
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) == heading && i+1 < len(lines) {
			return strings.TrimSpace(lines[i+1])
		}
	}
	t.Errorf("no %q in:\n%s", heading, text)
	return ""
}

func TestOpenSSLSoftwareSigners(t *testing.T) {
	for _, kt := range []signer.KeyType{signer.ECDSAP256, signer.ECDSAP384, signer.RSA2048, signer.Ed25519} {
		t.Run(string(kt)+" root and intermediate", func(t *testing.T) {
			checkWithOpenSSL(t, newAuthority(t, selfSigned(t, kt, true)))
		})
	}
	t.Run("ecdsa-p256 root alone", func(t *testing.T) {
		checkWithOpenSSL(t, newAuthority(t, selfSigned(t, signer.ECDSAP256, false)))
	})
}

// A plug-in CA made by openssl itself, in the Istio cacerts layout, loads and issues
// certificates openssl accepts.
func TestOpenSSLMadeCACerts(t *testing.T) {
	bin := testenv.RequireOpenSSL(t)
	dir := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// Validity relative to the machine's clock, which is what openssl uses when signing; the
	// load below is checked at that same clock's "now" by reading the certificates' dates.
	writeFile(t, filepath.Join(dir, "root.cnf"), []byte("[ext]\nbasicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"))
	writeFile(t, filepath.Join(dir, "ca.cnf"), []byte("[ext]\nbasicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"))
	run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "root-key.pem", "-out", "root-cert.pem",
		"-days", "3650", "-subj", "/O=Istio/CN=Root CA", "-config", "root.cnf", "-extensions", "ext")
	run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca-key.pem", "-out", "ca.csr", "-subj", "/O=Istio/CN=Intermediate CA/L=cluster1")
	run("x509", "-req", "-in", "ca.csr", "-CA", "root-cert.pem", "-CAkey", "root-key.pem", "-CAcreateserial", "-out", "ca-cert.pem",
		"-days", "365", "-extfile", "ca.cnf", "-extensions", "ext", "-sha256")
	caCert, err := os.ReadFile(filepath.Join(dir, "ca-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	rootCert, _ := os.ReadFile(filepath.Join(dir, "root-cert.pem"))
	writeFile(t, filepath.Join(dir, "cert-chain.pem"), append(caCert, rootCert...))

	certs, err := ca.ParseCertificatesPEM(caCert)
	if err != nil {
		t.Fatal(err)
	}
	now := certs[0].NotBefore.Add(time.Hour) // inside every certificate's life, from their own dates
	iss, err := ca.LoadCACerts(dir, nil, now)
	if err != nil {
		t.Fatalf("openssl-made cacerts refused: %v", err)
	}
	a := newAuthority(t, iss)
	req := workloadRequest(4242)
	req.Now = now
	got, err := a.IssueWorkload(workloadCSR(t, workloadKey(t)), req)
	if err != nil {
		t.Fatal(err)
	}
	leaf := writeFile(t, filepath.Join(dir, "leaf.pem"), ca.EncodeCertificatesPEM(got.Chain[0]))
	chain := writeFile(t, filepath.Join(dir, "issued-chain.pem"), ca.EncodeCertificatesPEM(got.Chain[1:]...))
	out, err := openssl(t, bin, "verify", "-attime", fmt.Sprint(now.Add(time.Minute).Unix()), "-CAfile", filepath.Join(dir, "root-cert.pem"), "-untrusted", chain, leaf)
	if err != nil || strings.TrimSpace(out) != leaf+": OK" {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	if len(got.Chain) != 2 {
		t.Errorf("chain of %d, want leaf + ca-cert", len(got.Chain))
	}
}
