package raftstore

import (
	"errors"
	"testing"
)

func TestGrantMatches(t *testing.T) {
	tests := []struct {
		name              string
		pattern, provider string
		want              bool
	}{
		{"wildcard matches a provider one label below", "sys.auth.aws.*", "sys.auth.aws.us-east-1", true},
		{"wildcard matches a provider several labels below", "sys.auth.aws.*", "sys.auth.aws.eu.west-2", true},
		{"wildcard never matches the base provider itself", "sys.auth.aws.*", "sys.auth.aws", false},
		{"wildcard never matches a sibling sharing a prefix", "sys.auth.aws.*", "sys.auth.awsx", false},
		{"wildcard never matches a sibling's child sharing a prefix", "sys.auth.aws.*", "sys.auth.awsx.us", false},
		{"wildcard never matches a parent", "sys.auth.aws.*", "sys.auth", false},
		{"wildcard never matches an empty label below", "sys.auth.aws.*", "sys.auth.aws.", false},
		{"wildcard never matches a doubled dot below", "sys.auth.aws.*", "sys.auth.aws..x", false},
		{"exact pattern matches only the same provider", "sys.auth.k8s", "sys.auth.k8s", true},
		{"exact pattern does not match a child", "sys.auth.k8s", "sys.auth.k8s.a", false},
		{"exact pattern does not match a longer name", "sys.auth.k8s", "sys.auth.k8sx", false},
		{"empty pattern matches nothing", "", "", false},
		{"bare wildcard matches nothing", "*", "sys.auth.k8s", false},
		{"dot-star alone matches nothing", ".*", "sys.auth.k8s", false},
		{"matching is case-sensitive", "sys.auth.aws.*", "SYS.auth.aws.x", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := GrantMatches(tt.pattern, tt.provider); got != tt.want {
				t.Fatalf("GrantMatches(%q, %q) = %v, want %v", tt.pattern, tt.provider, got, tt.want)
			}
		})
	}
}

func TestAnyGrantMatches(t *testing.T) {
	grants := []string{"sys.auth.k8s", "sys.auth.aws.*"}
	if !AnyGrantMatches(grants, "sys.auth.aws.x") || !AnyGrantMatches(grants, "sys.auth.k8s") {
		t.Fatal("a provider matched by one of the grants is not admitted")
	}
	if AnyGrantMatches(grants, "sys.auth.gcp") || AnyGrantMatches(nil, "sys.auth.k8s") {
		t.Fatal("a provider matched by no grant is admitted")
	}
}

func TestValidateGrantPattern(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
		valid   bool
	}{
		{"a provider name is a valid pattern", "sys.auth.k8s", true},
		{"a provider name followed by .* is a valid pattern", "sys.auth.aws.*", true},
		{"a bare wildcard is refused", "*", false},
		{"a wildcard without a name is refused", ".*", false},
		{"a wildcard in the middle is refused", "sys.*.aws", false},
		{"a double wildcard is refused", "sys.auth.*.*", false},
		{"a prefix wildcard without a dot is refused", "sys.auth.aws*", false},
		{"uppercase is refused", "Sys.auth.k8s", false},
		{"an empty label is refused", "sys..k8s", false},
		{"an empty pattern is refused", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateGrantPattern(tt.pattern)
			if (err == nil) != tt.valid {
				t.Fatalf("ValidateGrantPattern(%q) = %v, want valid=%v", tt.pattern, err, tt.valid)
			}
			if err != nil && !errors.Is(err, ErrInvalidGrant) {
				t.Fatalf("error %v does not wrap ErrInvalidGrant", err)
			}
		})
	}
}
