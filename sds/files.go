package sds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The files a FileWriter keeps in its directory.
const (
	// CertFile holds the leaf certificate followed by its intermediates (PEM).
	CertFile = "cert.pem"
	// KeyFile holds the private key (PKCS#8 PEM), mode 0600.
	KeyFile = "key.pem"
	// BundleFile holds the roots of the identity's own trust domain (PEM).
	BundleFile = "bundle.pem"
)

// ErrNotReady is returned by WriteFiles while the View has no SVID or no own bundle yet.
var ErrNotReady = errors.New("secrets not available yet")

// FileWriter keeps CertFile, KeyFile and BundleFile of one identity in Dir, rewriting them on
// every change of the Source. Each file is replaced atomically (written to a temporary file in
// the same directory, synced, renamed over the old one), so a reader sees the old file or the
// new one, never a partial one. The key is written before the certificate: a reader that finds
// a certificate whose key does not match should read both again.
type FileWriter struct {
	// Source is where secrets come from (required).
	Source Source
	// ID is the identity whose secrets are written (required).
	ID spiffeid.ID
	// Dir is the directory the files live in; it is created (0700) if missing (required).
	Dir string
	// Logger receives write failures; nil means slog.Default().
	Logger *slog.Logger
}

// Run writes the files whenever the identity's secrets change, until ctx ends. A failed write
// is logged and tried again at the next change; Run returns an error only for a bad config.
func (w *FileWriter) Run(ctx context.Context) error {
	if w.Source == nil || w.ID.IsZero() || w.Dir == "" {
		return fmt.Errorf("file writer: Source, ID and Dir: must be set: %w", ErrConfig)
	}
	logger := w.Logger
	if logger == nil {
		logger = slog.Default()
	}
	written := ""
	for {
		changed := w.Source.Changed()
		v := w.Source.View(w.ID)
		if v.Version != written {
			switch err := WriteFiles(w.Dir, v); {
			case err == nil:
				written = v.Version
			case errors.Is(err, ErrNotReady):
			default:
				logger.Error("sds: writing secret files", "dir", w.Dir, "identity", w.ID.String(), "error", err)
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}

// WriteFiles writes the View's certificate chain, key and own bundle into dir, each replaced
// atomically.
func WriteFiles(dir string, v View) error {
	own, ok := v.OwnBundle()
	if v.SVID == nil || !ok {
		return fmt.Errorf("files for %q: %w", v.ID, ErrNotReady)
	}
	chain, key, err := v.SVID.Marshal()
	if err != nil {
		return fmt.Errorf("files for %q: encoding SVID: %w", v.ID, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("files for %q: directory: %w", v.ID, err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{KeyFile, key, 0o600},
		{CertFile, chain, 0o644},
		{BundleFile, pemCerts(own.X509Authorities()), 0o644},
	} {
		if err := writeAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("files for %q: %w", v.ID, err)
		}
	}
	return syncDir(dir)
}

// WriteFileAtomic replaces path with data the way the secret files are replaced: a temporary
// file in the same directory with mode set before any byte is written, fsync, rename over path,
// then fsync of the directory so the rename survives a crash. A reader sees the old content or
// the new, never a partial file.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := writeAtomic(path, data, mode); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// writeAtomic replaces path with data: temporary file in the same directory, mode set before any
// byte is written, fsync, rename.
func writeAtomic(path string, data []byte, mode os.FileMode) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("%s: temporary file: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(mode); err != nil {
		return fmt.Errorf("%s: mode %o: %w", path, mode, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("%s: write: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("%s: fsync: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("%s: close: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("%s: rename: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("%s: open for fsync: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("%s: fsync: %w", dir, err)
	}
	return nil
}
