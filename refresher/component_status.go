package refresher

import (
	"slices"
	"strings"
	"time"
)

// ComponentSummary is the part of a component app's Status that covers
// its authorizers: counts, and the appids that need an operator. The
// per-authorizer detail is AuthorizerStatuses (metrics stay per
// component: 100 000 authorizers must not make 100 000 series).
type ComponentSummary struct {
	Authorizers int `json:"authorizers"`
	Valid       int `json:"valid"`
	Failing     int `json:"failing,omitempty"`
	// NeedsReauthorization lists the authorizers whose refresh token
	// WeChat refused (61023): the merchant must authorize again.
	NeedsReauthorization []string `json:"needs_reauthorization,omitempty"`
	PendingCodes         int      `json:"pending_codes,omitempty"`
	// TicketsValid and TicketsFailing count the authorizers' tickets
	// (authorizer_tickets) that are valid, and that are failing.
	TicketsValid   int `json:"tickets_valid,omitempty"`
	TicketsFailing int `json:"tickets_failing,omitempty"`
	// VerifyTicketAt is the CreateTime of the newest verify ticket seen.
	VerifyTicketAt time.Time        `json:"verify_ticket_at,omitzero"`
	LastReconcile  *ReconcileReport `json:"last_reconcile,omitempty"`
}

// AuthorizerStatus describes one authorizer of a component.
type AuthorizerStatus struct {
	Key                  string    `json:"key"`
	AuthorizerAppID      string    `json:"authorizer_appid"`
	Revision             uint64    `json:"revision"`
	Source               string    `json:"source,omitempty"`
	FetchedAt            time.Time `json:"fetched_at,omitzero"`
	ExpiresAt            time.Time `json:"expires_at,omitzero"`
	RefreshAt            time.Time `json:"refresh_at,omitzero"`
	RetryAt              time.Time `json:"retry_at,omitzero"`
	Valid                bool      `json:"valid"`
	NeedsReauthorization bool      `json:"needs_reauthorization,omitempty"`
	LastError            string    `json:"last_error,omitempty"`
	Failures             int       `json:"failures,omitempty"`
	CallsToday           int       `json:"calls_today"`
	// Tickets are the authorizer's authorizer_tickets.
	Tickets []TicketStatus `json:"tickets,omitempty"`
}

func (au *authorizer) status(now time.Time) AuthorizerStatus {
	au.mu.Lock()
	defer au.mu.Unlock()
	p := au.pacing.status(now, au.rec != nil)
	s := AuthorizerStatus{Key: au.key, AuthorizerAppID: au.appid, Revision: au.rev, RefreshAt: p.refreshAt,
		RetryAt: p.retryAt, LastError: p.lastError, Failures: p.failures, CallsToday: p.callsToday,
		NeedsReauthorization: au.needsReauth}
	if au.rec != nil {
		s.Source, s.FetchedAt, s.ExpiresAt = au.rec.Source, au.rec.FetchedAt, au.rec.ExpiresAt
		s.Valid = au.rec.ExpiresAt.After(now)
	}
	for _, t := range au.tickets {
		s.Tickets = append(s.Tickets, t.status(now))
	}
	return s
}

// AuthorizerStatuses returns the status of every authorizer of the
// component app, sorted by key (nil for an app that is no component).
func (r *Refresher) AuthorizerStatuses(component string) []AuthorizerStatus {
	c := r.componentOf(component)
	if c == nil {
		return nil
	}
	now := r.now()
	auths := c.list()
	out := make([]AuthorizerStatus, 0, len(auths))
	for _, au := range auths {
		out = append(out, au.status(now))
	}
	slices.SortFunc(out, func(a, b AuthorizerStatus) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// componentSummary summarises component c for its app's Status.
func (r *Refresher) componentSummary(c *component, now time.Time) *ComponentSummary {
	s := &ComponentSummary{}
	c.mu.Lock()
	auths := make([]*authorizer, 0, len(c.auths))
	for _, au := range c.auths {
		auths = append(auths, au)
	}
	c.mu.Unlock()
	// Counted under each item's lock, without building an
	// AuthorizerStatus per authorizer: /status stays cheap at 100 000.
	for _, au := range auths {
		au.mu.Lock()
		s.Authorizers++
		if au.rec != nil && au.rec.ExpiresAt.After(now) {
			s.Valid++
		}
		if au.failures > 0 {
			s.Failing++
		}
		if au.needsReauth {
			s.NeedsReauthorization = append(s.NeedsReauthorization, au.appid)
		}
		for _, t := range au.tickets {
			t.mu.Lock()
			if t.rec != nil && t.rec.ExpiresAt.After(now) {
				s.TicketsValid++
			}
			if t.failures > 0 {
				s.TicketsFailing++
			}
			t.mu.Unlock()
		}
		au.mu.Unlock()
	}
	slices.Sort(s.NeedsReauthorization)
	c.mu.Lock()
	s.PendingCodes = len(c.codes)
	if c.ticketAt > 0 {
		s.VerifyTicketAt = time.Unix(c.ticketAt, 0).UTC()
	}
	s.LastReconcile = c.lastReconcile
	c.mu.Unlock()
	return s
}
