package main

import (
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/controlplane"
)

// errUsage marks a command line that breaks a rule; the message names the flag.
var errUsage = errors.New("usage")

// runCA runs `meshca-server ca <command>`: CA material commands that need this binary's cgo
// build (the PKCS#11 signer) and do not start a node.
func runCA(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "csr" {
		fmt.Fprintln(stderr, "usage: meshca-server ca csr [flags]   (generate or find the intermediate key on a PKCS#11 token and write its CSR)")
		return fmt.Errorf("%w: want the command `ca csr`", errUsage)
	}
	return runCACSR(args[1:], stdout, stderr)
}

// runCACSR generates the cluster's intermediate CA key on a PKCS#11 token (or finds it there
// by label) and writes the CSR that key signed, so only the CSR leaves the HSM. The offline
// root's holder signs it with `meshctl ca sign-intermediate --csr`, and the cluster runs in
// pkcs11 mode from the cacerts files that command writes, without ca-key.pem.
func runCACSR(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("meshca-server ca csr", flag.ContinueOnError)
	fs.SetOutput(stderr)
	module := fs.String("pkcs11-module", "", "PKCS#11 module (shared library) of the HSM (required)")
	tokenLabel := fs.String("token-label", "", "label of the token that holds the key (required)")
	keyLabel := fs.String("key-label", "", "CKA_LABEL of the intermediate key: found when present, generated otherwise (required)")
	pinFile := fs.String("pin-file", "", "file holding the user PIN (this or --pin-env)")
	pinEnv := fs.String("pin-env", "", "environment variable holding the user PIN (this or --pin-file)")
	keyType := fs.String("key-type", string(signer.ECDSAP256), "key type to generate, and that a found key must have: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519")
	tdName := fs.String("trust-domain", "", "the cluster's trust domain, named in the CSR's URI SAN (required)")
	out := fs.String("out", "", "file to write the PEM CSR to (required)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("%w: ca csr takes no arguments, got %q", errUsage, fs.Args())
	case *out == "":
		return fmt.Errorf("%w: --out is required", errUsage)
	case *tdName == "":
		return fmt.Errorf("%w: --trust-domain is required", errUsage)
	}
	td, err := spiffeid.TrustDomainFromString(*tdName)
	if err != nil {
		return fmt.Errorf("%w: --trust-domain %q: %w", errUsage, *tdName, err)
	}
	kt, err := signer.ParseKeyType(*keyType)
	if err != nil {
		return fmt.Errorf("%w: --key-type: %w", errUsage, err)
	}
	cfg := signer.DefaultPKCS11Config()
	cfg.ModulePath, cfg.TokenLabel, cfg.KeyLabel, cfg.PINFile, cfg.PINEnv, cfg.KeyType = *module, *tokenLabel, *keyLabel, *pinFile, *pinEnv, kt
	cfg.MaxSessions = 1
	if err := cfg.Validate(); err != nil {
		// The signer names its YAML fields; name the flags they come from as well.
		return fmt.Errorf("%w: --pkcs11-module, --token-label, --key-label, --pin-file/--pin-env: %w", errUsage, err)
	}
	key, generated, err := openOrGenerateToken(cfg)
	if err != nil {
		return err
	}
	defer key.Close()
	der, err := controlplane.IntermediateCSR(td, key)
	if err != nil {
		return err
	}
	if err := writeCSR(*out, der); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	how := "found"
	if generated {
		how = "generated"
	}
	_, err = fmt.Fprintf(stdout, "%s %s key %q on token %q (key id %s); wrote %s.\n"+
		"Have the root's holder run `meshctl ca sign-intermediate --csr %s --out DIR` (no --key), put DIR's files in ca.dir "+
		"and run the cluster with ca.mode pkcs11, ca.key_type %s and ca.pkcs11.key_label %q.\n",
		how, kt, cfg.KeyLabel, cfg.TokenLabel, key.KeyID(), *out, filepath.Base(*out), kt, cfg.KeyLabel)
	return err
}

// openOrGenerateToken opens the key labelled cfg.KeyLabel, or generates it (non-extractable,
// sign only) when the token has none, and says which.
func openOrGenerateToken(cfg signer.PKCS11Config) (*signer.PKCS11, bool, error) {
	key, err := signer.OpenPKCS11(cfg)
	if err == nil {
		return key, false, nil
	}
	if !errors.Is(err, signer.ErrKeyNotFound) {
		return nil, false, err
	}
	key, err = signer.GeneratePKCS11(cfg)
	if err != nil {
		return nil, false, err
	}
	return key, true, nil
}

// writeCSR writes the CSR as PEM, replacing the file only once it is complete.
func writeCSR(path string, der []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := pem.Encode(tmp, &pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
