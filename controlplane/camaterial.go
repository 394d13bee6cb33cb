package controlplane

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
)

// Files of a self-signed CA in ca.dir. Nodes that share the folder (several nodes on one host)
// generate it once, under caLockFile; on several hosts the operator copies the folder.
const (
	// SelfSignedCertFile is the generated root certificate (PEM). A PKCS#11 root generated on
	// the token is written here too, without a key file.
	SelfSignedCertFile = "root-cert.pem"
	// SelfSignedKeyFile is the root's private key sealed under the KEK (signer's encrypted PEM).
	SelfSignedKeyFile = "root-key.sealed.pem"
	caLockFile        = ".meshca-ca.lock"
)

// localCA is the CA material this node read or generated at start: the issuer it can sign with
// before the replicated CA record reaches it, and the record to propose when the cluster has
// none yet.
type localCA struct {
	issuer *ca.Issuer
	record *meshcav1.Issuer
}

// loadLocalCA reads (or, at first start, generates) the CA material of cfg's mode.
func loadLocalCA(cfg *Config, kek signer.KEK, openToken func(label string) (signer.Signer, error), now time.Time) (*localCA, error) {
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust_domain: %w", err)
	}
	kt, err := signer.ParseKeyType(cfg.CA.KeyType)
	if err != nil {
		return nil, fmt.Errorf("ca.key_type: %w", err)
	}
	switch cfg.CA.Mode {
	case CAModeSelfSigned:
		iss, err := withCALock(cfg.CA.Dir, func() (*ca.Issuer, error) {
			return loadOrCreateSelfSigned(cfg.CA.Dir, td, kt, kek, now)
		})
		if err != nil {
			return nil, err
		}
		// The sealed file itself is replicated: every node opens it with its own copy of the KEK.
		sealed, err := os.ReadFile(filepath.Join(cfg.CA.Dir, SelfSignedKeyFile))
		if err != nil {
			return nil, fmt.Errorf("ca.dir: %w", err)
		}
		return newLocalCA(iss, &meshcav1.SignerRef{Key: &meshcav1.SignerRef_EncryptedKey{EncryptedKey: sealed}})
	case CAModeCACerts:
		iss, err := ca.LoadCACerts(cfg.CA.Dir, nil, now)
		if err != nil {
			return nil, fmt.Errorf("ca.dir %s: %w", cfg.CA.Dir, err)
		}
		sealed, err := signer.MarshalEncrypted(iss.Signer(), kek)
		if err != nil {
			return nil, fmt.Errorf("ca.dir %s: sealing %s under the KEK: %w", cfg.CA.Dir, ca.CAKeyFile, err)
		}
		return newLocalCA(iss, &meshcav1.SignerRef{Key: &meshcav1.SignerRef_EncryptedKey{EncryptedKey: sealed}})
	case CAModePKCS11:
		key, err := openToken(cfg.CA.PKCS11.KeyLabel)
		if err != nil {
			return nil, fmt.Errorf("ca.pkcs11: %w", err)
		}
		iss, err := withCALock(cfg.CA.Dir, func() (*ca.Issuer, error) {
			return loadOrCreateTokenCA(cfg.CA.Dir, td, key, now)
		})
		if err != nil {
			return nil, err
		}
		return newLocalCA(iss, &meshcav1.SignerRef{Key: &meshcav1.SignerRef_Pkcs11Label{Pkcs11Label: cfg.CA.PKCS11.KeyLabel}})
	}
	return nil, fmt.Errorf("ca.mode: %q is not a CA mode", cfg.CA.Mode)
}

// newLocalCA describes an issuer as the replicated record that names its key by ref.
func newLocalCA(iss *ca.Issuer, ref *meshcav1.SignerRef) (*localCA, error) {
	rec, err := issuerRecord(iss, ref)
	if err != nil {
		return nil, err
	}
	return &localCA{issuer: iss, record: rec}, nil
}

// issuerRecord is the replicated form of an issuer: its chain, where its key is, and the root
// it chains to.
func issuerRecord(iss *ca.Issuer, ref *meshcav1.SignerRef) (*meshcav1.Issuer, error) {
	cert := iss.Certificate()
	chain := [][]byte{cert.Raw}
	for _, c := range iss.Chain() {
		if !c.Equal(cert) {
			chain = append(chain, c.Raw)
		}
	}
	root, err := rootOf(iss)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(cert.Raw)
	rootSum := sha256.Sum256(root.Raw)
	s := iss.Signer()
	ref.KeyId = s.KeyID()
	ref.KeyType = string(s.KeyType())
	return &meshcav1.Issuer{
		Id:         hex.EncodeToString(sum[:]),
		Chain:      chain,
		Signer:     ref,
		RootSha256: rootSum[:],
		NotAfter:   cert.NotAfter.UnixNano(),
	}, nil
}

// rootOf finds the root the issuer's chain ends at.
func rootOf(iss *ca.Issuer) (*x509.Certificate, error) {
	top := iss.Certificate()
	if ch := iss.Chain(); len(ch) > 0 {
		top = ch[len(ch)-1]
	}
	for _, r := range iss.Roots() {
		if r.Equal(top) || (string(top.RawIssuer) == string(r.RawSubject) && top.CheckSignatureFrom(r) == nil) {
			return r, nil
		}
	}
	return nil, fmt.Errorf("ca: no root of the issuer signs %s", top.Subject)
}

// IntermediateCSR is the PKCS#10 request (DER) for a cluster's intermediate CA in trust
// domain td, signed by key: subject O=meshca, CN "meshca intermediate CA <td>", and the one
// URI SAN spiffe://<td> that `meshctl ca sign-intermediate` requires. The key may be in
// memory or on a PKCS#11 token; only its signature leaves it.
func IntermediateCSR(td spiffeid.TrustDomain, key signer.Signer) ([]byte, error) {
	uri, err := url.Parse(td.IDString())
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", td, err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:            pkix.Name{Organization: []string{"meshca"}, CommonName: "meshca intermediate CA " + td.Name()},
		URIs:               []*url.URL{uri},
		SignatureAlgorithm: key.SignatureAlgorithm(),
	}, key)
	if err != nil {
		return nil, fmt.Errorf("intermediate CSR: %w", err)
	}
	return der, nil
}

// LoadSelfSignedCA opens the self-signed CA that meshca-server generated in dir (its root
// certificate and the root key sealed under kek), validated at now. Tests and tools that hold
// the KEK use it to sign certificates the way the cluster does.
func LoadSelfSignedCA(dir string, kek signer.KEK, now time.Time) (*ca.Issuer, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, SelfSignedCertFile))
	if err != nil {
		return nil, fmt.Errorf("ca.dir: %w", err)
	}
	certs, err := ca.ParseCertificatesPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("ca.dir: %s: %w", SelfSignedCertFile, err)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("ca.dir: %s: holds %d certificates, want the one root", SelfSignedCertFile, len(certs))
	}
	key, err := signer.ReadEncryptedFile(filepath.Join(dir, SelfSignedKeyFile), kek)
	if err != nil {
		return nil, fmt.Errorf("ca.dir: %s: %w", SelfSignedKeyFile, err)
	}
	iss, err := ca.NewIssuer(ca.IssuerParts{Certificate: certs[0], Key: key, Roots: certs}, now)
	if err != nil {
		return nil, fmt.Errorf("ca.dir: %w", err)
	}
	return iss, nil
}

// loadOrCreateSelfSigned opens the self-signed CA in dir, or generates it when dir has none.
// The caller holds the CA lock.
func loadOrCreateSelfSigned(dir string, td spiffeid.TrustDomain, kt signer.KeyType, kek signer.KEK, now time.Time) (*ca.Issuer, error) {
	certPath := filepath.Join(dir, SelfSignedCertFile)
	if _, err := os.Stat(certPath); err == nil {
		return LoadSelfSignedCA(dir, kek, now)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("ca.dir: %w", err)
	}
	key, err := signer.GenerateSoftware(kt)
	if err != nil {
		return nil, fmt.Errorf("ca.key_type %s: %w", kt, err)
	}
	iss, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: td, RootKey: key, RootTTL: ca.DefaultRootTTL, Now: now})
	if err != nil {
		return nil, fmt.Errorf("ca: generating the self-signed root: %w", err)
	}
	// The key first: a folder with a certificate always has its key.
	if err := signer.WriteEncryptedFile(filepath.Join(dir, SelfSignedKeyFile), key, kek); err != nil {
		return nil, fmt.Errorf("ca.dir: %w", err)
	}
	if err := writeFileAtomic(certPath, ca.EncodeCertificatesPEM(iss.Certificate().Raw), 0o644); err != nil {
		return nil, fmt.Errorf("ca.dir: %w", err)
	}
	return iss, nil
}

// loadOrCreateTokenCA opens the CA certificates of a PKCS#11 key in dir: an Istio cacerts
// layout without ca-key.pem (a plug-in intermediate whose key is on the token), or a root
// self-signed by the token key, generated at first start. The caller holds the CA lock.
func loadOrCreateTokenCA(dir string, td spiffeid.TrustDomain, key signer.Signer, now time.Time) (*ca.Issuer, error) {
	if _, err := os.Stat(filepath.Join(dir, ca.CACertFile)); err == nil {
		iss, err := ca.LoadCACerts(dir, key, now)
		if err != nil {
			return nil, fmt.Errorf("ca.dir %s: %w", dir, err)
		}
		return iss, nil
	}
	certPath := filepath.Join(dir, SelfSignedCertFile)
	if raw, err := os.ReadFile(certPath); err == nil {
		certs, err := ca.ParseCertificatesPEM(raw)
		if err != nil || len(certs) != 1 {
			return nil, fmt.Errorf("ca.dir: %s: want one root certificate: %v", SelfSignedCertFile, err)
		}
		iss, err := ca.NewIssuer(ca.IssuerParts{Certificate: certs[0], Key: key, Roots: certs}, now)
		if err != nil {
			return nil, fmt.Errorf("ca.dir: %s with the token key: %w", SelfSignedCertFile, err)
		}
		return iss, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("ca.dir: %w", err)
	}
	iss, err := ca.NewSelfSigned(ca.SelfSignedConfig{TrustDomain: td, RootKey: key, RootTTL: ca.DefaultRootTTL, Now: now})
	if err != nil {
		return nil, fmt.Errorf("ca: generating the self-signed root on the token: %w", err)
	}
	if err := writeFileAtomic(certPath, ca.EncodeCertificatesPEM(iss.Certificate().Raw), 0o644); err != nil {
		return nil, fmt.Errorf("ca.dir: %w", err)
	}
	return iss, nil
}

// withCALock runs fn holding an exclusive lock on dir, so nodes sharing the folder generate
// the CA once.
func withCALock(dir string, fn func() (*ca.Issuer, error)) (*ca.Issuer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ca.dir: %w", err)
	}
	unlock, err := lockFile(filepath.Join(dir, caLockFile))
	if err != nil {
		return nil, fmt.Errorf("ca.dir: lock: %w", err)
	}
	defer unlock()
	return fn()
}

// writeFileAtomic writes data to a temporary file beside path, syncs it and renames it over
// path, so a reader sees the old file or the new one.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
