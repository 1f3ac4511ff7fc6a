package refresher

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// TestFailurePacing pins the pause app.failure sets after each failure:
// base·2^(n-1) capped (60 × RetryMin for transient failures, 10 ×
// PermanentRetryMin for configuration and policy errors), spread ±20 %;
// PermanentRetryMin ±20 % for a forced refresh refused to keep quota;
// the next midnight in Beijing plus up to a minute for 45009.
func TestFailurePacing(t *testing.T) {
	policy := Policy{RetryMin: time.Second, PermanentRetryMin: time.Minute}
	now := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		err  error
		want func(n int) time.Duration // the centre of the n-th pause
	}{
		{"transient", &wechat.Error{Code: -1, Msg: "system error"}, func(n int) time.Duration {
			return min(time.Second<<(n-1), 60*time.Second)
		}},
		{"not stored", fmt.Errorf("%w: write timed out", ErrNotStored), func(n int) time.Duration {
			return min(time.Second<<(n-1), 60*time.Second)
		}},
		{"NATS read", fmt.Errorf("read mp: %w", nats.ErrNoResponders), func(n int) time.Duration {
			return min(time.Second<<(n-1), 60*time.Second)
		}},
		{"permanent", &wechat.Error{Code: 40164, Msg: "invalid ip"}, func(n int) time.Duration {
			return min(time.Minute<<(n-1), 10*time.Minute)
		}},
		{"quota reserved", ErrQuotaReserved, func(int) time.Duration { return time.Minute }},
		{"oauth2 invalid_client", &OAuth2Error{Status: 401, Code: "invalid_client"}, func(n int) time.Duration {
			return min(time.Minute<<(n-1), 10*time.Minute)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 50 { // the jitter is random: many draws
				a := &app{name: "a", policy: &policy}
				for n := 1; n <= 12; n++ {
					d := a.failure(tc.err, now).Sub(now)
					c := tc.want(n)
					lo, hi := time.Duration(float64(c)*0.8), time.Duration(float64(c)*1.2)
					if d < lo || d > hi {
						t.Fatalf("failure %d: pause %v, want in [%v, %v]", n, d, lo, hi)
					}
				}
			}
		})
	}
	t.Run("quota exhausted", func(t *testing.T) {
		midnight := time.Date(2025, 3, 2, 0, 0, 0, 0, cst)
		for range 50 {
			a := &app{name: "a", policy: &policy}
			at := a.failure(&wechat.Error{Code: 45009, Msg: "reach max api daily quota limit"}, now)
			if at.Before(midnight) || !at.Before(midnight.Add(time.Minute)) {
				t.Fatalf("after 45009: next attempt at %v, want in [%v, +1m)", at, midnight)
			}
		}
	})
}
