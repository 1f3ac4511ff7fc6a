// Package backoff is the jittered exponential backoff shared by every
// reconnect and rewatch loop of tokenkeeper (the style of go-spiffe's
// workloadapi): Next returns a random pause in [d/2, d] where d doubles
// from Min up to Max; Reset starts over after a good result.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is not safe for concurrent use: each loop owns its own.
type Backoff struct {
	min, max, cur time.Duration
}

// New returns a backoff whose pauses grow from minWait to maxWait.
func New(minWait, maxWait time.Duration) *Backoff {
	return &Backoff{min: minWait, max: maxWait}
}

// Next returns how long to wait before the next attempt.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	half := b.cur / 2
	return half + rand.N(half+1)
}

// Reset makes the next pause the shortest again.
func (b *Backoff) Reset() { b.cur = 0 }

// Sleep waits d, or until ctx is done; it reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
