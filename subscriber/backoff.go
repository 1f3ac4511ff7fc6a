package subscriber

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff is a jittered exponential backoff in the style of go-spiffe's
// workloadapi: Next returns a random duration in [d/2, d], d doubling from
// min up to max; Reset starts over. Not safe for concurrent use: each loop
// owns its own.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(minWait, maxWait time.Duration) *backoff {
	return &backoff{min: minWait, max: maxWait}
}

// Next returns how long to wait before the next attempt.
func (b *backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	half := b.cur / 2
	return half + rand.N(half+1)
}

// Reset makes the next wait the shortest again; call it after every good
// update.
func (b *backoff) Reset() { b.cur = 0 }

// sleep waits d, or until ctx is done (false) or wake receives (true,
// early).
func sleep[T any](ctx context.Context, d time.Duration, wake <-chan T) bool {
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
