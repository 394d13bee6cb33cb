package raftstore

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidGrant is returned for a launch grant pattern that is not a provider name nor a
// provider name followed by ".*".
var ErrInvalidGrant = errors.New("raftstore: invalid launch grant pattern")

// GrantMatches reports whether a launch grant pattern admits a provider. A pattern is either a
// provider name, which matches exactly that provider, or a name followed by ".*", which matches
// the providers one or more labels below it: "sys.auth.aws.*" matches "sys.auth.aws.us-east-1"
// and "sys.auth.aws.a.b", never "sys.auth.aws" itself nor "sys.auth.awsx". Neither argument is
// validated here; invalid patterns are refused when a grant is stored (ValidateGrantPattern),
// invalid provider names when a provider is stored.
func GrantMatches(pattern, provider string) bool {
	base, wildcard := strings.CutSuffix(pattern, ".*")
	if !wildcard {
		return pattern != "" && pattern == provider
	}
	if base == "" {
		return false
	}
	rest, below := strings.CutPrefix(provider, base+".")
	return below && rest != "" && !strings.HasPrefix(rest, ".") && !strings.HasSuffix(rest, ".")
}

// AnyGrantMatches reports whether one of the patterns admits the provider.
func AnyGrantMatches(patterns []string, provider string) bool {
	for _, p := range patterns {
		if GrantMatches(p, provider) {
			return true
		}
	}
	return false
}

// ValidateGrantPattern checks that a pattern is a provider name ("sys.auth.k8s") or a provider
// name followed by ".*" ("sys.auth.aws.*"). A bare "*" (every provider) is refused: a grant
// always names the subtree it trusts.
func ValidateGrantPattern(pattern string) error {
	base, wildcard := strings.CutSuffix(pattern, ".*")
	if wildcard && base == "" || pattern == "*" {
		return fmt.Errorf("pattern %q: %w: a wildcard must follow a provider name (e.g. \"sys.auth.aws.*\")", pattern, ErrInvalidGrant)
	}
	if err := validateDottedName(base); err != nil {
		return fmt.Errorf("pattern %q: %w: %w", pattern, ErrInvalidGrant, err)
	}
	return nil
}
