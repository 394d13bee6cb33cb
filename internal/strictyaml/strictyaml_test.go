package strictyaml

import (
	"strings"
	"testing"
)

type sample struct {
	Name  string `yaml:"name"`
	Inner struct {
		Port int `yaml:"port"`
	} `yaml:"inner"`
}

func TestDecode(t *testing.T) {
	var s sample
	if err := Decode(strings.NewReader("name: a\ninner: {port: 7}\n"), &s); err != nil || s.Inner.Port != 7 {
		t.Fatalf("valid document: %v %+v", err, s)
	}
	for name, tc := range map[string]struct{ in, want string }{
		"unknown key is named with its line": {"name: a\nnmae: b\n", `line 2: unknown key "nmae" (in sample)`},
		"unknown nested key is named":        {"inner: {prot: 1}\n", `unknown key "prot"`},
		"empty input is refused":             {"", "empty file"},
		"a second document is refused":       {"name: a\n---\nname: b\n", "more than one YAML document"},
	} {
		t.Run(name, func(t *testing.T) {
			err := Decode(strings.NewReader(tc.in), &sample{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
