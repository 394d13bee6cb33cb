package agent

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/sds"
)

// ErrStatePermissions means the state dir or a state file can be read by users other than the
// agent's: the keys in it may have leaked, so the agent refuses to use it until an operator
// looks (and fixes the mode, or deletes the file).
var ErrStatePermissions = errors.New("state dir or file is open to other users")

// ErrStateCorrupt means a state file does not decode or holds a certificate and key that do not
// belong together.
var ErrStateCorrupt = errors.New("state file is corrupt")

const (
	stateDirMode  = 0o700
	stateFileMode = 0o600
)

// stateDir is the agent's state directory: one JSON file per identity, <name>.json.
type stateDir struct {
	path string
}

// openStateDir creates the directory (0700) or checks that an existing one is not open to
// group or others.
func openStateDir(path string) (*stateDir, error) {
	if err := os.MkdirAll(path, stateDirMode); err != nil {
		return nil, fmt.Errorf("state_dir %s: %w", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("state_dir %s: %w", path, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("state_dir %s: not a directory", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("state_dir %s: mode %04o lets group or others in; must be 0700: %w", path, fi.Mode().Perm(), ErrStatePermissions)
	}
	return &stateDir{path: path}, nil
}

// identityState is what the state dir keeps about one identity.
type identityState struct {
	// Cert is the certificate held now; nil after it was revoked or refused.
	Cert *heldCert `json:"cert,omitempty"`
	// SpentTokens are the SHA-256 (hex) of register tokens this identity already registered
	// with: a register token works once, so the agent never presents one twice.
	SpentTokens []string `json:"spent_register_tokens,omitempty"`
}

// heldCert is a certificate, its key and the facts the schedule needs, as stored.
type heldCert struct {
	SPIFFEID   string    `json:"spiffe_id"`
	InstanceID string    `json:"instance_id"`
	Serial     string    `json:"serial"`
	Received   time.Time `json:"received"`
	NotAfter   time.Time `json:"not_after"`
	// Chain is the PEM leaf followed by its intermediates.
	Chain string `json:"chain"`
	// Key is the PEM PKCS#8 private key.
	Key string `json:"key"`
}

func (d *stateDir) file(name string) string { return filepath.Join(d.path, name+".json") }

// load reads an identity's state; a missing file is an empty state.
func (d *stateDir) load(name string) (identityState, error) {
	path := d.file(name)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return identityState{}, nil
	}
	if err != nil {
		return identityState{}, fmt.Errorf("state %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return identityState{}, fmt.Errorf("state %s: %w", path, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return identityState{}, fmt.Errorf("state %s: mode %04o lets group or others read the key; must be 0600: %w", path, fi.Mode().Perm(), ErrStatePermissions)
	}
	var st identityState
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return identityState{}, fmt.Errorf("state %s: %w: %w", path, ErrStateCorrupt, err)
	}
	return st, nil
}

// save replaces an identity's state atomically (temporary file, fsync, rename, fsync of the dir).
func (d *stateDir) save(name string, st identityState) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("state %s: %w", d.file(name), err)
	}
	return sds.WriteFileAtomic(d.file(name), data, stateFileMode)
}

// spent reports whether a register token with this digest was used already.
func (st identityState) spent(digest string) bool { return slices.Contains(st.SpentTokens, digest) }

// current is a certificate the agent holds, decoded.
type current struct {
	svid       *x509svid.SVID
	serial     string
	instanceID string
	received   time.Time
}

func (c *current) holding() *holding {
	if c == nil {
		return nil
	}
	return &holding{received: c.received, notAfter: c.svid.Certificates[0].NotAfter}
}

func (c *current) notAfter() time.Time { return c.svid.Certificates[0].NotAfter }

// record encodes c for the state dir.
func (c *current) record() (*heldCert, error) {
	chain, key, err := c.svid.Marshal()
	if err != nil {
		return nil, fmt.Errorf("encoding the certificate of %s: %w", c.svid.ID, err)
	}
	return &heldCert{
		SPIFFEID:   c.svid.ID.String(),
		InstanceID: c.instanceID,
		Serial:     c.serial,
		Received:   c.received.UTC(),
		NotAfter:   c.notAfter().UTC(),
		Chain:      string(chain),
		Key:        string(key),
	}, nil
}

// decode checks a stored certificate against the identity it must be and returns it. A
// certificate of another identity or instance (the config changed) is not an error of the
// file: the caller drops it and registers.
func (h *heldCert) decode(want spiffeid.ID, instanceID string) (*current, error) {
	id, err := spiffeid.FromString(h.SPIFFEID)
	if err != nil {
		return nil, fmt.Errorf("spiffe_id: %w: %w", ErrStateCorrupt, err)
	}
	if id != want || h.InstanceID != instanceID {
		return nil, fmt.Errorf("held certificate is for %s instance %q, the config names %s instance %q: %w", id, h.InstanceID, want, instanceID, errOtherIdentity)
	}
	certs, err := ca.ParseCertificatesPEM([]byte(h.Chain))
	if err != nil {
		return nil, fmt.Errorf("chain: %w: %w", ErrStateCorrupt, err)
	}
	key, err := parseKeyPEM([]byte(h.Key))
	if err != nil {
		return nil, fmt.Errorf("key: %w: %w", ErrStateCorrupt, err)
	}
	svid := &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}
	if err := checkPair(svid); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStateCorrupt, err)
	}
	if got := certs[0].SerialNumber.Text(16); got != h.Serial {
		return nil, fmt.Errorf("serial %q: the certificate's is %q: %w", h.Serial, got, ErrStateCorrupt)
	}
	return &current{svid: svid, serial: h.Serial, instanceID: h.InstanceID, received: h.Received}, nil
}

var errOtherIdentity = errors.New("held certificate is for another identity")

// parseKeyPEM reads the PKCS#8 PEM private key the agent writes (x509svid.SVID.Marshal). The
// SVID keeps the bare key, which crypto/tls and go-spiffe type-switch on.
func parseKeyPEM(data []byte) (crypto.Signer, error) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != signer.PlaintextPKCS8PEMType || len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("want one %q PEM block", signer.PlaintextPKCS8PEMType)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	cs, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%T is not a signing key", k)
	}
	return cs, nil
}

// publicKeyEqualer is what every crypto public key type in the standard library implements.
type publicKeyEqualer interface {
	Equal(x crypto.PublicKey) bool
}

// checkPair checks that an SVID's key belongs to its leaf and that the leaf names its ID.
func checkPair(svid *x509svid.SVID) error {
	if len(svid.Certificates) == 0 {
		return errors.New("chain: no certificate")
	}
	leaf := svid.Certificates[0]
	pub, ok := svid.PrivateKey.Public().(publicKeyEqualer)
	if !ok || !pub.Equal(leaf.PublicKey) {
		return errors.New("key: does not belong to the leaf certificate")
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return fmt.Errorf("leaf URI SAN: %w", err)
	}
	if id != svid.ID {
		return fmt.Errorf("leaf URI SAN %s: want %s", id, svid.ID)
	}
	return nil
}
