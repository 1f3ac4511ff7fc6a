package testutil_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/testutil"
)

// get returns the value of key, or "" on any error.
func get(kv jetstream.KeyValue, key string) string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	e, err := kv.Get(ctx, key)
	if err != nil {
		return ""
	}
	return string(e.Value())
}

// localLastSeq is the last sequence of stream as stored on s itself.
func localLastSeq(s *server.Server, stream string) uint64 {
	info, err := s.Jsz(&server.JSzOptions{Accounts: true, Streams: true})
	if err != nil {
		return 0
	}
	for _, acc := range info.AccountDetails {
		for _, sd := range acc.Streams {
			if sd.Name == stream {
				return sd.State.LastSeq
			}
		}
	}
	return 0
}

func TestRunServerRestartKeepsJetStreamData(t *testing.T) {
	s := testutil.RunServer(t)
	url := s.ClientURL()
	_, js := testutil.Connect(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "restart"})
	if err != nil {
		t.Fatalf("create bucket: %v", err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v1")); err != nil {
		t.Fatalf("put: %v", err)
	}

	s2 := testutil.RestartServer(t, s)
	if s2 == s || s.Running() {
		t.Fatal("RestartServer returned the old server or left it running")
	}
	if got := s2.ClientURL(); got != url {
		t.Fatalf("restarted server listens on %s, want %s", got, url)
	}
	// The old connection reconnects by itself and reads the kept value.
	testutil.WaitFor(t, 5*time.Second, func() bool { return get(kv, "k") == "v1" },
		"value not readable after restart through the reconnected client")

	// And a fresh client finds the bucket.
	_, js2 := testutil.Connect(t, url)
	kv2, err := js2.KeyValue(ctx, "restart")
	if err != nil {
		t.Fatalf("bucket lost in restart: %v", err)
	}
	if got := get(kv2, "k"); got != "v1" {
		t.Fatalf("got %q after restart, want v1", got)
	}
}

func TestRunServerOptions(t *testing.T) {
	s := testutil.RunServer(t, func(o *server.Options) { o.JetStream = false })
	if s.JetStreamEnabled() {
		t.Fatal("option function not applied: JetStream is on")
	}
}

func TestClusterFailoverAndCatchUp(t *testing.T) {
	c := testutil.NewCluster(t, 3)
	if c.N() != 3 || c.Leader() < 0 {
		t.Fatalf("cluster: %d nodes, meta leader %d", c.N(), c.Leader())
	}
	_, js := testutil.Connect(t, c.URLs())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var kv jetstream.KeyValue
	testutil.WaitFor(t, 10*time.Second, func() bool {
		var err error
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "ha", Replicas: 3})
		return err == nil
	}, "R3 bucket not created")
	if _, err := kv.Put(ctx, "k", []byte("v1")); err != nil {
		t.Fatalf("put: %v", err)
	}
	if got := get(kv, "k"); got != "v1" {
		t.Fatalf("get: %q, want v1", got)
	}

	const stream = "KV_ha"
	leader := -1
	testutil.WaitFor(t, 5*time.Second, func() bool {
		leader = c.StreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream)
		return leader >= 0
	}, "no stream leader for %s", stream)

	// Stop the stream leader: writes must go on.
	c.StopNode(leader)
	if c.Server(leader).Running() {
		t.Fatal("StopNode left the node running")
	}
	var rev uint64
	testutil.WaitFor(t, 10*time.Second, func() bool {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		defer pcancel()
		r, err := kv.Put(pctx, "k", []byte("v2"))
		rev = r
		return err == nil
	}, "no write accepted after stopping the stream leader")
	testutil.WaitFor(t, 5*time.Second, func() bool {
		l := c.StreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream)
		return l >= 0 && l != leader
	}, "no new stream leader")

	// Restart it: it catches up and serves the key to its own clients.
	old := c.Server(leader)
	c.RestartNode(leader)
	restarted := c.Server(leader)
	if restarted == old || !restarted.Running() || !restarted.JetStreamIsCurrent() {
		t.Fatal("RestartNode did not leave a new, running, current server")
	}
	testutil.WaitFor(t, 15*time.Second, func() bool { return localLastSeq(restarted, stream) >= rev },
		"restarted node did not catch up to revision %d", rev)

	_, js2 := testutil.Connect(t, c.URL(leader))
	var kv2 jetstream.KeyValue
	testutil.WaitFor(t, 5*time.Second, func() bool {
		var err error
		kv2, err = js2.KeyValue(ctx, "ha")
		return err == nil
	}, "bucket not visible from the restarted node")
	if got := get(kv2, "k"); got != "v2" {
		t.Fatalf("restarted node's client reads %q, want v2", got)
	}
	if _, err := kv2.Put(ctx, "k2", []byte("x")); err != nil {
		t.Fatalf("write through the restarted node: %v", err)
	}
}

func TestWaitForAndEventually(t *testing.T) {
	n := 0
	testutil.WaitFor(t, time.Second, func() bool { n++; return n >= 3 }, "never")
	if n != 3 {
		t.Fatalf("cond evaluated %d times, want 3", n)
	}
	start := time.Now()
	if testutil.Eventually(30*time.Millisecond, func() bool { return false }) {
		t.Fatal("Eventually returned true for a false condition")
	}
	if el := time.Since(start); el < 30*time.Millisecond {
		t.Fatalf("Eventually gave up after %s", el)
	}
}
