package agent

import (
	"errors"
	"strings"
	"testing"
)

// FuzzDecodeConfig feeds arbitrary YAML to the agent's config reader: it never panics, every
// refusal is an ErrConfig, and what it accepts validates.
func FuzzDecodeConfig(f *testing.F) {
	f.Add([]byte(validConfig))
	f.Add([]byte("server: [1, 2\n"))
	f.Add([]byte("identities: [{name: x, refresh: {before: -1s}}]"))
	f.Add([]byte("&a [*a, *a, *a]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeConfig(strings.NewReader(string(data)))
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("refusal is not an ErrConfig: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("DecodeConfig returned a config that does not validate: %v", err)
		}
	})
}
