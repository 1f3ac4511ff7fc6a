package refresher

import (
	"context"
	"errors"
	"fmt"
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
	signSvc micro.Service // token.sign, on every replica (sign.go)
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

	proxyClients          // upstream clients per proxy (upstream.go)
	audit        *auditor // appends the audit trail (audit.go); nil: disabled
	corpStates            // WeCom corps: corp ticket fetches, hourly counts (corp.go)

	guard recordGuard // invalid records already reported (validate.go)
	bk    *buckets    // the buckets behind kv, stateKV and the lease (buckets.go)

	secrets *secretStore          // the secrets bucket, with a component only (secrets.go)
	comps   map[string]*component // wechat-component apps by name (component.go)
	admin   adminState            // operator requests, the leader with a component (admin.go)
}

// shutdownGrace is how long Run waits, after its ctx is done, for
// refreshes in flight to store what they fetched.
const shutdownGrace = 15 * time.Second

// New returns a Refresher for cfg (defaulted, validated and with its
// secrets read, as LoadConfig returns it) that talks to NATS over nc.
// Options: WithLogger, WithClock, WithUpstream, WithReplicaID,
// WithObserver, WithConcurrency. New does no I/O — it reads no file and
// no environment variable (an app whose secret was not read is an error:
// see Config.ResolveSecrets); Run provisions the buckets.
func New(cfg *Config, nc *nats.Conn, opts ...Option) (*Refresher, error) {
	if cfg == nil || nc == nil {
		return nil, errors.New("refresher: New needs a config and a NATS connection")
	}
	if cfg.Mode == ModeFollow {
		return nil, errors.New("refresher: mode follow makes no upstream call: use NewFollower")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.checkResolved(); err != nil {
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
		// The end of a NUID: its start is the same for every NUID of a
		// process, so replicas of one process would share it.
		inbox := nats.NewInbox()
		r.id = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), inbox[len(inbox)-8:])
	}
	for _, ac := range cfg.Apps {
		a := &app{name: ac.Name, cfg: ac, policy: &r.policy}
		a.syncTickets()
		r.apps[ac.Name] = a
		r.order = append(r.order, ac.Name)
	}
	sort.Strings(r.order)
	if err := r.initComponents(); err != nil {
		return nil, err
	}
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
	r.startAudit(ctx)
	if err := r.provisionSecrets(ctx); err != nil {
		return err
	}
	lease := newLease(r.nc, r.js, leaseKV, r.id, r.cfg.LeaseTTL, r.log, r.now, r.leadershipChanged)
	lease.prime(ctx) // the wait for the lease runs during the load
	if err := r.loadAll(ctx); err != nil {
		return err
	}
	if err := r.loadStates(ctx); err != nil {
		return fmt.Errorf("refresher: load app states: %w", err)
	}
	if err := r.loadComponents(ctx); err != nil {
		return fmt.Errorf("refresher: load components: %w", err)
	}

	r.refreshCtx, r.cancelRefresh = context.WithCancel(context.WithoutCancel(ctx))
	defer r.cancelRefresh()

	r.lease = lease
	leaseCtx, stopLease := context.WithCancel(ctx)
	defer stopLease()
	var bg sync.WaitGroup
	bg.Add(4)
	go func() { defer bg.Done(); r.lease.run(leaseCtx) }()
	go func() { defer bg.Done(); r.follow(leaseCtx) }()
	go func() { defer bg.Done(); r.watchBuckets(leaseCtx) }()
	go func() { defer bg.Done(); r.followSecrets(leaseCtx) }()

	c := cron.New(cron.WithParser(CronParser), cron.WithChain(cron.SkipIfStillRunning(cron.DiscardLogger)))
	if _, err := c.AddFunc(r.cfg.Schedule, r.Tick); err != nil {
		return fmt.Errorf("refresher: schedule: %w", err)
	}
	c.Start()
	if err := r.startSign(); err != nil {
		r.log.Error("cannot serve token.sign", "err", err)
	}
	r.readyOnce.Do(func() { close(r.ready) })
	r.log.Info("refresher running", "replica", r.id, "apps", len(r.apps), "bucket", r.cfg.Bucket, "schedule", r.cfg.Schedule)

	r.loop(ctx)

	<-c.Stop().Done()
	r.stopService()
	r.stopAdmin()
	r.stopSign()
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
	r.audit.stop(3 * time.Second)
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
		if a == nil {
			r.followTicket(e)     // <app>.<ticket>, for token.sign
			r.followAuthorizer(e) // <component>.<authorizer_appid> (component_auth.go)
			return
		}
		if e.Operation() != jetstream.KeyValuePut {
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
		r.stopAdmin()
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
	if err := r.loadComponents(ctx); err != nil {
		r.log.Warn("reloading components on leadership failed", "err", err)
	}
	cancel()
	// Operator requests once the components are loaded.
	if err := r.startAdmin(); err != nil {
		r.log.Error("cannot serve token.admin (tokenctl authorizers)", "err", err)
	}
	r.Tick()
}

// Leader reports whether this replica holds the lease.
func (r *Refresher) Leader() bool { return r.lease != nil && r.lease.Held() }
