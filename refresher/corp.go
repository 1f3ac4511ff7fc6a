package refresher

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// WeCom's tickets: the corp's jsapi ticket belongs to the corp, so it is
// fetched once per corpid and written under each of the corp's apps;
// upstream limits ticket calls by the hour (400 a corp for jsapi, 100 an
// app for agent_config).

// hourCount counts upstream calls in one clock hour.
type hourCount struct {
	hour int64 // Unix hour of n
	n    int
}

func (h *hourCount) add(now time.Time) {
	if hr := now.Unix() / 3600; hr != h.hour {
		h.hour, h.n = hr, 0
	}
	h.n++
}

func (h *hourCount) in(now time.Time) int {
	if now.Unix()/3600 != h.hour {
		return 0
	}
	return h.n
}

// corpState is what the refresher keeps per WeCom corp.
type corpState struct {
	fetch sync.Mutex // one corp ticket fetch at a time across the corp's apps
	mu    sync.Mutex
	calls map[string]*hourCount // ticket type → calls this hour
}

// corp returns the state of corpid.
func (r *Refresher) corp(corpid string) *corpState {
	r.corpMu.Lock()
	defer r.corpMu.Unlock()
	if r.corpByID == nil {
		r.corpByID = map[string]*corpState{}
	}
	c := r.corpByID[corpid]
	if c == nil {
		c = &corpState{calls: map[string]*hourCount{}}
		r.corpByID[corpid] = c
	}
	return c
}

// corpStates is embedded in Refresher.
type corpStates struct {
	corpMu   sync.Mutex
	corpByID map[string]*corpState
}

// corpTicket reports whether t is a ticket of its corp, not of its app.
func (t *ticket) corpTicket() bool {
	return slices.Contains(t.parent.config().spec().corpTickets, t.typ)
}

// siblings returns the same ticket of the other apps of t's corp.
func (r *Refresher) siblings(t *ticket) []*ticket {
	cfg := t.parent.config()
	var out []*ticket
	for _, b := range r.appList() {
		if b == t.parent {
			continue
		}
		bc := b.config()
		if bc.Kind != cfg.Kind || bc.CorpID != cfg.CorpID {
			continue
		}
		for _, st := range b.ticketList() {
			if st.typ == t.typ {
				out = append(out, st)
			}
		}
	}
	return out
}

// corpCopy returns a valid record of t's corp ticket held by another of
// the corp's apps that is newer than rec (the record under t.key), if
// any: writing it costs no upstream call.
func (r *Refresher) corpCopy(t *ticket, rec *contract.TicketRecord, now time.Time) *contract.TicketRecord {
	var best *contract.TicketRecord
	for _, st := range r.siblings(t) {
		srec, _, ok := st.usable(now)
		if !ok || rec != nil && (srec.Ticket == rec.Ticket || !srec.ExpiresAt.After(rec.ExpiresAt)) {
			continue
		}
		if best == nil || srec.ExpiresAt.After(best.ExpiresAt) {
			best = srec
		}
	}
	if best == nil {
		return nil
	}
	c := *best
	c.App, c.Key = t.parent.name, t.key
	return &c
}

// countTicketCall counts one upstream call of t against its hourly limit
// (the corp's for a corp ticket, the app's otherwise).
func (r *Refresher) countTicketCall(t *ticket, now time.Time) {
	if r.hourlyLimit(t) == 0 {
		return
	}
	h := r.hourOf(t)
	h.mu.Lock()
	h.c.add(now)
	h.mu.Unlock()
}

// hourlyLimit returns the upstream's hourly limit of t's calls (0: none).
func (r *Refresher) hourlyLimit(t *ticket) int {
	return t.parent.config().spec().hourlyTicketLimit[t.typ]
}

type lockedHour struct {
	mu *sync.Mutex
	c  *hourCount
}

// hourOf returns the hourly counter t's calls count against.
func (r *Refresher) hourOf(t *ticket) lockedHour {
	if t.corpTicket() {
		c := r.corp(t.parent.config().CorpID)
		c.mu.Lock()
		h := c.calls[t.typ]
		if h == nil {
			h = &hourCount{}
			c.calls[t.typ] = h
		}
		c.mu.Unlock()
		return lockedHour{&c.mu, h}
	}
	return lockedHour{&t.mu, &t.hour}
}

// checkTicketHour refuses a forced (passive or manual) ticket fetch once
// 90 % of the upstream's hourly limit is used, so that scheduled
// refreshes can still run.
func (r *Refresher) checkTicketHour(t *ticket, source string, now time.Time) error {
	limit := r.hourlyLimit(t)
	if limit == 0 || source == contract.SourceScheduled || source == contract.SourceStartup {
		return nil
	}
	h := r.hourOf(t)
	h.mu.Lock()
	used := h.c.in(now)
	h.mu.Unlock()
	if used*10 >= limit*9 {
		return fmt.Errorf("%w (%d of %d %s ticket calls used this hour)", ErrQuotaReserved, used, limit, t.typ)
	}
	return nil
}
