package agent

import (
	"context"
	"time"
)

// Clock is the agent's time: when to refresh, whether a certificate is expired, and the time
// peer certificates are verified at. Tests inject one they move by hand, so rotation is tested
// without waiting for it.
type Clock interface {
	Now() time.Time
	// NewTimer returns a timer that fires once d has passed.
	NewTimer(d time.Duration) Timer
}

// Timer is a one-shot timer of a Clock.
type Timer interface {
	// C receives the time when the timer fires.
	C() <-chan time.Time
	// Stop cancels the timer; it reports whether it had not fired yet.
	Stop() bool
}

type realClock struct{}

func (realClock) Now() time.Time                 { return time.Now() }
func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }

// sleep waits for d on clock, or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, clock Clock, d time.Duration) bool {
	passed, _ := sleepOrWake(ctx, clock, d, nil)
	return passed
}

// sleepOrWake waits for d on clock, until wake is closed (nil: never), or until ctx ends. It
// reports whether d passed and whether wake came first; both are false when ctx ended.
func sleepOrWake(ctx context.Context, clock Clock, d time.Duration, wake <-chan struct{}) (passed, woke bool) {
	if d <= 0 {
		return ctx.Err() == nil, false
	}
	t := clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return true, false
	case <-wake:
		return false, ctx.Err() == nil
	case <-ctx.Done():
		return false, false
	}
}

// action is what an identity's loop does next.
type action int

const (
	// actRegister attests the instance and asks for a first certificate.
	actRegister action = iota + 1
	// actRefresh asks for a new certificate with the current one.
	actRefresh
)

func (a action) String() string {
	switch a {
	case actRegister:
		return "register"
	case actRefresh:
		return "refresh"
	}
	return "none"
}

// holding is what the plan needs to know about the certificate an identity holds.
type holding struct {
	// received is when the agent got the certificate (its own clock): the lifetime that counts
	// starts here, not at NotBefore, which the CA backdates.
	received time.Time
	notAfter time.Time
}

// schedule is the refresh policy of RefreshConfig, with the jitter drawn by the caller.
type schedule struct {
	fraction      float64
	jitter        float64
	reissueJitter time.Duration
	backoff       backoff
}

// reissueAt is when a certificate the cluster asked to replace now is replaced: r (in [0, 1),
// drawn at random by the caller) of the reissue jitter after the agent heard of the request, so
// the hosts of a large mesh do not all ask in the same instant. After tries replacements for the
// same request that still brought a certificate of another issuer (from a CA node that had not
// applied the activate yet), the next waits the backoff after the last one, at last.
func (s schedule) reissueAt(heard time.Time, r float64, tries int, last time.Time) time.Time {
	at := heard.Add(time.Duration(r * float64(s.reissueJitter)))
	if tries > 0 {
		if b := last.Add(s.backoff.after(tries)); b.After(at) {
			at = b
		}
	}
	return at
}

// refreshAt is when a certificate held since received and valid until notAfter is refreshed:
// after fraction of its remaining lifetime, moved by jitter·r of it (r in [-1, 1], drawn at
// random by the caller once per certificate).
func (s schedule) refreshAt(h holding, r float64) time.Time {
	life := h.notAfter.Sub(h.received)
	if life <= 0 {
		return h.received
	}
	f := s.fraction + s.jitter*r
	return h.received.Add(time.Duration(float64(life) * f))
}

// plan decides the next attempt: what to do and when. cur is the certificate held (nil for
// none); retryAt, when set, is when a failed attempt is retried (never later than a normal
// refresh time still ahead). A certificate that has expired by the time of the attempt cannot
// refresh: the instance registers again.
func (s schedule) plan(now time.Time, cur *holding, r float64, retryAt time.Time) (action, time.Time) {
	at := now
	if cur != nil {
		at = s.refreshAt(*cur, r)
	}
	// After a failure the retry time rules, unless the normal refresh time comes first.
	if !retryAt.IsZero() && (cur == nil || !at.After(now) || retryAt.Before(at)) {
		at = retryAt
	}
	if at.Before(now) {
		at = now
	}
	return actionAt(at, cur), at
}

// actionAt is what an attempt made at now does: a certificate that is missing or expired by then
// cannot refresh, so the instance registers (re-attests); otherwise it refreshes.
func actionAt(now time.Time, cur *holding) action {
	if cur == nil || !now.Before(cur.notAfter) {
		return actRegister
	}
	return actRefresh
}

// backoff is the wait after the n-th consecutive failure: initial·2^(n-1), at most max.
type backoff struct {
	initial, max time.Duration
}

func (b backoff) after(failures int) time.Duration {
	if failures <= 0 {
		return 0
	}
	d := b.initial
	for i := 1; i < failures && d < b.max; i++ {
		d *= 2
	}
	return min(d, b.max)
}
