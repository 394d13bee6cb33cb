package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestApplyIDIsADigestOfTheExactFiles(t *testing.T) {
	base := applyID("web", []byte(`{"common_name":"a"}`), []byte{1, 2, 3})
	for _, tc := range []struct {
		rule string
		id   string
		same bool
	}{
		{"the same files map to the same id", applyID("web", []byte(`{"common_name":"a"}`), []byte{1, 2, 3}), true},
		{"a changed spec maps to a new id", applyID("web", []byte(`{"common_name":"b"}`), []byte{1, 2, 3}), false},
		{"a changed CSR maps to a new id", applyID("web", []byte(`{"common_name":"a"}`), []byte{1, 2, 4}), false},
		{"another name maps to a new id", applyID("api", []byte(`{"common_name":"a"}`), []byte{1, 2, 3}), false},
		{"moving bytes between spec and CSR maps to a new id", applyID("web", []byte(`{"common_name":"a"}`+"\x01"), []byte{2, 3}), false},
	} {
		t.Run(tc.rule, func(t *testing.T) {
			if (tc.id == base) != tc.same {
				t.Fatalf("id %s vs %s: same=%v, want %v", tc.id, base, tc.id == base, tc.same)
			}
			if !strings.HasPrefix(tc.id, "apply.") || len(tc.id) > 128 {
				t.Fatalf("id %q is not a valid request id", tc.id)
			}
		})
	}
}

func TestReadApplyDirRules(t *testing.T) {
	mk := func(t *testing.T, files ...string) string {
		dir := t.TempDir()
		for _, f := range files {
			p := filepath.Join(dir, f)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	for _, tc := range []struct {
		rule    string
		files   []string
		want    string
		wantErr string
	}{
		{"entries are listed in name order", []string{"b/tls.json", "b/csr.pem", "a/tls.json", "a/csr.pem"}, "a,b", ""},
		{"folders without either file are not entries", []string{"a/tls.json", "a/csr.pem", "docs/README", "top.json"}, "a", ""},
		{"an entry without csr.pem is refused", []string{"a/tls.json"}, "", "entry a"},
		{"an entry without tls.json is refused", []string{"a/csr.pem"}, "", "entry a"},
		{"a name with a space is refused", []string{"a b/tls.json", "a b/csr.pem"}, "", `entry name "a b"`},
		{"a folder with no entries is refused", []string{"docs/README"}, "", "holds no"},
	} {
		t.Run(tc.rule, func(t *testing.T) {
			names, err := readApplyDir(mk(t, tc.files...))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || strings.Join(names, ",") != tc.want {
				t.Fatalf("names %v, err %v; want %s", names, err, tc.want)
			}
		})
	}
}
