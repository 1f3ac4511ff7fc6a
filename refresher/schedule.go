package refresher

import (
	"fmt"
	"hash/fnv"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// Policy decides when a token is refreshed. The moment is a pure function
// of the token's fetched_at and expires_at (see RefreshAt), like
// cert-manager's RenewalTime, with a random window like Vault's lifetime
// watcher so that many apps fetched together do not refresh in step.
type Policy struct {
	// At is the fraction of the lifetime after which to refresh, in
	// (0, 1). Default 2/3: a 7200 s WeChat token is refreshed after about
	// 80 minutes, with 40 minutes to spare for retries.
	At float64
	// Jitter is the width of the random window centred on At, as a
	// fraction of the lifetime, in [0, 1). Default 0.1 (±5 %).
	Jitter float64
	// MinLeft is the least time left before expiry at the refresh moment,
	// so that very long lifetimes still leave time for retries and short
	// ones are never refreshed at the last instant; it never moves the
	// moment earlier than a quarter of the lifetime. Default 60 s.
	MinLeft time.Duration
	// RetryMin is the first pause after a transient upstream failure
	// (errcode -1, 5xx, timeouts); it doubles up to 60 × RetryMin.
	// Default 1 s.
	RetryMin time.Duration
	// PermanentRetryMin is the first pause after a configuration or policy
	// error (40001, 40164, 89503 …); it doubles up to 10 ×
	// PermanentRetryMin, so that a fixed allow list or secret recovers
	// without a restart and WeChat is not hammered meanwhile. Default 1 m.
	PermanentRetryMin time.Duration
}

// DefaultPolicy is the policy used when the config sets none.
var DefaultPolicy = Policy{At: 2.0 / 3.0, Jitter: 0.1, MinLeft: time.Minute, RetryMin: time.Second, PermanentRetryMin: time.Minute}

// Validate reports a policy that cannot give a moment inside the lifetime.
func (p Policy) Validate() error {
	if !(p.At > 0 && p.At < 1) {
		return fmt.Errorf("at: %v is not in (0, 1)", p.At)
	}
	if !(p.Jitter >= 0 && p.Jitter < 1) {
		return fmt.Errorf("jitter: %v is not in [0, 1)", p.Jitter)
	}
	if p.At-p.Jitter/2 <= 0 || p.At+p.Jitter/2 >= 1 {
		return fmt.Errorf("at ± jitter/2 (%v ± %v) leaves the lifetime", p.At, p.Jitter/2)
	}
	if p.MinLeft < 0 {
		return fmt.Errorf("min_left: %s is negative", p.MinLeft)
	}
	if p.RetryMin < 0 || p.PermanentRetryMin < 0 {
		return fmt.Errorf("retry pauses must not be negative")
	}
	return nil
}

// RefreshAt returns when a token fetched at fetchedAt that expires at
// expiresAt should be refreshed. u in [0, 1) picks the place inside the
// jitter window (pass rand.Float64(); 0.5 is the centre). The result r
// always satisfies fetchedAt <= r < expiresAt when expiresAt is after
// fetchedAt; a token with no lifetime is due at once (r = fetchedAt).
func (p Policy) RefreshAt(fetchedAt, expiresAt time.Time, u float64) time.Time {
	life := expiresAt.Sub(fetchedAt)
	if life <= 0 {
		return fetchedAt
	}
	if u < 0 || u >= 1 || u != u {
		u = 0.5
	}
	frac := p.At + p.Jitter*(u-0.5)
	if frac <= 0 || frac >= 1 || frac != frac {
		frac = DefaultPolicy.At
	}
	at := time.Duration(float64(life) * frac)
	// Leave at least MinLeft before expiry, but never refresh earlier than
	// a quarter of the lifetime: a 5 s token is not refreshed at once.
	if left := life - at; left < p.MinLeft {
		at = max(life-p.MinLeft, life/4)
	}
	if at >= life { // rounding at nanosecond lifetimes
		at = life - 1
	}
	if at < 0 {
		at = 0
	}
	return fetchedAt.Add(at)
}

// dueFor is the refresh moment of a stored record: a pure function of the
// record, so that every replica and every restart agrees on it.
func (r *Refresher) dueFor(name string, rec *contract.Record) time.Time {
	return r.policy.RefreshAt(rec.FetchedAt, rec.ExpiresAt, jitterDraw(name, rec.FetchedAt))
}

// jitterDraw is a deterministic draw in [0, 1) from the app name and the
// fetch time: apps spread out, and replicas and restarts agree.
func jitterDraw(name string, fetchedAt time.Time) float64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	var b [8]byte
	n := fetchedAt.UnixNano()
	for i := range b {
		b[i] = byte(n >> (8 * i))
	}
	h.Write(b[:])
	return float64(h.Sum64()>>11) / float64(1<<53)
}
