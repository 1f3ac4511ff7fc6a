package subscriber_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// The recovery tests measure how long the Source was stale: from the
// moment the request that made the refresher write a new revision was
// sent (the write came after it) until Source.Revision() reached that
// revision. The poll interval is set far beyond each bound, so a pass
// proves the faster mechanism (rebuild on reconnect) did the work, unless
// the test says otherwise.

func TestSurvivesServerRestart(t *testing.T) {
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.start()
	log, _ := logBuffer(t)
	nc, _ := testutil.Connect(t, w.URL)
	src := newSource(t, nc, "mp-main", subscriber.WithLogger(log), subscriber.WithPollInterval(time.Minute))
	rev, written := bump(t, w, w.NC)
	staleFor(t, src, rev, written, 5*time.Second)

	for i := range 2 {
		w.Server = testutil.RestartServer(t, w.Server)
		// The earliest write possible: straight into the bucket as soon
		// as JetStream takes it, while the Source is still reconnecting.
		rev, written := putAfterRestart(t, w, fmt.Sprintf("DIRECT-%d", i))
		stale := staleFor(t, src, rev, written, 30*time.Second)
		t.Logf("restart %d: a write as early as possible (revision %d) reached the Source %s after it was written", i+1, rev, fmtStale(stale))
		if stale > 3*time.Second {
			t.Errorf("restart %d: the Source was stale for %s, want < 3s", i+1, stale)
		}
		// And the refresher's next write.
		rev, written = bump(t, w, w.NC)
		stale = staleFor(t, src, rev, written, 30*time.Second)
		t.Logf("restart %d: the refresher's first write (revision %d) reached the Source %s after it was written", i+1, rev, fmtStale(stale))
		if stale > 3*time.Second {
			t.Errorf("restart %d: the Source was stale for %s, want < 3s", i+1, stale)
		}
	}
}

// putAfterRestart writes a valid record into the bucket as soon as the
// restarted server accepts it, and returns its revision and when the put
// returned.
func putAfterRestart(t *testing.T, w *world, token string) (rev uint64, written time.Time) {
	t.Helper()
	val, _ := json.Marshal(contract.Record{App: "mp-main", AccessToken: token, FetchedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour), Source: contract.SourceManual})
	testutil.WaitFor(t, 20*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		kv, err := w.JS.KeyValue(ctx, contract.DefaultBucket)
		if err != nil {
			return false
		}
		rev, err = kv.Put(ctx, "mp-main", val)
		written = time.Now()
		return err == nil
	}, "no write possible after the restart")
	return rev, written
}

// fmtStale formats a measured staleness: staleFor polls every 5ms, so
// anything under that means the Source had it by the first look.
func fmtStale(d time.Duration) string {
	if d < testutil.PollInterval {
		return "< " + testutil.PollInterval.String()
	}
	return d.Round(time.Millisecond).String()
}

func TestSurvivesReconnect(t *testing.T) {
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.start()
	log, _ := logBuffer(t)
	nc, _ := testutil.Connect(t, w.URL)
	src := newSource(t, nc, "mp-main", subscriber.WithLogger(log), subscriber.WithPollInterval(time.Minute))
	for i := range 3 {
		before := nc.Stats().Reconnects
		if err := nc.ForceReconnect(); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, 10*time.Second, func() bool { return nc.Stats().Reconnects > before && nc.IsConnected() }, "no reconnect")
		rev, sent := bump(t, w, w.NC)
		stale := staleFor(t, src, rev, sent, 30*time.Second)
		t.Logf("reconnect %d: the Source reached revision %d %s after it was written", i+1, rev, fmtStale(stale))
		if stale > time.Second {
			t.Errorf("reconnect %d: the Source was stale for %s, want < 1s", i+1, stale)
		}
	}
}

// The node that holds a Source's watch consumer goes away. Two Sources
// watch: one connected to another node ("quiet": nothing tells it, its
// watch stalls, and the poller's direct read bounds its staleness), and
// one connected to the lost node ("reconnecting": it rebuilds its watch on
// reconnect, while the cluster may still be electing leaders). The bound
// for both is the poll interval + 1s.
func TestSurvivesLossOfTheConsumerNode(t *testing.T) {
	const poll = time.Second
	c := testutil.NewCluster(t, 3)
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour}, harness.Options{URL: c.URLs()})
	w.start(func(cfg *refresher.Config) { cfg.Replicas = 3 })
	log, buf := logBuffer(t)
	_, js := testutil.Connect(t, c.URLs())

	// Consumer placement is the cluster's choice: make Sources until one
	// has its consumer on a node its connection is not on.
	var quiet *subscriber.Source
	lost := -1
	for attempt := 0; quiet == nil; attempt++ {
		if attempt == 40 {
			t.Fatal("every watch consumer was placed on its connection's node")
		}
		home := attempt % c.N()
		nc := connectTo(t, c, home)
		before := testutil.Consumers(t, js, "KV_"+contract.DefaultBucket, "$KV."+contract.DefaultBucket+".mp-main")
		src := newSource(t, nc, "mp-main", subscriber.WithLogger(log.With("source", "quiet")), subscriber.WithPollInterval(poll))
		node := testutil.NewConsumerNode(t, c, js, "KV_"+contract.DefaultBucket, "$KV."+contract.DefaultBucket+".mp-main", before)
		if node != home {
			quiet, lost = src, node
			t.Logf("quiet Source: connection on node %d, consumer on node %d (attempt %d)", home, node, attempt+1)
			break
		}
		_ = src.Close()
	}
	reconnecting := newSource(t, connectTo(t, c, lost), "mp-main",
		subscriber.WithLogger(log.With("source", "reconnecting")), subscriber.WithPollInterval(poll))

	c.StopNode(lost)
	rev, written := bump(t, w, w.NC)
	stale := staleForAll(t, []*subscriber.Source{quiet, reconnecting}, rev, written, 30*time.Second)
	for i, x := range []struct {
		name  string
		bound time.Duration
	}{{"quiet", poll + time.Second}, {"reconnecting", poll + time.Second}} {
		t.Logf("after losing node %d the %s Source reached revision %d %s after it was written", lost, x.name, rev, fmtStale(stale[i]))
		if stale[i] > x.bound {
			t.Errorf("the %s Source was stale for %s, want < %s", x.name, stale[i], x.bound)
		}
	}
	t.Logf("the quiet Source's direct read found the update its watch missed: %v", quietPollFound(buf.String()))
	// Both keep following (on rebuilt watches, or on direct reads while
	// the cluster still settles).
	rev, written = bump(t, w, w.NC)
	for i, d := range staleForAll(t, []*subscriber.Source{quiet, reconnecting}, rev, written, 30*time.Second) {
		t.Logf("the next write: Source %d stale for %s", i, fmtStale(d))
		if d > poll+time.Second {
			t.Errorf("the next write: Source %d stale for %s", i, d)
		}
	}
}

// connectTo connects to node i first (and to the others on reconnect).
func connectTo(t *testing.T, c *testutil.Cluster, i int) *nats.Conn {
	t.Helper()
	urls := []string{c.URL(i)}
	for j := range c.N() {
		if j != i {
			urls = append(urls, c.URL(j))
		}
	}
	nc, _ := testutil.Connect(t, strings.Join(urls, ","), nats.DontRandomize())
	return nc
}

// A watch that stalls without any error or reconnect (its consumer is
// deleted on the server, as happens when the node holding it is lost):
// the periodic direct read finds the update within the poll interval and
// the watch is rebuilt.
func TestPollCatchesAStalledWatch(t *testing.T) {
	const poll = 500 * time.Millisecond
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.start()
	log, buf := logBuffer(t)
	_, js := testutil.Connect(t, w.URL)
	before := testutil.Consumers(t, js, "KV_"+contract.DefaultBucket, "$KV."+contract.DefaultBucket+".mp-main")
	src := newSource(t, w.NC, "mp-main", subscriber.WithLogger(log), subscriber.WithPollInterval(poll))
	var name string
	testutil.WaitFor(t, 5*time.Second, func() bool {
		for n := range testutil.Consumers(t, js, "KV_"+contract.DefaultBucket, "$KV."+contract.DefaultBucket+".mp-main") {
			if _, old := before[n]; !old {
				name = n
				return true
			}
		}
		return false
	}, "no watch consumer")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := js.DeleteConsumer(ctx, "KV_"+contract.DefaultBucket, name); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		rev, sent := bump(t, w, w.NC)
		stale := staleFor(t, src, rev, sent, 30*time.Second)
		t.Logf("write %d after the consumer was deleted: stale for %s", i+1, fmtStale(stale))
		bound := poll + time.Second
		if i > 0 {
			bound = time.Second // the rebuilt watch delivers it
		}
		if stale > bound {
			t.Errorf("write %d: stale for %s, want < %s", i+1, stale, bound)
		}
	}
	if !buf.Contains("the direct read found it") {
		t.Error("the poll did not report the stalled watch")
	}
}

// NewSource is called before tokenkeeper ever ran: no bucket. It starts
// once the refresher has created the bucket and stored a token.
func TestStartsBeforeTheBucketExists(t *testing.T) {
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	log, buf := logBuffer(t)
	nc, _ := testutil.Connect(t, w.URL)
	events := make(chan time.Time, 10)
	sub, err := w.NC.Subscribe(contract.UpdatedSubject("mp-main"), func(*nats.Msg) { events <- time.Now() })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := w.NC.Flush(); err != nil {
		t.Fatal(err)
	}

	type result struct {
		src *subscriber.Source
		err error
		at  time.Time
	}
	res := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		src, err := subscriber.NewSource(ctx, nc, "mp-main", subscriber.WithLogger(log),
			subscriber.WithBackoff(50*time.Millisecond, 500*time.Millisecond), subscriber.WithPollInterval(time.Minute))
		res <- result{src, err, time.Now()}
	}()
	// The Source is waiting: it has asked for a token at least once.
	testutil.WaitFor(t, 10*time.Second, func() bool { return buf.Contains("no refresher answered") }, "the Source did not ask the refresher")
	if _, err := w.JS.KeyValue(context.Background(), contract.DefaultBucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("the bucket exists already: %v", err)
	}
	w.start()
	r := <-res
	if r.err != nil {
		t.Fatalf("NewSource: %v", r.err)
	}
	defer r.src.Close()
	var written time.Time
	select {
	case written = <-events:
	case <-time.After(5 * time.Second):
		t.Fatal("no token.updated event")
	}
	rec, rev, _ := w.Record(contract.DefaultBucket, "mp-main")
	tok, err := r.src.Token()
	if err != nil || tok.AccessToken != rec.AccessToken || tok.Revision != rev {
		t.Fatalf("Token = %v, %v; stored revision %d", tok, err, rev)
	}
	stale := max(r.at.Sub(written), 0)
	t.Logf("NewSource returned %s after the first record was written", stale.Round(time.Millisecond))
	if stale > time.Second {
		t.Errorf("NewSource returned %s after the first record was written, want < 1s (backoff max 500ms)", stale)
	}
	// It follows the bucket from then on.
	nrev, sent := bump(t, w, w.NC)
	if d := staleFor(t, r.src, nrev, sent, 5*time.Second); d > time.Second {
		t.Errorf("next update: stale for %s", d)
	}
}

// A deleted (or purged) key: the Source keeps serving the last token until
// it expires, and takes the next record written.
func TestDeletedKeyKeepsTheLastToken(t *testing.T) {
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.start()
	log, buf := logBuffer(t)
	src := newSource(t, w.NC, "mp-main", subscriber.WithLogger(log))
	before, _ := src.Token()
	kv, err := w.JS.KeyValue(context.Background(), contract.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	for op, logged := range map[string]string{"delete": "op=KeyValueDeleteOp", "purge": "op=KeyValuePurgeOp"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if op == "delete" {
			err = kv.Delete(ctx, "mp-main")
		} else {
			err = kv.Purge(ctx, "mp-main")
		}
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, 5*time.Second, func() bool { return buf.Contains(logged) }, "the Source did not see the %s", op)
		tok, err := src.Token()
		if err != nil || tok != before {
			t.Fatalf("after %s: Token = %v, %v; want the last token", op, tok, err)
		}
	}
	rev, sent := bumpOver(t, w, w.NC, before.Revision)
	staleFor(t, src, rev, sent, 5*time.Second)
	if tok, err := src.Token(); err != nil || tok.AccessToken == before.AccessToken {
		t.Fatalf("after a new write: %v, %v", tok, err)
	}
}

// quietPollFound reports whether the quiet Source logged that its direct
// read found an update.
func quietPollFound(log string) bool {
	for line := range strings.SplitSeq(log, "\n") {
		if strings.Contains(line, "source=quiet") && strings.Contains(line, "the direct read found it") {
			return true
		}
	}
	return false
}

// The bucket is deleted and created again (an operator starting over):
// revisions restart at 1, and the Source follows the new bucket instead
// of waiting for a revision above the one it held.
func TestFollowsARecreatedBucket(t *testing.T) {
	const poll = 500 * time.Millisecond
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	rep := w.start()
	for range 3 {
		bump(t, w, w.NC)
	}
	log, buf := logBuffer(t)
	src := newSource(t, w.NC, "mp-main", subscriber.WithLogger(log), subscriber.WithPollInterval(poll),
		subscriber.WithBackoff(20*time.Millisecond, 200*time.Millisecond))
	old, _ := src.Token()
	if err := rep.Stop(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.JS.DeleteKeyValue(ctx, contract.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	w.start()
	var rec contract.Record
	var rev uint64
	testutil.WaitFor(t, 10*time.Second, func() bool {
		var ok bool
		rec, rev, ok = w.Record(contract.DefaultBucket, "mp-main")
		return ok
	}, "the new refresher stored no token")
	if rev >= old.Revision {
		t.Fatalf("the new bucket is at revision %d, the old one was at %d: nothing to test", rev, old.Revision)
	}
	written := time.Now()
	testutil.WaitFor(t, 10*time.Second, func() bool {
		tok, err := src.Token()
		return err == nil && tok.AccessToken == rec.AccessToken && tok.Revision == rev
	}, "the Source did not take revision %d of the new bucket", rev)
	t.Logf("the Source took revision %d of the new bucket (it held %d) within %s", rev, old.Revision, time.Since(written).Round(time.Millisecond))
	if !buf.Contains("created anew") {
		t.Error("the Source did not report the new bucket")
	}
	// And follows it.
	nrev, sent := bump(t, w, w.NC)
	if d := staleFor(t, src, nrev, sent, 5*time.Second); d > time.Second {
		t.Errorf("next update: stale for %s", d)
	}
}
