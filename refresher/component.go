package refresher

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// A wechat-component app is an Open Platform third-party platform. Its
// component_access_token is an ordinary app token under <component>,
// refreshed by the ordinary machinery (refresh.go) except that the fetch
// (fetchComponentToken) takes the newest component_verify_ticket from
// the secrets bucket. WeChat pushes that ticket every 10 minutes to the
// callback (callback.go), which any replica answers; the authorizers'
// lifecycle is in component_auth.go.
//
// Upstream calls of a component, for the audit: fetchComponentToken
// (api_component_token, inside refresh), redeem (api_query_auth),
// refreshAuthorizer (api_authorizer_token), reconcile
// (api_get_authorizer_list) — each through r.clientFor(cfg) with
// r.leaseGate.

// ErrNoVerifyTicket is returned by a component token fetch while no
// component_verify_ticket is stored: WeChat pushes one every 10 minutes
// to the callback; the fetch is made as soon as one is stored.
var ErrNoVerifyTicket = errors.New("refresher: no component_verify_ticket stored yet; waiting for WeChat's next push")

// AlertVerifyTicket is the alert of a component whose verify ticket is
// missing, expired (61005) or invalid (61006): the current component
// token is served on, and the next push triggers a fetch.
const AlertVerifyTicket = "verify_ticket_invalid"

// AlertNeedsReauthorization is the alert of an authorizer whose refresh
// token WeChat refuses (61023): the merchant must authorize again. The
// stored refresh token is kept.
const AlertNeedsReauthorization = "authorizer_needs_reauthorization"

// AlertRefreshTokenNotStored is the alert of a rotated refresh token that
// could not be written to the secrets bucket; it is kept in memory and
// the write retried.
const AlertRefreshTokenNotStored = "refresh_token_not_stored"

// component is the refresher's state of one wechat-component app.
type component struct {
	name    string
	crypter *wxcrypt.Crypter
	// app is the component's configured app (its token, its config);
	// ticketTypes its authorizer_tickets. Both are fixed: Reload refuses
	// to change a component's authorizer_tickets.
	app         *app
	ticketTypes []string
	appid       string // the component appid (fixed, like the callback)

	mu    sync.Mutex
	auths map[string]*authorizer // by authorizer appid
	codes map[string]*pendingCode
	// ticketAt is the CreateTime of the newest verify ticket seen.
	ticketAt int64
	// lastReconcile is the report of the last reconciliation.
	lastReconcile *ReconcileReport
	// reconcileAt is when the leader reconciles next (zero: not
	// planned yet); reconciling while one runs.
	reconcileAt time.Time
	reconciling bool

	// lim paces every upstream call of the component
	// (max_calls_per_second; component_sched.go).
	lim *rate.Limiter
	// wake tells the planner about a moment scheduled into due.
	wake func(time.Time)
	// hmu guards due and jobs; it is a leaf lock.
	hmu  sync.Mutex
	due  dueHeap // authorizers and pending codes by when each is due
	jobs int     // of this component queued or running
}

// ReconcileEvery is how often the leader reconciles each component with
// api_get_authorizer_list (Refresher.Reconcile runs one on demand). The
// first is one period after the replica starts leading, so that a start
// makes no upstream call for valid stored tokens.
var ReconcileEvery = 6 * time.Hour

// initComponents builds the state of every wechat-component app.
func (r *Refresher) initComponents() error {
	r.comps = map[string]*component{}
	for _, ac := range r.cfg.Apps {
		if ac.Kind != KindWeChatComponent {
			continue
		}
		if _, err := r.addComponent(ac); err != nil {
			return err
		}
	}
	return nil
}

// addComponent builds the state of one component app.
func (r *Refresher) addComponent(ac AppConfig) (*component, error) {
	cr, err := wxcrypt.New(ac.cb.token, ac.cb.aesKey, ac.AppID)
	if err != nil {
		return nil, fmt.Errorf("refresher: app %s: callback: %w", ac.Name, err)
	}
	c := &component{name: ac.Name, crypter: cr, auths: map[string]*authorizer{}, codes: map[string]*pendingCode{},
		lim: limiterFor(ac.MaxCallsPerSecond), app: r.apps[ac.Name], ticketTypes: ac.AuthorizerTickets, appid: ac.AppID}
	c.wake = func(at time.Time) {
		if at.UnixNano() < r.timerAt.Load() {
			r.Tick()
		}
	}
	r.comps[ac.Name] = c
	return c, nil
}

// componentOf returns the component named name (nil if none).
func (r *Refresher) componentOf(name string) *component {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.comps[name]
}

// componentList returns the components.
func (r *Refresher) componentList() []*component {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*component, 0, len(r.comps))
	for _, c := range r.comps {
		out = append(out, c)
	}
	return out
}

// fetchComponentToken is fetchToken for a wechat-component: the newest
// verify ticket stored, then api_component_token.
func (r *Refresher) fetchComponentToken(ctx context.Context, c *wechat.Client, cfg AppConfig, gate wechat.Gate) (wechat.Token, error) {
	var vt verifyTicket
	_, err := r.secrets.get(ctx, verifyTicketKey(cfg.Name), &vt)
	if errors.Is(err, errNoSecret) || err == nil && vt.Ticket == "" {
		r.obs.Alert(cfg.Name, AlertVerifyTicket)
		r.log.Error("ALERT "+AlertVerifyTicket+": no component_verify_ticket is stored; check the callback URL (授权事件接收URL) on the Open Platform console; the token is fetched as soon as WeChat pushes one",
			"app", cfg.Name, "alert", AlertVerifyTicket)
		return wechat.Token{}, ErrNoVerifyTicket
	}
	if err != nil {
		return wechat.Token{}, err
	}
	if comp := r.componentOf(cfg.Name); comp != nil {
		gate = withLimit(comp, gate)
	}
	return c.ComponentToken(ctx, cfg.APIBase, cfg.AppID, cfg.Secret(), vt.Ticket, gate)
}

// ticketError reports whether err says the verify ticket is missing,
// expired or invalid: nothing helps but the next push.
func ticketError(err error) bool {
	return errors.Is(err, ErrNoVerifyTicket) ||
		errors.Is(err, &wechat.Error{Code: wechat.CodeTicketExpired}) || errors.Is(err, &wechat.Error{Code: wechat.CodeTicketInvalid})
}

// storeVerifyTicket stores a pushed verify ticket, sealed and
// revision-checked, unless the stored one was created no earlier (a
// replay or a late delivery). It returns whether it wrote; nil error
// means the newest ticket is stored (WeChat may be told success).
func (r *Refresher) storeVerifyTicket(ctx context.Context, c *component, p *wxcrypt.ComponentPush) (bool, error) {
	key := verifyTicketKey(c.name)
	for range 5 {
		var cur verifyTicket
		rev, err := r.secrets.get(ctx, key, &cur)
		switch {
		case errors.Is(err, errNoSecret):
		case err != nil && rev == 0:
			return false, err
		case err != nil:
			// Stored but not openable (a key rotation gone wrong?): a
			// fresh ticket replaces it; history keeps the old value.
			r.log.Warn("the stored verify ticket does not open; replacing it with the pushed one", "app", c.name, "revision", rev, "err", err)
		case cur.CreateTime >= p.CreateTime:
			return false, nil
		}
		_, err = r.secrets.put(ctx, key, verifyTicket{ComponentAppID: p.AppID, Ticket: p.ComponentVerifyTicket,
			CreateTime: p.CreateTime, ReceivedAt: r.now().UTC(), Replica: r.id}, rev)
		if conflict(err) {
			continue
		}
		if err != nil {
			return false, err
		}
		return true, nil
	}
	return false, fmt.Errorf("secrets %s: too many revision conflicts", key)
}

// ticketArrived is called on every replica when a new verify ticket is
// stored: a component waiting for one (its last fetch failed for the
// ticket) is fetched at once.
func (r *Refresher) ticketArrived(c *component, createTime int64) {
	c.mu.Lock()
	newer := createTime > c.ticketAt
	if newer {
		c.ticketAt = createTime
	}
	c.mu.Unlock()
	r.mu.Lock()
	a := r.apps[c.name]
	r.mu.Unlock()
	if a == nil || !newer {
		return
	}
	a.mu.Lock()
	if a.lastErr != nil && ticketError(a.lastErr) {
		a.retryAt, a.failures = time.Time{}, 0
		a.lastErr = nil
	}
	a.mu.Unlock()
	r.Tick()
}

// followSecrets follows the secrets bucket on every replica: new verify
// tickets, authorization codes and authorizer records pushed to any
// replica reach the leader here.
func (r *Refresher) followSecrets(ctx context.Context) {
	if r.secrets == nil {
		return
	}
	followKV(ctx, r.nc, r.secrets.kv, "", func(e jetstream.KeyValueEntry) {
		comp, rest, _ := strings.Cut(e.Key(), ".")
		c := r.componentOf(comp)
		if c == nil {
			return
		}
		r.secretChanged(c, rest, e)
	})
}

// secretChanged applies one entry of the secrets bucket under component
// c (rest is the key after "<component>.").
func (r *Refresher) secretChanged(c *component, rest string, e jetstream.KeyValueEntry) {
	put := e.Operation() == jetstream.KeyValuePut
	what, id, _ := strings.Cut(rest, ".")
	switch what {
	case secretVerifyTicket:
		var vt verifyTicket
		if put && r.secrets.open(e.Key(), e.Value(), &vt) == nil {
			r.ticketArrived(c, vt.CreateTime)
		}
	case secretCode:
		if !put {
			c.dropCode(id)
			return
		}
		c.addCode(id)
		r.Tick()
	case secretAuthorizer:
		var s authorizerSecret
		if !put || r.secrets.open(e.Key(), e.Value(), &s) != nil {
			return
		}
		r.authorizerSecretChanged(c, id, &s)
	}
}

// loadComponents reads, for every component, the authorizers the
// secrets bucket holds, their stored token records and the pending
// authorization codes, so that a start or a failover makes no upstream
// call for an authorizer whose stored token is valid.
func (r *Refresher) loadComponents(ctx context.Context) error {
	for _, c := range r.componentList() {
		err := r.secrets.each(ctx, c.name+".>", func(key string, rev uint64, sealed []byte) {
			what, id, _ := strings.Cut(strings.TrimPrefix(key, c.name+"."), ".")
			switch what {
			case secretVerifyTicket:
				var vt verifyTicket
				if r.secrets.open(key, sealed, &vt) == nil {
					c.mu.Lock()
					c.ticketAt = max(c.ticketAt, vt.CreateTime)
					c.mu.Unlock()
				}
			case secretCode:
				c.addCode(id)
			case secretAuthorizer:
				var s authorizerSecret
				if err := r.secrets.open(key, sealed, &s); err != nil {
					r.log.Error("an authorizer's secrets record does not open; it is kept as it is", "app", c.name, "key", key, "err", err)
					return
				}
				if s.State == authorizerAuthorized {
					c.ensure(r, id)
				}
			}
		})
		if err != nil {
			return err
		}
		// The authorizers' token and ticket records, with one ordered
		// consumer.
		filter := c.name + ".*"
		if len(c.ticketTypes) > 0 {
			filter = c.name + ".>"
		}
		err = r.eachToken(ctx, filter, func(e jetstream.KeyValueEntry) {
			_, rest, _ := strings.Cut(e.Key(), ".")
			id, typ, isTicket := strings.Cut(rest, ".")
			au := c.get(id)
			switch {
			case au == nil:
			case !isTicket:
				au.adopt(r.parseRecord(e.Key(), e.Revision(), e.Value()), e.Revision())
			case au.ticket(typ) != nil:
				au.ticket(typ).adopt(r.parseTicket(e.Key(), e.Revision(), e.Value()), e.Revision())
			}
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// eachToken calls fn with the last value of every key of the tokens
// bucket matching filter.
func (r *Refresher) eachToken(ctx context.Context, filter string, fn func(jetstream.KeyValueEntry)) error {
	return eachEntry(ctx, r.kv, filter, 60*time.Second, fn)
}

// planComponents starts the due refreshes of every component's
// authorizers and the redemption of pending codes, once the component
// holds a valid token, and returns the earliest future moment (zero if
// none). It takes from each component's due heap only the items due now,
// and no more than the component's free job places
// (component_sched.go): its cost does not grow with the number of
// authorizers.
func (r *Refresher) planComponents(now time.Time) time.Time {
	var next time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	limit := r.componentJobs()
	for _, c := range r.componentList() {
		r.mu.Lock()
		a := r.apps[c.name]
		r.mu.Unlock()
		if a == nil {
			continue
		}
		if _, _, ok := a.usable(now); !ok {
			continue // storing the component token wakes the planner
		}
		earliest(r.planReconcile(c, now))
		c.hmu.Lock()
		free := limit - c.jobs
		c.hmu.Unlock()
		for free > 0 {
			due := c.popDue(now, free)
			if len(due) == 0 {
				break
			}
			for _, s := range due {
				if r.planSlot(c, s, now) {
					free--
				}
			}
		}
		if free > 0 {
			earliest(c.nextDue())
		}
		// With no free place, a finishing job wakes the planner (jobDone).
	}
	return next
}

// planSlot checks one popped item against its real state: due now, it is
// started (true); due later, it goes back into the heap at its moment;
// running or removed, it stays out (the end of the run puts it back).
func (r *Refresher) planSlot(c *component, s *slot, now time.Time) bool {
	if au := s.au; au != nil {
		au.mu.Lock()
		if au.running || au.removed {
			au.mu.Unlock()
			return false
		}
		if due := au.dueMoment(); due.After(now) {
			c.schedule(s, due)
			au.mu.Unlock()
			return false
		}
		au.mu.Unlock()
		return r.startAuthorizer(au)
	}
	pc := s.pc
	pc.mu.Lock()
	if pc.running || pc.dropped {
		pc.mu.Unlock()
		return false
	}
	if due := pc.next(); due.After(now) {
		c.schedule(s, due)
		pc.mu.Unlock()
		return false
	}
	pc.mu.Unlock()
	return r.startRedeem(c, pc)
}

// sealedFingerprint is what logs may show of a secret: contract's
// fingerprint.
func sealedFingerprint(s string) string { return contract.Fingerprint(s) }

// planReconcile starts the periodic reconciliation of c when it is due
// and returns when it is due next.
func (r *Refresher) planReconcile(c *component, now time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reconcileAt.IsZero() {
		c.reconcileAt = now.Add(ReconcileEvery)
	}
	if c.reconciling || c.reconcileAt.After(now) {
		return c.reconcileAt
	}
	c.reconciling = true
	c.reconcileAt = now.Add(ReconcileEvery)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		ctx, cancel := context.WithTimeout(r.refreshCtx, 10*time.Minute)
		defer cancel()
		if _, err := r.Reconcile(ctx, c.name); err != nil && !errors.Is(err, ErrNotLeader) {
			r.log.Error("periodic reconciliation failed; tried again next period", "app", c.name, "err", err)
		}
		c.mu.Lock()
		c.reconciling = false
		c.mu.Unlock()
	}()
	return c.reconcileAt
}
