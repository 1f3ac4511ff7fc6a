package follow_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/internal/follow"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

func TestFollowsOneKey(t *testing.T) {
	s := testutil.RunServer(t)
	nc, js := testutil.Connect(t, s.ClientURL())
	kv := newBucket(t, js, 1)
	rev1, _ := put(t, kv, "mp", "v1")
	r := start(t, nc, follow.Config{Open: openKV(js, bucketName), Keys: []string{"mp"}})

	r.waitEntry(t, "mp", rev1, 5*time.Second)
	testutil.WaitFor(t, 5*time.Second, func() bool { return r.count(follow.Current, nil) > 0 }, "no Current after the initial value")

	put(t, kv, "other", "x") // not followed
	rev2, _ := put(t, kv, "mp", "v2")
	if e := r.waitEntry(t, "mp", rev2, 5*time.Second); string(e.Entry.Value()) != "v2" || e.Polled {
		t.Fatalf("entry %d = %q polled=%v, want v2 from the watch", rev2, e.Entry.Value(), e.Polled)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := kv.Delete(ctx, "mp"); err != nil {
		t.Fatal(err)
	}
	del := r.waitEntry(t, "mp", rev2+1, 5*time.Second)
	if err := kv.Purge(ctx, "mp"); err != nil {
		t.Fatal(err)
	}
	purge := r.waitEntry(t, "mp", del.Entry.Revision()+1, 5*time.Second)
	if del.Entry.Operation() != jetstream.KeyValueDelete || purge.Entry.Operation() != jetstream.KeyValuePurge {
		t.Fatalf("operations %s, %s; want a delete and a purge", del.Entry.Operation(), purge.Entry.Operation())
	}
	rev3, _ := put(t, kv, "mp", "v3")
	r.waitEntry(t, "mp", rev3, 5*time.Second)

	for _, e := range r.entries() {
		if e.Entry.Key() != "mp" {
			t.Errorf("entry of key %q handed over; only mp is followed", e.Entry.Key())
		}
	}
	if n := len(r.entries()); n != 5 {
		t.Errorf("%d entries, want 5 (v1, v2, delete, purge, v3):\n%s", n, r)
	}
	checkOrder(t, r)
}

// Several keys are followed over one consumer, and the poll reads each.
func TestFollowsSeveralKeysOverOneConsumer(t *testing.T) {
	s := testutil.RunServer(t)
	nc, js := testutil.Connect(t, s.ClientURL())
	kv := newBucket(t, js, 1)
	put(t, kv, "a", "a1")
	put(t, kv, "c", "c1")
	r := start(t, nc, follow.Config{Open: openKV(js, bucketName), Keys: []string{"a", "b"}, PollInterval: 100 * time.Millisecond})
	testutil.WaitFor(t, 5*time.Second, func() bool { return r.count(follow.Current, nil) > 0 }, "no Current")
	revB, _ := put(t, kv, "b", "b1")
	revA, _ := put(t, kv, "a", "a2")
	put(t, kv, "c", "c2")
	r.waitEntry(t, "b", revB, 5*time.Second)
	r.waitEntry(t, "a", revA, 5*time.Second)
	// Several polls later, still one consumer and nothing handed twice.
	n := r.count(follow.Current, nil)
	testutil.WaitFor(t, 5*time.Second, func() bool { return r.count(follow.Current, nil) >= n+3 }, "the poll does not run")
	if c := len(testutil.Consumers(t, js, "KV_"+bucketName, "")); c != 1 {
		t.Errorf("%d consumers on the stream, want 1", c)
	}
	for _, e := range r.entries() {
		if e.Entry.Key() == "c" {
			t.Errorf("key c handed over; it is not followed")
		}
		if e.Polled {
			t.Errorf("%s@%d came from the poll; the watch is healthy", e.Entry.Key(), e.Entry.Revision())
		}
	}
	if len(r.entries()) != 3 {
		t.Errorf("%d entries, want 3:\n%s", len(r.entries()), r)
	}
	checkOrder(t, r)
}

func TestFollowsAllKeys(t *testing.T) {
	s := testutil.RunServer(t)
	nc, js := testutil.Connect(t, s.ClientURL())
	kv := newBucket(t, js, 1)
	put(t, kv, "a", "1")
	r := start(t, nc, follow.Config{Open: openKV(js, bucketName), PollInterval: 100 * time.Millisecond})
	r.waitEntry(t, "a", 1, 5*time.Second)
	revB, _ := put(t, kv, "b", "1")
	revC, _ := put(t, kv, "c.d", "1")
	r.waitEntry(t, "b", revB, 5*time.Second)
	r.waitEntry(t, "c.d", revC, 5*time.Second)
	checkOrder(t, r)
}

// A watch that stalls without any error or reconnect (its consumer is
// deleted on the server, as happens when the node holding it is lost):
// the poll finds the update within the poll interval and the watch is
// rebuilt, so the next update comes from the watch.
func TestPollCatchesAStalledWatch(t *testing.T) {
	const poll = 300 * time.Millisecond
	for _, c := range []struct {
		name string
		keys []string
	}{{"one key", []string{"mp"}}, {"all keys", nil}} {
		t.Run(c.name, func(t *testing.T) {
			s := testutil.RunServer(t)
			nc, js := testutil.Connect(t, s.ClientURL())
			kv := newBucket(t, js, 1)
			put(t, kv, "mp", "v1")
			r := start(t, nc, follow.Config{Open: openKV(js, bucketName), Keys: c.keys, PollInterval: poll})
			r.waitEntry(t, "mp", 1, 5*time.Second)
			name, _ := newConsumer(t, js, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := js.DeleteConsumer(ctx, "KV_"+bucketName, name); err != nil {
				t.Fatal(err)
			}
			rev, written := put(t, kv, "mp", "v2")
			e := r.waitEntry(t, "mp", rev, 5*time.Second)
			stale := e.at.Sub(written)
			t.Logf("%s: the update after the consumer was deleted arrived after %s (polled=%v)", c.name, fmtStale(stale), e.Polled)
			if stale > poll+time.Second {
				t.Errorf("stale for %s, want <= %s", stale, poll+time.Second)
			}
			testutil.WaitFor(t, 5*time.Second, func() bool { return r.count(follow.Problem, follow.ErrStalled) > 0 }, "the watch was not rebuilt")
			testutil.WaitFor(t, 5*time.Second, func() bool { return len(testutil.Consumers(t, js, "KV_"+bucketName, "")) == 1 }, "no new consumer")
			rev, written = put(t, kv, "mp", "v3")
			e = r.waitEntry(t, "mp", rev, 5*time.Second)
			t.Logf("%s: the next update arrived after %s (polled=%v)", c.name, fmtStale(e.at.Sub(written)), e.Polled)
			if e.Polled {
				t.Error("the next update came from the poll: the watch was not rebuilt")
			}
			checkOrder(t, r)
		})
	}
}

// The bucket is deleted and created again: revisions start over. The
// Follower says so (Reset) and hands over the new bucket's entries.
func TestFollowsARecreatedBucket(t *testing.T) {
	s := testutil.RunServer(t)
	nc, js := testutil.Connect(t, s.ClientURL())
	kv := newBucket(t, js, 1)
	for _, v := range []string{"1", "2", "3"} {
		put(t, kv, "mp", v)
	}
	r := start(t, nc, follow.Config{Open: openKV(js, bucketName), Keys: []string{"mp"}, PollInterval: 200 * time.Millisecond,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
	r.waitEntry(t, "mp", 3, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := js.DeleteKeyValue(ctx, bucketName); err != nil {
		t.Fatal(err)
	}
	// Wait until the Follower has noticed, so that the new bucket is not
	// created in the same instant (a real operator is slower).
	testutil.WaitFor(t, 10*time.Second, func() bool { return r.count(follow.Problem, jetstream.ErrBucketNotFound) > 0 },
		"the Follower did not notice the bucket was gone")
	kv = newBucket(t, js, 1)
	rev, _ := put(t, kv, "mp", "new")
	if rev != 1 {
		t.Fatalf("the new bucket's first revision is %d", rev)
	}
	testutil.WaitFor(t, 10*time.Second, func() bool {
		evs := r.events()
		for i, e := range evs {
			if e.Kind == follow.Reset {
				for _, x := range evs[i:] {
					if x.Kind == follow.Entry && x.Entry.Revision() == 1 && string(x.Entry.Value()) == "new" {
						return true
					}
				}
			}
		}
		return false
	}, "no Reset followed by revision 1 of the new bucket")
	rev, _ = put(t, kv, "mp", "next")
	r.waitEntry(t, "mp", rev, 5*time.Second)
	checkOrder(t, r)
}

// A handle that swaps its bucket when it is replaced (the refresher's):
// Config.Replaced makes the Follower rebuild at once, from the start.
func TestReplacedRebuildsFromTheStart(t *testing.T) {
	s := testutil.RunServer(t)
	nc, js := testutil.Connect(t, s.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "a"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "b"})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		put(t, a, "k", "a")
	}
	sw := &swapKV{gone: make(chan struct{})}
	sw.set(a, 1)
	r := start(t, nc, follow.Config{Open: func(context.Context) (jetstream.KeyValue, error) { return sw, nil },
		Keys: []string{"k"}, Replaced: sw.generation})
	r.waitEntry(t, "k", 5, 5*time.Second)
	rev, _ := put(t, b, "k", "b")
	sw.set(b, 2)
	testutil.WaitFor(t, 5*time.Second, func() bool {
		for _, e := range r.entries() {
			if e.Entry.Revision() == rev && string(e.Entry.Value()) == "b" {
				return true
			}
		}
		return false
	}, "revision %d of the new bucket was not handed over", rev)
	if r.count(follow.Reset, nil) != 1 || r.count(follow.Problem, follow.ErrReplaced) == 0 {
		t.Errorf("want one Reset and a rebuild for ErrReplaced:\n%s", r)
	}
}

// swapKV is a KeyValue whose bucket a test swaps, like the refresher's.
type swapKV struct {
	jetstream.KeyValue // the methods the Follower does not use
	mu                 sync.Mutex
	kv                 jetstream.KeyValue
	gen                uint64
	gone               chan struct{}
}

func (s *swapKV) set(kv jetstream.KeyValue, gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kv, s.gen = kv, gen
	close(s.gone)
	s.gone = make(chan struct{})
}

func (s *swapKV) cur() jetstream.KeyValue {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kv
}

func (s *swapKV) generation() (uint64, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen, s.gone
}

func (s *swapKV) WatchFiltered(ctx context.Context, keys []string, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	return s.cur().WatchFiltered(ctx, keys, opts...)
}

func (s *swapKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	return s.cur().Get(ctx, key)
}

// A reconnect rebuilds the watch at once; no poll here.
func TestReconnectRebuildsTheWatch(t *testing.T) {
	s := testutil.RunServer(t)
	nc, js := testutil.Connect(t, s.ClientURL())
	kv := newBucket(t, js, 1)
	put(t, kv, "mp", "v1")
	r := start(t, nc, follow.Config{Open: openKV(js, bucketName), Keys: []string{"mp"}})
	r.waitEntry(t, "mp", 1, 5*time.Second)
	for i := range 3 {
		before := nc.Stats().Reconnects
		if err := nc.ForceReconnect(); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, 10*time.Second, func() bool { return nc.Stats().Reconnects > before && nc.IsConnected() }, "no reconnect")
		rev, written := put(t, kv, "mp", "v")
		e := r.waitEntry(t, "mp", rev, 5*time.Second)
		t.Logf("reconnect %d: the next update arrived after %s", i+1, fmtStale(e.at.Sub(written)))
	}
	if n := r.count(follow.Problem, follow.ErrReconnected); n < 3 {
		t.Errorf("%d rebuilds for a reconnect, want 3:\n%s", n, r)
	}
	checkOrder(t, r)
}

// Closing the connection ends the Follower: Events is closed and Err
// says why.
func TestEndsWhenTheConnectionCloses(t *testing.T) {
	s := testutil.RunServer(t)
	nc, js := testutil.Connect(t, s.ClientURL())
	newBucket(t, js, 1)
	r := start(t, nc, follow.Config{Open: openKV(js, bucketName), Keys: []string{"mp"}, PollInterval: time.Second})
	testutil.WaitFor(t, 5*time.Second, func() bool { return r.count(follow.Current, nil) > 0 }, "no Current")
	nc.Close()
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		t.Fatal("Events was not closed after the connection closed")
	}
	if err := r.f.Err(); !errors.Is(err, nats.ErrConnectionClosed) {
		t.Fatalf("Err() = %v, want nats.ErrConnectionClosed", err)
	}
	r.f.Stop() // still fine
}

func TestStartRejectsBadConfig(t *testing.T) {
	open := func(context.Context) (jetstream.KeyValue, error) { return nil, nil }
	nc := &nats.Conn{}
	for name, c := range map[string]struct {
		nc  *nats.Conn
		cfg follow.Config
	}{
		"nil conn":          {nil, follow.Config{Open: open}},
		"no open":           {nc, follow.Config{}},
		"empty key":         {nc, follow.Config{Open: open, Keys: []string{"a", ""}}},
		"wildcard and poll": {nc, follow.Config{Open: open, Keys: []string{"a.*"}, PollInterval: time.Second}},
		"negative timeout":  {nc, follow.Config{Open: open, Timeout: -1}},
		"backoff min > max": {nc, follow.Config{Open: open, BackoffMin: time.Second, BackoffMax: time.Millisecond}},
	} {
		if f, err := follow.Start(c.nc, c.cfg); f != nil || !errors.Is(err, follow.ErrInvalidConfig) {
			t.Errorf("%s: Start = %v, %v; want ErrInvalidConfig", name, f, err)
		}
	}
}
