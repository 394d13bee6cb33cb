package testenv

import (
	"flag"
	"testing"
)

// recorder stands in for the test a helper is handed, recording whether it failed or skipped.
type recorder struct {
	testing.TB
	failed, skipped bool
}

func (r *recorder) Helper()               {}
func (r *recorder) Fatalf(string, ...any) { r.failed = true }
func (r *recorder) Skip(...any)           { r.skipped = true }

func TestSkipIfShortFailsInCIAndSkipsElsewhere(t *testing.T) {
	short := flag.Lookup("test.short")
	old := short.Value.String()
	t.Cleanup(func() { _ = short.Value.Set(old) })
	for _, tc := range []struct {
		short, ci     string
		fail, skipped bool
	}{
		{"false", "", false, false},
		{"false", "true", false, false},
		{"true", "", false, true},
		{"true", "true", true, false},
	} {
		if err := short.Value.Set(tc.short); err != nil {
			t.Fatal(err)
		}
		t.Setenv("CI", tc.ci)
		t.Setenv("MESHCA_REQUIRE_SOFTHSM", "")
		t.Setenv("MESHCA_REQUIRE_DOCKER", "")
		r := &recorder{TB: t}
		SkipIfShort(r, "long")
		if r.failed != tc.fail || r.skipped != tc.skipped {
			t.Errorf("short=%s CI=%q: failed %v skipped %v, want %v %v", tc.short, tc.ci, r.failed, r.skipped, tc.fail, tc.skipped)
		}
	}
}
