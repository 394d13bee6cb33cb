// Package strictyaml decodes meshca's YAML configuration files strictly: exactly one document,
// and an unknown key is an error naming the key and its line, so a typo fails at start instead
// of silently leaving a default in place.
package strictyaml

import (
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

var unknownField = regexp.MustCompile(`line (\d+): field (\S+) not found in type (?:[a-z0-9_]+\.)?(\S+)`)

// Decode reads exactly one YAML document from r into v. An unknown key is reported as
// `line N: unknown key "k" (in Type)`; an empty input and a second document are errors too.
func Decode(r io.Reader, v any) error {
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty file")
		}
		msg := unknownField.ReplaceAllString(err.Error(), `line $1: unknown key "$2" (in $3)`)
		return errors.New(strings.TrimPrefix(msg, "yaml: "))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return fmt.Errorf("more than one YAML document")
	}
	return nil
}
