package refresher

import (
	"errors"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/backoff"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// pacing is the schedule and failure state that an app's token and each
// of its tickets keep alike: when the key is due, when it may be tried
// again after a failure, the failures, and the upstream calls of the day.
// It is embedded in app and ticket and guarded by their mu: every method
// is for a caller that holds it.
type pacing struct {
	due       time.Time // next refresh moment (zero: now)
	retryAt   time.Time // not before this, after a failure
	failures  int       // consecutive failures
	lastErr   error
	lastErrAt time.Time
	day       int // appDay of calls
	calls     int // upstream calls on day
}

// next is the moment the key is due: its refresh moment, or the retry
// moment after a failure if that is later.
func (p *pacing) next() time.Time {
	if p.retryAt.After(p.due) {
		return p.retryAt
	}
	return p.due
}

// succeeded clears the failure state after a good refresh.
func (p *pacing) succeeded() { p.failures, p.retryAt, p.lastErr = 0, time.Time{}, nil }

// failed records err at now and returns when to try again: after 45009 at
// WeChat's midnight (spread over its first minute) — at the next full hour
// if hourly (WeCom's limits are hourly) —, otherwise after the jittered
// exponential pause pace chooses for err (first pause base, capped at
// maxD).
func (p *pacing) failed(err error, now time.Time, hourly bool, pace func(error) (base, maxD time.Duration)) time.Time {
	p.failures++
	p.lastErr, p.lastErrAt = err, now
	if errors.Is(err, wechat.ErrQuotaExceeded) {
		reset := nextQuotaReset(now)
		if hourly {
			reset = now.Truncate(time.Hour).Add(time.Hour)
		}
		p.retryAt = reset.Add(backoff.Full(time.Minute))
		return p.retryAt
	}
	base, maxD := pace(err)
	p.retryAt = now.Add(backoff.Delay(p.failures, base, maxD, failureJitter))
	return p.retryAt
}

// countCall counts one upstream call on WeChat's day of now.
func (p *pacing) countCall(now time.Time) {
	if d := appDay(now); d != p.day {
		p.day, p.calls = d, 0
	}
	p.calls++
}

// callsOn returns the upstream calls made on WeChat's day of now.
func (p *pacing) callsOn(now time.Time) int {
	if appDay(now) != p.day {
		return 0
	}
	return p.calls
}

// pacingStatus is the part of a status that pacing knows.
type pacingStatus struct {
	refreshAt  time.Time // zero when held is false
	retryAt    time.Time // set with lastError
	lastError  string
	lastErrAt  time.Time
	failures   int
	callsToday int
}

// status reports the pacing state at now; held says whether a record is
// held (only then is there a refresh moment to report).
func (p *pacing) status(now time.Time, held bool) pacingStatus {
	s := pacingStatus{lastErrAt: p.lastErrAt, failures: p.failures, callsToday: p.callsOn(now)}
	if held {
		s.refreshAt = p.next()
	}
	if p.lastErr != nil {
		s.lastError, s.retryAt = p.lastErr.Error(), p.retryAt
	}
	return s
}

// failureJitter spreads the pause after a failure by ±20 %, so that
// failing apps do not retry in step.
var failureJitter = backoff.Spread(0.2)

// transient reports whether err is worth a quick retry (the RetryMin
// pace): a retryable upstream failure, or a failure that is no answer of
// the upstream at all — a NATS read or write, a stream not answering
// yet, a deadline. Only the upstream's own refusals (an errcode, an HTTP
// status, a request that cannot be built) take the permanent pace.
func transient(err error) bool {
	if wechat.IsRetryable(err) {
		return true
	}
	var we *wechat.Error
	var he *wechat.HTTPError
	if errors.As(err, &we) || errors.As(err, &he) ||
		errors.Is(err, wechat.ErrInvalidArgument) || errors.Is(err, wechat.ErrUnknownKind) {
		return false
	}
	return true
}
