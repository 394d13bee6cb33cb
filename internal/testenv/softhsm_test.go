package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestNewSoftHSMTokenMakesAnInitializedTokenInItsOwnDir(t *testing.T) {
	tok := NewSoftHSMToken(t, "meshca-testenv")

	if got := os.Getenv("SOFTHSM2_CONF"); got != tok.ConfPath {
		t.Fatalf("SOFTHSM2_CONF = %q, want %q", got, tok.ConfPath)
	}
	conf, err := os.ReadFile(tok.ConfPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), "directories.tokendir = "+tok.TokenDir+"\n") {
		t.Fatalf("softhsm2.conf does not point at %s:\n%s", tok.TokenDir, conf)
	}
	entries, err := os.ReadDir(tok.TokenDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("token dir holds %d entries, want the one new token", len(entries))
	}
	if fi, err := os.Stat(tok.ModulePath); err != nil || fi.IsDir() {
		t.Fatalf("module %s: %v", tok.ModulePath, err)
	}
	pin, err := os.ReadFile(tok.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(pin)) != tok.UserPIN {
		t.Fatal("PIN file does not hold the user PIN")
	}
	if fi, _ := os.Stat(tok.PINFile); fi.Mode().Perm() != 0o600 {
		t.Errorf("PIN file mode %v, want 0600", fi.Mode().Perm())
	}
	if tok.UserPIN == tok.SOPIN || len(tok.UserPIN) < 8 {
		t.Errorf("PINs should be distinct and at least 8 characters: user %q, SO %q", tok.UserPIN, tok.SOPIN)
	}

	// A child process sees the token through Env() alone.
	cmd := exec.Command("softhsm2-util", "--show-slots")
	cmd.Env = append(withoutSoftHSMConf(os.Environ()), tok.Env()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --show-slots: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "meshca-testenv") {
		t.Fatalf("--show-slots does not list the token:\n%s", out)
	}
}

func TestTwoSoftHSMTokensInOneTestShareTheTokenDir(t *testing.T) {
	a := NewSoftHSMToken(t, "meshca-a")
	b := NewSoftHSMToken(t, "meshca-b")
	if a.ConfPath != b.ConfPath || a.TokenDir != b.TokenDir {
		t.Fatalf("tokens of one test should share a conf: %s vs %s", a.ConfPath, b.ConfPath)
	}
	if a.PINFile == b.PINFile {
		t.Fatal("each token needs its own PIN file")
	}
	out, err := exec.Command("softhsm2-util", "--show-slots").CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --show-slots: %v\n%s", err, out)
	}
	for _, label := range []string{"meshca-a", "meshca-b"} {
		if !strings.Contains(string(out), label) {
			t.Errorf("--show-slots does not list %s:\n%s", label, out)
		}
	}
}

func withoutSoftHSMConf(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "SOFTHSM2_CONF=") {
			out = append(out, kv)
		}
	}
	return out
}
