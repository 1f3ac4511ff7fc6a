package follow_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/internal/follow"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

// The staleness tests measure how long a follower lags behind the bucket
// after a fault: from the moment the put of an update written after the
// fault returned (the earliest the follower can have it) until the
// follower's reader received the entry. A KV watcher left alone stalls
// for ~20 s in these cases; the bound asserted is the poll interval + 1 s.

// stalenessPoll is the poll interval of the staleness tests.
const stalenessPoll = time.Second

// The server restarts (same port, same store) under two followers: one
// with a poll, one without (only the rebuild on reconnect helps it). A
// bare KV watcher runs alongside, for comparison: the log says how far it
// got.
func TestStalenessAfterServerRestart(t *testing.T) {
	s := testutil.RunServer(t)
	_, js := testutil.Connect(t, s.ClientURL())
	put(t, newBucket(t, js, 1), "mp", "v0")
	bare := bareWatcher(t, s.ClientURL())
	followers := map[string]*recorder{}
	for name, poll := range map[string]time.Duration{"poll": stalenessPoll, "no poll": 0} {
		nc, fjs := testutil.Connect(t, s.ClientURL())
		followers[name] = start(t, nc, follow.Config{Open: openKV(fjs, bucketName), Keys: []string{"mp"}, PollInterval: poll})
		followers[name].waitEntry(t, "mp", 1, 5*time.Second)
	}
	bound := stalenessPoll + time.Second
	began := time.Now()
	for i := range 3 {
		s = testutil.RestartServer(t, s)
		// The earliest write possible: over an in-process connection, as
		// soon as JetStream takes it. The followers reconnect every 20ms
		// and rebuild their watches then, resuming after the last
		// revision they had (the log says which came first).
		_, ijs := testutil.Connect(t, "", nats.InProcessServer(s))
		ikv := openBucket(t, ijs)
		rev, written := put(t, ikv, "mp", "after restart")
		for _, name := range []string{"poll", "no poll"} {
			r := followers[name]
			e := r.waitEntry(t, "mp", rev, 30*time.Second)
			stale := e.at.Sub(written)
			rebuilt := "no rebuild for the reconnect"
			if at, ok := r.last(follow.Problem, follow.ErrReconnected); ok {
				if d := written.Sub(at).Round(time.Microsecond); d >= 0 {
					rebuilt = fmt.Sprintf("the rebuild of its watch for the reconnect began %s before the write", d)
				} else {
					rebuilt = fmt.Sprintf("the rebuild of its watch for the reconnect began %s after the write", -d)
				}
			}
			t.Logf("restart %d: the follower with %s had revision %d %s after it was written (polled=%v; %s)",
				i+1, name, rev, fmtStale(stale), e.Polled, rebuilt)
			if stale > bound {
				t.Errorf("restart %d: the follower with %s was stale for %s, want <= %s", i+1, name, stale, bound)
			}
		}
	}
	for _, r := range followers {
		checkOrder(t, r)
	}
	t.Logf("for comparison, a bare KV watcher of the key is at revision %d at the end, %s after the first restart",
		bare.Load(), time.Since(began).Round(time.Millisecond))
}

// bareWatcher watches the key with jetstream alone and keeps the last
// revision it delivered.
func bareWatcher(t *testing.T, url string) *atomic.Uint64 {
	t.Helper()
	_, js := testutil.Connect(t, url)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	kv := openBucket(t, js)
	w, err := kv.Watch(ctx, "mp")
	if err != nil {
		t.Fatal(err)
	}
	var rev atomic.Uint64
	go func() {
		for e := range w.Updates() {
			if e != nil {
				rev.Store(e.Revision())
			}
		}
	}()
	testutil.WaitFor(t, 5*time.Second, func() bool { return rev.Load() > 0 }, "the bare watcher delivered nothing")
	return &rev
}

// openBucket looks the bucket up, retrying while the server recovers it.
func openBucket(t *testing.T, js jetstream.JetStream) jetstream.KeyValue {
	t.Helper()
	var kv jetstream.KeyValue
	testutil.WaitFor(t, 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		var err error
		kv, err = js.KeyValue(ctx, bucketName)
		return err == nil
	}, "bucket %s not found", bucketName)
	return kv
}

// The cluster node that holds a follower's watch consumer goes away. Two
// followers: "quiet" is connected to another node (nothing tells it; its
// watch stalls and its poll bounds its staleness), "reconnecting" is
// connected to the lost node (it rebuilds its watch on reconnect, while
// the cluster may still be electing leaders).
func TestStalenessAfterConsumerNodeLoss(t *testing.T) {
	c := testutil.NewCluster(t, 3)
	_, js := testutil.Connect(t, c.URLs())
	kv := newBucket(t, js, 3)
	put(t, kv, "mp", "v0")
	cfg := func(fjs jetstream.JetStream) follow.Config {
		return follow.Config{Open: openKV(fjs, bucketName), Keys: []string{"mp"}, PollInterval: stalenessPoll}
	}

	// Consumer placement is the cluster's choice: make followers until
	// one has its consumer on a node its connection is not on.
	var quiet *recorder
	lost := -1
	for attempt := 0; quiet == nil; attempt++ {
		if attempt == 40 {
			t.Fatal("every watch consumer was placed on its connection's node")
		}
		home := attempt % c.N()
		nc, fjs := connectTo(t, c, home)
		before := testutil.Consumers(t, js, "KV_"+bucketName, "")
		r := start(t, nc, cfg(fjs))
		r.waitEntry(t, "mp", 1, 10*time.Second)
		node := testutil.NewConsumerNode(t, c, js, "KV_"+bucketName, "", before)
		if node != home {
			quiet, lost = r, node
			t.Logf("quiet follower: connection on node %d, consumer on node %d (attempt %d)", home, node, attempt+1)
			break
		}
		r.f.Stop()
	}
	nc, fjs := connectTo(t, c, lost)
	reconnecting := start(t, nc, cfg(fjs))
	reconnecting.waitEntry(t, "mp", 1, 10*time.Second)

	c.StopNode(lost)
	bound := stalenessPoll + time.Second
	for _, which := range []string{"the first write after the loss", "the next write"} {
		rev, written := put(t, kv, "mp", which)
		for name, r := range map[string]*recorder{"quiet": quiet, "reconnecting": reconnecting} {
			e := r.waitEntry(t, "mp", rev, 30*time.Second)
			stale := e.at.Sub(written)
			t.Logf("after losing node %d, %s (revision %d) reached the %s follower %s after it was written (polled=%v)",
				lost, which, rev, name, fmtStale(stale), e.Polled)
			if stale > bound {
				t.Errorf("%s: the %s follower was stale for %s, want <= %s", which, name, stale, bound)
			}
		}
	}
	checkOrder(t, quiet)
	checkOrder(t, reconnecting)
}

// connectTo connects to node i first (to the others on reconnect).
func connectTo(t *testing.T, c *testutil.Cluster, i int) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	urls := []string{c.URL(i)}
	for j := range c.N() {
		if j != i {
			urls = append(urls, c.URL(j))
		}
	}
	return testutil.Connect(t, strings.Join(urls, ","), nats.DontRandomize())
}

// A watch creation that hangs holds up neither the loop, nor the poll,
// nor Stop.
func TestHungWatchCreation(t *testing.T) {
	const timeout, poll = 300 * time.Millisecond, 200 * time.Millisecond

	// A partition: every byte of the connection is held, so the watch
	// creation and the poll's reads hang. Stop returns at once anyway.
	t.Run("blackhole", func(t *testing.T) {
		s := testutil.RunServer(t)
		p := testutil.NewProxy(t, s.Addr().String())
		nc, js := testutil.Connect(t, p.URL())
		kv := newBucket(t, js, 1)
		p.Blackhole()
		r := start(t, nc, follow.Config{Open: func(context.Context) (jetstream.KeyValue, error) { return kv, nil },
			Keys: []string{"mp"}, PollInterval: poll, Timeout: timeout, BackoffMax: 200 * time.Millisecond})
		testutil.WaitFor(t, 5*time.Second, func() bool { return r.count(follow.Problem, follow.ErrBuildTimeout) >= 2 },
			"the loop did not give up on hung watch creations")
		began := time.Now()
		r.f.Stop()
		took := time.Since(began)
		t.Logf("Stop returned %s after it was called, with the watch creation and the poll's read hanging", fmtStale(took))
		if took > 500*time.Millisecond {
			t.Errorf("Stop took %s", took)
		}
		select {
		case <-r.done:
		case <-time.After(time.Second):
			t.Error("Events is still open after Stop")
		}
	})

	// The server never answers the consumer creation (a publish the
	// follower may not make is dropped; the request only times out),
	// while direct reads work: the poll keeps the follower current.
	t.Run("consumer creation unanswered", func(t *testing.T) {
		s := testutil.RunServer(t, func(o *server.Options) {
			o.Users = []*server.User{
				{Username: "admin", Password: "admin"},
				{Username: "svc", Password: "svc", Permissions: &server.Permissions{
					Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"$JS.API.CONSUMER.CREATE.>"}},
				}},
			}
		})
		_, js := testutil.Connect(t, s.ClientURL(), nats.UserInfo("admin", "admin"))
		kv := newBucket(t, js, 1)
		put(t, kv, "mp", "v0")
		nc, fjs := testutil.Connect(t, s.ClientURL(), nats.UserInfo("svc", "svc"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
		r := start(t, nc, follow.Config{Open: openKV(fjs, bucketName), Keys: []string{"mp"}, PollInterval: poll, Timeout: timeout})
		for i := range 3 {
			rev, written := put(t, kv, "mp", "v")
			e := r.waitEntry(t, "mp", rev, 5*time.Second)
			stale := e.at.Sub(written)
			t.Logf("write %d reached the follower %s after it was written (polled=%v)", i+1, fmtStale(stale), e.Polled)
			if stale > poll+time.Second || !e.Polled {
				t.Errorf("write %d: stale for %s, polled=%v; want <= %s, by the poll", i+1, stale, e.Polled, poll+time.Second)
			}
		}
		if n := r.count(follow.Problem, follow.ErrBuildTimeout); n == 0 {
			t.Errorf("no watch creation timed out:\n%s", r)
		}
		began := time.Now()
		r.f.Stop()
		if took := time.Since(began); took > 500*time.Millisecond {
			t.Errorf("Stop took %s", took)
		}
		checkOrder(t, r)
	})

	// The server is gone for good: Stop does not wait for it.
	t.Run("server gone", func(t *testing.T) {
		s := testutil.RunServer(t)
		nc, js := testutil.Connect(t, s.ClientURL())
		newBucket(t, js, 1)
		r := start(t, nc, follow.Config{Open: openKV(js, bucketName), Keys: []string{"mp"}, PollInterval: poll, Timeout: timeout})
		testutil.WaitFor(t, 5*time.Second, func() bool { return r.count(follow.Current, nil) > 0 }, "no Current")
		s.Shutdown()
		s.WaitForShutdown()
		testutil.WaitFor(t, 5*time.Second, func() bool { return nc.Status() == nats.RECONNECTING }, "the connection is not reconnecting")
		began := time.Now()
		r.f.Stop()
		took := time.Since(began)
		t.Logf("Stop returned %s after it was called, with the server gone", fmtStale(took))
		if took > 500*time.Millisecond {
			t.Errorf("Stop took %s", took)
		}
	})
}
