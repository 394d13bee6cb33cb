package agent

import (
	"testing"
	"time"
)

func TestRefreshTimeIsAFractionOfTheRemainingLifetimeWithJitter(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	h := holding{received: t0, notAfter: t0.Add(24 * time.Hour)}
	s := schedule{fraction: 0.5, jitter: 0.1}
	cases := []struct {
		name string
		r    float64
		want time.Duration
	}{
		{"no jitter drawn refreshes at half life", 0, 12 * time.Hour},
		{"the earliest jitter refreshes at 40%", -1, time.Duration(0.4 * float64(24*time.Hour))},
		{"the latest jitter refreshes at 60%", 1, time.Duration(0.6 * float64(24*time.Hour))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := s.refreshAt(h, tc.r).Sub(t0); got != tc.want {
				t.Fatalf("refresh after %s, want %s", got, tc.want)
			}
		})
	}
	t.Run("the backdated NotBefore does not count: the lifetime starts when the agent got it", func(t *testing.T) {
		// A 10 s certificate backdated by a minute is still refreshed 5 s after it arrived.
		short := holding{received: t0, notAfter: t0.Add(10 * time.Second)}
		if got := s.refreshAt(short, 0).Sub(t0); got != 5*time.Second {
			t.Fatalf("refresh after %s, want 5s", got)
		}
	})
}

func TestPlanDecidesBetweenRegisterAndRefresh(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	s := schedule{fraction: 0.5, jitter: 0.1}
	held := &holding{received: t0, notAfter: t0.Add(time.Hour)}
	cases := []struct {
		name    string
		now     time.Time
		cur     *holding
		retryAt time.Time
		act     action
		at      time.Time
	}{
		{"no certificate registers now", t0, nil, time.Time{}, actRegister, t0},
		{"no certificate after a failure registers at the retry time", t0, nil, t0.Add(4 * time.Second), actRegister, t0.Add(4 * time.Second)},
		{"a fresh certificate refreshes at its refresh time", t0.Add(time.Minute), held, time.Time{}, actRefresh, t0.Add(30 * time.Minute)},
		{"a certificate past its refresh time refreshes now", t0.Add(40 * time.Minute), held, time.Time{}, actRefresh, t0.Add(40 * time.Minute)},
		{"a failed refresh is retried before the normal time", t0.Add(31 * time.Minute), held, t0.Add(32 * time.Minute), actRefresh, t0.Add(32 * time.Minute)},
		{"a retry is never later than the normal refresh time", t0.Add(time.Minute), held, t0.Add(50 * time.Minute), actRefresh, t0.Add(30 * time.Minute)},
		{"an expired certificate re-attests", t0.Add(time.Hour), held, time.Time{}, actRegister, t0.Add(time.Hour)},
		{"a retry that falls after expiry re-attests", t0.Add(59 * time.Minute), held, t0.Add(61 * time.Minute), actRegister, t0.Add(61 * time.Minute)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			act, at := s.plan(tc.now, tc.cur, 0, tc.retryAt)
			if act != tc.act || !at.Equal(tc.at) {
				t.Fatalf("plan = %s at %s, want %s at %s", act, at.Sub(t0), tc.act, tc.at.Sub(t0))
			}
		})
	}
}

func TestBackoffDoublesUpToItsMaximum(t *testing.T) {
	b := backoff{initial: time.Second, max: 30 * time.Second}
	cases := []struct {
		failures int
		want     time.Duration
	}{{0, 0}, {1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {5, 16 * time.Second}, {6, 30 * time.Second}, {60, 30 * time.Second}}
	for _, tc := range cases {
		if got := b.after(tc.failures); got != tc.want {
			t.Errorf("after %d failures: %s, want %s", tc.failures, got, tc.want)
		}
	}
}
