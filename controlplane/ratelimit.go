package controlplane

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// limiterSweepSize is how many keys a limiter holds before it forgets idle ones.
const limiterSweepSize = 10000

// keyedLimiter is a token bucket per key (an instance, a client address): perMinute
// issuances a minute, in bursts of up to perMinute. Keys idle long enough to have refilled
// their bucket are forgotten once the map grows past limiterSweepSize, so a client that varies
// its key cannot grow it without bound. Time is passed in.
type keyedLimiter struct {
	limit rate.Limit
	burst int
	full  time.Duration // time for an empty bucket to refill

	mu   sync.Mutex
	keys map[string]*keyState
}

type keyState struct {
	lim  *rate.Limiter
	last time.Time
}

func newKeyedLimiter(perMinute int) *keyedLimiter {
	return &keyedLimiter{
		limit: rate.Limit(float64(perMinute) / 60),
		burst: perMinute,
		full:  time.Minute,
		keys:  map[string]*keyState{},
	}
}

// allow takes a token for key at now. When the bucket is empty it reports false and how long
// until a token is available.
func (l *keyedLimiter) allow(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.keys[key]
	if !ok {
		if len(l.keys) >= limiterSweepSize {
			l.sweep(now)
		}
		st = &keyState{lim: rate.NewLimiter(l.limit, l.burst)}
		l.keys[key] = st
	}
	st.last = now
	r := st.lim.ReserveN(now, 1)
	if !r.OK() {
		return false, l.full
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// sweep forgets keys whose buckets are full again.
func (l *keyedLimiter) sweep(now time.Time) {
	for k, st := range l.keys {
		if now.Sub(st.last) >= l.full {
			delete(l.keys, k)
		}
	}
}

// size is how many keys the limiter holds.
func (l *keyedLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys)
}
