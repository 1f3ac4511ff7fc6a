package natsconf_test

import (
	"context"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

// TestEnsureBucketMaxConsumers: the KV API leaves max_consumers at -1,
// which nats-server replaces with 1000 per stream: the 1001st watching
// service would fail. EnsureBucket sets the limit on the stream, also on a
// bucket that already exists, and leaves it when it is right.
func TestEnsureBucketMaxConsumers(t *testing.T) {
	s := testutil.RunServer(t)
	_, js := testutil.Connect(t, s.ClientURL())
	ctx := context.Background()
	maxConsumers := func() int {
		st, err := js.Stream(ctx, "KV_tk")
		if err != nil {
			t.Fatal(err)
		}
		return st.CachedInfo().Config.MaxConsumers
	}
	if _, err := natsconf.EnsureBucket(ctx, js, natsconf.BucketConfig{Name: "tk", History: 1}); err != nil {
		t.Fatal(err)
	}
	if n := maxConsumers(); n > 0 {
		t.Fatalf("without MaxConsumers the stream has max_consumers %d, want the server default (-1)", n)
	}
	for range 2 {
		if _, err := natsconf.EnsureBucket(ctx, js, natsconf.BucketConfig{Name: "tk", History: 1, MaxConsumers: 50000}); err != nil {
			t.Fatal(err)
		}
		if n := maxConsumers(); n != 50000 {
			t.Fatalf("max_consumers %d, want 50000", n)
		}
	}
}
