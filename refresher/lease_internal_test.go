package refresher

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

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
	return &lease{nc: nc, kv: kv, id: id, ttl: ttl, now: time.Now, wakeReport: make(chan struct{}, 1), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
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
