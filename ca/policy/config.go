package policy

import (
	"errors"
	"fmt"
	"time"
)

// Limits that no configuration may exceed.
const (
	// MaxWorkloadTTL is the longest lifetime a workload certificate can ever have (30 days,
	// the Athenz default). Config.MaxTTL may be lower, never higher.
	MaxWorkloadTTL = 30 * 24 * time.Hour
	// MaxBackdate bounds Config.Backdate: clock skew worth more than an hour is a broken clock.
	MaxBackdate = time.Hour
	// Day is the unit of a spec's lifetime.
	Day = 24 * time.Hour
)

// ErrInvalidConfig is returned by Config.Validate and New for an unusable configuration.
var ErrInvalidConfig = errors.New("invalid policy config")

// Config holds the limits and defaults of the issuance policy. Start from DefaultConfig.
type Config struct {
	// DefaultTTL is a workload certificate's lifetime when the request names none.
	DefaultTTL time.Duration
	// MaxTTL is the longest lifetime a workload request may ask for; at most MaxWorkloadTTL.
	MaxTTL time.Duration
	// Backdate is how far before the request's time NotBefore is set, so a peer whose clock
	// runs slightly behind still accepts a fresh certificate.
	Backdate time.Duration
	// SpecDefaultLifetime is a GitOps certificate's lifetime when its spec names none.
	SpecDefaultLifetime time.Duration
	// SpecMaxLifetime is the longest lifetime a GitOps spec may ask for.
	SpecMaxLifetime time.Duration
}

// DefaultConfig is the policy of DESIGN.md §2: workload certificates for 24 h, up to 30 days,
// backdated by one minute; GitOps certificates for 30 days, up to 365 days.
func DefaultConfig() Config {
	return Config{
		DefaultTTL:          24 * time.Hour,
		MaxTTL:              MaxWorkloadTTL,
		Backdate:            time.Minute,
		SpecDefaultLifetime: 30 * Day,
		SpecMaxLifetime:     365 * Day,
	}
}

// Validate reports the first field that is out of range.
func (c Config) Validate() error {
	switch {
	case c.DefaultTTL <= 0:
		return fmt.Errorf("default_ttl %s: %w: must be positive", c.DefaultTTL, ErrInvalidConfig)
	case c.MaxTTL <= 0 || c.MaxTTL > MaxWorkloadTTL:
		return fmt.Errorf("max_ttl %s: %w: must be positive and at most %s", c.MaxTTL, ErrInvalidConfig, MaxWorkloadTTL)
	case c.DefaultTTL > c.MaxTTL:
		return fmt.Errorf("default_ttl %s: %w: exceeds max_ttl %s", c.DefaultTTL, ErrInvalidConfig, c.MaxTTL)
	case c.Backdate < 0 || c.Backdate > MaxBackdate:
		return fmt.Errorf("backdate %s: %w: must be between 0 and %s", c.Backdate, ErrInvalidConfig, MaxBackdate)
	case c.SpecDefaultLifetime <= 0:
		return fmt.Errorf("spec_default_lifetime %s: %w: must be positive", c.SpecDefaultLifetime, ErrInvalidConfig)
	case c.SpecMaxLifetime < c.SpecDefaultLifetime:
		return fmt.Errorf("spec_max_lifetime %s: %w: below spec_default_lifetime %s", c.SpecMaxLifetime, ErrInvalidConfig, c.SpecDefaultLifetime)
	}
	return nil
}

// Policy decides issuance under a validated Config. Its methods are pure and safe for
// concurrent use.
type Policy struct {
	cfg Config
}

// New returns a Policy for cfg, or the reason cfg is unusable.
func New(cfg Config) (*Policy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Policy{cfg: cfg}, nil
}

// Config returns the policy's configuration.
func (p *Policy) Config() Config { return p.cfg }
