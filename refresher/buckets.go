package refresher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
)

// A running refresher re-provisions its buckets (tokens, lease, state)
// when one is lost — deleted by an operator or a tool, or gone with a
// cluster's store — and resumes within seconds, without a restart.
//
// Every user of a bucket (the refresh path, the follow loops, the lease,
// the state saver, /readyz) goes through a bucketKV, a jetstream.KeyValue
// whose handle is swapped atomically. A loss is noticed in two ways: an
// operation fails the way operations on a missing stream fail (no
// responders, no response from the stream, stream or bucket not found),
// and the watchdog (watchBuckets) asks each bucket's stream for its
// identity (its creation time) every few seconds. Either way the bucket
// is checked once for all concurrent users, re-created with
// natsconf.EnsureBucket and the same config as at startup, and the
// operation that failed is retried once on the new bucket: a write whose
// bucket vanished is stored, not counted as a failed refresh. A bucket
// that another replica re-created is found by its new creation time and
// followed the same way. Watches of the old bucket are rebuilt from the
// start (the new bucket's revisions start over), and each app's view of
// the token bucket is dropped, so that revision checks run against the
// new bucket.
//
// The lease bucket needs one more rule, because its loss also loses the
// fence: the replica that held the lease keeps trusting it for up to
// 3/4 lease_ttl after its last renewal, which happened before the loss.
// So after a replica learns that the lease bucket was lost or replaced,
// it takes no lease for lease_ttl (on its own monotonic clock), and a
// lease it takes in a bucket it has not vetted (one created after the
// last identity it knows) is given back at once. The old holder's trust
// has run out before anyone else takes the lease.

// errLeaseHold is returned by Create on the lease bucket while this
// replica waits out the lease of a lost lease bucket.
var errLeaseHold = errors.New("refresher: the lease bucket was lost and re-provisioned; no lease is taken before lease_ttl has passed")

// errLeaseBucketReplaced is returned by Create on the lease bucket when
// the lease landed in a bucket this replica has not vetted; the lease was
// given back.
var errLeaseBucketReplaced = errors.New("refresher: the lease bucket was replaced meanwhile; lease given back")

// recoverTimeout bounds one check of a bucket, re-provisioning included.
const recoverTimeout = 10 * time.Second

// lostSettle is how long check waits after finding a bucket's stream gone
// before it creates it again. nats-server answers "stream not found" as
// soon as a stream being deleted leaves its account, before its files are
// moved away; a stream of the same name created in that moment can have
// its files removed with the old one's (seen: "meta.inf.tmp: no such file
// or directory", then writes that time out).
const lostSettle = 500 * time.Millisecond

// bucketGen is one incarnation of a bucket as this replica knows it.
type bucketGen struct {
	kv      jetstream.KeyValue
	created time.Time // the stream's creation time: which bucket this is
	n       uint64    // 1 for the bucket found at startup, +1 per replacement
	// gone is closed when a newer incarnation replaces this one.
	gone chan struct{}
	// holdUntil (lease bucket): no Create before this (monotonic).
	holdUntil time.Time
}

// bucketKV is a jetstream.KeyValue that outlives the loss of its bucket:
// see the comment at the top of this file. It is safe for concurrent use.
type bucketKV struct {
	js  jetstream.JetStream
	cfg natsconf.BucketConfig
	log *slog.Logger
	// holdCreates (lease bucket only): how long Create is refused after a
	// replacement; non-zero also makes Create vet the bucket it landed in.
	holdCreates time.Duration
	// onReplaced, if set, is called after a replacement, before the old
	// incarnation's gone is closed. It must not use the bucket.
	onReplaced func()

	mu  sync.Mutex // serialises check
	cur atomic.Pointer[bucketGen]
}

// newBucketKV provisions the bucket cfg describes and returns it.
func newBucketKV(ctx context.Context, js jetstream.JetStream, cfg natsconf.BucketConfig, log *slog.Logger) (*bucketKV, error) {
	kv, err := natsconf.EnsureBucket(ctx, js, cfg)
	if err != nil {
		return nil, err
	}
	created, err := streamCreated(ctx, kv)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", cfg.Name, err)
	}
	b := &bucketKV{js: js, cfg: cfg, log: log}
	b.cur.Store(&bucketGen{kv: kv, created: created, n: 1, gone: make(chan struct{})})
	return b, nil
}

// streamCreated returns the creation time of kv's stream.
func streamCreated(ctx context.Context, kv jetstream.KeyValue) (time.Time, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return time.Time{}, err
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
		return bs.StreamInfo().Created, nil
	}
	return time.Time{}, nil
}

// generation returns the incarnation in use and a channel closed when it
// is replaced (followKV rebuilds its watch then).
func (b *bucketKV) generation() (uint64, <-chan struct{}) {
	g := b.cur.Load()
	return g.n, g.gone
}

// mayBeLost reports whether err is how an operation on a bucket whose
// stream is gone fails. It proves nothing (a cluster electing a stream
// leader answers some of these too): check asks the stream.
func mayBeLost(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		isLost(err)
}

// isLost reports whether err says the stream does not exist.
func isLost(err error) bool {
	return errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound) ||
		errors.Is(err, nats.ErrStreamNotFound)
}

// recheck checks the incarnation in use now; see check.
func (b *bucketKV) recheck(ctx context.Context) (bool, error) { return b.check(ctx, b.cur.Load()) }

// check asks the bucket's stream whether seen is still the bucket: if the
// stream is gone it re-provisions the bucket, if another replica created
// it anew it follows the new one. It reports whether the bucket in use
// now is another than seen. Concurrent callers share one check.
func (b *bucketKV) check(ctx context.Context, seen *bucketGen) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	g := b.cur.Load()
	if g != seen {
		return true, nil
	}
	// The caller's ctx may be short or ending: the check runs to its end.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recoverTimeout)
	defer cancel()
	created, err := streamCreated(ctx, g.kv)
	lost := false
	switch {
	case err == nil && created.Equal(g.created):
		return false, nil
	case err == nil:
		// Created anew by someone else (another replica, an operator).
	case isLost(err):
		lost = true
	default:
		return false, err
	}
	if lost {
		// Let the deletion finish, then look again.
		t := time.NewTimer(lostSettle)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		case <-t.C:
		}
		switch created, err = streamCreated(ctx, g.kv); {
		case err == nil && created.Equal(g.created):
			return false, nil // it was not gone after all
		case err == nil:
			lost = false // someone created it meanwhile
		case !isLost(err):
			return false, err
		}
	}
	kv, err := natsconf.EnsureBucket(ctx, b.js, b.cfg)
	if err != nil {
		b.log.Warn("re-provisioning a lost bucket failed; trying again", "bucket", b.cfg.Name, "err", err)
		return false, fmt.Errorf("re-provisioning: %w", err)
	}
	if created, err = streamCreated(ctx, kv); err != nil {
		return false, fmt.Errorf("re-provisioning: %w", err)
	}
	ng := &bucketGen{kv: kv, created: created, n: g.n + 1, gone: make(chan struct{})}
	attrs := []any{"alert", AlertBucketLost, "bucket", b.cfg.Name, "generation", ng.n}
	if b.holdCreates > 0 {
		ng.holdUntil = time.Now().Add(b.holdCreates)
		attrs = append(attrs, "no_lease_for", b.holdCreates)
	}
	b.cur.Store(ng)
	if lost {
		b.log.Warn("ALERT bucket_lost: the bucket was gone; re-provisioned it", attrs...)
	} else {
		b.log.Warn("ALERT bucket_lost: the bucket was created anew meanwhile; following the new one", attrs...)
	}
	if b.onReplaced != nil {
		b.onReplaced()
	}
	close(g.gone)
	return true, nil
}

// do runs op on the bucket in use; if op fails the way operations on a
// lost bucket fail and check finds the bucket lost or replaced, op runs
// once more, on the bucket in use then.
func do[T any](ctx context.Context, b *bucketKV, op func(*bucketGen) (T, error)) (T, error) {
	g := b.cur.Load()
	v, err := op(g)
	if err == nil || !mayBeLost(err) {
		return v, err
	}
	changed, cerr := b.check(ctx, g)
	if cerr != nil {
		return v, fmt.Errorf("%w (bucket check: %v)", err, cerr)
	}
	if !changed || ctx.Err() != nil {
		return v, err
	}
	return op(b.cur.Load())
}

// Get is jetstream.KeyValue.Get on the bucket in use.
func (b *bucketKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	return do(ctx, b, func(g *bucketGen) (jetstream.KeyValueEntry, error) { return g.kv.Get(ctx, key) })
}

// GetRevision is jetstream.KeyValue.GetRevision on the bucket in use.
func (b *bucketKV) GetRevision(ctx context.Context, key string, revision uint64) (jetstream.KeyValueEntry, error) {
	return do(ctx, b, func(g *bucketGen) (jetstream.KeyValueEntry, error) { return g.kv.GetRevision(ctx, key, revision) })
}

// Put is jetstream.KeyValue.Put on the bucket in use.
func (b *bucketKV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	return do(ctx, b, func(g *bucketGen) (uint64, error) { return g.kv.Put(ctx, key, value) })
}

// PutString is jetstream.KeyValue.PutString on the bucket in use.
func (b *bucketKV) PutString(ctx context.Context, key string, value string) (uint64, error) {
	return b.Put(ctx, key, []byte(value))
}

// Create is jetstream.KeyValue.Create on the bucket in use. On the lease
// bucket it is refused while the bucket's hold runs, and a key created in
// a bucket other than the one known is given back (errLeaseBucketReplaced).
func (b *bucketKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	return do(ctx, b, func(g *bucketGen) (uint64, error) {
		if b.holdCreates > 0 && time.Now().Before(g.holdUntil) {
			return 0, errLeaseHold
		}
		rev, err := g.kv.Create(ctx, key, value, opts...)
		if err != nil || b.holdCreates == 0 {
			return rev, err
		}
		// Vet the bucket the key landed in: it must be the one known
		// (whose hold, if any, has run out).
		if created, serr := streamCreated(ctx, g.kv); serr == nil && created.Equal(g.created) {
			return rev, nil
		}
		gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = g.kv.Delete(gctx, key, jetstream.LastRevision(rev))
		cancel()
		_, _ = b.check(ctx, g)
		return 0, errLeaseBucketReplaced
	})
}

// Update is jetstream.KeyValue.Update on the bucket in use. After a
// replacement the revision is one of the old bucket: the retry fails
// with a revision mismatch, and the caller re-reads, as for any conflict.
func (b *bucketKV) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	return do(ctx, b, func(g *bucketGen) (uint64, error) { return g.kv.Update(ctx, key, value, revision) })
}

// Delete is jetstream.KeyValue.Delete on the bucket in use.
func (b *bucketKV) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	_, err := do(ctx, b, func(g *bucketGen) (struct{}, error) { return struct{}{}, g.kv.Delete(ctx, key, opts...) })
	return err
}

// Purge is jetstream.KeyValue.Purge on the bucket in use.
func (b *bucketKV) Purge(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	_, err := do(ctx, b, func(g *bucketGen) (struct{}, error) { return struct{}{}, g.kv.Purge(ctx, key, opts...) })
	return err
}

// Watch is jetstream.KeyValue.Watch on the bucket in use. The watcher
// stays on that bucket: rebuild it when generation's channel closes.
func (b *bucketKV) Watch(ctx context.Context, keys string, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	return do(ctx, b, func(g *bucketGen) (jetstream.KeyWatcher, error) { return g.kv.Watch(ctx, keys, opts...) })
}

// WatchAll is jetstream.KeyValue.WatchAll on the bucket in use (see Watch).
func (b *bucketKV) WatchAll(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	return do(ctx, b, func(g *bucketGen) (jetstream.KeyWatcher, error) { return g.kv.WatchAll(ctx, opts...) })
}

// WatchFiltered is jetstream.KeyValue.WatchFiltered on the bucket in use
// (see Watch). jetstream rewrites the keys it is given: each attempt gets
// its own copy.
func (b *bucketKV) WatchFiltered(ctx context.Context, keys []string, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	return do(ctx, b, func(g *bucketGen) (jetstream.KeyWatcher, error) {
		return g.kv.WatchFiltered(ctx, slices.Clone(keys), opts...)
	})
}

// Keys is jetstream.KeyValue.Keys on the bucket in use.
func (b *bucketKV) Keys(ctx context.Context, opts ...jetstream.WatchOpt) ([]string, error) {
	return do(ctx, b, func(g *bucketGen) ([]string, error) { return g.kv.Keys(ctx, opts...) })
}

// ListKeys is jetstream.KeyValue.ListKeys on the bucket in use.
func (b *bucketKV) ListKeys(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyLister, error) {
	return do(ctx, b, func(g *bucketGen) (jetstream.KeyLister, error) { return g.kv.ListKeys(ctx, opts...) })
}

// ListKeysFiltered is jetstream.KeyValue.ListKeysFiltered on the bucket
// in use.
func (b *bucketKV) ListKeysFiltered(ctx context.Context, filters ...string) (jetstream.KeyLister, error) {
	return do(ctx, b, func(g *bucketGen) (jetstream.KeyLister, error) { return g.kv.ListKeysFiltered(ctx, filters...) })
}

// History is jetstream.KeyValue.History on the bucket in use.
func (b *bucketKV) History(ctx context.Context, key string, opts ...jetstream.WatchOpt) ([]jetstream.KeyValueEntry, error) {
	return do(ctx, b, func(g *bucketGen) ([]jetstream.KeyValueEntry, error) { return g.kv.History(ctx, key, opts...) })
}

// Bucket returns the bucket's name.
func (b *bucketKV) Bucket() string { return b.cfg.Name }

// PurgeDeletes is jetstream.KeyValue.PurgeDeletes on the bucket in use.
func (b *bucketKV) PurgeDeletes(ctx context.Context, opts ...jetstream.KVPurgeOpt) error {
	_, err := do(ctx, b, func(g *bucketGen) (struct{}, error) { return struct{}{}, g.kv.PurgeDeletes(ctx, opts...) })
	return err
}

// Status is jetstream.KeyValue.Status on the bucket in use.
func (b *bucketKV) Status(ctx context.Context) (jetstream.KeyValueStatus, error) {
	return do(ctx, b, func(g *bucketGen) (jetstream.KeyValueStatus, error) { return g.kv.Status(ctx) })
}

var _ jetstream.KeyValue = (*bucketKV)(nil)

// buckets are the refresher's three buckets and what the watchdog
// learns about the lease.
type buckets struct {
	tokens, lease, state *bucketKV

	// stateLost is signalled when the state bucket was replaced: the
	// watchdog writes the counters again.
	stateLost chan struct{}
	leaseTTL  time.Duration // r.cfg.LeaseTTL at startup (Reload keeps it)

	mu         sync.Mutex
	leaseRev   uint64    // revision of the lease key last seen
	leaderSeen time.Time // when a live lease holder was last seen (monotonic)
}

// bucketConfigs are the configs of the token, lease and state buckets.
func (r *Refresher) bucketConfigs() (tokens, lease, state natsconf.BucketConfig) {
	tokens = natsconf.BucketConfig{
		Name: r.cfg.Bucket, Replicas: r.cfg.Replicas, History: 1,
		Description:  "tokenkeeper access tokens, one key per app",
		MaxConsumers: 1_000_000, // one per watching service; the server's default is 1000
	}
	lease = natsconf.BucketConfig{
		Name: contract.LeaseBucket(r.cfg.Bucket), Replicas: r.cfg.Replicas, History: 1,
		TTL:         r.cfg.LeaseTTL,
		Description: "tokenkeeper refresher leader lease",
	}
	state = natsconf.BucketConfig{
		Name: contract.StateBucket(r.cfg.Bucket), Replicas: r.cfg.Replicas, History: 1,
		Description: "tokenkeeper per-app state: upstream calls today, last error",
	}
	return tokens, lease, state
}

// provision provisions the three buckets, sets r.kv and r.stateKV, and
// returns the lease bucket.
func (r *Refresher) provision(ctx context.Context) (jetstream.KeyValue, error) {
	tc, lc, sc := r.bucketConfigs()
	bk := &buckets{stateLost: make(chan struct{}, 1), leaseTTL: r.cfg.LeaseTTL, leaderSeen: time.Now()}
	var err error
	if bk.tokens, err = newBucketKV(ctx, r.js, tc, r.log); err != nil {
		return nil, err
	}
	if bk.lease, err = newBucketKV(ctx, r.js, lc, r.log); err != nil {
		return nil, err
	}
	if bk.state, err = newBucketKV(ctx, r.js, sc, r.log); err != nil {
		return nil, err
	}
	bk.tokens.onReplaced = func() {
		r.obs.Alert("", AlertBucketLost)
		r.forgetRecords()
	}
	bk.lease.holdCreates = bk.leaseTTL
	bk.lease.onReplaced = func() { r.obs.Alert("", AlertBucketLost) }
	bk.state.onReplaced = func() {
		r.obs.Alert("", AlertBucketLost)
		select {
		case bk.stateLost <- struct{}{}:
		default:
		}
	}
	r.bk, r.kv, r.stateKV = bk, bk.tokens, bk.state
	return bk.lease, nil
}

// forgetRecords drops every app's view of the token bucket after the
// bucket was replaced: the revisions held belong to a bucket that is
// gone. The leader fetches what the new bucket lacks; every replica's
// follow loop reads the new bucket from its start.
func (r *Refresher) forgetRecords() {
	for _, a := range r.appList() {
		a.mu.Lock()
		a.rec, a.rev, a.due = nil, 0, time.Time{}
		a.mu.Unlock()
		for _, t := range a.ticketList() {
			t.mu.Lock()
			t.rec, t.rev, t.due = nil, 0, time.Time{}
			t.mu.Unlock()
		}
	}
	r.Tick()
}

// checkEvery is how often the watchdog looks for a live lease holder;
// the buckets' identities are checked every other time.
func checkEvery(leaseTTL time.Duration) time.Duration {
	return min(max(leaseTTL/4, 250*time.Millisecond), 2500*time.Millisecond)
}

// noLeaderAfter is how long without a live lease holder makes /readyz
// fail: lease_ttl plus a margin for one failover.
func noLeaderAfter(leaseTTL time.Duration) time.Duration {
	return leaseTTL + max(leaseTTL/2, time.Second)
}

// watchBuckets is the watchdog: it looks for a live lease holder, checks
// that each bucket is still the one in use (re-provisioning a lost one),
// and writes the app states again into a replaced state bucket.
func (r *Refresher) watchBuckets(ctx context.Context) {
	bk := r.bk
	t := time.NewTicker(checkEvery(bk.leaseTTL))
	defer t.Stop()
	for n := 0; ; n++ {
		r.probeLeader(ctx)
		if n%2 == 0 {
			bs := []*bucketKV{bk.tokens, bk.lease, bk.state}
			if r.secrets != nil {
				bs = append(bs, r.secrets.kv)
			}
			for _, b := range bs {
				if _, err := b.recheck(ctx); err != nil && ctx.Err() == nil {
					r.log.Debug("bucket check failed", "bucket", b.Bucket(), "err", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-bk.stateLost:
			r.saveAllStates(ctx)
		}
	}
}

// saveAllStates writes every app's state (the leader's counters) into a
// state bucket that was lost and re-provisioned.
func (r *Refresher) saveAllStates(ctx context.Context) {
	if !r.Leader() {
		return
	}
	for _, a := range r.appList() {
		r.saveState(ctx, a)
	}
}

// probeLeader reads the lease key: a holder that renews changes its
// revision at least every lease_ttl/4, so a new revision means a live
// holder. The read also notices a lost lease bucket.
func (r *Refresher) probeLeader(ctx context.Context) {
	bk := r.bk
	if r.Leader() {
		bk.mu.Lock()
		bk.leaderSeen = time.Now()
		bk.mu.Unlock()
		return
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	e, err := bk.lease.Get(ctx, contract.LeaseKey)
	if err != nil || e.Operation() != jetstream.KeyValuePut {
		return
	}
	bk.mu.Lock()
	if e.Revision() != bk.leaseRev {
		bk.leaseRev, bk.leaderSeen = e.Revision(), time.Now()
	}
	bk.mu.Unlock()
}

// leaderKnown reports whether a live lease holder was seen (this replica
// holding the lease counts) within noLeaderAfter, and how long ago.
func (r *Refresher) leaderKnown() (bool, time.Duration) {
	if r.Leader() {
		return true, 0
	}
	bk := r.bk
	bk.mu.Lock()
	since := time.Since(bk.leaderSeen)
	bk.mu.Unlock()
	return since <= noLeaderAfter(bk.leaseTTL), since
}

// checkRevision is called by read with what it found under name: a lower
// revision than the app holds, or no key where it held one, comes from a
// token bucket created anew (its revisions start over) — or from a
// replica answering a little behind, or an operator's delete. The
// bucket's identity tells: if it was replaced, the apps' views are
// dropped (forgetRecords) before read returns.
func (r *Refresher) checkRevision(ctx context.Context, name string, e jetstream.KeyValueEntry) {
	r.mu.Lock()
	a := r.apps[name]
	r.mu.Unlock()
	if a == nil || r.bk == nil {
		return
	}
	var rev uint64
	if e != nil {
		rev = e.Revision()
	}
	if _, held := a.current(); rev < held {
		if _, err := r.bk.tokens.recheck(ctx); err != nil {
			r.log.Debug("bucket check failed", "bucket", r.bk.tokens.Bucket(), "err", err)
		}
	}
}
