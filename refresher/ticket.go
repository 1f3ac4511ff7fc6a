package refresher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// ticket is the refresher's state of one configured ticket (v2): of an
// app, the record under <app>.<type> fetched with the app's token; of an
// authorizer of a component (authorizer_tickets), the record under
// <component>.<authorizer_appid>.<type> fetched with the authorizer's
// token. An app's tickets are planned by planTickets, an authorizer's by
// its component's due heap (component_sched.go) together with its token.
type ticket struct {
	key    string      // <app>.<typ> or <component>.<authorizer_appid>.<typ>: the KV key
	typ    string      // contract.TicketJSAPI, TicketWXCard or TicketAgentConfig
	parent *app        // the configured app: the app, or the authorizer's component
	au     *authorizer // the authorizer whose token fetches it; nil for an app's ticket
	policy *Policy

	// run serialises the refreshes of the key: one upstream fetch at a
	// time; a refresh that waited re-reads the key and finds the new
	// ticket.
	run sync.Mutex

	mu         sync.Mutex
	rec        *contract.TicketRecord // last record seen (nil: none or invalid)
	rev        uint64
	pacing          // schedule (due zero: as soon as the token is valid), failures, ticket calls today
	running    bool // a planned refresh is queued or running
	lastForced time.Time
	forcing    int       // forced refreshes running or waiting for one
	hour       hourCount // upstream calls this hour (kinds with hourly limits)
	// pending is a ticket fetched whose write failed: the newest one
	// upstream issued (the fetch superseded the stored one), written by
	// the next attempt instead of fetching again.
	pending *contract.TicketRecord
}

// keepPending keeps rec, a fetched ticket not written; it reports whether
// it is new (not the one kept already).
func (t *ticket) keepPending(rec contract.TicketRecord) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	first := t.pending == nil || t.pending.Ticket != rec.Ticket
	t.pending = &rec
	t.due = time.Time{} // due at once: the failure's retry moment paces it
	return first
}

// unstored returns the ticket fetched but not written, unless it has
// expired or a record fetched no earlier is stored (stored; then it is
// dropped).
func (t *ticket) unstored(stored *contract.TicketRecord, now time.Time) *contract.TicketRecord {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pending != nil && (!t.pending.ExpiresAt.After(now) || stored != nil && !stored.FetchedAt.Before(t.pending.FetchedAt)) {
		t.pending = nil
	}
	if t.pending == nil {
		return nil
	}
	p := *t.pending
	return &p
}

func (t *ticket) dropPending() {
	t.mu.Lock()
	t.pending = nil
	t.mu.Unlock()
}

func newTicket(a *app, typ string) *ticket {
	return &ticket{key: contract.Key(a.name, typ), typ: typ, parent: a, policy: a.policy}
}

// internSource returns the constant of a record's source, so that the
// records held share one copy of it (a parsed record has its own).
func internSource(s string) string {
	switch s {
	case contract.SourceScheduled:
		return contract.SourceScheduled
	case contract.SourceStartup:
		return contract.SourceStartup
	case contract.SourcePassive:
		return contract.SourcePassive
	case contract.SourceManual:
		return contract.SourceManual
	}
	return s
}

// token returns the access token t is fetched with and whether it can be
// used at now: the app's, or the authorizer's.
func (t *ticket) token(now time.Time) (*contract.Record, uint64, bool) {
	if t.au != nil {
		return t.au.usable(now)
	}
	return t.parent.usable(now)
}

// owner is the key of the token t is fetched with: the app's name or the
// authorizer's key.
func (t *ticket) owner() string {
	if t.au != nil {
		return t.au.key
	}
	return t.parent.name
}

// syncTickets makes a's tickets those of its config, keeping the state of
// the tickets it had already.
func (a *app) syncTickets() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.cfg.Tickets) == 0 && len(a.tickets) == 0 {
		return
	}
	old := a.tickets
	a.tickets = nil
	for _, typ := range a.cfg.Tickets {
		var t *ticket
		for _, o := range old {
			if o.typ == typ {
				t = o
			}
		}
		if t == nil {
			t = newTicket(a, typ)
		}
		a.tickets = append(a.tickets, t)
	}
}

// ticketList returns a's tickets.
func (a *app) ticketList() []*ticket {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*ticket(nil), a.tickets...)
}

// ticketByKey returns the configured ticket stored under key, if any: an
// app's (<app>.<ticket>) or an authorizer's
// (<component>.<authorizer_appid>.<ticket>).
func (r *Refresher) ticketByKey(key string) *ticket {
	name, rest, err := contract.ParseKey(key)
	if err != nil || rest == "" {
		return nil
	}
	if id, typ, ok := strings.Cut(rest, "."); ok {
		c := r.componentOf(name)
		if c == nil {
			return nil
		}
		if au := c.get(id); au != nil {
			return au.ticket(typ)
		}
		return nil
	}
	r.mu.Lock()
	a := r.apps[name]
	r.mu.Unlock()
	if a == nil {
		return nil
	}
	for _, t := range a.ticketList() {
		if t.key == key {
			return t
		}
	}
	return nil
}

// dueAt returns when the ticket is next due (zero: now), and whether a
// planned refresh is already queued or running.
func (t *ticket) dueAt() (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.running {
		return time.Time{}, true
	}
	return t.next(), false
}

// current returns the ticket record held and its revision.
func (t *ticket) current() (*contract.TicketRecord, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rec, t.rev
}

// adopt takes a record read from the bucket if it is newer than the one
// held (or the first seen) and schedules the next refresh from it (an
// authorizer's ticket: the authorizer's place in its component's heap).
func (t *ticket) adopt(rec *contract.TicketRecord, rev uint64) bool {
	changed := t.take(rec, rev)
	if changed && t.au != nil {
		t.au.touch()
	}
	return changed
}

// take is adopt without the authorizer's rescheduling (lock order: an
// authorizer's mu before its tickets' mu).
func (t *ticket) take(rec *contract.TicketRecord, rev uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if rev <= t.rev && !(rev == 0 && t.rev == 0) {
		return false
	}
	if rev == 0 && rec == nil {
		return false
	}
	changed := t.rec == nil || rec == nil || t.rec.Ticket != rec.Ticket
	if rec != nil && rec.Key == t.key {
		// One copy of the strings every record of the key repeats (at
		// 100 000 authorizers, megabytes).
		rec.App, rec.Key, rec.TicketType, rec.Source = t.parent.name, t.key, t.typ, internSource(rec.Source)
	}
	t.rec, t.rev = rec, rev
	if rec == nil {
		t.due = time.Time{}
		return true
	}
	t.due = t.dueOf(rec)
	if changed {
		t.retryAt, t.failures = time.Time{}, 0
	}
	return true
}

// rotation returns how the ticket's upstream rotates it.
func (t *ticket) rotation() rotation { return t.parent.config().spec().ticketRotation }

// dueOf returns the refresh moment of a stored ticket record.
func (t *ticket) dueOf(rec *contract.TicketRecord) time.Time {
	return t.policy.refreshMoment(t.rotation(), rec.FetchedAt, rec.ExpiresAt, jitterDraw(t.key, rec.FetchedAt))
}

// stored records a successful write of ours.
func (t *ticket) stored(rec contract.TicketRecord, rev uint64) {
	t.adopt(&rec, rev)
	t.mu.Lock()
	t.succeeded()
	t.mu.Unlock()
}

// countCall counts one upstream ticket call against the ticket's day.
func (t *ticket) countCall(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pacing.countCall(now)
}

// failure records a failed refresh and returns when to try again.
func (t *ticket) failure(err error, now time.Time) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed(err, now, len(t.parent.config().spec().hourlyTicketLimit) > 0, func(err error) (time.Duration, time.Duration) {
		switch {
		case errors.Is(err, errNoToken), errors.Is(err, ErrNotStored), errors.Is(err, wechat.ErrTokenRejected), transient(err):
			return t.policy.RetryMin, 60 * t.policy.RetryMin
		}
		return t.policy.PermanentRetryMin, 10 * t.policy.PermanentRetryMin
	})
}

// errNoToken: a ticket cannot be fetched while its app holds no valid
// token.
var errNoToken = errors.New("refresher: the app holds no valid access token yet")

// planTickets starts the refresh of every ticket of a that is due, once a
// holds a valid token, and returns the earliest future moment (zero if
// none).
func (r *Refresher) planTickets(a *app, now time.Time) time.Time {
	ts := a.ticketList()
	if len(ts) == 0 {
		return time.Time{}
	}
	if _, _, ok := a.usable(now); !ok {
		// The first fetch waits for the app's token; storing it wakes
		// the planner.
		return time.Time{}
	}
	var next time.Time
	for _, t := range ts {
		due, busy := t.dueAt()
		if busy {
			continue
		}
		if !due.After(now) {
			r.startTicket(t)
			continue
		}
		if next.IsZero() || due.Before(next) {
			next = due
		}
	}
	return next
}

// startTicket runs one planned refresh of t in the background, in one of
// the WithConcurrency slots.
func (r *Refresher) startTicket(t *ticket) {
	t.mu.Lock()
	if t.running {
		t.mu.Unlock()
		return
	}
	t.running = true
	source := contract.SourceScheduled
	if t.rec == nil {
		source = contract.SourceStartup
	}
	t.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.sem <- struct{}{}
		if r.refreshCtx.Err() == nil {
			_, _, _ = r.refreshTicket(r.refreshCtx, t, source, nil)
		}
		<-r.sem
		// The slot is free: start a token refresh queued meanwhile.
		r.pump()
		t.mu.Lock()
		t.running = false
		t.mu.Unlock()
		r.Tick()
	}()
}

// readTicket returns the stored ticket record of key and its revision
// (nil, 0 if none; nil and the revision if it is invalid).
func (r *Refresher) readTicket(ctx context.Context, key string) (*contract.TicketRecord, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, kvReadTimeout)
	defer cancel()
	e, err := r.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	return r.parseTicket(key, e.Revision(), e.Value()), e.Revision(), nil
}

// parseTicket parses and validates a ticket record; an invalid one is
// reported (once per key and revision) and treated as missing.
func (r *Refresher) parseTicket(key string, rev uint64, val []byte) *contract.TicketRecord {
	return parseValid[contract.TicketRecord](r, key, rev, val, "ticket record", "key", contract.ErrInvalidTicketRecord)
}

// refreshTicket makes sure t holds a valid ticket that is not due (with
// stale set: a valid ticket at another revision than *stale): it
// re-reads the key, fetches with the app's current
// token only if needed, and on a rejected token refreshes the token first
// (one flight, that token's revision as stale, regardless of
// passive_min_interval) and fetches the ticket once more. The result is
// written revision-checked under t.key and announced on
// token.updated.<app>.<ticket>. It returns the record held at the end
// and its revision.
func (r *Refresher) refreshTicket(ctx context.Context, t *ticket, source string, stale *uint64) (contract.TicketRecord, uint64, error) {
	t.run.Lock()
	defer t.run.Unlock()
	if t.au != nil {
		// Its end (a new ticket, a failure) moves the authorizer's place
		// in the due heap.
		defer t.au.touch()
	}
	start := time.Now()
	rec, rev, err := r.readTicket(ctx, t.key)
	if err != nil {
		return r.ticketFailed(t, source, fmt.Errorf("read %s: %w", t.key, err), start)
	}
	t.adopt(rec, rev)
	now := r.now()
	if p := t.unstored(rec, now); p != nil {
		// The ticket fetched last is the newest upstream issued: write
		// it, never fetch over it.
		return r.storeTicket(ctx, t, *p, rev, source, start, true)
	}
	if rec != nil && rec.ExpiresAt.After(now) {
		switch {
		case stale == nil && t.dueOf(rec).After(now),
			stale != nil && rev != *stale:
			return *rec, rev, nil
		}
	}
	if err := r.lease.Confirm(ctx); err != nil {
		return derefTicket(rec), rev, err
	}
	a := t.parent
	if t.corpTicket() {
		// The corp's ticket: one fetch at a time across its apps, and a
		// newer one another app holds is copied, not fetched again.
		c := r.corp(a.config().CorpID)
		c.fetch.Lock()
		defer c.fetch.Unlock()
		if cp := r.corpCopy(t, rec, r.now()); cp != nil {
			return r.storeTicket(ctx, t, *cp, rev, source, start, false)
		}
	}
	if err := r.checkTicketHour(t, source, now); err != nil {
		return r.ticketFailed(t, source, err, start)
	}
	tok, tokRev, ok := t.token(now)
	if !ok {
		return r.ticketFailed(t, source, errNoToken, start)
	}
	tk, fetched, err := r.fetchTicket(ctx, t, tok.AccessToken, source)
	if errors.Is(err, wechat.ErrTokenRejected) {
		// Upstream itself says the token is bad: refresh it first, then
		// the ticket, once.
		r.log.Warn("ticket fetch rejected the token it was fetched with; refreshing the token first",
			"key", t.key, "app", a.name, "token_key", t.owner(), "revision", tokRev, "token", contract.Fingerprint(tok.AccessToken), "err", err)
		ntok, terr := r.refreshRejectedFor(ctx, t, tokRev)
		if terr != nil {
			return r.ticketFailed(t, source, fmt.Errorf("%w; refreshing the token: %w", err, terr), start)
		}
		tk, fetched, err = r.fetchTicket(ctx, t, ntok.AccessToken, source)
	}
	if err != nil {
		return r.ticketFailed(t, source, err, start)
	}
	if rec != nil && rec.Ticket == tk.Value && (rec.ExpiresAt.After(now) || t.rotation() == sameUntilExpiry) {
		// The same ticket: nothing to write, the first known expires_at
		// kept.
		t.mu.Lock()
		t.due = t.policy.unchangedMoment(t.rotation(), fetched, tk.ExpiresIn, jitterDraw(t.key, fetched))
		t.succeeded()
		t.mu.Unlock()
		return *rec, rev, nil
	}
	nrec := contract.TicketRecord{App: a.name, Key: t.key, TicketType: t.typ, Ticket: tk.Value,
		FetchedAt: fetched, ExpiresAt: fetched.Add(capLifetime(tk.ExpiresIn)), Source: source}
	return r.storeTicket(ctx, t, nrec, rev, source, start, true)
}

// storeTicket writes nrec under t.key over revision rev, publishes its
// event and, for a corp ticket just fetched (fetched), has the corp's
// other apps copy it.
func (r *Refresher) storeTicket(ctx context.Context, t *ticket, nrec contract.TicketRecord, rev uint64, source string, start time.Time, fetched bool) (contract.TicketRecord, uint64, error) {
	a := t.parent
	nrev, err := r.writeTicket(ctx, t, nrec, rev)
	if err != nil {
		if errors.Is(err, ErrSuperseded) {
			t.dropPending()
			cur, crev := t.current()
			return derefTicket(cur), crev, nil
		}
		if errors.Is(err, ErrNotLeader) || !fetched || !nrec.ExpiresAt.After(r.now()) {
			// Fenced (the next leader fetches its own), a copy, or too
			// late to serve: nothing to keep.
			t.dropPending()
			return r.ticketFailed(t, source, err, start)
		}
		if t.keepPending(nrec) {
			r.obs.Alert(r.metricLabel(t.key), AlertTokenNotStored)
			r.log.Error("ALERT token_not_stored: a ticket fetched from upstream could not be written to the bucket; "+
				"it is kept in memory and only the write is retried (no new fetch while it is valid)",
				"key", t.key, "app", a.name, "alert", AlertTokenNotStored, "ticket", contract.Fingerprint(nrec.Ticket),
				"expires_at", nrec.ExpiresAt.Format(time.RFC3339), "err", err)
		}
		return r.ticketFailed(t, source, fmt.Errorf("%w: %w", ErrNotStored, err), start)
	}
	t.dropPending()
	t.stored(nrec, nrev)
	r.publishEvent(t.key, contract.Event{App: a.name, Key: t.key, Revision: nrev,
		ExpiresAt: nrec.ExpiresAt, FetchedAt: nrec.FetchedAt, Source: source})
	if t.au == nil {
		// An authorizer's ticket has no series of its own (metrics are
		// per component).
		r.obs.Refreshed(t.key, source, nrec.ExpiresAt)
	}
	how := "ticket refreshed"
	if !fetched {
		how = "ticket copied from another app of the corp"
	}
	r.log.Info(how, "key", t.key, "app", a.name, "source", source, "revision", nrev,
		"ticket", contract.Fingerprint(nrec.Ticket), "expires_at", nrec.ExpiresAt.Format(time.RFC3339),
		"duration", time.Since(start).Round(time.Millisecond))
	if fetched && t.corpTicket() {
		for _, st := range r.siblings(t) {
			r.startTicket(st)
		}
	}
	return nrec, nrev, nil
}

func derefTicket(rec *contract.TicketRecord) contract.TicketRecord {
	if rec == nil {
		return contract.TicketRecord{}
	}
	return *rec
}

// fetchTicket makes one upstream ticket call (with the client's retries),
// each attempt inside the lease's trust window, and returns the ticket
// and when the attempt that got it was sent.
func (r *Refresher) fetchTicket(ctx context.Context, t *ticket, accessToken, source string) (wechat.Ticket, time.Time, error) {
	var fetched time.Time
	gate := r.leaseGate(&fetched)
	begin := time.Now()
	cfg := t.parent.config()
	kind := cfg.Kind
	if t.au != nil {
		// An authorizer is an Official Account or Mini Program: WeChat's
		// ticket endpoint, paced by the component's limit.
		kind = KindWeChat
		gate = withLimit(t.au.comp, gate)
	}
	var at attempts
	tk, err := r.clientFor(cfg).FetchTicketOf(at.observe(ctx), kind, cfg.APIBase, accessToken, t.typ, gate)
	r.obs.UpstreamCall(r.metricLabel(t.key), time.Since(begin), err)
	r.auditCall(ctx, t.parent.name, t.key, cfg.Kind, source, at, contract.Fingerprint(tk.Value))
	if !fetched.IsZero() {
		t.countCall(r.now())
		r.countTicketCall(t, r.now())
	}
	return tk, fetched, err
}

// refreshRejectedFor refreshes the token t is fetched with after the
// ticket endpoint rejected it at revision stale, and returns the new
// valid token: the app's (refreshRejectedToken) or the authorizer's (one
// refresh at a time per authorizer; a request that waited finds the new
// token), regardless of passive_min_interval.
func (r *Refresher) refreshRejectedFor(ctx context.Context, t *ticket, stale uint64) (contract.Record, error) {
	if t.au == nil {
		return r.refreshRejectedToken(ctx, t.parent, stale)
	}
	if err := r.refreshAuthorizerAs(ctx, t.au, contract.SourcePassive, &stale, true); err != nil {
		return contract.Record{}, err
	}
	rec, rev, ok := t.au.usable(r.now())
	if !ok || rev == stale {
		return contract.Record{}, errNoToken
	}
	return *rec, nil
}

// refreshRejectedToken refreshes a's token after upstream rejected the
// one at revision stale: one flight (joining one in flight), regardless
// of passive_min_interval, and returns the app's new valid token.
func (r *Refresher) refreshRejectedToken(ctx context.Context, a *app, stale uint64) (contract.Record, error) {
	for range 3 {
		now := r.now()
		rec, rev, valid := a.usable(now)
		if valid && rev != stale {
			return *rec, nil
		}
		f, started, _ := a.joinOrStart(now, valid, 0)
		if started {
			need := refreshNeed{stale: &stale, force: valid && a.takeStableForce(now)}
			res := r.refresh(ctx, a, contract.SourcePassive, need)
			a.finish(f, res)
		} else {
			select {
			case <-ctx.Done():
				return contract.Record{}, ctx.Err()
			case <-f.done:
			}
		}
		if f.res.err != nil {
			return contract.Record{}, f.res.err
		}
	}
	rec, rev, valid := a.usable(r.now())
	if !valid || rev == stale {
		return contract.Record{}, errNoToken
	}
	return *rec, nil
}

// ticketFailed records a failed ticket refresh and logs it. A rejected
// token (40001 from the ticket endpoint) is not the secret alert of the
// token endpoint's 40001.
func (r *Refresher) ticketFailed(t *ticket, source string, err error, start time.Time) (contract.TicketRecord, uint64, error) {
	cur, rev := t.current()
	if errors.Is(err, ErrNotLeader) || errors.Is(err, context.Canceled) {
		return derefTicket(cur), rev, err
	}
	now := r.now()
	retry := t.failure(err, now)
	r.obs.RefreshFailed(r.metricLabel(t.key), source, err)
	attrs := []any{"key", t.key, "app", t.parent.name, "source", source, "err", err,
		"retry_in", retry.Sub(now).Round(time.Millisecond), "duration", time.Since(start).Round(time.Millisecond)}
	var we *wechat.Error
	if errors.As(err, &we) {
		attrs = append(attrs, "errcode", we.Code, "errmsg", we.Msg)
		if alert := alertFor(we.Code); alert != "" && !errors.Is(err, wechat.ErrTokenRejected) {
			attrs = append(attrs, "alert", alert)
		}
	}
	r.log.Error("ticket refresh failed; the stored ticket is kept", attrs...)
	return derefTicket(cur), rev, err
}

// writeTicket stores rec under its key over revision rev (0: create),
// revision-checked as write does for tokens.
func (r *Refresher) writeTicket(ctx context.Context, t *ticket, rec contract.TicketRecord, rev uint64) (uint64, error) {
	if err := rec.Validate(rec.Key, maxRecordLifetime); err != nil {
		return 0, fmt.Errorf("write %s: not storing a record that readers reject: %w", rec.Key, err)
	}
	val, err := json.Marshal(rec)
	if err != nil {
		return 0, err
	}
	return r.casWrite(ctx, rec.Key, val, rev, contract.Fingerprint(rec.Ticket), func(ctx context.Context) (uint64, bool, error) {
		cur, crev, err := r.readTicket(ctx, rec.Key)
		if err != nil {
			return 0, false, err
		}
		t.adopt(cur, crev)
		return crev, cur != nil && !cur.FetchedAt.Before(rec.FetchedAt), nil
	})
}

// usable returns the ticket record held and whether it can be handed out
// at now: present and not expired.
func (t *ticket) usable(now time.Time) (*contract.TicketRecord, uint64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rec, t.rev, t.rec != nil && t.rec.ExpiresAt.After(now)
}

// paused returns, while upstream calls of the ticket wait after a
// failure, until when and the failure; zero otherwise.
func (t *ticket) paused(now time.Time) (time.Time, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.lastErr == nil || !t.retryAt.After(now) {
		return time.Time{}, nil
	}
	return t.retryAt, t.lastErr
}

// takeForced reports whether a forced refresh of the ticket may go ahead
// now: one is running already (the caller then waits for it), or the
// last one began at least minGap ago. The caller calls forcedDone after.
func (t *ticket) takeForced(now time.Time, minGap time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.forcing == 0 {
		if !t.lastForced.IsZero() && now.Sub(t.lastForced) < minGap {
			return false
		}
		t.lastForced = now
	}
	t.forcing++
	return true
}

func (t *ticket) forcedDone() {
	t.mu.Lock()
	t.forcing--
	t.mu.Unlock()
}

// TicketReply is the successful reply to token.refresh.<app>.<ticket>:
// the stored ticket record plus its KV revision.
type TicketReply struct {
	contract.TicketRecord
	Revision uint64 `json:"revision"`
}

// handleTicket answers a parsed token.refresh request for ticket t: from
// the record held if it answers, otherwise from a goroutine of its own.
func (r *Refresher) handleTicket(q *refreshReq, t *ticket, stale *uint64, source string) {
	label := r.metricLabel(t.key) // an authorizer's ticket counts under its component
	if source == contract.SourcePassive && r.lease != nil && r.lease.Held() {
		if rec, rev, ok := t.usable(r.now()); ok && answers(rev, stale) {
			r.replyOK(q, label, TicketReply{*rec, rev})
			return
		}
	}
	if !r.reqs.acquire() {
		r.replyOverloaded(q, label)
		return
	}
	go func() {
		defer r.reqs.release()
		defer r.recovered(q)
		r.reqs.at(stageSlow, q)
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		defer cancel()
		rep, err := r.refreshTicketAs(withRequester(ctx, requesterOf(nats.Header(q.Headers()))), t, stale, source)
		if err != nil {
			r.replyError(q, label, err)
			return
		}
		r.replyOK(q, label, rep)
	}()
}

// refreshTicketAs is Refresh for a ticket: the record held if it answers
// stale (as for tokens), otherwise one refresh at a time per ticket —
// requests that waited for it find its record at a newer revision. A
// forced fetch (a valid ticket at revision stale) happens at most once
// per passive_min_interval; inside it the current record is the reply.
func (r *Refresher) refreshTicketAs(ctx context.Context, t *ticket, stale *uint64, source string) (TicketReply, error) {
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed || r.refreshCtx == nil {
		return TicketReply{}, ErrClosed
	}
	now := r.now()
	rec, rev, valid := t.usable(now)
	if valid && answers(rev, stale) {
		return TicketReply{*rec, rev}, nil
	}
	if !r.lease.Held() {
		return TicketReply{}, ErrNotLeader
	}
	if until, why := t.paused(now); !until.IsZero() {
		return TicketReply{}, pausedError(t.key, until, why)
	}
	type result struct {
		rec contract.TicketRecord
		rev uint64
		err error
	}
	done := make(chan result, 1)
	r.wg.Add(1)
	go func() {
		// The refresh runs to its end under refreshCtx, whoever waits.
		defer r.wg.Done()
		// stale nil: the ticket held is missing or expired (a valid one
		// answered above), so any valid one stored answers.
		if stale != nil && valid {
			// Forced: at most once per passive_min_interval, unless a
			// forced refresh runs (then this one waits for it).
			if !t.takeForced(r.now(), time.Duration(r.passiveMin.Load())) {
				cur, crev := t.current()
				done <- result{derefTicket(cur), crev, nil}
				return
			}
			defer t.forcedDone()
		}
		nrec, nrev, err := r.refreshTicket(withRequester(r.refreshCtx, requesterFrom(ctx)), t, source, stale)
		done <- result{nrec, nrev, err}
		r.Tick()
	}()
	var res result
	select {
	case <-ctx.Done():
		return TicketReply{}, ctx.Err()
	case res = <-done:
	}
	if res.err != nil {
		if errors.Is(res.err, errNoToken) {
			return TicketReply{}, &RequestError{Code: contract.CodeUnavailable, Message: "no token stored yet for " + t.owner(), Err: res.err}
		}
		return TicketReply{}, res.err
	}
	if res.rec.Ticket == "" {
		return TicketReply{}, &RequestError{Code: contract.CodeUnavailable, Message: "no ticket stored yet"}
	}
	return TicketReply{res.rec, res.rev}, nil
}
