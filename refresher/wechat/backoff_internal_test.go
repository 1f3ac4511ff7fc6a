package wechat

import (
	"testing"
	"time"
)

// TestRetryBackoffFullJitter pins the pause before attempt n+1: uniform
// in [0, min(Max, Base·2^(n-1))), and spread over that range.
func TestRetryBackoffFullJitter(t *testing.T) {
	p := RetryPolicy{Attempts: 10, Base: 200 * time.Millisecond, Max: 5 * time.Second}.normalized()
	for n := 1; n <= 8; n++ {
		ceiling := min(p.Base<<(n-1), p.Max)
		var lowest, highest time.Duration = ceiling, 0
		for range 2000 {
			d := p.backoff(n)
			if d < 0 || d >= ceiling {
				t.Fatalf("attempt %d: pause %v, want in [0, %v)", n, d, ceiling)
			}
			lowest, highest = min(lowest, d), max(highest, d)
		}
		// 2000 uniform draws: the extremes are within 1 % of the ends
		// but for a chance of about 2e-9.
		if lowest > ceiling/100 || highest < ceiling*99/100 {
			t.Fatalf("attempt %d: pauses span [%v, %v], want nearly [0, %v)", n, lowest, highest, ceiling)
		}
	}
}
