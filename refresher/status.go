package refresher

import "time"

// Status describes one app, for tokenctl status and /readyz.
type Status struct {
	App        string    `json:"app"`
	Revision   uint64    `json:"revision"`
	Source     string    `json:"source,omitempty"`
	FetchedAt  time.Time `json:"fetched_at,omitzero"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
	RefreshAt  time.Time `json:"refresh_at,omitzero"`
	RetryAt    time.Time `json:"retry_at,omitzero"` // after a failure: not before this
	Valid      bool      `json:"valid"`
	LastError  string    `json:"last_error,omitempty"`
	LastErrAt  time.Time `json:"last_error_at,omitzero"`
	Failures   int       `json:"failures,omitempty"`
	CallsToday int       `json:"calls_today"`
}

// Statuses returns the status of every app, sorted by name.
func (r *Refresher) Statuses() []Status {
	now := r.now()
	r.mu.Lock()
	names := append([]string(nil), r.order...)
	r.mu.Unlock()
	out := make([]Status, 0, len(names))
	for _, n := range names {
		r.mu.Lock()
		a := r.apps[n]
		r.mu.Unlock()
		if a == nil {
			continue
		}
		out = append(out, a.status(now))
	}
	return out
}

func (a *app) status(now time.Time) Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := Status{App: a.name, Revision: a.rev, Failures: a.failures, LastErrAt: a.lastErrAt}
	if a.rec != nil {
		s.Source, s.FetchedAt, s.ExpiresAt = a.rec.Source, a.rec.FetchedAt, a.rec.ExpiresAt
		s.Valid = a.rec.ExpiresAt.After(now)
		s.RefreshAt = a.due
		if a.retryAt.After(a.due) {
			s.RefreshAt = a.retryAt
		}
	}
	if a.lastErr != nil {
		s.LastError = a.lastErr.Error()
		s.RetryAt = a.retryAt
	}
	if appDay(now) == a.day {
		s.CallsToday = a.calls
	}
	return s
}
