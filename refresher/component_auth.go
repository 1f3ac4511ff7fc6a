package refresher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/nats-io/nats.go"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// authorizer is the refresher's state of one authorizer of a component:
// the token record under <component>.<authorizer_appid>; its refresh
// token lives in the secrets bucket.
type authorizer struct {
	comp   *component
	appid  string
	key    string  // <component>.<appid>
	policy *Policy // the refresher's
	// run serialises refreshes and removal of the authorizer.
	run sync.Mutex

	mu      sync.Mutex
	rec     *contract.Record
	rev     uint64
	pacing  // schedule, failures, calls today
	running bool
	// needsReauth: WeChat refused the refresh token (61023); the merchant
	// must authorize again. The refresh token is kept.
	needsReauth bool
	// removed: unauthorized; nothing is written for it any more.
	removed bool
	// pendingRefresh is a refresh token WeChat handed back whose write to
	// the secrets bucket failed: it is the newest, used and written next.
	pendingRefresh string
	// slot is the authorizer's place in its component's due heap.
	slot slot
	// lastForced is when a passive request last replaced a valid token.
	lastForced time.Time
	// tickets are the component's authorizer_tickets of this authorizer
	// (fixed at creation).
	tickets []*ticket
}

// ticket returns au's ticket of type typ (nil if the component keeps
// none of that type).
func (au *authorizer) ticket(typ string) *ticket {
	for _, t := range au.tickets {
		if t.typ == typ {
			return t
		}
	}
	return nil
}

// dueMoment is when au is next due: its token's moment, or a ticket's
// if earlier — tickets count once au holds a token to fetch them with.
// The caller holds au.mu (lock order: au.mu, then a ticket's mu).
func (au *authorizer) dueMoment() time.Time {
	m := au.next()
	if au.rec == nil || au.removed {
		return m
	}
	for _, t := range au.tickets {
		t.mu.Lock()
		if d := t.next(); d.Before(m) {
			m = d
		}
		t.mu.Unlock()
	}
	return m
}

// touch moves au's place in its component's due heap to its current
// moment (after one of its tickets changed).
func (au *authorizer) touch() {
	au.mu.Lock()
	au.reschedule()
	au.mu.Unlock()
}

// pendingCode is an authorization code stored but not yet redeemed.
type pendingCode struct {
	appid   string
	mu      sync.Mutex
	running bool
	dropped bool // redeemed or deleted: never planned again
	pacing
	slot slot // in the component's due heap
}

func (p *pendingCode) dueAt() (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.next(), p.running
}

// ensure returns the authorizer appid of c, adding it if new.
func (c *component) ensure(r *Refresher, appid string) *authorizer {
	c.mu.Lock()
	if au := c.auths[appid]; au != nil {
		c.mu.Unlock()
		return au
	}
	au := &authorizer{comp: c, appid: appid, key: contract.Key(c.name, appid), policy: &r.policy}
	au.slot = slot{idx: -1, au: au}
	for _, typ := range c.ticketTypes {
		au.tickets = append(au.tickets, &ticket{key: contract.Key(c.name, appid, typ), typ: typ,
			parent: c.app, au: au, policy: &r.policy})
	}
	c.auths[appid] = au
	c.mu.Unlock()
	au.mu.Lock()
	au.reschedule()
	au.mu.Unlock()
	return au
}

// reschedule puts au into its component's due heap at its next moment,
// unless it is running (its end does) or removed. The caller holds au.mu.
func (au *authorizer) reschedule() {
	if au.running || au.removed {
		return
	}
	au.comp.schedule(&au.slot, au.dueMoment())
}

// get returns the authorizer appid of c (nil if none).
func (c *component) get(appid string) *authorizer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.auths[appid]
}

// list returns c's authorizers.
func (c *component) list() []*authorizer {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*authorizer, 0, len(c.auths))
	for _, au := range c.auths {
		out = append(out, au)
	}
	return out
}

func (c *component) addCode(appid string) {
	c.mu.Lock()
	pc := c.codes[appid]
	if pc == nil {
		pc = &pendingCode{appid: appid}
		pc.slot = slot{idx: -1, pc: pc}
		c.codes[appid] = pc
	}
	c.mu.Unlock()
	pc.mu.Lock()
	pc.reschedule(c)
	pc.mu.Unlock()
}

// reschedule puts pc into c's due heap at its next moment unless it is
// running or dropped. The caller holds pc.mu.
func (pc *pendingCode) reschedule(c *component) {
	if pc.running || pc.dropped {
		return
	}
	c.schedule(&pc.slot, pc.next())
}

func (c *component) dropCode(appid string) {
	c.mu.Lock()
	pc := c.codes[appid]
	delete(c.codes, appid)
	c.mu.Unlock()
	if pc != nil {
		pc.mu.Lock()
		pc.dropped = true
		c.unschedule(&pc.slot)
		pc.mu.Unlock()
	}
}

// redeeming reports whether an authorization code of appid is being
// redeemed now: the redemption stores the authorizer's token.
func (c *component) redeeming(appid string) bool {
	c.mu.Lock()
	pc := c.codes[appid]
	c.mu.Unlock()
	if pc == nil {
		return false
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.running
}

func (c *component) codeList() []*pendingCode {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*pendingCode, 0, len(c.codes))
	for _, p := range c.codes {
		out = append(out, p)
	}
	return out
}

// adopt takes a record read from the tokens bucket if newer than the one
// held, and schedules the next refresh from it.
func (au *authorizer) adopt(rec *contract.Record, rev uint64) bool {
	au.mu.Lock()
	defer au.mu.Unlock()
	if rev <= au.rev && !(rev == 0 && au.rev == 0) {
		return false
	}
	if rev == 0 && rec == nil {
		return false
	}
	changed := au.rec == nil || rec == nil || au.rec.AccessToken != rec.AccessToken
	if rec != nil && rec.Key == au.key {
		// One copy of the strings every authorizer's record repeats (at
		// 100 000 authorizers, megabytes of heap).
		rec.Key, rec.App, rec.Source = au.key, au.comp.name, internSource(rec.Source)
		if rec.AuthorizerAppID == au.appid {
			rec.AuthorizerAppID = au.appid
		}
		if rec.Kind == KindWeChatComponent {
			rec.Kind = KindWeChatComponent
		}
		if rec.AppID == au.comp.appid {
			rec.AppID = au.comp.appid
		}
	}
	au.rec, au.rev = rec, rev
	if rec == nil {
		au.due = time.Time{}
		au.reschedule()
		return true
	}
	au.due = authorizerPolicy(au).refreshMoment(rotateOnFetch, rec.FetchedAt, rec.ExpiresAt, jitterDraw(au.key, rec.FetchedAt))
	if changed {
		au.retryAt, au.failures = time.Time{}, 0
	}
	au.reschedule()
	return true
}

// authorizerPolicy is the refresh policy of au: the refresher's, with a
// refresh window at least authorizerJitter wide (as far as the policy's
// At leaves room for it), so that authorizers authorized together are
// refreshed spread out.
func authorizerPolicy(au *authorizer) *Policy {
	p := *au.policy
	room := 1.6 * min(p.At, 1-p.At) // keeps At ± Jitter/2 inside (0.2·At, 1 − 0.2·(1−At))
	p.Jitter = max(p.Jitter, min(authorizerJitter, room))
	return &p
}

func (au *authorizer) dueAt() (time.Time, bool) {
	au.mu.Lock()
	defer au.mu.Unlock()
	return au.dueMoment(), au.running || au.removed
}

func (au *authorizer) current() (*contract.Record, uint64) {
	au.mu.Lock()
	defer au.mu.Unlock()
	return au.rec, au.rev
}

// followAuthorizer keeps a replica's view of the authorizers' token
// records warm (entries of the tokens bucket that are no configured app).
func (r *Refresher) followAuthorizer(e jetstream.KeyValueEntry) {
	comp, id, ok := strings.Cut(e.Key(), ".")
	if !ok || strings.Contains(id, ".") {
		return
	}
	c := r.componentOf(comp)
	if c == nil {
		return
	}
	au := c.get(id)
	if au == nil || e.Operation() != jetstream.KeyValuePut {
		return
	}
	au.adopt(r.parseRecord(e.Key(), e.Revision(), e.Value()), e.Revision())
}

// authorizerSecretChanged applies a new authorizer secrets record: an
// authorized one adds the authorizer (a new refresh token clears "needs
// re-authorization"); a tombstone removes it, and the leader deletes its
// token key.
func (r *Refresher) authorizerSecretChanged(c *component, appid string, s *authorizerSecret) {
	if s.State == authorizerAuthorized {
		au := c.ensure(r, appid)
		au.mu.Lock()
		if au.needsReauth && s.Source != "refresh" {
			au.needsReauth = false
			au.retryAt, au.failures, au.due = time.Time{}, 0, time.Time{}
			au.reschedule()
		}
		au.mu.Unlock()
		r.Tick()
		return
	}
	au := c.get(appid)
	if au == nil {
		return
	}
	if !r.Leader() {
		// Followers forget it; the leader deletes the key.
		c.mu.Lock()
		delete(c.auths, appid)
		c.mu.Unlock()
		au.mu.Lock()
		c.unschedule(&au.slot)
		au.mu.Unlock()
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.removeAuthorizer(context.Background(), c, au, s.Why)
	}()
}

// removeAuthorizer stops refreshing au and deletes its token key
// (watchers see the delete); the tombstone and the last refresh token
// stay in the secrets bucket.
func (r *Refresher) removeAuthorizer(ctx context.Context, c *component, au *authorizer, why string) {
	au.run.Lock()
	defer au.run.Unlock()
	c.forget(au)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := r.deleteAuthorizerKeys(ctx, au); err != nil {
		r.log.Error("deleting an unauthorized authorizer's token or tickets failed", "key", au.key, "err", err)
		return
	}
	r.log.Info("authorizer unauthorized: refreshing stopped, token and ticket keys deleted; the tombstone and the last refresh token stay in the secrets bucket",
		"app", c.name, "key", au.key, "authorizer_appid", au.appid, "why", why)
}

// startAuthorizer queues one planned refresh of au as a job of its
// component (a place of componentJobs and a refresh slot); it returns
// whether it did.
func (r *Refresher) startAuthorizer(au *authorizer) bool {
	c := au.comp
	au.mu.Lock()
	if au.running || au.removed {
		au.mu.Unlock()
		return false
	}
	if !c.takeJob(r.componentJobs()) {
		au.reschedule() // back into the heap; a job's end wakes the planner
		au.mu.Unlock()
		return false
	}
	au.running = true
	source := contract.SourceScheduled
	if au.rec == nil {
		source = contract.SourceStartup
	}
	au.mu.Unlock()
	r.enqueue(func() {
		if r.refreshCtx.Err() == nil {
			_ = r.refreshAuthorizer(r.refreshCtx, au, source)
			r.refreshAuthorizerTickets(r.refreshCtx, au)
		}
		au.mu.Lock()
		au.running = false
		au.reschedule()
		au.mu.Unlock()
		r.jobDone(c)
	})
	return true
}

// refreshAuthorizerTickets refreshes au's tickets that are due, each
// with au's current token (refreshTicket: a valid stored one that is not
// due is kept; a failure is paced per ticket).
func (r *Refresher) refreshAuthorizerTickets(ctx context.Context, au *authorizer) {
	for _, t := range au.tickets {
		au.mu.Lock()
		skip := au.removed || au.rec == nil
		au.mu.Unlock()
		if skip {
			return
		}
		due, _ := t.dueAt()
		if due.After(r.now()) {
			continue
		}
		source := contract.SourceScheduled
		if rec, _ := t.current(); rec == nil {
			source = contract.SourceStartup
		}
		if _, _, err := r.refreshTicket(ctx, t, source, nil); errors.Is(err, ErrNotLeader) || ctx.Err() != nil {
			return
		}
	}
}

// componentToken returns the component's valid token, or errNoToken.
func (r *Refresher) componentToken(ctx context.Context, c *component) (contract.Record, AppConfig, error) {
	r.mu.Lock()
	a := r.apps[c.name]
	r.mu.Unlock()
	if a == nil {
		return contract.Record{}, AppConfig{}, ErrUnknownApp
	}
	rec, _, ok := a.usable(r.now())
	if !ok {
		// The bucket may hold one this replica's watch has not brought
		// yet (a new leader, a token just written): read the key.
		if krec, krev, err := r.read(ctx, c.name); err == nil {
			a.adopt(krec, krev)
			rec, _, ok = a.usable(r.now())
		}
	}
	if !ok {
		return contract.Record{}, AppConfig{}, errNoToken
	}
	return *rec, a.config(), nil
}

// refreshAuthorizer makes sure au holds a valid token that is not due:
// it re-reads the key, and only if needed calls api_authorizer_token with
// the stored refresh token; a refresh token that comes back different is
// stored (revision-checked) before the token. 61023 marks the authorizer
// "needs re-authorization" and keeps its refresh token.
func (r *Refresher) refreshAuthorizer(ctx context.Context, au *authorizer, source string) error {
	return r.refreshAuthorizerAs(ctx, au, source, nil, false)
}

// refreshAuthorizerFor is refreshAuthorizer for a passive request: with
// stale set, a valid token at another revision than *stale answers it
// (no call), a valid one at revision *stale is replaced at most once per
// passive_min_interval.
func (r *Refresher) refreshAuthorizerFor(ctx context.Context, au *authorizer, source string, stale *uint64) error {
	return r.refreshAuthorizerAs(ctx, au, source, stale, false)
}

// refreshAuthorizerAs is refreshAuthorizerFor; rejected says WeChat
// itself refused the token at revision *stale (a ticket fetch answered
// 40001), which replaces it regardless of passive_min_interval.
func (r *Refresher) refreshAuthorizerAs(ctx context.Context, au *authorizer, source string, stale *uint64, rejected bool) error {
	au.run.Lock()
	defer au.run.Unlock()
	start := time.Now()
	c := au.comp
	au.mu.Lock()
	removed := au.removed
	au.mu.Unlock()
	if removed {
		return nil
	}
	rec, rev, err := r.readAuthorizerToken(ctx, au.key)
	if err != nil {
		return r.authorizerFailed(au, source, err, start)
	}
	au.adopt(rec, rev)
	now := r.now()
	if rec == nil && c.redeeming(au.appid) {
		// The authorization code is being redeemed: api_query_auth's
		// token is about to be stored. A call now would supersede it.
		au.mu.Lock()
		au.due = now.Add(au.policy.RetryMin)
		au.mu.Unlock()
		return nil
	}
	if rec != nil && rec.ExpiresAt.After(now) && stale != nil {
		// The request's token is not the stored one: the stored one
		// answers. It is: replaced at most once per passive_min_interval
		// (requests waiting on au.run for the same revision find the new
		// one; inside the interval the current record answers).
		if rev != *stale || !rejected && !au.takeForced(now, time.Duration(r.passiveMin.Load())) {
			return nil
		}
	}
	if rec != nil && rec.ExpiresAt.After(now) && stale == nil {
		if moment := authorizerPolicy(au).refreshMoment(rotateOnFetch, rec.FetchedAt, rec.ExpiresAt, jitterDraw(au.key, rec.FetchedAt)); moment.After(now) {
			r.flushPendingRefresh(ctx, au, now, moment)
			return nil
		}
	}
	if err := r.lease.Confirm(ctx); err != nil {
		return err
	}
	ctok, cfg, err := r.componentToken(ctx, c)
	if err != nil {
		return r.authorizerFailed(au, source, err, start)
	}
	var sec authorizerSecret
	srev, err := r.secrets.get(ctx, authorizerSecretKey(c.name, au.appid), &sec)
	if err != nil {
		return r.authorizerFailed(au, source, fmt.Errorf("refresh token of %s: %w", au.key, err), start)
	}
	if sec.State != authorizerAuthorized {
		r.removeAuthorizerLocked(ctx, c, au)
		return nil
	}
	au.mu.Lock()
	refreshTok := sec.RefreshToken
	if au.pendingRefresh != "" {
		refreshTok = au.pendingRefresh
	}
	au.mu.Unlock()
	var fetched time.Time
	gate := withLimit(c, r.leaseGate(&fetched))
	begin := time.Now()
	var at attempts
	tok, err := r.clientFor(cfg).AuthorizerAccessToken(at.observe(ctx), cfg.APIBase, ctok.AccessToken, cfg.AppID, au.appid, refreshTok, gate)
	r.obs.UpstreamCall(c.name, time.Since(begin), err)
	r.auditCall(ctx, c.name, contract.Key(c.name, au.appid), cfg.Kind, source, at, contract.Fingerprint(tok.AccessToken))
	if !fetched.IsZero() {
		au.mu.Lock()
		au.countCall(r.now())
		au.mu.Unlock()
	}
	if errors.Is(err, &wechat.Error{Code: wechat.CodeRefreshTokenInvalid}) {
		au.mu.Lock()
		first := !au.needsReauth
		au.needsReauth = true
		au.mu.Unlock()
		if first {
			r.obs.Alert(c.name, AlertNeedsReauthorization)
			r.log.Error("ALERT "+AlertNeedsReauthorization+": WeChat refuses the authorizer's refresh token (61023); the merchant must authorize the component again. The stored refresh token is kept.",
				"app", c.name, "key", au.key, "authorizer_appid", au.appid, "alert", AlertNeedsReauthorization)
		}
		return r.authorizerFailed(au, source, err, start)
	}
	if err != nil {
		return r.authorizerFailed(au, source, err, start)
	}
	if tok.RefreshToken != "" && tok.RefreshToken != sec.RefreshToken {
		// The new refresh token first: the old one stays in history.
		if err := r.storeRefreshToken(ctx, c, au.appid, tok.RefreshToken, "refresh", srev); err != nil {
			au.mu.Lock()
			first := au.pendingRefresh != tok.RefreshToken
			au.pendingRefresh = tok.RefreshToken
			au.mu.Unlock()
			if first {
				r.obs.Alert(c.name, AlertRefreshTokenNotStored)
				r.log.Error("ALERT "+AlertRefreshTokenNotStored+": a rotated refresh token could not be written to the secrets bucket; it is kept in memory and written on the next attempt",
					"app", c.name, "key", au.key, "refresh_token", sealedFingerprint(tok.RefreshToken), "err", err)
			}
		} else {
			au.mu.Lock()
			au.pendingRefresh = ""
			au.mu.Unlock()
		}
	}
	nrec := contract.Record{App: c.name, Key: au.key, AppID: cfg.AppID, AuthorizerAppID: au.appid, Kind: KindWeChatComponent,
		AccessToken: tok.AccessToken, FetchedAt: fetched, ExpiresAt: fetched.Add(capLifetime(tok.ExpiresIn)), Source: source}
	err = r.storeAuthorizerToken(ctx, au, nrec, rev, source, start)
	au.mu.Lock()
	if au.pendingRefresh != "" {
		// Not at the next refresh: a crash before it would leave only
		// the superseded refresh token, which WeChat honours briefly.
		au.due = r.now().Add(au.policy.RetryMin)
	}
	au.mu.Unlock()
	return err
}

// flushPendingRefresh writes au's rotated refresh token that a failed
// write left in memory, for a caller holding au.run whose token is not
// due before moment. Until the write works, au is due again every
// Policy.RetryMin (each run re-checks the token's own refresh moment);
// after it, at moment.
func (r *Refresher) flushPendingRefresh(ctx context.Context, au *authorizer, now, moment time.Time) {
	au.mu.Lock()
	pending := au.pendingRefresh
	au.mu.Unlock()
	if pending == "" {
		return
	}
	err := r.storeRefreshToken(ctx, au.comp, au.appid, pending, "refresh", 0)
	au.mu.Lock()
	defer au.mu.Unlock()
	if err != nil {
		au.due = now.Add(au.policy.RetryMin)
		if au.due.After(moment) {
			au.due = moment
		}
		r.log.Warn("the rotated refresh token kept in memory is still not written; trying again", "app", au.comp.name, "key", au.key,
			"refresh_token", sealedFingerprint(pending), "retry_in", au.due.Sub(now).Round(time.Millisecond), "err", err)
		return
	}
	if au.pendingRefresh == pending {
		au.pendingRefresh = ""
	}
	au.due = moment
	r.log.Info("the rotated refresh token kept in memory is written", "app", au.comp.name, "key", au.key,
		"refresh_token", sealedFingerprint(pending))
}

// removeAuthorizerLocked is removeAuthorizer for a caller holding au.run.
func (r *Refresher) removeAuthorizerLocked(ctx context.Context, c *component, au *authorizer) {
	c.forget(au)
	_ = r.deleteAuthorizerKeys(ctx, au)
}

// deleteAuthorizerKeys deletes au's ticket keys and its token key
// (watchers see each delete); the first error is returned, the other
// deletes are still made.
func (r *Refresher) deleteAuthorizerKeys(ctx context.Context, au *authorizer) error {
	var first error
	for _, t := range au.tickets {
		if err := r.kv.Delete(ctx, t.key); err != nil && first == nil {
			first = err
		}
	}
	if err := r.kv.Delete(ctx, au.key); err != nil && first == nil {
		first = err
	}
	return first
}

// forget marks au removed, takes it out of c's due heap and drops it
// from c's authorizers.
func (c *component) forget(au *authorizer) {
	au.mu.Lock()
	au.removed = true
	c.unschedule(&au.slot)
	au.mu.Unlock()
	c.mu.Lock()
	if c.auths[au.appid] == au {
		delete(c.auths, au.appid)
	}
	c.mu.Unlock()
}

// storeAuthorizerToken writes an authorizer's token record over rev and
// publishes its event.
func (r *Refresher) storeAuthorizerToken(ctx context.Context, au *authorizer, nrec contract.Record, rev uint64, source string, start time.Time) error {
	if err := nrec.Validate(au.key, maxRecordLifetime); err != nil {
		return r.authorizerFailed(au, source, err, start)
	}
	val, err := json.Marshal(nrec)
	if err != nil {
		return err
	}
	nrev, err := r.casWrite(ctx, au.key, val, rev, contract.Fingerprint(nrec.AccessToken), func(ctx context.Context) (uint64, bool, error) {
		cur, crev, err := r.readAuthorizerToken(ctx, au.key)
		if err != nil {
			return 0, false, err
		}
		au.adopt(cur, crev)
		return crev, cur != nil && !cur.FetchedAt.Before(nrec.FetchedAt), nil
	})
	if errors.Is(err, ErrSuperseded) {
		return nil
	}
	if err != nil {
		return r.authorizerFailed(au, source, err, start)
	}
	au.adopt(&nrec, nrev)
	au.mu.Lock()
	au.succeeded()
	au.needsReauth = false
	au.mu.Unlock()
	r.publishEvent(au.key, contract.Event{App: nrec.App, Key: au.key, Revision: nrev, ExpiresAt: nrec.ExpiresAt, FetchedAt: nrec.FetchedAt, Source: source})
	r.log.Info("authorizer token refreshed", "key", au.key, "app", nrec.App, "authorizer_appid", au.appid, "source", source,
		"revision", nrev, "token", contract.Fingerprint(nrec.AccessToken), "expires_at", nrec.ExpiresAt.Format(time.RFC3339),
		"duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// readAuthorizerToken returns the stored token record of an authorizer
// key and its revision (nil, 0 if none).
func (r *Refresher) readAuthorizerToken(ctx context.Context, key string) (*contract.Record, uint64, error) {
	e, err := r.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	return r.parseRecord(key, e.Revision(), e.Value()), e.Revision(), nil
}

// authorizerFailed records a failed authorizer refresh and logs it.
func (r *Refresher) authorizerFailed(au *authorizer, source string, err error, start time.Time) error {
	if errors.Is(err, ErrNotLeader) || errors.Is(err, context.Canceled) {
		return err
	}
	now := r.now()
	au.mu.Lock()
	retry := au.failed(err, now, false, func(err error) (time.Duration, time.Duration) {
		switch {
		case errors.Is(err, errNoToken), wechat.IsRetryable(err):
			return au.policy.RetryMin, 60 * au.policy.RetryMin
		}
		return au.policy.PermanentRetryMin, 10 * au.policy.PermanentRetryMin
	})
	au.mu.Unlock()
	r.obs.RefreshFailed(au.comp.name, source, err)
	r.log.Error("authorizer token refresh failed; the stored token and refresh token are kept", "key", au.key,
		"app", au.comp.name, "source", source, "err", err, "retry_in", retry.Sub(now).Round(time.Millisecond),
		"duration", time.Since(start).Round(time.Millisecond))
	return err
}

// storeRefreshToken writes an authorizer's refresh token (state
// authorized) over rev (0: read first), revision-checked: on a conflict
// it re-reads and writes over the newer revision (the token handed back
// by WeChat last is the valid one).
func (r *Refresher) storeRefreshToken(ctx context.Context, c *component, appid, refreshToken, source string, rev uint64) error {
	key := authorizerSecretKey(c.name, appid)
	if rev == 0 {
		var cur authorizerSecret
		var err error
		rev, err = r.secrets.get(ctx, key, &cur)
		if err != nil && !errors.Is(err, errNoSecret) && rev == 0 {
			return err
		}
	}
	for range 5 {
		_, err := r.secrets.put(ctx, key, authorizerSecret{AuthorizerAppID: appid, RefreshToken: refreshToken,
			State: authorizerAuthorized, UpdatedAt: r.now().UTC(), Source: source}, rev)
		if !conflict(err) {
			return err
		}
		var cur authorizerSecret
		rev, err = r.secrets.get(ctx, key, &cur)
		if err != nil && rev == 0 {
			return err
		}
	}
	return fmt.Errorf("secrets %s: too many revision conflicts", key)
}

// storeAuthCode stores a pushed authorization code (authorized,
// updateauthorized) durably, before WeChat is told success.
func (r *Refresher) storeAuthCode(ctx context.Context, c *component, p *wxcrypt.ComponentPush) error {
	key := codeKey(c.name, p.AuthorizerAppID)
	ac := authCode{AuthorizerAppID: p.AuthorizerAppID, Code: p.AuthorizationCode, InfoType: string(p.InfoType),
		CreateTime: p.CreateTime, ReceivedAt: r.now().UTC()}
	if p.AuthorizationCodeExpiredTime > 0 {
		ac.ExpiresAt = time.Unix(p.AuthorizationCodeExpiredTime, 0).UTC()
	}
	for range 5 {
		var cur authCode
		rev, err := r.secrets.get(ctx, key, &cur)
		switch {
		case errors.Is(err, errNoSecret):
		case err != nil && rev == 0:
			return err
		case err == nil && cur.CreateTime > p.CreateTime:
			return nil // a newer code is stored already
		case err == nil && cur.Code == p.AuthorizationCode:
			return nil // a redelivery
		}
		_, err = r.secrets.put(ctx, key, ac, rev)
		if conflict(err) {
			continue
		}
		return err
	}
	return fmt.Errorf("secrets %s: too many revision conflicts", key)
}

// storeTombstone records an unauthorized push: the authorizer's secrets
// record becomes a tombstone (when, why) that keeps the last refresh
// token.
func (r *Refresher) storeTombstone(ctx context.Context, c *component, p *wxcrypt.ComponentPush) error {
	key := authorizerSecretKey(c.name, p.AuthorizerAppID)
	for range 5 {
		var cur authorizerSecret
		rev, err := r.secrets.get(ctx, key, &cur)
		switch {
		case errors.Is(err, errNoSecret):
		case err != nil:
			// Not openable: a tombstone without the token would blank
			// it; history keeps it, but refuse rather than guess.
			return err
		case cur.State == authorizerUnauthorized:
			return nil // already
		case cur.CreateTime > p.CreateTime:
			return nil // authorized again after this push was sent
		}
		_, err = r.secrets.put(ctx, key, authorizerSecret{AuthorizerAppID: p.AuthorizerAppID, RefreshToken: cur.RefreshToken,
			State: authorizerUnauthorized, UpdatedAt: r.now().UTC(), Source: "unauthorized",
			Why: "unauthorized push of " + p.Created().UTC().Format(time.RFC3339), CreateTime: p.CreateTime}, rev)
		if conflict(err) {
			continue
		}
		return err
	}
	return fmt.Errorf("secrets %s: too many revision conflicts", key)
}

// startRedeem queues the redemption of a pending code as a job of c; it
// returns whether it did.
func (r *Refresher) startRedeem(c *component, pc *pendingCode) bool {
	pc.mu.Lock()
	if pc.running || pc.dropped {
		pc.mu.Unlock()
		return false
	}
	if !c.takeJob(r.componentJobs()) {
		pc.reschedule(c)
		pc.mu.Unlock()
		return false
	}
	pc.running = true
	pc.mu.Unlock()
	r.enqueue(func() {
		if r.refreshCtx.Err() == nil {
			if err := r.redeem(r.refreshCtx, c, pc.appid); err != nil && !errors.Is(err, ErrNotLeader) {
				pc.mu.Lock()
				pc.failed(err, r.now(), false, func(err error) (time.Duration, time.Duration) {
					if errors.Is(err, errNoToken) || wechat.IsRetryable(err) {
						return time.Second, time.Minute
					}
					return time.Minute, 10 * time.Minute
				})
				pc.mu.Unlock()
				r.log.Error("redeeming an authorization code failed; the code is kept and tried again", "app", c.name,
					"authorizer_appid", pc.appid, "err", err)
			}
		}
		pc.mu.Lock()
		pc.running = false
		pc.reschedule(c)
		pc.mu.Unlock()
		r.jobDone(c)
	})
	return true
}

// redeem redeems the stored authorization code of an authorizer with
// api_query_auth, stores its refresh token (secrets) and its token
// (tokens), then deletes the code.
func (r *Refresher) redeem(ctx context.Context, c *component, appid string) error {
	start := time.Now()
	key := codeKey(c.name, appid)
	var ac authCode
	crev, err := r.secrets.get(ctx, key, &ac)
	if errors.Is(err, errNoSecret) {
		c.dropCode(appid)
		return nil
	}
	if err != nil {
		return err
	}
	if err := r.lease.Confirm(ctx); err != nil {
		return err
	}
	ctok, cfg, err := r.componentToken(ctx, c)
	if err != nil {
		return err
	}
	var fetched time.Time
	gate := withLimit(c, r.leaseGate(&fetched))
	begin := time.Now()
	var at attempts
	tok, err := r.clientFor(cfg).QueryAuth(at.observe(ctx), cfg.APIBase, ctok.AccessToken, cfg.AppID, ac.Code, gate)
	r.obs.UpstreamCall(c.name, time.Since(begin), err)
	r.auditCall(ctx, c.name, contract.Key(c.name, appid), cfg.Kind, contract.ReasonCallback, at, contract.Fingerprint(tok.AccessToken))
	if err != nil {
		return err
	}
	if tok.AuthorizerAppID != appid {
		return fmt.Errorf("api_query_auth answered for authorizer %s, the push named %s", tok.AuthorizerAppID, appid)
	}
	if err := r.storeRefreshToken(ctx, c, appid, tok.RefreshToken, "authorized", 0); err != nil {
		// The code is kept: it is redeemed again (codes stay valid for
		// about an hour).
		return fmt.Errorf("storing the refresh token: %w", err)
	}
	au := c.ensure(r, appid)
	au.run.Lock()
	au.mu.Lock()
	au.removed, au.needsReauth, au.pendingRefresh = false, false, ""
	au.mu.Unlock()
	rec, rev, err := r.readAuthorizerToken(ctx, au.key)
	if err == nil && rec != nil && rec.FetchedAt.After(fetched) {
		// A refresh stored a token fetched after this redemption's
		// (updateauthorized of a known authorizer): it is the newest.
		au.adopt(rec, rev)
	} else if err == nil {
		au.adopt(rec, rev)
		nrec := contract.Record{App: c.name, Key: au.key, AppID: cfg.AppID, AuthorizerAppID: appid, Kind: KindWeChatComponent,
			AccessToken: tok.AccessToken, FetchedAt: fetched, ExpiresAt: fetched.Add(capLifetime(tok.ExpiresIn)), Source: contract.SourceManual}
		err = r.storeAuthorizerToken(ctx, au, nrec, rev, contract.SourceManual, start)
	}
	au.run.Unlock()
	// The refresh token is stored: the code has served.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	if derr := r.secrets.kv.Delete(dctx, key, jetstream.LastRevision(crev)); derr == nil {
		c.dropCode(appid)
	}
	cancel()
	r.log.Info("authorization code redeemed", "app", c.name, "authorizer_appid", appid, "key", au.key,
		"refresh_token", sealedFingerprint(tok.RefreshToken), "duration", time.Since(start).Round(time.Millisecond))
	r.Tick()
	return err
}

// authorizerByKey returns the authorizer stored under key
// (<component>.<authorizer_appid>), if any.
func (r *Refresher) authorizerByKey(key string) *authorizer {
	comp, id, ok := strings.Cut(key, ".")
	if !ok || strings.Contains(id, ".") {
		return nil
	}
	c := r.componentOf(comp)
	if c == nil {
		return nil
	}
	return c.get(id)
}

// usable returns the record au holds and whether it can be handed out at
// now.
func (au *authorizer) usable(now time.Time) (*contract.Record, uint64, bool) {
	au.mu.Lock()
	defer au.mu.Unlock()
	return au.rec, au.rev, au.rec != nil && au.rec.ExpiresAt.After(now) && !au.removed
}

// handleAuthorizer answers a parsed token.refresh request for an
// authorizer's key, as for an app: the record held if it answers stale,
// otherwise after one refresh (serialised per authorizer: requests that
// waited find the new token at a newer revision). A token refused by a
// business API (stale = its revision) is replaced at most once per
// passive_min_interval.
func (r *Refresher) handleAuthorizer(q *refreshReq, au *authorizer, stale *uint64, source string) {
	label := au.comp.name // metrics: per component, never per authorizer
	if rec, rev, ok := au.usable(r.now()); ok && answers(rev, stale) {
		r.replyOK(q, label, reply(rec, rev))
		return
	}
	if !r.reqs.acquire() {
		r.replyOverloaded(q, label)
		return
	}
	go func() {
		defer r.reqs.release()
		defer r.recovered(q)
		r.reqs.at(stageSlow, q)
		if r.lease == nil || !r.lease.Held() {
			r.replyError(q, label, ErrNotLeader)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		defer cancel()
		done := make(chan error, 1)
		r.wg.Add(1)
		go func() {
			// The refresh runs to its end under refreshCtx, whoever waits.
			defer r.wg.Done()
			done <- r.refreshAuthorizerFor(withRequester(r.refreshCtx, requesterOf(nats.Header(q.Headers()))), au, source, stale)
		}()
		select {
		case <-ctx.Done():
			r.replyError(q, label, ctx.Err())
			return
		case err := <-done:
			if err != nil {
				r.replyError(q, label, err)
				return
			}
		}
		rec, rev, ok := au.usable(r.now())
		if !ok {
			r.replyError(q, label, &RequestError{Code: contract.CodeUnavailable, Message: "no valid token stored for " + au.key})
			return
		}
		r.replyOK(q, label, reply(rec, rev))
	}()
}

// takeForced reports whether a request may replace au's valid token now:
// the last forced replacement began at least minGap ago.
func (au *authorizer) takeForced(now time.Time, minGap time.Duration) bool {
	au.mu.Lock()
	defer au.mu.Unlock()
	if !au.lastForced.IsZero() && now.Sub(au.lastForced) < minGap {
		return false
	}
	au.lastForced = now
	return true
}
