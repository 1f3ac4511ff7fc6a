package follow_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/internal/follow"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

const bucketName = "tokens"

// seen is one event and when the test's reader received it.
type seen struct {
	follow.Event
	at time.Time
}

// recorder reads a Follower's events until they end.
type recorder struct {
	f    *follow.Follower
	mu   sync.Mutex
	all  []seen
	done chan struct{} // closed when Events was closed
}

// start starts a Follower on nc with cfg and records its events; it is
// stopped in t.Cleanup.
func start(t *testing.T, nc *nats.Conn, cfg follow.Config) *recorder {
	t.Helper()
	f, err := follow.Start(nc, cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	r := &recorder{f: f, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for ev := range f.Events() {
			r.mu.Lock()
			r.all = append(r.all, seen{ev, time.Now()})
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		f.Stop()
		if t.Failed() {
			t.Logf("events:\n%s", r)
		}
	})
	return r
}

// openKV is a Config.Open that looks the bucket up by name.
func openKV(js jetstream.JetStream, name string) func(context.Context) (jetstream.KeyValue, error) {
	return func(ctx context.Context) (jetstream.KeyValue, error) { return js.KeyValue(ctx, name) }
}

// events returns a copy of what was received so far.
func (r *recorder) events() []seen {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seen(nil), r.all...)
}

// entries returns the entries received so far.
func (r *recorder) entries() []seen {
	var out []seen
	for _, e := range r.events() {
		if e.Kind == follow.Entry {
			out = append(out, e)
		}
	}
	return out
}

// count counts the events of kind k whose error matches target (any if
// nil).
func (r *recorder) count(k follow.Kind, target error) int {
	n := 0
	for _, e := range r.events() {
		if e.Kind == k && (target == nil || errors.Is(e.Err, target)) {
			n++
		}
	}
	return n
}

// last returns when the last event of kind k whose error matches target
// arrived.
func (r *recorder) last(k follow.Kind, target error) (time.Time, bool) {
	evs := r.events()
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Kind == k && (target == nil || errors.Is(evs[i].Err, target)) {
			return evs[i].at, true
		}
	}
	return time.Time{}, false
}

// find returns the first entry of key at revision rev or later.
func (r *recorder) find(key string, rev uint64) (seen, bool) {
	for _, e := range r.entries() {
		if e.Entry.Key() == key && e.Entry.Revision() >= rev {
			return e, true
		}
	}
	return seen{}, false
}

// waitEntry waits up to limit for an entry of key at revision rev or
// later and returns it.
func (r *recorder) waitEntry(t *testing.T, key string, rev uint64, limit time.Duration) seen {
	t.Helper()
	var got seen
	testutil.WaitFor(t, limit, func() bool {
		var ok bool
		got, ok = r.find(key, rev)
		return ok
	}, "no entry of %q at revision >= %d", key, rev)
	return got
}

// String lists the events, for failure logs.
func (r *recorder) String() string {
	var b strings.Builder
	for _, e := range r.events() {
		fmt.Fprintf(&b, "  %s %s", e.at.Format("15:04:05.000"), e.Kind)
		switch e.Kind {
		case follow.Entry:
			fmt.Fprintf(&b, " %s@%d %s polled=%v", e.Entry.Key(), e.Entry.Revision(), e.Entry.Operation(), e.Polled)
		case follow.Problem:
			fmt.Fprintf(&b, " %v", e.Err)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// checkOrder fails t unless every key's entries came in strictly
// increasing revision order (within one bucket incarnation).
func checkOrder(t *testing.T, r *recorder) {
	t.Helper()
	last := map[string]uint64{}
	for _, e := range r.events() {
		switch e.Kind {
		case follow.Reset:
			last = map[string]uint64{}
		case follow.Entry:
			k := e.Entry.Key()
			if e.Entry.Revision() <= last[k] {
				t.Errorf("%s@%d handed over after revision %d", k, e.Entry.Revision(), last[k])
			}
			last[k] = e.Entry.Revision()
		}
	}
}

// newBucket creates the bucket with replicas copies (history 1).
func newBucket(t *testing.T, js jetstream.JetStream, replicas int) jetstream.KeyValue {
	t.Helper()
	var kv jetstream.KeyValue
	// The first R3 bucket of a fresh cluster may need a retry.
	testutil.WaitFor(t, 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucketName, History: 1, Replicas: replicas})
		return err == nil
	}, "cannot create bucket %s", bucketName)
	return kv
}

// put writes val under key, retrying until the bucket takes it (a server
// that restarts, a cluster electing leaders), and returns the revision and
// when the put returned: the earliest moment a follower can have it.
func put(t *testing.T, kv jetstream.KeyValue, key, val string) (uint64, time.Time) {
	t.Helper()
	var rev uint64
	var at time.Time
	testutil.WaitFor(t, 20*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		var err error
		rev, err = kv.PutString(ctx, key, val)
		at = time.Now()
		return err == nil
	}, "cannot put %s", key)
	return rev, at
}

// newConsumer waits for a consumer that is not in before and returns its
// name and leader.
func newConsumer(t *testing.T, js jetstream.JetStream, before map[string]string) (name, leader string) {
	t.Helper()
	testutil.WaitFor(t, 10*time.Second, func() bool {
		for n, l := range testutil.Consumers(t, js, "KV_"+bucketName, "") {
			if _, old := before[n]; !old {
				name, leader = n, l
				return true
			}
		}
		return false
	}, "no new consumer")
	return name, leader
}

// fmtStale formats a measured staleness (the recorder timestamps each
// event as it arrives). A watch may deliver an entry before the put's
// acknowledgement reaches the writer: that counts as 0.
func fmtStale(d time.Duration) string {
	d = max(d, 0)
	if d < time.Millisecond {
		return d.Round(time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}
