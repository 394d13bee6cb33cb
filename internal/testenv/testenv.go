// Package testenv decides what a test does when a tool it needs is missing: skip on a
// developer's machine, fail in CI (where MESHCA_REQUIRE_* is set) so a missing tool never
// reports as a pass.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// Require makes sure the command is on PATH. When it is not, the test skips, unless the
// environment variable requireVar is non-empty or CI is set, in which case it fails.
func Require(t testing.TB, command, requireVar string) string {
	t.Helper()
	path, err := exec.LookPath(command)
	if err == nil {
		return path
	}
	if os.Getenv(requireVar) != "" || os.Getenv("CI") != "" {
		t.Fatalf("%s is required (%s or CI is set) but not found: %v; run `make tools`", command, requireVar, err)
	}
	t.Skipf("%s not found (%v); run `make tools`, or set %s to make this a failure", command, err, requireVar)
	return ""
}

// RequireOpenSSL returns the path of the openssl command.
func RequireOpenSSL(t testing.TB) string { return Require(t, "openssl", "MESHCA_REQUIRE_SOFTHSM") }

// RequireSoftHSM returns the path of softhsm2-util.
func RequireSoftHSM(t testing.TB) string {
	return Require(t, "softhsm2-util", "MESHCA_REQUIRE_SOFTHSM")
}

// RequireDocker returns the path of the docker command; it also checks the engine answers.
func RequireDocker(t testing.TB) string {
	t.Helper()
	path := Require(t, "docker", "MESHCA_REQUIRE_DOCKER")
	if path == "" {
		return ""
	}
	if err := exec.Command(path, "info").Run(); err != nil {
		if os.Getenv("MESHCA_REQUIRE_DOCKER") != "" || os.Getenv("CI") != "" {
			t.Fatalf("docker engine does not answer: %v", err)
		}
		t.Skipf("docker engine does not answer (%v); set MESHCA_REQUIRE_DOCKER to make this a failure", err)
	}
	return path
}

// SkipIfShort skips a long test under -short on a developer's machine. In CI (CI or any
// MESHCA_REQUIRE_* set) -short is refused instead: every test must run there.
func SkipIfShort(t testing.TB, why string) {
	t.Helper()
	if !testing.Short() {
		return
	}
	if os.Getenv("CI") != "" || os.Getenv("MESHCA_REQUIRE_SOFTHSM") != "" || os.Getenv("MESHCA_REQUIRE_DOCKER") != "" {
		t.Fatalf("-short is set in CI, where this test must run: %s", why)
	} else {
		t.Skip(why + "; skipped with -short")
	}
}
