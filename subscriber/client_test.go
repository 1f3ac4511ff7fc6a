package subscriber_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

// consumers counts the consumers on the tokens bucket's stream.
func consumers(t *testing.T, js jetstream.JetStream) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "KV_"+contract.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	return st.CachedInfo().State.Consumers
}

// TestClientOneConsumerForManyKeys: P processes (connections) each follow
// K keys. Through a Client each process has one consumer on the tokens
// stream, whatever K; through NewSource each key is a consumer of its
// own. Every Source of a Client gets its own key's updates, and only its
// own.
func TestClientOneConsumerForManyKeys(t *testing.T) {
	const procs, keys = 3, 8
	s := testutil.RunServer(t)
	_, js := testutil.Connect(t, s.ClientURL())
	kv := ensureBucket(t, js)
	put := func(key, tok string) uint64 {
		return putRecord(t, kv, contract.Record{App: key, AccessToken: tok, FetchedAt: time.Now().UTC(), ExpiresAt: time.Now().Add(time.Hour).UTC(), Source: contract.SourceScheduled})
	}
	names := make([]string, keys)
	for k := range names {
		names[k] = fmt.Sprintf("app%d", k)
		if k%2 == 1 {
			names[k] = fmt.Sprintf("app%d.jsapi", k-1) // a v2 key beside its app
		}
		put(names[k], "T0-"+names[k])
	}
	base := consumers(t, js)

	srcs := make([][]*subscriber.Source, procs)
	for p := range procs {
		nc, _ := testutil.Connect(t, s.ClientURL())
		c, err := subscriber.NewClient(nc, subscriber.WithPollInterval(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		for _, k := range names {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			src, err := c.Source(ctx, k)
			cancel()
			if err != nil {
				t.Fatalf("process %d, key %s: %v", p, k, err)
			}
			srcs[p] = append(srcs[p], src)
		}
	}
	// Adding a key rebuilds the one watch: old consumers go away.
	testutil.WaitFor(t, 10*time.Second, func() bool { return consumers(t, js)-base == procs },
		"consumers: %d for %d processes × %d keys through Clients, want %d", consumers(t, js)-base, procs, keys, procs)

	// Every Source gets its key's update, and no other.
	for k, name := range names {
		rev := put(name, "T1-"+name)
		for p := range procs {
			src := srcs[p][k]
			testutil.WaitFor(t, 5*time.Second, func() bool { return src.Revision() == rev }, "process %d did not see %s at %d", p, name, rev)
			if tok, err := src.Token(); err != nil || tok.AccessToken != "T1-"+name || tok.App != name {
				t.Fatalf("process %d, %s: token %v, %v", p, name, tok, err)
			}
		}
		for p := range procs {
			for j, other := range srcs[p] {
				if j != k && other.Revision() == rev {
					t.Fatalf("the Source of %s took %s's revision", names[j], name)
				}
			}
		}
	}

	// For comparison: NewSource per key is a consumer per key.
	nc, _ := testutil.Connect(t, s.ClientURL())
	before := consumers(t, js)
	for _, k := range names {
		newSource(t, nc, k)
	}
	if n := consumers(t, js) - before; n != keys {
		t.Errorf("%d consumers for %d NewSource calls, want %d", n, keys, keys)
	}

	// Closing a Source stops only it; closing the Client closes the rest.
	_ = srcs[0][0].Close()
	rev := put(names[1], "T2")
	testutil.WaitFor(t, 5*time.Second, func() bool { return srcs[0][1].Revision() == rev }, "a Client's other Source stopped with one closed")
	if _, err := srcs[0][0].Token(); err != subscriber.ErrClosed {
		t.Fatalf("closed Source: %v", err)
	}
}
