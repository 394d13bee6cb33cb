package ca

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/meshca/meshca/ca/signer"
)

// File names of the Istio "cacerts" layout for a plug-in CA.
const (
	// CACertFile is the intermediate CA certificate that signs workload certificates.
	CACertFile = "ca-cert.pem"
	// CAKeyFile is its private key (PEM: PKCS#8, PKCS#1 or SEC 1).
	CAKeyFile = "ca-key.pem"
	// RootCertFile holds the root certificate(s) workloads trust.
	RootCertFile = "root-cert.pem"
	// CertChainFile is the chain from ca-cert.pem up to the root: ca-cert.pem first, then
	// any further intermediates, optionally the root.
	CertChainFile = "cert-chain.pem"
)

var cacertsParts = partNames{cert: CACertFile, key: CAKeyFile, chain: CertChainFile, roots: RootCertFile}

// LoadCACerts reads a plug-in CA from an Istio cacerts folder and validates it at now before
// use, each failure an error naming the file and the rule (see NewIssuer for the rules). When
// key is nil the key is read from ca-key.pem; otherwise key is used (a PKCS#11 key, with only
// the certificates on disk) and ca-key.pem is not read.
func LoadCACerts(dir string, key signer.Signer, now time.Time) (*Issuer, error) {
	certs, err := readCerts(dir, CACertFile)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("%s: %w: holds %d certificates, want exactly one", CACertFile, ErrCAFile, len(certs))
	}
	caCert := certs[0]
	roots, err := readCerts(dir, RootCertFile)
	if err != nil {
		return nil, err
	}
	chain, err := readCerts(dir, CertChainFile)
	if err != nil {
		return nil, err
	}
	if !chain[0].Equal(caCert) {
		return nil, fmt.Errorf("%s: %w: the first certificate (%s) is not %s (%s)", CertChainFile, ErrCAFile, chain[0].Subject, CACertFile, caCert.Subject)
	}
	names := cacertsParts
	if key != nil {
		names.key = "signer key " + key.KeyID()
	} else {
		data, err := readFile(dir, CAKeyFile)
		if err != nil {
			return nil, err
		}
		sw, err := signer.ParsePlaintextPEM(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w: %w", CAKeyFile, ErrCAFile, err)
		}
		key = sw
	}
	return newIssuer(names, IssuerParts{Certificate: caCert, Key: key, Intermediates: chain[1:], Roots: roots}, now)
}

func readFile(dir, name string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w: missing from %s", name, ErrCAFile, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", name, ErrCAFile, err)
	}
	return data, nil
}

func readCerts(dir, name string) ([]*x509.Certificate, error) {
	data, err := readFile(dir, name)
	if err != nil {
		return nil, err
	}
	certs, err := ParseCertificatesPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", name, ErrCAFile, err)
	}
	return certs, nil
}
