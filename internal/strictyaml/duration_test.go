package strictyaml

import (
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestDuration(t *testing.T) {
	type doc struct {
		A Duration `yaml:"a"`
		B Duration `yaml:"b"`
		C Duration `yaml:"c"`
		D Duration `yaml:"d"`
	}
	var v doc
	if err := Decode(strings.NewReader("a: 90s\nb: soon\nc: 0s\n"), &v); err != nil {
		t.Fatal(err)
	}
	if v.A.D() != 90*time.Second || v.A.Check("a") != nil || v.A.Zero() || v.A.Unset() {
		t.Errorf("a = %+v, want 90s", v.A)
	}
	if err := v.B.Check("x.b"); err == nil || err.Error() != `x.b: "soon" is not a non-negative duration like "24h" or "90s"` {
		t.Errorf("b: Check = %v, want the field, the value and the rule", err)
	}
	if v.B.Zero() || v.B.Unset() {
		t.Errorf("b: a value that did not parse counts as given")
	}
	if !v.C.Zero() || v.C.Unset() {
		t.Errorf("c: written as 0s is zero but not unset")
	}
	if !v.D.Zero() || !v.D.Unset() {
		t.Errorf("d: left out is zero and unset")
	}
	var neg doc
	if err := Decode(strings.NewReader("a: -1s\n"), &neg); err != nil || neg.A.Check("a") == nil {
		t.Errorf("a negative duration passes Check (%v)", err)
	}
	if err := Decode(strings.NewReader("a: [1]\n"), &neg); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("a non-string duration: %v, want an error naming the line", err)
	}
	out, err := yaml.Marshal(doc{A: v.A, B: NewDuration(2 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "a: 90s") || !strings.Contains(string(out), "b: 2h0m0s") {
		t.Errorf("marshalled %q: want a as written and b in Go's notation", out)
	}
}
