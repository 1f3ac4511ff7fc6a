package refresher_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// storedTokens follows the bucket and collects every distinct token
// written for app.
type storedTokens struct {
	mu     sync.Mutex
	tokens map[string]uint64
	order  []string
}

func followTokens(t *testing.T, e *harness.Env, app string) *storedTokens {
	t.Helper()
	st := &storedTokens{tokens: map[string]uint64{}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var kv jetstream.KeyValue
	testutil.WaitFor(t, 5*time.Second, func() bool {
		var err error
		kv, err = e.JS.KeyValue(ctx, contract.DefaultBucket)
		return err == nil
	}, "bucket never appeared")
	w, err := kv.Watch(ctx, app)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for ent := range w.Updates() {
			if ent == nil || ent.Operation() != jetstream.KeyValuePut {
				continue
			}
			var rec contract.Record
			if json.Unmarshal(ent.Value(), &rec) != nil {
				continue
			}
			st.mu.Lock()
			if _, dup := st.tokens[rec.AccessToken]; !dup {
				st.order = append(st.order, rec.AccessToken)
			}
			st.tokens[rec.AccessToken] = ent.Revision()
			st.mu.Unlock()
		}
	}()
	return st
}

func (s *storedTokens) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.tokens)
}

func leaders(reps []*harness.Replica) (n int, who *harness.Replica) {
	for _, r := range reps {
		if r.R.Leader() {
			n++
			who = r
		}
	}
	return n, who
}

// TestThreeReplicasOneFetcher: three replicas, short-lived tokens,
// passive requests hitting whoever serves them; across all of it at most
// one upstream call is ever in flight and every token fetched is stored
// (no duplicate fetches).
func TestThreeReplicasOneFetcher(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: 2 * time.Second, Grace: time.Second}})
	app := e.App("mp")
	cfg := e.Config(app)
	reps := []*harness.Replica{e.Start(cfg)}
	st := followTokens(t, e, "mp") // from revision 1: the watch sees every write
	reps = append(reps, e.Start(cfg), e.Start(cfg))
	// Several refresh cycles (refresh every ~1.3 s).
	testutil.WaitFor(t, 15*time.Second, func() bool { return st.count() >= 6 }, "tokens were not refreshed")
	if n, _ := leaders(reps); n != 1 {
		t.Fatalf("%d leaders, want 1", n)
	}
	// Stop the replicas before counting, so no fetch is in flight.
	for _, r := range reps {
		_ = r.Stop()
	}
	if m := e.Sim.MaxConcurrentFetches(app.AppID); m != 1 {
		t.Errorf("max concurrent upstream fetches = %d, want 1", m)
	}
	if issued, stored := e.Sim.Issued(app.AppID), st.count(); issued != stored {
		t.Errorf("upstream issued %d tokens, %d were stored: duplicate fetches", issued, stored)
	}
}

// TestHandover: a graceful stop hands the lease to a follower at once; a
// replica whose connection dies (as after SIGKILL) is replaced within
// lease_ttl plus a second. The new leader does not re-fetch a token that
// is still valid.
func TestHandover(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	cfg := e.Config(app)
	reps := []*harness.Replica{e.Start(cfg), e.Start(cfg), e.Start(cfg)}
	e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	testutil.WaitFor(t, 5*time.Second, func() bool { n, _ := leaders(reps); return n == 1 }, "no single leader")
	fetches := e.Sim.Fetches(app.AppID)

	_, old := leaders(reps)
	start := time.Now()
	if err := old.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	testutil.WaitFor(t, 5*time.Second, func() bool { n, _ := leaders(reps); return n == 1 }, "no follower took over after a graceful stop")
	graceful := time.Since(stopped)
	t.Logf("graceful handover: %v after Stop returned (Stop took %v)", graceful.Round(time.Millisecond), stopped.Sub(start).Round(time.Millisecond))
	if graceful > 500*time.Millisecond {
		t.Errorf("graceful handover took %v, want under 500ms", graceful)
	}

	_, old = leaders(reps)
	start = time.Now()
	old.Kill()
	testutil.WaitFor(t, cfg.LeaseTTL+3*time.Second, func() bool { n, _ := leaders(reps); return n == 1 }, "no follower took over after a crash")
	crash := time.Since(start)
	t.Logf("crash failover: %v (lease_ttl %v)", crash.Round(time.Millisecond), cfg.LeaseTTL)
	if crash > cfg.LeaseTTL+time.Second {
		t.Errorf("crash failover took %v, want under lease_ttl+1s = %v", crash, cfg.LeaseTTL+time.Second)
	}
	_, leader := leaders(reps)
	if st := leader.R.Statuses(); st[0].Revision == 0 {
		t.Fatal("new leader has no warm state")
	}
	if n := e.Sim.Fetches(app.AppID); n != fetches {
		t.Errorf("new leaders fetched a still-valid token: %d fetches, want %d", n, fetches)
	}
}

// TestFollowerDoesNotFetch: a follower asked directly says so and fetches
// nothing, unless the stored token already answers.
func TestFollowerDoesNotFetch(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	cfg := e.Config(app)
	a, b := e.Start(cfg), e.Start(cfg)
	_, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	testutil.WaitFor(t, 5*time.Second, func() bool { return a.R.Leader() != b.R.Leader() }, "no single leader")
	follower := a
	if a.R.Leader() {
		follower = b
	}
	testutil.WaitFor(t, 5*time.Second, func() bool { return follower.R.Statuses()[0].Revision == rev }, "follower not warm")
	fetches := e.Sim.Fetches(app.AppID)
	if _, err := follower.R.Refresh(context.Background(), "mp", &rev); err != refresher.ErrNotLeader {
		t.Fatalf("follower Refresh(stale) = %v, want ErrNotLeader", err)
	}
	got, err := follower.R.Refresh(context.Background(), "mp", nil)
	if err != nil || got.Revision != rev {
		t.Fatalf("follower Refresh(nil) = %v, %v; want the stored record", got.Revision, err)
	}
	if n := e.Sim.Fetches(app.AppID); n != fetches {
		t.Fatalf("a follower fetched")
	}
}
