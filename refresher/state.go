package refresher

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// state returns the app's state for the state bucket.
func (a *app) state(now time.Time, replica string) contract.AppState {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := contract.AppState{App: a.name, Day: appDay(now), Quota: a.cfg.dailyQuota(), Failures: a.failures,
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
func (a *app) restore(s contract.AppState, now time.Time) {
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

// stateWriteAttempts bounds the conflicts one saveState rides out.
const stateWriteAttempts = 5

// saveState writes app's state, revision-checked: Create when no
// revision of the key is known, Update over the last known one. On a
// conflict — another replica wrote meanwhile, a deposed leader or its
// successor — it re-reads the stored state, merges it (restore: the
// larger count of the same day wins) and tries again, at most
// stateWriteAttempts times; so no write lowers a count another replica
// stored. Best effort otherwise: a failure is logged, the counters stay
// in memory and are written with the next call.
func (r *Refresher) saveState(ctx context.Context, a *app) {
	if r.stateKV == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for range stateWriteAttempts {
		s := a.state(r.now(), r.id)
		r.obs.QuotaUsed(a.name, s.Calls)
		b, _ := json.Marshal(s)
		a.mu.Lock()
		rev := a.stateRev
		a.mu.Unlock()
		var nrev uint64
		var err error
		if rev == 0 {
			nrev, err = r.stateKV.Create(ctx, a.name, b)
		} else {
			nrev, err = r.stateKV.Update(ctx, a.name, b, rev)
		}
		if err == nil {
			a.mu.Lock()
			a.stateRev = nrev
			a.mu.Unlock()
			return
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			r.log.Warn("saving app state failed", "app", a.name, "err", err)
			return
		}
		if err := r.mergeStoredState(ctx, a); err != nil {
			r.log.Warn("saving app state failed: re-read after a conflict", "app", a.name, "err", err)
			return
		}
	}
	r.log.Warn("saving app state failed: too many conflicting writers", "app", a.name, "attempts", stateWriteAttempts)
}

// mergeStoredState reads app's stored state, adopts its counters (the
// larger count of today wins) and its revision, for the next write.
func (r *Refresher) mergeStoredState(ctx context.Context, a *app) error {
	e, err := r.stateKV.Get(ctx, a.name)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		// Deleted (or a new bucket): Create writes it again.
		a.mu.Lock()
		a.stateRev = 0
		a.mu.Unlock()
		return nil
	case err != nil:
		return err
	}
	var s contract.AppState
	if json.Unmarshal(e.Value(), &s) == nil {
		a.restore(s, r.now())
	}
	a.mu.Lock()
	a.stateRev = e.Revision()
	a.mu.Unlock()
	return nil
}

// loadStates restores today's counters of every app from the state bucket.
func (r *Refresher) loadStates(ctx context.Context) error {
	if r.stateKV == nil {
		return nil
	}
	now := r.now()
	return eachEntry(ctx, r.stateKV, ">", 30*time.Second, func(e jetstream.KeyValueEntry) {
		r.mu.Lock()
		a := r.apps[e.Key()]
		r.mu.Unlock()
		if a == nil {
			return
		}
		// Remember the revision, for the next revision-checked write.
		a.mu.Lock()
		a.stateRev = max(a.stateRev, e.Revision())
		a.mu.Unlock()
		var s contract.AppState
		if json.Unmarshal(e.Value(), &s) != nil {
			return
		}
		a.restore(s, now)
		r.obs.QuotaUsed(a.name, a.callsToday(now))
	})
}

// saveLater writes a's state from a goroutine of its own, one at a time
// per app, so that state writes stay in order; Run waits for it.
func (r *Refresher) saveLater(a *app) {
	a.mu.Lock()
	a.saveDirty = true
	if a.saving {
		a.mu.Unlock()
		return
	}
	a.saving = true
	a.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			a.mu.Lock()
			if !a.saveDirty {
				a.saving = false
				a.mu.Unlock()
				return
			}
			a.saveDirty = false
			a.mu.Unlock()
			r.saveState(context.WithoutCancel(r.refreshCtx), a)
		}
	}()
}
