package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// SoftHSMModuleEnv names an environment variable that overrides where the SoftHSM2 PKCS#11
// module is looked for.
const SoftHSMModuleEnv = "MESHCA_SOFTHSM_MODULE"

// softHSMModulePaths are where Debian and Ubuntu packages put the SoftHSM2 module.
var softHSMModulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// SoftHSMToken is a freshly initialized SoftHSM2 token whose files live in a test's temporary
// directory.
type SoftHSMToken struct {
	// ModulePath is the SoftHSM2 PKCS#11 module (libsofthsm2.so).
	ModulePath string
	// Label is the token label.
	Label string
	// UserPIN is the normal user's PIN.
	UserPIN string
	// SOPIN is the security officer's PIN.
	SOPIN string
	// PINFile holds UserPIN (mode 0600), for configurations that read the PIN from a file.
	PINFile string
	// ConfPath is the softhsm2.conf that points at TokenDir. The test's process environment
	// has SOFTHSM2_CONF set to it; a child process needs Env() in its environment.
	ConfPath string
	// TokenDir is the SoftHSM2 token directory.
	TokenDir string
}

// Env is the environment a child process (a meshca-server started by a test) needs to see
// this token.
func (tok SoftHSMToken) Env() []string { return []string{"SOFTHSM2_CONF=" + tok.ConfPath} }

// softHSMConfs remembers the configuration made for each running test, so that a second token
// in the same test lands in the same token directory and a module initialized once sees both.
var softHSMConfs sync.Map // testing.TB -> softHSMConf

type softHSMConf struct {
	path, tokenDir string
}

// NewSoftHSMToken initializes a SoftHSM2 token labelled label, in a token directory under
// t.TempDir(), with random SO and user PINs.
//
// It writes a softhsm2.conf pointing at that directory and sets SOFTHSM2_CONF to it with
// t.Setenv, so the test (and every test calling this) must not call t.Parallel: Go forbids
// Setenv in parallel tests, and SoftHSM2 reads SOFTHSM2_CONF once, when the module is
// initialized. Code under test that keeps the module initialized across tests must finalize it
// (close every signer) before the next test makes its token, or it will not see the new one.
// Calling NewSoftHSMToken twice in one test makes two tokens in the same directory.
//
// Without softhsm2-util or the module the test skips, or fails when MESHCA_REQUIRE_SOFTHSM or
// CI is set.
func NewSoftHSMToken(t testing.TB, label string) SoftHSMToken {
	t.Helper()
	util := RequireSoftHSM(t)
	module := findSoftHSMModule(t)

	var conf softHSMConf
	if v, ok := softHSMConfs.Load(t); ok {
		conf = v.(softHSMConf)
	} else {
		dir := t.TempDir()
		conf = softHSMConf{path: filepath.Join(dir, "softhsm2.conf"), tokenDir: filepath.Join(dir, "tokens")}
		if err := os.Mkdir(conf.tokenDir, 0o700); err != nil {
			t.Fatalf("softhsm: token dir: %v", err)
		}
		text := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", conf.tokenDir)
		if err := os.WriteFile(conf.path, []byte(text), 0o600); err != nil {
			t.Fatalf("softhsm: write %s: %v", conf.path, err)
		}
		softHSMConfs.Store(t, conf)
		t.Cleanup(func() { softHSMConfs.Delete(t) })
	}
	t.Setenv("SOFTHSM2_CONF", conf.path)

	tok := SoftHSMToken{
		ModulePath: module,
		Label:      label,
		UserPIN:    randomPIN(t),
		SOPIN:      randomPIN(t),
		PINFile:    filepath.Join(filepath.Dir(conf.path), "pin-"+hex.EncodeToString([]byte(label))),
		ConfPath:   conf.path,
		TokenDir:   conf.tokenDir,
	}
	if err := os.WriteFile(tok.PINFile, []byte(tok.UserPIN+"\n"), 0o600); err != nil {
		t.Fatalf("softhsm: write PIN file: %v", err)
	}
	cmd := exec.Command(util, "--init-token", "--free", "--label", label, "--so-pin", tok.SOPIN, "--pin", tok.UserPIN)
	cmd.Env = append(os.Environ(), tok.Env()...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token --label %s: %v\n%s", label, err, out)
	}
	return tok
}

// findSoftHSMModule returns the path of libsofthsm2.so, or skips/fails like Require.
func findSoftHSMModule(t testing.TB) string {
	t.Helper()
	candidates := softHSMModulePaths
	if p := os.Getenv(SoftHSMModuleEnv); p != "" {
		candidates = []string{p}
	}
	for _, p := range candidates {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	if os.Getenv("MESHCA_REQUIRE_SOFTHSM") != "" || os.Getenv("CI") != "" {
		t.Fatalf("the SoftHSM2 module is required (MESHCA_REQUIRE_SOFTHSM or CI is set) but is not in %v; run `make tools` or set %s", candidates, SoftHSMModuleEnv)
	}
	t.Skipf("the SoftHSM2 module is not in %v; run `make tools`, set %s, or set MESHCA_REQUIRE_SOFTHSM to make this a failure", candidates, SoftHSMModuleEnv)
	return ""
}

func randomPIN(t testing.TB) string {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("softhsm: PIN: %v", err)
	}
	return hex.EncodeToString(b)
}
