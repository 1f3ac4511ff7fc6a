// Package refresher keeps each configured app's access token fresh in a
// JetStream KV bucket: it fetches from the upstream (WeChat) before expiry,
// writes revision-checked records, publishes token.updated.<app> events,
// serves passive refresh requests on token.refresh.<app>, and elects one
// fetching leader among its replicas through a lease in KV.
//
// The wire contract is in docs/protocol.md; the guarantees and their
// limits in docs/guarantees.md.
package refresher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/robfig/cron/v3"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// Refresher owns every upstream fetch of the configured apps. Create it
// with New and run it with Run; it is safe for concurrent use.
type Refresher struct {
	cfg        *Config
	nc         *nats.Conn
	js         jetstream.JetStream
	kv         jetstream.KeyValue
	stateKV    jetstream.KeyValue
	client     *wechat.Client
	log        *slog.Logger
	now        func() time.Time
	id         string
	policy     Policy
	passiveMin atomic.Int64 // passive_min_interval (Reload changes it)
	obs        Observer

	mu      sync.Mutex
	apps    map[string]*app
	order   []string // app names, sorted, for status
	lease   *lease
	svc     micro.Service
	running bool
	closed  bool

	// refreshCtx carries the refreshes: it outlives Run's ctx by
	// shutdownGrace so that a token already fetched is still stored.
	refreshCtx    context.Context
	cancelRefresh context.CancelFunc
	wg            sync.WaitGroup
	wake          chan struct{}
	sem           chan struct{}
	qmu           sync.Mutex
	queue         []queued
	timerAt       atomic.Int64 // when the loop's timer fires next (unix ns)
	ready         chan struct{}
	readyOnce     sync.Once
	reqs          requestGate // token.refresh requests in progress (service.go)

	guard recordGuard // invalid records already reported (validate.go)
	bk    *buckets    // the buckets behind kv, stateKV and the lease (buckets.go)
}

// Option configures a Refresher.
type Option func(*Refresher)

// WithLogger sets the logger (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(r *Refresher) { r.log = l } }

// WithClock sets the wall clock used for fetched_at/expires_at and the
// schedule (default time.Now). Lease timing always uses the monotonic
// clock.
func WithClock(now func() time.Time) Option { return func(r *Refresher) { r.now = now } }

// WithUpstream sets the upstream client (default wechat.New()).
func WithUpstream(c *wechat.Client) Option { return func(r *Refresher) { r.client = c } }

// WithReplicaID names this replica in the lease (default host-pid-random).
func WithReplicaID(id string) Option { return func(r *Refresher) { r.id = id } }

// WithObserver sets the receiver of metrics events (default none).
func WithObserver(o Observer) Option { return func(r *Refresher) { r.obs = o } }

// WithConcurrency bounds how many apps are refreshed at once (default 16,
// or refresh.concurrency of the config).
func WithConcurrency(n int) Option {
	return func(r *Refresher) {
		if n > 0 {
			r.sem = make(chan struct{}, n)
		}
	}
}

// shutdownGrace is how long Run waits, after its ctx is done, for
// refreshes in flight to store what they fetched.
const shutdownGrace = 15 * time.Second

// New returns a Refresher for cfg (already defaulted and validated, as
// LoadConfig returns it) that talks to NATS over nc. Options: WithLogger,
// WithClock, WithUpstream, WithReplicaID, WithObserver, WithConcurrency.
// New does no I/O; Run provisions the buckets.
func New(cfg *Config, nc *nats.Conn, opts ...Option) (*Refresher, error) {
	if cfg == nil || nc == nil {
		return nil, errors.New("refresher: New needs a config and a NATS connection")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("refresher: jetstream: %w", err)
	}
	r := &Refresher{
		cfg:    cfg,
		nc:     nc,
		js:     js,
		log:    slog.Default(),
		now:    time.Now,
		policy: cfg.RefreshPolicy(),
		obs:    nopObserver{},
		apps:   map[string]*app{},
		wake:   make(chan struct{}, 1),
		sem:    make(chan struct{}, 16),
		ready:  make(chan struct{}),
	}
	r.passiveMin.Store(int64(cfg.MinPassiveInterval()))
	if n := cfg.Policy.Concurrency; n > 0 {
		r.sem = make(chan struct{}, n)
	}
	for _, o := range opts {
		o(r)
	}
	if r.client == nil {
		r.client = wechat.New()
	}
	if r.id == "" {
		host, _ := os.Hostname()
		r.id = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), nats.NewInbox()[len(nats.InboxPrefix):][:6])
	}
	for _, ac := range cfg.Apps {
		r.apps[ac.Name] = &app{name: ac.Name, cfg: ac, policy: &r.policy}
		r.order = append(r.order, ac.Name)
	}
	sort.Strings(r.order)
	return r, nil
}

// ID returns this replica's id.
func (r *Refresher) ID() string { return r.id }

// Ready is closed once Run has provisioned the buckets and loaded the
// stored records.
func (r *Refresher) Ready() <-chan struct{} { return r.ready }

// Run provisions the buckets, loads the stored records, and keeps the
// tokens fresh until ctx is done. Then it lets refreshes in flight store
// what they fetched (up to 15 s), releases the lease so that a follower
// takes over at once, and returns. Run may be called once.
func (r *Refresher) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.running || r.closed {
		r.mu.Unlock()
		return errors.New("refresher: Run called twice")
	}
	r.running = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
	}()

	// The buckets re-provision themselves when lost (buckets.go).
	leaseKV, err := r.provision(ctx)
	if err != nil {
		return err
	}
	if err := r.loadAll(ctx); err != nil {
		return err
	}
	if err := r.loadStates(ctx); err != nil {
		return fmt.Errorf("refresher: load app states: %w", err)
	}

	r.refreshCtx, r.cancelRefresh = context.WithCancel(context.WithoutCancel(ctx))
	defer r.cancelRefresh()

	r.lease = newLease(r.nc, r.js, leaseKV, r.id, r.cfg.LeaseTTL, r.log, r.now, r.leadershipChanged)
	leaseCtx, stopLease := context.WithCancel(ctx)
	defer stopLease()
	var bg sync.WaitGroup
	bg.Add(3)
	go func() { defer bg.Done(); r.lease.run(leaseCtx) }()
	go func() { defer bg.Done(); r.follow(leaseCtx) }()
	go func() { defer bg.Done(); r.watchBuckets(leaseCtx) }()

	c := cron.New(cron.WithParser(CronParser), cron.WithChain(cron.SkipIfStillRunning(cron.DiscardLogger)))
	if _, err := c.AddFunc(r.cfg.Schedule, r.Tick); err != nil {
		return fmt.Errorf("refresher: schedule: %w", err)
	}
	c.Start()
	r.readyOnce.Do(func() { close(r.ready) })
	r.log.Info("refresher running", "replica", r.id, "apps", len(r.apps), "bucket", r.cfg.Bucket, "schedule", r.cfg.Schedule)

	r.loop(ctx)

	<-c.Stop().Done()
	r.stopService()
	// Let refreshes in flight store what they fetched.
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(shutdownGrace):
		r.log.Warn("refreshes still running at shutdown; abandoning them")
		r.cancelRefresh()
		<-done
	}
	r.flushPending()
	stopLease()
	bg.Wait()
	relCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	r.lease.Release(relCtx)
	cancel()
	r.log.Info("refresher stopped", "replica", r.id)
	return nil
}

// appList returns the configured apps, in no order, for a loop that must
// not hold r.mu.
func (r *Refresher) appList() []*app {
	r.mu.Lock()
	defer r.mu.Unlock()
	apps := make([]*app, 0, len(r.apps))
	for _, a := range r.apps {
		apps = append(apps, a)
	}
	return apps
}

// flushPending makes one last attempt, at shutdown, to store every token
// fetched but not stored, so that a write failure followed by a stop does
// not throw a fetched token away.
func (r *Refresher) flushPending() {
	for _, a := range r.appList() {
		p := a.unstored(r.now())
		if p == nil || !r.lease.Held() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, rev := a.current()
		r.store(ctx, a, *p, rev, p.Source, time.Now())
		cancel()
	}
}

// loop starts the refreshes that are due whenever the earliest refresh
// moment arrives, the cron tick fires (Tick), or something changes.
func (r *Refresher) loop(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		next := r.plan()
		d := time.Hour
		if !next.IsZero() {
			d = max(next.Sub(r.now()), 5*time.Millisecond)
		}
		d = min(d, time.Hour)
		r.timerAt.Store(r.now().Add(d).UnixNano())
		t.Reset(d)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.wake:
		}
	}
}

// Tick is the cron job: it wakes the planner, which starts every refresh
// that is due. It is safe to call at any time.
func (r *Refresher) Tick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// plan starts a background refresh of every app that is due and returns
// the earliest future refresh moment (zero if none). A follower plans
// nothing.
func (r *Refresher) plan() time.Time {
	if r.lease == nil || !r.lease.Held() {
		return time.Time{}
	}
	now := r.now()
	var next time.Time
	for _, a := range r.appList() {
		due, busy := a.dueAt()
		if busy {
			continue
		}
		if !due.After(now) {
			source := contract.SourceScheduled
			if rec, _ := a.current(); rec == nil {
				source = contract.SourceStartup // first token of this app
			}
			r.startRefresh(a, source)
			continue
		}
		if next.IsZero() || due.Before(next) {
			next = due
		}
	}
	return next
}

// queued is a scheduled refresh waiting for a free slot.
type queued struct {
	a      *app
	f      *flight
	source string
}

// startRefresh queues one scheduled refresh of a; pump starts it when one
// of the WithConcurrency slots is free. No goroutine waits meanwhile.
func (r *Refresher) startRefresh(a *app, source string) {
	f, started := a.join()
	if !started {
		return
	}
	r.qmu.Lock()
	r.queue = append(r.queue, queued{a, f, source})
	r.qmu.Unlock()
	r.pump()
}

// pump starts queued refreshes while slots are free.
func (r *Refresher) pump() {
	for {
		select {
		case r.sem <- struct{}{}:
		default:
			return
		}
		r.qmu.Lock()
		if len(r.queue) == 0 {
			r.qmu.Unlock()
			<-r.sem
			return
		}
		q := r.queue[0]
		r.queue[0] = queued{}
		r.queue = r.queue[1:]
		r.qmu.Unlock()
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			var res flightResult
			if err := r.refreshCtx.Err(); err != nil {
				res = flightResult{err: err}
			} else {
				res = r.refresh(r.refreshCtx, q.a, q.source, refreshNeed{})
			}
			q.a.finish(q.f, res)
			<-r.sem
			r.pump()
			// Re-plan only if this app is now due before the loop's timer.
			if due, _ := q.a.dueAt(); due.UnixNano() < r.timerAt.Load() {
				r.Tick()
			}
		}()
	}
}

// refreshNeed says when a stored record makes a fetch unnecessary.
type refreshNeed struct {
	// stale: a record with a revision greater than this makes the
	// fetch unnecessary (passive requests).
	stale *uint64
	// force asks the upstream for a new token (stable_token force mode).
	force bool
}

// satisfiedBy reports whether the stored record (rec, rev) already
// satisfies the need, so that no fetch is made.
func (r *Refresher) satisfiedBy(a *app, rec *contract.Record, rev uint64, need refreshNeed, now time.Time) bool {
	if rec == nil || !rec.ExpiresAt.After(now) || !a.owns(rec) {
		return false
	}
	// A stale revision newer than the stored one names no token anyone
	// holds: it asks for a valid token, like an empty request.
	if need.stale != nil && *need.stale <= rev {
		return rev > *need.stale
	}
	return r.dueFor(a.name, rec).After(now)
}

// dueFor is the refresh moment of a stored record: a pure function of the
// record, so that every replica and every restart agrees on it.
func (r *Refresher) dueFor(name string, rec *contract.Record) time.Time {
	return r.policy.RefreshAt(rec.FetchedAt, rec.ExpiresAt, jitterDraw(name, rec.FetchedAt))
}

// jitterDraw is a deterministic draw in [0, 1) from the app name and the
// fetch time: apps spread out, and replicas and restarts agree.
func jitterDraw(name string, fetchedAt time.Time) float64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	var b [8]byte
	n := fetchedAt.UnixNano()
	for i := range b {
		b[i] = byte(n >> (8 * i))
	}
	h.Write(b[:])
	return float64(h.Sum64()>>11) / float64(1<<53)
}

// refresh makes sure a holds a token that satisfies need: it re-reads the
// key, fetches from upstream only if the stored record does not satisfy
// need, writes the result revision-checked, and publishes the event. It is
// called inside a flight (one at a time per app).
func (r *Refresher) refresh(ctx context.Context, a *app, source string, need refreshNeed) flightResult {
	start := time.Now()
	name := a.name
	// Read what is stored now: another replica may have written.
	rec, rev, err := r.read(ctx, name)
	if err != nil {
		return r.failed(a, source, fmt.Errorf("read %s: %w", name, err), start)
	}
	a.adopt(rec, rev)
	now := r.now()
	// A token fetched earlier whose write failed is the newest one
	// upstream issued: store it, never fetch over it (the fetch would
	// invalidate it, and the fleet's token with it).
	if p := a.unstored(now); p != nil {
		return r.store(ctx, a, *p, rev, source, start)
	}
	if r.satisfiedBy(a, rec, rev, need, now) {
		return flightResult{rec: *rec, rev: rev}
	}
	if err := r.lease.Confirm(ctx); err != nil {
		return flightResult{rec: derefRec(rec), rev: rev, err: err}
	}
	if err := r.checkQuota(a, source); err != nil {
		return r.failed(a, source, err, start)
	}

	// Every attempt, retries included, is sent only inside the lease's
	// trust window and ends with it (Bound). fetched_at is when the
	// attempt that succeeded was sent: the token was issued after it, so
	// expires_at computed from it is never late, and when two fetches
	// race, the one sent later (the newest upstream) wins.
	var fetched time.Time
	gate := func(ctx context.Context, _ int) (context.Context, context.CancelFunc, error) {
		bctx, cancel, err := r.lease.Bound(ctx)
		if err != nil {
			return nil, nil, err
		}
		fetched = r.now().UTC()
		return bctx, cancel, nil
	}
	fetchStart := time.Now()
	cfg := a.config()
	tok, err := r.client.FetchGated(ctx, cfg.Kind, cfg.APIBase, cfg.credentials(), need.force, gate)
	r.obs.UpstreamCall(name, time.Since(fetchStart), err)
	if !fetched.IsZero() {
		a.countCall(r.now())
	}
	if err != nil {
		res := r.failed(a, source, err, start)
		r.saveLater(a)
		return res
	}
	// The state write is not on the reply's path: one saver per app
	// writes it, in order, after the flight's waiters have their answer.
	defer r.saveLater(a)
	if rec != nil && rec.AccessToken == tok.AccessToken && rec.ExpiresAt.After(now) {
		// stable_token in normal mode hands back the token we already
		// store: nothing to write, check again later.
		a.unchanged(fetched, fetched.Add(tok.ExpiresIn), r.policy)
		return flightResult{rec: *rec, rev: rev}
	}
	nrec := contract.Record{
		App: name, AppID: cfg.AppID, AccessToken: tok.AccessToken,
		FetchedAt: fetched, ExpiresAt: fetched.Add(capLifetime(tok.ExpiresIn)),
		Source: source,
	}
	return r.store(ctx, a, nrec, rev, source, start)
}

// store writes a fetched record over revision rev and publishes its event.
// A write that fails for any reason but a newer stored token or a lost
// lease keeps the record in memory (app.pending): the next attempt, paced
// like a transient failure, writes it instead of fetching again.
func (r *Refresher) store(ctx context.Context, a *app, nrec contract.Record, rev uint64, source string, start time.Time) flightResult {
	name := a.name
	nrev, err := r.write(ctx, a, nrec, rev)
	if err != nil {
		if errors.Is(err, ErrSuperseded) {
			a.dropPending()
			cur, crev := a.current()
			return flightResult{rec: derefRec(cur), rev: crev}
		}
		if errors.Is(err, ErrNotLeader) {
			// Fenced: the next leader fetches its own; ours is dropped.
			a.dropPending()
			return r.failed(a, source, err, start)
		}
		if nrec.ExpiresAt.After(r.now()) {
			first := a.keepPending(nrec)
			if first {
				r.log.Error("ALERT token_not_stored: a token fetched from upstream could not be written to the bucket; "+
					"it is kept in memory and only the write is retried (no new fetch while it is valid)",
					"app", name, "alert", AlertTokenNotStored, "token", contract.Fingerprint(nrec.AccessToken),
					"expires_at", nrec.ExpiresAt.Format(time.RFC3339), "err", err)
			}
			err = fmt.Errorf("%w: %w", ErrNotStored, err)
		} else {
			a.dropPending()
		}
		return r.failed(a, source, err, start)
	}
	a.stored(nrec, nrev)
	r.publish(nrec, nrev)
	r.obs.Refreshed(name, source, nrec.ExpiresAt)
	r.log.Info("token refreshed", "app", name, "source", source, "revision", nrev,
		"token", contract.Fingerprint(nrec.AccessToken), "expires_at", nrec.ExpiresAt.Format(time.RFC3339),
		"duration", time.Since(start).Round(time.Millisecond))
	return flightResult{rec: nrec, rev: nrev}
}

func derefRec(rec *contract.Record) contract.Record {
	if rec == nil {
		return contract.Record{}
	}
	return *rec
}

// failed records a failed refresh and schedules the next attempt.
func (r *Refresher) failed(a *app, source string, err error, start time.Time) flightResult {
	if errors.Is(err, ErrNotLeader) || errors.Is(err, context.Canceled) {
		if errors.Is(err, ErrNotLeader) {
			r.log.Info("refresh stopped: this replica no longer holds the lease; the next leader refreshes",
				"app", a.name, "source", source, "duration", time.Since(start).Round(time.Millisecond))
		}
		cur, rev := a.current()
		return flightResult{rec: derefRec(cur), rev: rev, err: err}
	}
	now := r.now()
	retry := a.failure(err, now)
	r.obs.RefreshFailed(a.name, source, err)
	attrs := []any{"app", a.name, "source", source, "err", err, "retry_in", retry.Sub(now).Round(time.Millisecond),
		"duration", time.Since(start).Round(time.Millisecond)}
	var we *wechat.Error
	if errors.As(err, &we) {
		attrs = append(attrs, "errcode", we.Code, "errmsg", we.Msg)
		if alert := alertFor(we.Code); alert != "" {
			attrs = append(attrs, "alert", alert)
		}
	}
	r.log.Error("token refresh failed; the stored token is kept", attrs...)
	if we != nil {
		if msg := alertMessage(we.Code); msg != "" {
			r.log.Error(msg, "app", a.name, "alert", alertFor(we.Code), "errcode", we.Code, "retry_in", retry.Sub(now).Round(time.Second))
		}
	}
	cur, rev := a.current()
	return flightResult{rec: derefRec(cur), rev: rev, err: err}
}

// AlertTokenNotStored is the alert of a token fetched from upstream that
// could not be written to the bucket.
const AlertTokenNotStored = "token_not_stored"

// alertFor names the operator action an upstream errcode asks for.
func alertFor(code int) string {
	switch code {
	case 40164:
		return "ip_not_whitelisted"
	case 40001, 40125:
		return "secret_wrong_or_rotated"
	case 89503:
		return "risk_control"
	case 45009:
		return "daily_quota_exhausted"
	case 40013:
		return "invalid_appid"
	}
	return ""
}

// alertMessage is the distinct log message of an alert-worthy errcode,
// saying what the operator has to do.
func alertMessage(code int) string {
	switch code {
	case 40164:
		return "ALERT ip_not_whitelisted: this server's IP is not on the app's IP allow list; add it in the WeChat console (retrying politely until then)"
	case 40001, 40125:
		return "ALERT secret_wrong_or_rotated: WeChat refuses the AppSecret; put the current secret in the config and send SIGHUP"
	case 89503:
		return "ALERT risk_control: WeChat's risk control holds calls from this IP until an administrator confirms it in the WeChat console"
	case 45009:
		return "ALERT daily_quota_exhausted: the day's token quota is used up; no fetch until midnight UTC+8 (or reset the quota in the console)"
	case 40013:
		return "ALERT invalid_appid: WeChat does not know this appid; fix apps[].appid"
	}
	return ""
}

// read returns the stored record of name and its revision (nil, 0 if none;
// nil and the revision if the stored record is invalid).
func (r *Refresher) read(ctx context.Context, name string) (*contract.Record, uint64, error) {
	e, err := r.kv.Get(ctx, name)
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, err
	}
	r.checkRevision(ctx, name, e)
	if err != nil {
		return nil, 0, nil
	}
	// An invalid record is treated as missing; its revision is kept so
	// that the replacement is written over it.
	return r.parseRecord(name, e.Revision(), e.Value()), e.Revision(), nil
}

// write stores rec over revision rev (0: create). On a revision conflict
// it re-reads: if the stored token was fetched later than rec, rec is
// dropped (ErrSuperseded: the upstream honours only the newest token);
// otherwise the write is retried over the revision just read. A replica
// that no longer holds the lease writes nothing (ErrNotLeader).
func (r *Refresher) write(ctx context.Context, a *app, rec contract.Record, rev uint64) (uint64, error) {
	if err := rec.Validate(rec.App, maxRecordLifetime); err != nil {
		return 0, fmt.Errorf("write %s: not storing a record that readers reject: %w", rec.App, err)
	}
	val, err := json.Marshal(rec)
	if err != nil {
		return 0, err
	}
	for attempt := 0; attempt < 5; attempt++ {
		if !r.lease.Held() {
			// Fenced: the lease may be someone else's by now.
			r.log.Warn("lease lost during the fetch; the fetched token is discarded", "app", rec.App, "token", contract.Fingerprint(rec.AccessToken))
			return 0, ErrNotLeader
		}
		var nrev uint64
		if rev == 0 {
			nrev, err = r.kv.Create(ctx, rec.App, val)
		} else {
			nrev, err = r.kv.Update(ctx, rec.App, val, rev)
		}
		if err == nil {
			return nrev, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return 0, fmt.Errorf("write %s: %w", rec.App, err)
		}
		r.obs.WriteConflict(rec.App)
		cur, crev, rerr := r.read(ctx, rec.App)
		if rerr != nil {
			return 0, fmt.Errorf("write %s: re-read after conflict: %w", rec.App, rerr)
		}
		a.adopt(cur, crev)
		if cur != nil && !cur.FetchedAt.Before(rec.FetchedAt) {
			r.log.Info("a newer token was stored first; dropping ours", "app", rec.App, "revision", crev)
			return 0, ErrSuperseded
		}
		rev = crev
	}
	return 0, fmt.Errorf("write %s: too many revision conflicts", rec.App)
}

// publish sends the token.updated event. It carries no token.
func (r *Refresher) publish(rec contract.Record, rev uint64) {
	ev, _ := json.Marshal(contract.Event{App: rec.App, Revision: rev, ExpiresAt: rec.ExpiresAt, FetchedAt: rec.FetchedAt, Source: rec.Source})
	if err := r.nc.Publish(contract.UpdatedSubject(rec.App), ev); err != nil {
		r.log.Warn("publish event failed", "app", rec.App, "err", err)
	}
}

// loadAll reads every configured app's stored record, so that a restart
// reuses still-valid tokens instead of fetching (and invalidating) them.
func (r *Refresher) loadAll(ctx context.Context) error {
	recs, err := r.snapshot(ctx)
	if err != nil {
		return fmt.Errorf("refresher: load stored tokens: %w", err)
	}
	now := r.now()
	r.mu.Lock()
	apps := make(map[string]*app, len(r.apps))
	for name, a := range r.apps {
		apps[name] = a
	}
	r.mu.Unlock()
	for name, a := range apps {
		s, ok := recs[name]
		if !ok {
			continue
		}
		a.adopt(s.rec, s.rev)
		if s.rec != nil {
			r.log.Info("stored token found", "app", name, "revision", s.rev,
				"valid", s.rec.ExpiresAt.After(now), "refresh_at", r.dueFor(name, s.rec).Format(time.RFC3339))
			r.obs.Refreshed(name, "", s.rec.ExpiresAt)
		}
	}
	return nil
}

type storedRec struct {
	rec *contract.Record
	rev uint64
}

// snapshot reads the latest value of every configured app's key with one
// ordered consumer (a fresh watcher delivers each key's last value, then a
// nil marker). An invalid record is returned as nil with its revision.
func (r *Refresher) snapshot(ctx context.Context) (map[string]storedRec, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	w, err := r.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	out := map[string]storedRec{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("watcher closed")
			}
			if e == nil {
				return out, nil
			}
			r.mu.Lock()
			configured := r.apps[e.Key()] != nil
			r.mu.Unlock()
			if !configured {
				continue
			}
			// An invalid record counts as missing (nil) at its revision.
			out[e.Key()] = storedRec{rec: r.parseRecord(e.Key(), e.Revision(), e.Value()), rev: e.Revision()}
		}
	}
}

// follow keeps every replica's view of the bucket warm, so that a
// follower that becomes leader does not fetch a token that is still
// valid. On gaining the lease the leader also re-reads everything
// (loadAll) in case this watcher stalled.
func (r *Refresher) follow(ctx context.Context) {
	followKV(ctx, r.nc, r.kv, "", func(e jetstream.KeyValueEntry) {
		r.mu.Lock()
		a := r.apps[e.Key()]
		r.mu.Unlock()
		if a == nil || e.Operation() != jetstream.KeyValuePut {
			return
		}
		rec := r.parseRecord(e.Key(), e.Revision(), e.Value())
		if rec == nil {
			// Invalid: never served; the leader replaces it at once.
			if a.adopt(nil, e.Revision()) {
				r.Tick()
			}
			return
		}
		if a.adopt(rec, e.Revision()) {
			r.obs.Refreshed(a.name, "", rec.ExpiresAt)
		}
	})
}

// leadershipChanged starts or stops the leader's work.
func (r *Refresher) leadershipChanged(leader bool) {
	r.obs.Leader(leader)
	if !leader {
		r.stopService()
		// A token fetched but not stored is no longer ours to write: the
		// next leader fetches its own.
		for _, a := range r.appList() {
			a.dropPending()
		}
		return
	}
	// Serve at once: a request is answered from the key itself whenever
	// the view held here is not newer than the requester's.
	if err := r.startService(); err != nil {
		r.log.Error("cannot serve token.refresh", "err", err)
	}
	// Re-read everything: the follower's watch may have stalled.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if err := r.loadAll(ctx); err != nil {
		r.log.Warn("reload on leadership failed; refreshes re-read each key", "err", err)
	}
	if err := r.loadStates(ctx); err != nil {
		r.log.Warn("reloading app states on leadership failed", "err", err)
	}
	cancel()
	r.Tick()
}

// Leader reports whether this replica holds the lease.
func (r *Refresher) Leader() bool { return r.lease != nil && r.lease.Held() }

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

// appDay is WeChat's day (China Standard Time, UTC+8) of t, as yyyymmdd:
// the daily quota resets at midnight in Beijing.
func appDay(t time.Time) int {
	t = t.In(cst)
	y, m, d := t.Date()
	return y*10000 + int(m)*100 + d
}

// cst is China Standard Time (no daylight saving), built without tzdata.
var cst = time.FixedZone("CST", 8*3600)

// nextQuotaReset returns the next midnight in China Standard Time.
func nextQuotaReset(t time.Time) time.Time {
	t = t.In(cst)
	y, m, d := t.Date()
	return time.Date(y, m, d+1, 0, 0, 0, 0, cst)
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
