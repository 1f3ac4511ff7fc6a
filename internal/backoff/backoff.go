// Package backoff is tokenkeeper's one exponential backoff. The pause
// after the nth failure is Ceiling(base, max, n) = min(max, base·2^(n-1)),
// spread by a Jitter:
//
//   - [Equal], uniform in [d/2, d]: every reconnect and rewatch loop, through
//     the stateful [Backoff] (Next after a failure, Reset after a good
//     result), in the style of go-spiffe's workloadapi;
//   - [Full], uniform in [0, d): the WeChat client's retries inside one
//     fetch (AWS's "full jitter");
//   - [Spread](0.2), uniform in [0.8·d, 1.2·d): the refresher's pacing of
//     an app's failed refreshes, so that failing apps do not retry in step.
//
// [Delay] is the pure form, for callers that count failures themselves.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Ceiling returns the un-jittered pause after failure n (n ≥ 1; a smaller
// n counts as 1): min(maxD, base·2^(n-1)). It is 0 when base or maxD is
// not positive, and never overflows.
func Ceiling(base, maxD time.Duration, n int) time.Duration {
	if base <= 0 || maxD <= 0 {
		return 0
	}
	d := base
	for i := 1; i < n && d < maxD; i++ {
		if d > maxD/2 {
			return maxD
		}
		d *= 2
	}
	return min(d, maxD)
}

// Jitter turns a pause d ≥ 0 into a random one.
type Jitter func(d time.Duration) time.Duration

// Full is uniform in [0, d) (0 for d ≤ 0).
func Full(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// Equal is uniform in [h, 2h] where h = d/2 (rounded down): about
// [d/2, d] (0 for d ≤ 0).
func Equal(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	half := d / 2
	return half + rand.N(half+1)
}

// Spread returns the jitter uniform in [d·(1−f), d·(1+f)), f in [0, 1].
func Spread(f float64) Jitter {
	return func(d time.Duration) time.Duration {
		return time.Duration(float64(d) * (1 - f + 2*f*rand.Float64()))
	}
}

// Delay returns the pause after failure n: Ceiling(base, maxD, n) spread
// by jitter (nil: none).
func Delay(n int, base, maxD time.Duration, jitter Jitter) time.Duration {
	d := Ceiling(base, maxD, n)
	if jitter != nil {
		d = jitter(d)
	}
	return d
}

// Backoff is the pause of a retry loop that counts its own failures: Next
// after each failure, Reset after a good result. It is not safe for
// concurrent use: each loop owns its own.
type Backoff struct {
	min, max time.Duration
	n        int // failures since the last Reset
}

// New returns a backoff whose pauses grow from minWait to maxWait (a
// maxWait below minWait is raised to it), with [Equal] jitter.
func New(minWait, maxWait time.Duration) *Backoff {
	return &Backoff{min: minWait, max: max(minWait, maxWait)}
}

// Next returns how long to wait before the next attempt: Delay(n, min,
// max, Equal) for the nth call since the last Reset.
func (b *Backoff) Next() time.Duration {
	if b.n < 64 { // the ceiling stops growing long before
		b.n++
	}
	return Delay(b.n, b.min, b.max, Equal)
}

// Reset makes the next pause the shortest again.
func (b *Backoff) Reset() { b.n = 0 }

// Sleep waits d, or until ctx is done; it reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	return SleepOr[struct{}](ctx, d, nil)
}

// SleepOr waits d, or until ctx is done (false) or wake receives (true,
// early; a nil wake never does).
func SleepOr[T any](ctx context.Context, d time.Duration, wake <-chan T) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	case <-wake:
		return true
	}
}
