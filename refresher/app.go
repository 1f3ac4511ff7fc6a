package refresher

import (
	"errors"
	"sync"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// app is the refresher's state of one configured app.
type app struct {
	name string // immutable: the KV key

	// cfg is guarded by mu (Reload replaces it); read it with config().
	cfg AppConfig

	mu          sync.Mutex
	rec         *contract.Record // last record seen (nil: none, or unparseable)
	rev         uint64           // its revision (0: no key)
	pacing                       // schedule, failures, calls today
	flight      *flight
	lastForced  time.Time
	policy      *Policy
	forceDay    int  // appDay of forcedToday
	forcedToday int  // stable_token force_refresh calls today
	saving      bool // a state saver runs (saveLater)
	saveDirty   bool // the state changed since the saver last wrote it

	// pending is a token fetched but not stored (its write failed): the
	// next refresh writes it instead of fetching.
	pending *contract.Record

	stateRev uint64 // revision of the app's key in the state bucket (0: none known)

	// tickets are the app's configured tickets (v2), guarded by mu; see
	// syncTickets and ticketList.
	tickets []*ticket
}

// owns reports whether rec is a token of this app's upstream appid
// (records without an appid predate the field and are trusted).
func (a *app) owns(rec *contract.Record) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ownsLocked(rec)
}

func (a *app) ownsLocked(rec *contract.Record) bool {
	return rec.AppID == "" || rec.AppID == a.cfg.UpstreamID()
}

// dueOf returns the refresh moment of a stored record under the app's
// kind: a pure function of the record, so that every replica and every
// restart agrees on it.
func (a *app) dueOf(rec *contract.Record) time.Time {
	a.mu.Lock()
	rot := a.cfg.spec().rotation
	a.mu.Unlock()
	return a.policy.refreshMoment(rot, rec.FetchedAt, rec.ExpiresAt, jitterDraw(a.name, rec.FetchedAt))
}

// usable returns the record the app holds and whether it can be handed
// out at now: present, not expired, and of this app's appid.
func (a *app) usable(now time.Time) (*contract.Record, uint64, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.rec, a.rev, a.rec != nil && a.rec.ExpiresAt.After(now) && a.ownsLocked(a.rec)
}

// config returns the app's current configuration.
func (a *app) config() AppConfig {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg
}

// dueAt returns when the app is next due, and whether a refresh is
// already running.
func (a *app) dueAt() (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.flight != nil {
		return time.Time{}, true
	}
	if a.pending != nil {
		// A fetched token waits for its write: due at the retry moment,
		// whatever the stored record's own moment is.
		return a.retryAt, false
	}
	return a.next(), false
}

// adopt takes a record read from the bucket if it is newer than what the
// app holds; it reports whether it did.
func (a *app) adopt(rec *contract.Record, rev uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if rev <= a.rev && !(rev == 0 && a.rev == 0) {
		return false
	}
	if rev == 0 && rec == nil {
		return false
	}
	changed := a.rec == nil || rec == nil || a.rec.AccessToken != rec.AccessToken
	a.rec, a.rev = rec, rev
	if rec == nil || !a.ownsLocked(rec) {
		a.due = time.Time{} // nothing usable: fetch now
	} else {
		a.due = a.policy.refreshMoment(a.cfg.spec().rotation, rec.FetchedAt, rec.ExpiresAt, jitterDraw(a.name, rec.FetchedAt))
		if changed {
			// Someone stored a new token: whatever failed before is moot.
			a.retryAt, a.failures = time.Time{}, 0
		}
	}
	return true
}

// stored records a successful write of ours.
func (a *app) stored(rec contract.Record, rev uint64) {
	a.adopt(&rec, rev)
	a.mu.Lock()
	a.succeeded()
	a.pending = nil
	a.mu.Unlock()
}

// unchanged records a fetch at fetched that returned the token already
// stored, with left of its life (stable_token normal mode, Feishu above
// its window: check again within the remaining lifetime; WeCom: at its
// end). The stored record, and its first known expires_at, stay.
func (a *app) unchanged(fetched time.Time, left time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.due = a.policy.unchangedMoment(a.cfg.spec().rotation, fetched, left, jitterDraw(a.name, fetched))
	a.succeeded()
}

// keepPending keeps rec, fetched but not stored, and reports whether it
// is new (not the one already kept).
func (a *app) keepPending(rec contract.Record) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	first := a.pending == nil || a.pending.AccessToken != rec.AccessToken
	a.pending = &rec
	return first
}

// dropPending forgets the unstored token.
func (a *app) dropPending() {
	a.mu.Lock()
	a.pending = nil
	a.mu.Unlock()
}

// unstored returns the token fetched but not stored, if it is still valid
// at now (an expired one is dropped).
func (a *app) unstored(now time.Time) *contract.Record {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pending != nil && !a.pending.ExpiresAt.After(now) {
		a.pending = nil
	}
	if a.pending == nil {
		return nil
	}
	p := *a.pending
	return &p
}

// paused returns, while upstream calls of the app wait after a failure,
// until when and the failure; zero otherwise.
func (a *app) paused(now time.Time) (time.Time, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.lastErr == nil || !a.retryAt.After(now) {
		return time.Time{}, nil
	}
	return a.retryAt, a.lastErr
}

// current returns the record the app holds.
func (a *app) current() (*contract.Record, uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.rec, a.rev
}

// failure records a failed refresh and returns when to try again.
func (a *app) failure(err error, now time.Time) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.failed(err, now, a.cfg.Kind == KindWeCom, func(err error) (time.Duration, time.Duration) {
		switch {
		case errors.Is(err, ErrQuotaReserved):
			return a.policy.PermanentRetryMin, a.policy.PermanentRetryMin
		case errors.Is(err, ErrNotStored), transient(err):
			return a.policy.RetryMin, 60 * a.policy.RetryMin
		}
		return a.policy.PermanentRetryMin, 10 * a.policy.PermanentRetryMin
	})
}
