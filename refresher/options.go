package refresher

import (
	"log/slog"
	"time"

	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// Option configures a Refresher.
type Option func(*Refresher)

// WithLogger sets the logger (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(r *Refresher) { r.log = l } }

// WithClock sets the wall clock used for fetched_at/expires_at and the
// schedule (default time.Now). Lease timing always uses the monotonic
// clock.
func WithClock(now func() time.Time) Option { return func(r *Refresher) { r.now = now } }

// WithUpstream sets the upstream client (default wechat.New()).
func WithUpstream(c *wechat.Client) Option { return func(r *Refresher) { r.client = c } }

// WithReplicaID names this replica in the lease (default host-pid-random).
func WithReplicaID(id string) Option { return func(r *Refresher) { r.id = id } }

// WithObserver sets the receiver of metrics events (default none).
func WithObserver(o Observer) Option { return func(r *Refresher) { r.obs = o } }

// WithConcurrency bounds how many apps are refreshed at once (default 16,
// or refresh.concurrency of the config).
func WithConcurrency(n int) Option {
	return func(r *Refresher) {
		if n > 0 {
			r.sem = make(chan struct{}, n)
		}
	}
}
