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
	// Tickets is the status of the app's tickets (v2), each under its
	// key <app>.<ticket>; CallsToday counts its ticket calls.
	Tickets []TicketStatus `json:"tickets,omitempty"`
	// Component summarises a wechat-component's authorizers (v2; detail:
	// Refresher.AuthorizerStatuses).
	Component *ComponentSummary `json:"component,omitempty"`
}

// TicketStatus describes one ticket of an app.
type TicketStatus struct {
	Key        string    `json:"key"`
	Revision   uint64    `json:"revision"`
	Source     string    `json:"source,omitempty"`
	FetchedAt  time.Time `json:"fetched_at,omitzero"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
	RefreshAt  time.Time `json:"refresh_at,omitzero"`
	RetryAt    time.Time `json:"retry_at,omitzero"`
	Valid      bool      `json:"valid"`
	LastError  string    `json:"last_error,omitempty"`
	LastErrAt  time.Time `json:"last_error_at,omitzero"`
	Failures   int       `json:"failures,omitempty"`
	CallsToday int       `json:"calls_today"`
}

func (t *ticket) status(now time.Time) TicketStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.pacing.status(now, t.rec != nil)
	s := TicketStatus{Key: t.key, Revision: t.rev, RefreshAt: p.refreshAt, RetryAt: p.retryAt,
		LastError: p.lastError, LastErrAt: p.lastErrAt, Failures: p.failures, CallsToday: p.callsToday}
	if t.rec != nil {
		s.Source, s.FetchedAt, s.ExpiresAt = t.rec.Source, t.rec.FetchedAt, t.rec.ExpiresAt
		s.Valid = t.rec.ExpiresAt.After(now)
	}
	return s
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
		s := a.status(now)
		for _, t := range a.ticketList() {
			s.Tickets = append(s.Tickets, t.status(now))
		}
		if c := r.componentOf(n); c != nil {
			s.Component = r.componentSummary(c, now)
		}
		out = append(out, s)
	}
	return out
}

func (a *app) status(now time.Time) Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pacing.status(now, a.rec != nil)
	s := Status{App: a.name, Revision: a.rev, RefreshAt: p.refreshAt, RetryAt: p.retryAt,
		LastError: p.lastError, LastErrAt: p.lastErrAt, Failures: p.failures, CallsToday: p.callsToday}
	if a.rec != nil {
		s.Source, s.FetchedAt, s.ExpiresAt = a.rec.Source, a.rec.FetchedAt, a.rec.ExpiresAt
		s.Valid = a.rec.ExpiresAt.After(now)
	}
	return s
}
