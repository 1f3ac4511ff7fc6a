package subscriber_test

import (
	"context"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// TestConsumerLimitIsAnError: when the bucket's stream has no consumer
// left, the Source says so at ERROR (not as a routine rebuild) and still
// follows the token by polling.
func TestConsumerLimitIsAnError(t *testing.T) {
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	kv := ensureBucket(t, w.JS)
	ctx := context.Background()
	st, err := w.JS.Stream(ctx, "KV_"+contract.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	sc := st.CachedInfo().Config
	sc.MaxConsumers = 1
	if _, err := w.JS.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	// Another watcher takes the only consumer.
	other, err := kv.WatchAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Stop()

	putRecord(t, kv, contract.Record{App: "mp-main", AccessToken: "TOKEN-ONE", ExpiresAt: time.Now().Add(time.Hour), FetchedAt: time.Now(), Source: "manual"})
	log, buf := logBuffer(t)
	src := newSource(t, w.NC, "mp-main", subscriber.WithLogger(log), subscriber.WithPollInterval(200*time.Millisecond))
	testutil.WaitFor(t, 5*time.Second, func() bool {
		return buf.Contains("level=ERROR") && buf.Contains("no consumer left")
	}, "the consumer limit was not logged at ERROR")

	rev := putRecord(t, kv, contract.Record{App: "mp-main", AccessToken: "TOKEN-TWO", ExpiresAt: time.Now().Add(time.Hour), FetchedAt: time.Now(), Source: "manual"})
	testutil.WaitFor(t, 2*time.Second, func() bool { return src.Revision() == rev }, "the poll did not pick up the new token")
}
