package refresher

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

// WatchFiltered on a bucket that was lost runs twice (on the lost bucket,
// then on the re-provisioned one); jetstream rewrites the keys slice it
// is given, so the second run must get the caller's keys, not the first
// run's rewritten ones.
func TestBucketKVWatchFilteredAcrossALostBucket(t *testing.T) {
	s := testutil.RunServer(t)
	_, js := testutil.Connect(t, s.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := newBucketKV(ctx, js, natsconf.BucketConfig{Name: "t_watch", History: 1}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteKeyValue(ctx, "t_watch"); err != nil {
		t.Fatal(err)
	}
	w, err := b.WatchFiltered(ctx, []string{"k"})
	if err != nil {
		t.Fatalf("WatchFiltered across the loss: %v", err)
	}
	if gen, _ := b.generation(); gen != 2 {
		t.Fatalf("generation %d: the bucket was not re-provisioned", gen)
	}
	if _, err := b.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case e := <-w.Updates():
			if e == nil {
				continue
			}
			if e.Key() != "k" || string(e.Value()) != "v" {
				t.Fatalf("entry %s = %q, want k = v", e.Key(), e.Value())
			}
			return
		case <-ctx.Done():
			t.Fatal("the watch of the re-provisioned bucket delivered nothing")
		}
	}
}
