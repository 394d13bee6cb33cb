package controlplane

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

func TestLeaderPrunesWhatEnded(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.Prune.Interval = NewDuration(time.Second)
		c.Prune.Grace = NewDuration(time.Nanosecond) // zero would mean the default
	})
	now := time.Now()
	use := func(nonce string, expires time.Time) {
		res := ts.apply(&meshcav1.Command{Command: &meshcav1.Command_UseNonce{UseNonce: &meshcav1.UseNonceCommand{
			Scope: "sports.api", Nonce: nonce, Expires: expires.UnixNano(),
		}}})
		if res.GetCode() != meshcav1.ResultCode_RESULT_CODE_OK {
			t.Fatalf("use nonce %s: %v", nonce, res)
		}
	}
	use("ends-soon", now.Add(1500*time.Millisecond))
	use("still-valid", now.Add(time.Hour))
	// The leader's loop proposes the prune on its own once the first nonce has ended.
	waitFor(t, "the ended nonce pruned", func() error {
		if n := ts.s.fsm.State().Sizes().Nonces; n != 1 {
			return fmt.Errorf("%d nonces left, want 1", n)
		}
		return nil
	})
	res, err := ts.s.pruneOnce(context.Background(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if res.GetNonces() != 0 || ts.s.fsm.State().Sizes().Nonces != 1 {
		t.Fatalf("a record that had not ended was pruned: %v", res)
	}
}

func TestPruneIntervalIsValidated(t *testing.T) {
	_, err := DecodeConfig(strings.NewReader(validConfig + "prune:\n  interval: 1ms\n"))
	if err == nil || !strings.Contains(err.Error(), "prune.interval") {
		t.Fatalf("a sub-second prune interval must be refused naming the field, got %v", err)
	}
}
