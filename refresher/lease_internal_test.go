package refresher

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

func newTestLease(t *testing.T, url, id string, ttl time.Duration) *lease {
	t.Helper()
	nc, js := testutil.Connect(t, url)
	kv, err := natsconf.EnsureBucket(context.Background(), js, natsconf.BucketConfig{Name: "t_lease", History: 1, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return newLease(nc, js, kv, id, ttl, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Now, nil)
}

// Concurrent renewals by the holder must never make it conflict with
// itself (they are serialised).
func TestLeaseConcurrentRenewals(t *testing.T) {
	s := testutil.RunServer(t)
	l := newTestLease(t, s.ClientURL(), "a", 2*time.Second)
	if !l.tryAcquire(context.Background()) {
		t.Fatal("could not acquire a free lease")
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.renew(context.Background()); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("renew: %v", err)
	}
	if !l.Held() {
		t.Fatal("holder lost its own lease by renewing it")
	}
}

// A second candidate cannot take a held lease; it can once the holder
// releases it, and the old holder's renewal is then refused (fenced).
func TestLeaseExclusiveAndFenced(t *testing.T) {
	s := testutil.RunServer(t)
	a := newTestLease(t, s.ClientURL(), "a", 2*time.Second)
	b := newTestLease(t, s.ClientURL(), "b", 2*time.Second)
	ctx := context.Background()
	if !a.tryAcquire(ctx) {
		t.Fatal("a could not acquire")
	}
	if b.tryAcquire(ctx) {
		t.Fatal("b acquired a held lease")
	}
	// a's key ages out (no renewal): b takes over, a is fenced.
	testutil.WaitFor(t, 5*time.Second, func() bool { return b.tryAcquire(ctx) }, "b never acquired the expired lease")
	if a.Held() {
		t.Fatal("a still trusts a lease older than its trust window")
	}
	a.mu.Lock()
	a.renewed = time.Now() // pretend a's clock says it is still fine
	a.mu.Unlock()
	if err := a.renew(ctx); err != ErrNotLeader {
		t.Fatalf("old holder's renew = %v, want ErrNotLeader", err)
	}
	if a.Held() || !b.Held() {
		t.Fatal("fencing failed")
	}
	b.Release(ctx)
	if !a.tryAcquire(ctx) {
		t.Fatal("a could not take the released lease")
	}
}

// TestLeaseSafeWhenServerExpiresItEarly: the server ages the lease key out
// on its own wall clock; a clock step (or a stream leader whose clock is
// ahead) expires it early. Here the bucket's MaxAge is cut to a tenth of
// lease_ttl under three running candidates, so the key vanishes long
// before the holder stops trusting it. No contender may take it while the
// holder lives: at no sample do two candidates hold it, and the first
// holder keeps it throughout (its renewals write the key again).
func TestLeaseSafeWhenServerExpiresItEarly(t *testing.T) {
	s := testutil.RunServer(t)
	const ttl = 3 * time.Second
	ls := []*lease{
		newTestLease(t, s.ClientURL(), "a", ttl),
		newTestLease(t, s.ClientURL(), "b", ttl),
		newTestLease(t, s.ClientURL(), "c", ttl),
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, l := range ls {
		wg.Add(1)
		go func() { defer wg.Done(); l.run(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }()
	holder := func() (n int, id string) {
		for _, l := range ls {
			if l.Held() {
				n, id = n+1, l.id
			}
		}
		return n, id
	}
	var first string
	testutil.WaitFor(t, 5*time.Second, func() bool { n, id := holder(); first = id; return n == 1 }, "no holder")

	// The server's expiry now fires at ttl/10.
	_, js := testutil.Connect(t, s.ClientURL())
	st, err := js.Stream(ctx, "KV_t_lease")
	if err != nil {
		t.Fatal(err)
	}
	scfg := st.CachedInfo().Config
	scfg.MaxAge, scfg.Duplicates = ttl/10, ttl/10
	if _, err := js.UpdateStream(ctx, scfg); err != nil {
		t.Fatal(err)
	}
	// Count the markers the server leaves each time it ages the key out.
	w, err := ls[0].kv.Watch(ctx, contract.LeaseKey, jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	var expired atomic.Int64
	go func() {
		for e := range w.Updates() {
			if e != nil && e.Operation() == jetstream.KeyValuePurge {
				expired.Add(1)
			}
		}
	}()
	deadline := time.Now().Add(3 * ttl)
	for time.Now().Before(deadline) {
		n, id := holder()
		if n > 1 {
			t.Fatalf("%d candidates hold the lease at once", n)
		}
		if n == 1 && id != first {
			t.Fatalf("lease moved from %s to %s while %s was alive", first, id, first)
		}
		time.Sleep(5 * time.Millisecond) // the sampling rate of the check, not synchronisation
	}
	if expired.Load() == 0 {
		t.Fatal("the lease key never expired early: the fault was not injected")
	}
	if n, id := holder(); n != 1 || id != first {
		t.Fatalf("after %v of early expiry: %d holders (%s), want %s alone", 3*ttl, n, id, first)
	}
	t.Logf("the server aged the key out %d times; %s kept the lease", expired.Load(), first)
}

// TestLeaseRenewalReplyLost: a renewal whose write landed but whose reply
// was lost does not make the holder step down (into a gap of a whole
// lease_ttl before anyone else may claim): it reads the lease, finds its
// own write, and goes on.
func TestLeaseRenewalReplyLost(t *testing.T) {
	s := testutil.RunServer(t)
	l := newTestLease(t, s.ClientURL(), "a", 2*time.Second)
	var lost []bool
	l.changed = func(leader bool) { lost = append(lost, !leader) }
	ctx := context.Background()
	if !l.tryAcquire(ctx) {
		t.Fatal("could not acquire a free lease")
	}
	drop := true
	l.afterWrite = func() error {
		if drop {
			drop = false
			return errors.New("injected: the reply of a landed write was lost")
		}
		return nil
	}
	rev := l.rev
	if err := l.renew(ctx); err != nil {
		t.Fatalf("renew with its reply lost = %v, want nil (the write landed)", err)
	}
	if !l.Held() || l.rev != rev+1 {
		t.Fatalf("after a lost reply: held %v, revision %d, want held at %d", l.Held(), l.rev, rev+1)
	}
	if err := l.renew(ctx); err != nil || !l.Held() {
		t.Fatalf("next renewal = %v, held %v", err, l.Held())
	}
	if drop {
		t.Fatal("the fault was not injected")
	}
}

// TestLeaseReleaseAgedOutStillReleased: a contender that saw a release
// may claim at once even after the server aged the release marker out
// (its MaxAge marker follows the release directly: nobody wrote in
// between) — it does not wait a whole lease_ttl. The bucket's MaxAge is
// cut to 1 s under a 10 s lease so that the wait, were it taken, would
// still be running.
func TestLeaseReleaseAgedOutStillReleased(t *testing.T) {
	s := testutil.RunServer(t)
	const ttl = 10 * time.Second
	a := newTestLease(t, s.ClientURL(), "a", ttl)
	b := newTestLease(t, s.ClientURL(), "b", ttl)
	ctx := context.Background()
	if !a.tryAcquire(ctx) {
		t.Fatal("a could not take a free lease")
	}
	_, js := testutil.Connect(t, s.ClientURL())
	st, err := js.Stream(ctx, "KV_t_lease")
	if err != nil {
		t.Fatal(err)
	}
	scfg := st.CachedInfo().Config
	scfg.MaxAge, scfg.Duplicates = time.Second, time.Second
	if _, err := js.UpdateStream(ctx, scfg); err != nil {
		t.Fatal(err)
	}
	if _, claim := b.observe(ctx); claim {
		t.Fatal("b may claim a held lease")
	}
	a.Release(ctx)
	rel, claim := b.observe(ctx)
	if !claim {
		t.Fatal("b may not claim over a release marker")
	}
	// The server ages the release marker out and leaves its own marker.
	testutil.WaitFor(t, 10*time.Second, func() bool {
		info, err := st.Info(ctx)
		return err == nil && info.State.LastSeq == rel+1
	}, "the server left no marker after the release aged out")
	seq, claim := b.observe(ctx)
	if seq != rel+1 || !claim {
		t.Fatalf("after the release aged out: seq %d (release at %d), claim %v; want a claim at once", seq, rel, claim)
	}
	if !b.tryAcquire(ctx) || !b.Held() {
		t.Fatal("b could not take the released lease")
	}
	if a.Held() {
		t.Fatal("two holders")
	}
}
