package sds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

func readLeaf(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatalf("cert.pem and key.pem do not form a key pair: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestWriteFilesModesContentAndAtomicReplacement(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	store := NewStore()
	mustSetBundle(t, store, ca)
	first := ca.issue(t, idAPI)
	mustSetSVID(t, store, first)
	dir := filepath.Join(t.TempDir(), "secrets")

	if err := WriteFiles(dir, store.View(idAPI)); err != nil {
		t.Fatal(err)
	}
	modes := map[string]os.FileMode{KeyFile: 0o600, CertFile: 0o644, BundleFile: 0o644}
	for name, want := range modes {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Fatalf("%s mode %o, want %o", name, got, want)
		}
	}
	leaf := readLeaf(t, dir)
	if leaf.SerialNumber.String() != leafSerial(first) {
		t.Fatal("cert.pem is not the SVID's leaf")
	}
	chainPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		t.Fatal(err)
	}
	var chain []*x509.Certificate
	for rest := chainPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	bundlePEM, err := os.ReadFile(filepath.Join(dir, BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(bundlePEM)
	if err := verifies(chain, roots); err != nil {
		t.Fatalf("cert.pem (leaf + chain) does not verify to bundle.pem: %v", err)
	}

	// Replacement is a rename: a reader holding the old file keeps reading the whole old file,
	// and the path now names a new inode with the new content.
	oldKeyInode := inode(t, filepath.Join(dir, KeyFile))
	held, err := os.Open(filepath.Join(dir, CertFile))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	next := ca.issue(t, idAPI)
	mustSetSVID(t, store, next)
	if err := WriteFiles(dir, store.View(idAPI)); err != nil {
		t.Fatal(err)
	}
	old, err := io.ReadAll(held)
	if err != nil {
		t.Fatal(err)
	}
	if string(old) != string(chainPEM) {
		t.Fatal("a reader of the old cert.pem saw it change under it: the file was rewritten in place")
	}
	if inode(t, filepath.Join(dir, KeyFile)) == oldKeyInode {
		t.Fatal("key.pem was rewritten in place, not replaced")
	}
	if readLeaf(t, dir).SerialNumber.String() != leafSerial(next) {
		t.Fatal("files do not hold the rotated certificate")
	}
	if fi, err := os.Stat(filepath.Join(dir, KeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("replaced key.pem mode: %v %v, want 0600", fi.Mode().Perm(), err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 {
		t.Fatalf("directory holds %d entries, want exactly the 3 files (no temporary files left)", len(entries))
	}
}

func TestWriteFilesWaitsForBothCertificateAndBundle(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	store := NewStore()
	mustSetSVID(t, store, ca.issue(t, idAPI))
	dir := t.TempDir()
	if err := WriteFiles(dir, store.View(idAPI)); !errors.Is(err, ErrNotReady) {
		t.Fatalf("without a bundle: %v, want ErrNotReady", err)
	}
	if _, err := os.Stat(filepath.Join(dir, KeyFile)); !os.IsNotExist(err) {
		t.Fatal("a key was written before the files could be complete")
	}
}

func TestFileWriterFollowsRotation(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	store := NewStore()
	mustSetBundle(t, store, ca)
	dir := filepath.Join(t.TempDir(), "out")
	w := &FileWriter{Source: store, ID: idAPI, Dir: dir}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = w.Run(ctx)
	}()
	defer func() {
		cancel()
		wg.Wait()
	}()
	for range 3 {
		next := ca.issue(t, idAPI)
		mustSetSVID(t, store, next)
		poll(t, "the files to hold the new certificate", func() bool {
			pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
			if err != nil {
				return false // not written yet, or cert and key from two rotations
			}
			leaf, err := x509.ParseCertificate(pair.Certificate[0])
			return err == nil && leaf.SerialNumber.String() == leafSerial(next)
		})
	}
}

func TestWriteFileAtomicSetsTheModeAndReplacesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	for _, content := range []string{"first", "second"} {
		if err := WriteFileAtomic(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != content {
			t.Fatalf("content %q, want %q", got, content)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("mode %o, want 600", fi.Mode().Perm())
		}
	}
	left, err := filepath.Glob(filepath.Join(filepath.Dir(path), ".*.tmp"))
	if err != nil || len(left) != 0 {
		t.Fatalf("temporary files left behind: %v %v", left, err)
	}
}
