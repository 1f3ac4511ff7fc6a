package refresher

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// StateBucket names the bucket that keeps each app's operational state
// (upstream calls today, last error) so that it survives restarts and
// failover: the daily quota is counted across replicas.
func StateBucket(bucket string) string { return bucket + "_state" }

// AppState is the value of key <app> in the state bucket. It never holds
// a token or a secret.
type AppState struct {
	App string `json:"app"`
	// Day is WeChat's day (China Standard Time) of the counters, yyyymmdd.
	Day int `json:"day"`
	// Calls counts upstream token calls on Day (the daily quota).
	Calls int `json:"calls"`
	// Forced counts stable_token force_refresh calls on Day.
	Forced      int       `json:"forced,omitempty"`
	Quota       int       `json:"quota"`
	Failures    int       `json:"failures,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrcode int       `json:"last_errcode,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	Replica     string    `json:"replica"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// state returns the app's state for the state bucket.
func (a *app) state(now time.Time, replica string) AppState {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := AppState{App: a.name, Day: appDay(now), Quota: a.cfg.dailyQuota(), Failures: a.failures,
		LastErrorAt: a.lastErrAt, Replica: replica, UpdatedAt: now.UTC()}
	if a.day == s.Day {
		s.Calls = a.calls
	}
	if a.forceDay == s.Day {
		s.Forced = a.forcedToday
	}
	if a.lastErr != nil {
		s.LastError = a.lastErr.Error()
		var we *wechat.Error
		if errors.As(a.lastErr, &we) {
			s.LastErrcode = we.Code
		}
	}
	return s
}

// restore adopts counters of today from a stored state: the larger count
// wins, so a restart or a new leader never forgets calls already made.
func (a *app) restore(s AppState, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	today := appDay(now)
	if s.Day != today {
		return
	}
	if a.day != today {
		a.day, a.calls = today, 0
	}
	a.calls = max(a.calls, s.Calls)
	if a.forceDay != today {
		a.forceDay, a.forcedToday = today, 0
	}
	a.forcedToday = max(a.forcedToday, s.Forced)
}

// saveState writes app's state (best effort: a failure is logged, the
// counters stay in memory and are written with the next call).
func (r *Refresher) saveState(ctx context.Context, a *app) {
	if r.stateKV == nil {
		return
	}
	s := a.state(r.now(), r.id)
	r.obs.QuotaUsed(a.name, s.Calls)
	b, _ := json.Marshal(s)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := r.stateKV.Put(ctx, a.name, b); err != nil {
		r.log.Warn("saving app state failed", "app", a.name, "err", err)
	}
}

// loadStates restores today's counters of every app from the state bucket.
func (r *Refresher) loadStates(ctx context.Context) error {
	if r.stateKV == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	w, err := r.stateKV.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return err
	}
	defer w.Stop()
	now := r.now()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("state watcher closed")
			}
			if e == nil {
				return nil
			}
			var s AppState
			if json.Unmarshal(e.Value(), &s) != nil {
				continue
			}
			r.mu.Lock()
			a := r.apps[e.Key()]
			r.mu.Unlock()
			if a != nil {
				a.restore(s, now)
				r.obs.QuotaUsed(a.name, a.callsToday(now))
			}
		}
	}
}
