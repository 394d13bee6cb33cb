package main

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/controlplane"
)

// Files of an offline root folder (`meshctl ca init-root`) and of an intermediate request
// (`meshctl ca intermediate-csr`). The cacerts files are ca's.
const (
	// offlineRootCertFile is the root certificate; the same name as in the cacerts layout.
	offlineRootCertFile = ca.RootCertFile
	// offlineRootSealedKeyFile is the root key sealed under a KEK.
	offlineRootSealedKeyFile = "root-key.sealed.pem"
	// offlineRootPlainKeyFile is the root key unencrypted (only with --insecure-plaintext-key).
	offlineRootPlainKeyFile = "root-key.pem"
	// intermediateCSRFile is the intermediate's certificate signing request.
	intermediateCSRFile = "ca-csr.pem"
)

// errOffline marks a refusal of the offline CA commands: an unusable root folder, CSR or key.
var errOffline = errors.New("offline CA")

// offlineCommands are the offline root commands: they touch only local files and never dial
// a server, so they can run on an air-gapped machine.
func offlineCommands() []*command {
	return []*command{
		{path: "ca init-root", summary: "make an offline root key and certificate in a folder", maxArgs: 0, noClient: true,
			setup: func(fs *flag.FlagSet) runFunc {
				out := fs.String("out", "", "folder to write root-cert.pem and the root key to (required; must not hold a root yet)")
				tdName := fs.String("trust-domain", "", "trust domain the root's URI SAN names (required)")
				keyType := fs.String("key-type", string(signer.ECDSAP256), "root key type: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519")
				org := fs.String("organization", "", "subject O of the root (default meshca)")
				ttl := fs.Duration("ttl", ca.DefaultRootTTL, "root lifetime")
				kekFile := fs.String("kek-file", "", "seal the root key under the KEK in this file (writes root-key.sealed.pem)")
				plain := fs.Bool("insecure-plaintext-key", false, "write the root key unencrypted (root-key.pem) instead of sealing it")
				return func(_ context.Context, inv *invocation, _ []string) error {
					if *out == "" {
						return usageError("--out is required")
					}
					if (*kekFile == "") == !*plain {
						return usageError("give exactly one of --kek-file and --insecure-plaintext-key")
					}
					td, err := spiffeid.TrustDomainFromString(*tdName)
					if err != nil {
						return usageError("--trust-domain %q: %v", *tdName, err)
					}
					kt, err := signer.ParseKeyType(*keyType)
					if err != nil {
						return usageError("--key-type: %v", err)
					}
					res, err := initRoot(rootSpec{dir: *out, td: td, keyType: kt, org: *org, ttl: *ttl, kekFile: *kekFile}, time.Now())
					if err != nil {
						return err
					}
					sum := sha256.Sum256(res.cert.Raw)
					_, err = fmt.Fprintf(inv.app.stdout, "wrote %s and %s: root %q, SHA-256 %x, valid until %s\n", res.certPath, res.keyPath,
						res.cert.Subject.CommonName, sum, res.cert.NotAfter.UTC().Format(time.RFC3339))
					return err
				}
			}},
		{path: "ca intermediate-csr", summary: "make an intermediate CA key and its CSR where the cluster's key will live", maxArgs: 0, noClient: true,
			setup: func(fs *flag.FlagSet) runFunc {
				out := fs.String("out", "", "folder to write ca-key.pem (0600) and ca-csr.pem to (required)")
				tdName := fs.String("trust-domain", "", "the cluster's trust domain, named in the CSR's URI SAN (required)")
				keyType := fs.String("key-type", string(signer.ECDSAP256), "key type: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519")
				return func(_ context.Context, inv *invocation, _ []string) error {
					if *out == "" {
						return usageError("--out is required")
					}
					td, err := spiffeid.TrustDomainFromString(*tdName)
					if err != nil {
						return usageError("--trust-domain %q: %v", *tdName, err)
					}
					kt, err := signer.ParseKeyType(*keyType)
					if err != nil {
						return usageError("--key-type: %v", err)
					}
					keyPath, csrPath, err := intermediateCSR(*out, td, kt)
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(inv.app.stdout, "wrote %s and %s; have the root's holder sign %s with `meshctl ca sign-intermediate`\n", keyPath, csrPath, csrPath)
					return err
				}
			}},
		{path: "ca sign-intermediate", summary: "sign a cluster's intermediate CSR with the offline root into an Istio cacerts folder", maxArgs: 0, noClient: true,
			setup: func(fs *flag.FlagSet) runFunc {
				rootDir := fs.String("root", "", "offline root folder from `meshctl ca init-root` (required)")
				kekFile := fs.String("kek-file", "", "KEK file the root key is sealed under (for root-key.sealed.pem)")
				csrFile := fs.String("csr", "", "the intermediate's CSR, PEM (required)")
				keyFile := fs.String("key", "", "the intermediate's private key, copied to ca-key.pem when given (it must match the CSR)")
				out := fs.String("out", "", "cacerts folder to write ca-cert.pem, cert-chain.pem, root-cert.pem (and ca-key.pem) to (required)")
				ttl := fs.Duration("ttl", ca.DefaultIntermediateTTL, "intermediate lifetime (cut to the root's)")
				return func(_ context.Context, inv *invocation, _ []string) error {
					switch {
					case *rootDir == "":
						return usageError("--root is required")
					case *csrFile == "":
						return usageError("--csr is required")
					case *out == "":
						return usageError("--out is required")
					case *ttl <= 0:
						return usageError("--ttl must be positive")
					}
					cert, err := signIntermediate(signSpec{rootDir: *rootDir, kekFile: *kekFile, csrFile: *csrFile, keyFile: *keyFile, out: *out, ttl: *ttl}, time.Now())
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(inv.app.stdout, "wrote the cacerts layout to %s: intermediate %q for %v, valid until %s\n", *out,
						cert.Subject.CommonName, uriNames(cert), cert.NotAfter.UTC().Format(time.RFC3339))
					return err
				}
			}},
	}
}

// rootSpec says what init-root makes.
type rootSpec struct {
	dir     string
	td      spiffeid.TrustDomain
	keyType signer.KeyType
	org     string
	ttl     time.Duration
	kekFile string // empty: plaintext key
}

// rootResult is what init-root wrote.
type rootResult struct {
	cert              *x509.Certificate
	certPath, keyPath string
}

// initRoot makes a root key and a self-signed root certificate in spec.dir. It refuses a
// folder that already holds a root, so a second run cannot replace the root of a mesh.
func initRoot(spec rootSpec, now time.Time) (rootResult, error) {
	certPath := filepath.Join(spec.dir, offlineRootCertFile)
	keyPath := filepath.Join(spec.dir, offlineRootPlainKeyFile)
	var kek signer.KEK
	if spec.kekFile != "" {
		k, err := signer.KEKFromFile(spec.kekFile)
		if err != nil {
			return rootResult{}, fmt.Errorf("--kek-file: %w", err)
		}
		kek, keyPath = k, filepath.Join(spec.dir, offlineRootSealedKeyFile)
	}
	for _, p := range []string{certPath, filepath.Join(spec.dir, offlineRootSealedKeyFile), filepath.Join(spec.dir, offlineRootPlainKeyFile)} {
		if _, err := os.Stat(p); err == nil {
			return rootResult{}, fmt.Errorf("--out: %w: %s exists; a root is never overwritten", errOffline, p)
		}
	}
	if spec.ttl <= 0 {
		return rootResult{}, fmt.Errorf("--ttl: %w: must be positive", errOffline)
	}
	key, err := signer.GenerateSoftware(spec.keyType)
	if err != nil {
		return rootResult{}, fmt.Errorf("root key: %w", err)
	}
	iss, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: spec.td, Organization: spec.org, RootKey: key, RootTTL: spec.ttl, Now: now})
	if err != nil {
		return rootResult{}, fmt.Errorf("root certificate: %w", err)
	}
	if err := os.MkdirAll(spec.dir, 0o700); err != nil {
		return rootResult{}, fmt.Errorf("--out: %w", err)
	}
	if spec.kekFile != "" {
		err = signer.WriteEncryptedFile(keyPath, key, kek)
	} else {
		err = signer.WritePlaintextFile(keyPath, key)
	}
	if err != nil {
		return rootResult{}, fmt.Errorf("root key: %w", err)
	}
	cert := iss.Certificate()
	if err := os.WriteFile(certPath, ca.EncodeCertificatesPEM(cert.Raw), 0o644); err != nil {
		return rootResult{}, fmt.Errorf("--out: %w", err)
	}
	return rootResult{cert: cert, certPath: certPath, keyPath: keyPath}, nil
}

// intermediateCSR makes an intermediate key in dir/ca-key.pem (0600, the cacerts layout's
// plaintext PEM) and its CSR, naming spiffe://<td>, in dir/ca-csr.pem.
func intermediateCSR(dir string, td spiffeid.TrustDomain, kt signer.KeyType) (keyPath, csrPath string, err error) {
	keyPath, csrPath = filepath.Join(dir, ca.CAKeyFile), filepath.Join(dir, intermediateCSRFile)
	if _, err := os.Stat(keyPath); err == nil {
		return "", "", fmt.Errorf("--out: %w: %s exists; an intermediate key is never overwritten", errOffline, keyPath)
	}
	key, err := signer.GenerateSoftware(kt)
	if err != nil {
		return "", "", fmt.Errorf("intermediate key: %w", err)
	}
	der, err := controlplane.IntermediateCSR(td, key)
	if err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("--out: %w", err)
	}
	if err := signer.WritePlaintextFile(keyPath, key); err != nil {
		return "", "", fmt.Errorf("intermediate key: %w", err)
	}
	if err := os.WriteFile(csrPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644); err != nil {
		return "", "", fmt.Errorf("--out: %w", err)
	}
	return keyPath, csrPath, nil
}

// signSpec says what sign-intermediate signs and where it writes.
type signSpec struct {
	rootDir, kekFile, csrFile, keyFile, out string
	ttl                                     time.Duration
}

// signIntermediate signs the CSR with the offline root into the Istio cacerts layout. The
// intermediate gets the CSR's key and its single spiffe:// URI SAN (a trust domain ID), is
// CA:TRUE with path length 0 (it signs workloads only) and ends no later than the root.
func signIntermediate(spec signSpec, now time.Time) (*x509.Certificate, error) {
	rootCert, rootKey, err := openOfflineRoot(spec.rootDir, spec.kekFile)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(spec.csrFile)
	if err != nil {
		return nil, fmt.Errorf("--csr: %w", err)
	}
	der, err := ca.DecodeCSR(raw)
	if err != nil {
		return nil, fmt.Errorf("--csr %s: %w", spec.csrFile, err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("--csr %s: %w: %w", spec.csrFile, errOffline, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("--csr %s: %w: the signature does not verify: %w", spec.csrFile, errOffline, err)
	}
	if _, err := signer.KeyTypeOf(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("--csr %s: %w: key: %w", spec.csrFile, errOffline, err)
	}
	td, err := csrTrustDomain(csr)
	if err != nil {
		return nil, fmt.Errorf("--csr %s: %w", spec.csrFile, err)
	}
	var keyPEM []byte
	if spec.keyFile != "" {
		if keyPEM, err = os.ReadFile(spec.keyFile); err != nil {
			return nil, fmt.Errorf("--key: %w", err)
		}
		key, err := signer.ParsePlaintextPEM(keyPEM)
		if err != nil {
			return nil, fmt.Errorf("--key %s: %w", spec.keyFile, err)
		}
		if !samePublicKey(key.Public(), csr.PublicKey) {
			return nil, fmt.Errorf("--key %s: %w: it is not the key of the CSR %s", spec.keyFile, errOffline, spec.csrFile)
		}
	}
	serial, err := ca.NewSerial(rand.Reader)
	if err != nil {
		return nil, err
	}
	start := now.UTC().Truncate(time.Second)
	notAfter := start.Add(spec.ttl)
	if notAfter.After(rootCert.NotAfter) {
		notAfter = rootCert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: rootCert.Subject.Organization,
			CommonName:   "meshca intermediate CA " + td.Name(),
			SerialNumber: serial.Text(16),
		},
		NotBefore:             start.Add(-5 * time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		URIs:                  csr.URIs,
		SignatureAlgorithm:    rootKey.SignatureAlgorithm(),
	}
	certDER, err := signer.CreateCertificate(rand.Reader, tmpl, rootCert, csr.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("signing the intermediate: %w", err)
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(spec.out, 0o700); err != nil {
		return nil, fmt.Errorf("--out: %w", err)
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{ca.CACertFile, ca.EncodeCertificatesPEM(cert.Raw), 0o644},
		{ca.CertChainFile, ca.EncodeCertificatesPEM(cert.Raw, rootCert.Raw), 0o644},
		{ca.RootCertFile, ca.EncodeCertificatesPEM(rootCert.Raw), 0o644},
	}
	if keyPEM != nil {
		files = append(files, struct {
			name string
			data []byte
			mode os.FileMode
		}{ca.CAKeyFile, keyPEM, 0o600})
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(spec.out, f.name), f.data, f.mode); err != nil {
			return nil, fmt.Errorf("--out: %w", err)
		}
	}
	return cert, nil
}

// openOfflineRoot reads the root certificate and key of an init-root folder: the sealed key
// with the KEK, or the plaintext key.
func openOfflineRoot(dir, kekFile string) (*x509.Certificate, signer.Signer, error) {
	raw, err := os.ReadFile(filepath.Join(dir, offlineRootCertFile))
	if err != nil {
		return nil, nil, fmt.Errorf("--root: %w", err)
	}
	certs, err := ca.ParseCertificatesPEM(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("--root %s: %w", offlineRootCertFile, err)
	}
	if len(certs) != 1 || !certs[0].IsCA {
		return nil, nil, fmt.Errorf("--root %s: %w: want exactly one CA certificate", offlineRootCertFile, errOffline)
	}
	root := certs[0]
	var key *signer.Software
	sealed := filepath.Join(dir, offlineRootSealedKeyFile)
	switch _, statErr := os.Stat(sealed); {
	case statErr == nil:
		if kekFile == "" {
			return nil, nil, fmt.Errorf("--kek-file: %w: required, the root key %s is sealed", errOffline, sealed)
		}
		kek, err := signer.KEKFromFile(kekFile)
		if err != nil {
			return nil, nil, fmt.Errorf("--kek-file: %w", err)
		}
		if key, err = signer.ReadEncryptedFile(sealed, kek); err != nil {
			return nil, nil, fmt.Errorf("--root: %w", err)
		}
	case errors.Is(statErr, fs.ErrNotExist):
		if key, err = signer.ReadPlaintextFile(filepath.Join(dir, offlineRootPlainKeyFile)); err != nil {
			return nil, nil, fmt.Errorf("--root: %w", err)
		}
	default:
		return nil, nil, fmt.Errorf("--root: %w", statErr)
	}
	if !samePublicKey(key.Public(), root.PublicKey) {
		return nil, nil, fmt.Errorf("--root: %w: the key does not belong to %s", errOffline, offlineRootCertFile)
	}
	return root, key, nil
}

// csrTrustDomain reads the trust domain an intermediate CSR names: exactly one URI SAN, a
// trust domain ID (spiffe://<td> with no path).
func csrTrustDomain(csr *x509.CertificateRequest) (spiffeid.TrustDomain, error) {
	if len(csr.URIs) != 1 {
		return spiffeid.TrustDomain{}, fmt.Errorf("%w: URI SANs: %d, want exactly one spiffe://<trust-domain>", errOffline, len(csr.URIs))
	}
	id, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil || id.Path() != "" {
		return spiffeid.TrustDomain{}, fmt.Errorf("%w: URI SAN %q is not a trust domain ID spiffe://<trust-domain>", errOffline, csr.URIs[0])
	}
	if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 {
		return spiffeid.TrustDomain{}, fmt.Errorf("%w: SANs: an intermediate carries only its trust domain's URI SAN", errOffline)
	}
	return id.TrustDomain(), nil
}

// samePublicKey reports whether a and b are the same public key.
func samePublicKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// uriNames lists a certificate's URI SANs.
func uriNames(c *x509.Certificate) []string {
	out := make([]string, 0, len(c.URIs))
	for _, u := range c.URIs {
		out = append(out, u.String())
	}
	return out
}

// trustCommands are the commands of mesh-to-mesh trust: the offline root and, with it,
// federation.
func trustCommands() []*command {
	return append(offlineCommands(), federationCommands()...)
}
