package strictyaml

import (
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration written in YAML as "24h", "90s". A value that does not parse is
// kept, so that the config's validation can report it with the field's name (Check).
type Duration struct {
	d   time.Duration
	raw string
	bad bool
}

// NewDuration makes a Duration from a time.Duration.
func NewDuration(v time.Duration) Duration { return Duration{d: v} }

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration like \"24h\": %w", n.Line, err)
	}
	v, err := time.ParseDuration(s)
	*d = Duration{d: v, raw: s, bad: err != nil || v < 0}
	return nil
}

// MarshalYAML writes the duration as it was read, or in Go's notation, so a config written
// with yaml.Marshal reads back to the same values.
func (d Duration) MarshalYAML() (any, error) {
	if d.raw != "" {
		return d.raw, nil
	}
	return d.d.String(), nil
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return d.d }

// Check reports a value that was not a non-negative Go duration, naming field.
func (d Duration) Check(field string) error {
	if d.bad {
		return fmt.Errorf("%s: %q is not a non-negative duration like \"24h\" or \"90s\"", field, d.raw)
	}
	return nil
}

// Zero reports a duration that is zero and did not fail to parse: left out or written as
// zero. Configs give such fields their default.
func (d Duration) Zero() bool { return d.d == 0 && !d.bad }

// Unset reports a duration left out of the YAML (not even written as zero).
func (d Duration) Unset() bool { return d.d == 0 && d.raw == "" && !d.bad }
