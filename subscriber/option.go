package subscriber

import (
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// Defaults of the options.
const (
	// DefaultPollInterval is how often a Source reads its key directly
	// (kv.Get) to catch updates a stalled watch missed.
	DefaultPollInterval = 5 * time.Second
	// DefaultBackoffMin and DefaultBackoffMax bound the jittered
	// exponential backoff between attempts to rebuild a watch or to ask
	// the refresher again.
	DefaultBackoffMin = 100 * time.Millisecond
	DefaultBackoffMax = 5 * time.Second
	// DefaultRequestTimeout bounds one token.refresh request attempt
	// (see WithRequestTimeout).
	DefaultRequestTimeout = 10 * time.Second
)

// Option configures a Source; pass options to NewSource.
type Option func(*config)

type config struct {
	bucket         string
	poll           time.Duration
	log            *slog.Logger
	onUpdate       func(*Token)
	now            func() time.Time
	backoffMin     time.Duration
	backoffMax     time.Duration
	requestTimeout time.Duration
}

func defaults() config {
	return config{
		bucket:         contract.DefaultBucket,
		poll:           DefaultPollInterval,
		log:            slog.Default(),
		now:            time.Now,
		backoffMin:     DefaultBackoffMin,
		backoffMax:     DefaultBackoffMax,
		requestTimeout: DefaultRequestTimeout,
	}
}

var bucketNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func (c *config) validate() error {
	switch {
	case !bucketNameRE.MatchString(c.bucket):
		return fmt.Errorf("%w: bucket name %q is not [A-Za-z0-9_-]+", ErrInvalidArgument, c.bucket)
	case c.poll <= 0:
		return fmt.Errorf("%w: poll interval %s is not positive", ErrInvalidArgument, c.poll)
	case c.backoffMin <= 0 || c.backoffMax < c.backoffMin:
		return fmt.Errorf("%w: backoff %s..%s: want 0 < min <= max", ErrInvalidArgument, c.backoffMin, c.backoffMax)
	case c.requestTimeout <= 0:
		return fmt.Errorf("%w: request timeout %s is not positive", ErrInvalidArgument, c.requestTimeout)
	case c.log == nil || c.now == nil:
		return fmt.Errorf("%w: nil logger or clock", ErrInvalidArgument)
	}
	return nil
}

// WithBucket sets the KV bucket to watch (default contract.DefaultBucket,
// "tokens"); it must match the refresher's bucket: setting.
func WithBucket(name string) Option { return func(c *config) { c.bucket = name } }

// WithPollInterval sets how often the Source reads its key directly and
// compares revisions, as a safety net for a watch that stalled without an
// error (default 5s; must be positive). It bounds how long the Source can
// lag behind the bucket when everything else fails.
func WithPollInterval(d time.Duration) Option { return func(c *config) { c.poll = d } }

// WithLogger sets the logger (default slog.Default()). The Source logs
// watch rebuilds, deleted keys and failed refresh requests; it never logs
// a token, only its fingerprint.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

// WithOnUpdate sets a callback called with every token the Source
// applies, the first one included, in the order applied (revision order,
// unless the bucket was created anew), from one goroutine
// of the Source's own (never concurrently with itself). A slow callback
// delays only later callbacks, never Token or the watch. It must not call
// Close (Close waits for it to return).
func WithOnUpdate(f func(*Token)) Option { return func(c *config) { c.onUpdate = f } }

// WithClock sets the wall clock used to decide whether a token has
// expired (default time.Now): Fresh, the expiry check of a newly arrived
// token, and the expiry timer's arming. Token's fast path never reads the
// clock: a timer flips the expired state at ExpiresAt.
func WithClock(now func() time.Time) Option { return func(c *config) { c.now = now } }

// WithBackoff sets the bounds of the jittered exponential backoff used
// between attempts to rebuild a broken watch, to find a bucket that does
// not exist yet, and to ask the refresher again after "no responders"
// (default 100ms..5s; want 0 < min <= max). Each wait is random in
// [d/2, d], d doubling from min to max; it starts over after every good
// update.
func WithBackoff(minWait, maxWait time.Duration) Option {
	return func(c *config) { c.backoffMin, c.backoffMax = minWait, maxWait }
}

// WithRequestTimeout bounds one token.refresh request attempt (default
// 10s; must be positive). The bucket lookup, building a watch and a
// direct read of the key are bounded by the smaller of d and 2s, so that
// a lost server delays the next attempt little. Refresh retries
// timed-out attempts until its ctx ends, so this is not Refresh's overall
// bound.
func WithRequestTimeout(d time.Duration) Option { return func(c *config) { c.requestTimeout = d } }
