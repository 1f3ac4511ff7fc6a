package refresher_test

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// requestLoop sends token.refresh.<app> requests (empty body: "give me a
// valid token") until stop is called, and hands every successful reply to
// check. stop returns the number of successful replies; it is called at
// the end of the test at the latest.
func requestLoop(t *testing.T, nc *nats.Conn, app string, check func(contract.RefreshReply)) (stop func() int) {
	t.Helper()
	done := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			m, err := nc.Request(contract.RefreshSubject(app), nil, 2*time.Second)
			if err != nil || m.Header.Get("Nats-Service-Error-Code") != "" {
				continue // no responder during a handover, or an error reply: neither serves a record
			}
			var rep contract.RefreshReply
			if err := json.Unmarshal(m.Data, &rep); err != nil {
				t.Errorf("refresh reply does not parse: %v", err)
				continue
			}
			check(rep)
			mu.Lock()
			ok++
			mu.Unlock()
		}
	}()
	var once sync.Once
	stop = func() int {
		once.Do(func() { close(done) })
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return ok
	}
	t.Cleanup(func() { stop() }) // also when the test fails early
	return stop
}

// TestInvalidStoredRecordIsReplaced: a record that is not a usable token
// (empty token, another app's record, expires_at before fetched_at,
// expires_at ten years out), written straight into the bucket by a plain
// NATS client, is treated as missing: the leader fetches and writes a
// valid token over it at once, raises ALERT invalid_record, and no
// token.refresh reply ever carries the bad record. Before, such a record
// was adopted and served until it fell due (for most of these, never).
func TestInvalidStoredRecordIsReplaced(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	reg := prometheus.NewRegistry()
	e.Start(e.Config(app), refresher.WithObserver(refresher.NewMetrics(reg)))
	e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	kv, err := e.JS.KeyValue(context.Background(), contract.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}

	const badToken = "BAD-RECORD-TOKEN-must-never-be-served"
	now := time.Now().UTC()
	alerts := 0
	for _, tc := range []struct {
		name    string
		rec     contract.Record
		problem string
	}{
		{"empty token", contract.Record{App: "mp", FetchedAt: now, ExpiresAt: now.Add(time.Hour), Source: "manual"}, "empty access_token"},
		{"wrong app", contract.Record{App: "other-app", AccessToken: badToken, FetchedAt: now, ExpiresAt: now.Add(time.Hour), Source: "manual"}, "is not the key"},
		{"expires before fetched", contract.Record{App: "mp", AccessToken: badToken, FetchedAt: now.Add(2 * time.Hour), ExpiresAt: now.Add(time.Hour), Source: "manual"}, "is before fetched_at"},
		{"expires ten years out", contract.Record{App: "mp", AccessToken: badToken, FetchedAt: now, ExpiresAt: now.AddDate(10, 0, 0), Source: "manual"}, "lifetime"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			val, _ := json.Marshal(tc.rec)
			badRev, err := kv.Put(context.Background(), "mp", val)
			if err != nil {
				t.Fatal(err)
			}
			var served atomic.Int64
			stop := requestLoop(t, e.NC, "mp", func(rep contract.RefreshReply) {
				if rep.Revision == badRev || rep.AccessToken == badToken || rep.AccessToken == "" || rep.App != "mp" {
					if served.Add(1) == 1 {
						t.Errorf("token.refresh served the invalid record (revision %d, app %q)", rep.Revision, rep.App)
					}
				}
			})
			var rec contract.Record
			var rev uint64
			testutil.WaitFor(t, 5*time.Second, func() bool {
				var ok bool
				rec, rev, ok = e.Record(contract.DefaultBucket, "mp")
				return ok && rev > badRev
			}, "the invalid record at revision %d was not replaced", badRev)
			if n := stop(); n == 0 {
				t.Log("no request was answered while the invalid record was stored")
			}
			if err := rec.Validate("mp", contract.MaxTokenLifetime); err != nil {
				t.Fatalf("the replacement is not valid either: %v", err)
			}
			if err := e.Sim.Check(rec.AccessToken); err != nil {
				t.Fatalf("the replacement is not a live upstream token: %v", err)
			}
			// A request now gets the replacement.
			m, err := e.NC.Request(contract.RefreshSubject("mp"), nil, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			var rep contract.RefreshReply
			if err := json.Unmarshal(m.Data, &rep); err != nil || rep.Revision != rev || rep.AccessToken != rec.AccessToken {
				t.Fatalf("token.refresh after the replacement = revision %d (%v), want %d", rep.Revision, err, rev)
			}
			alerts++
			if n := alertCount(t, reg, "mp", refresher.AlertInvalidRecord); n < float64(alerts) {
				t.Errorf("tokenkeeper_alerts_total{alert=invalid_record} = %v after %d invalid records", n, alerts)
			}
			alerted := false
			for line := range strings.SplitSeq(e.Logs.String(), "\n") {
				if strings.Contains(line, "ALERT invalid_record") && strings.Contains(line, "app=mp") &&
					strings.Contains(line, fmt.Sprintf("revision=%d ", badRev)) && strings.Contains(line, tc.problem) {
					alerted = true
				}
			}
			if !alerted {
				t.Errorf("no ALERT invalid_record line for revision %d saying %q", badRev, tc.problem)
			}
			if strings.Contains(e.Logs.String(), badToken) {
				t.Error("the invalid record's token appears in the logs")
			}
		})
	}
}

// cstDay is WeChat's day (China Standard Time) of t as yyyymmdd, the Day
// of an contract.AppState.
func cstDay(t time.Time) int {
	y, m, d := t.In(time.FixedZone("CST", 8*3600)).Date()
	return y*10000 + int(m)*100 + d
}

// storedState reads app's state from the state bucket.
func storedState(t *testing.T, kv jetstream.KeyValue, app string) (contract.AppState, bool) {
	t.Helper()
	e, err := kv.Get(context.Background(), app)
	if err != nil {
		return contract.AppState{}, false
	}
	var s contract.AppState
	if err := json.Unmarshal(e.Value(), &s); err != nil {
		t.Fatalf("stored state does not parse: %v", err)
	}
	return s, true
}

// TestStateWriteNeverLowersCount: another replica (a deposed leader, or
// the one that took over) stores a higher count of today's upstream calls
// behind this refresher's back; when the refresher then saves its own,
// lower count, the stored count is not lowered: the write is
// revision-checked, and on the conflict the refresher merges the stored
// state (the larger count of the day wins). Before, a plain Put
// overwrote the count.
func TestStateWriteNeverLowersCount(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	rep := e.Start(e.Config(app))
	_, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	kv, err := e.JS.KeyValue(context.Background(), contract.StateBucket(contract.DefaultBucket))
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, func() bool {
		s, ok := storedState(t, kv, "mp")
		return ok && s.Replica == rep.R.ID() && s.Calls == 1
	}, "the refresher did not store its first count")

	const higher = 50
	now := time.Now()
	other, _ := json.Marshal(contract.AppState{App: "mp", Day: cstDay(now), Calls: higher, Quota: 2000,
		Replica: "another-replica", UpdatedAt: now.UTC()})
	if _, err := kv.Put(context.Background(), "mp", other); err != nil {
		t.Fatal(err)
	}
	// One more upstream call: the refresher counts 2 and saves.
	if _, err := rep.R.Refresh(context.Background(), "mp", &rev); err != nil {
		t.Fatal(err)
	}
	var s contract.AppState
	testutil.WaitFor(t, 5*time.Second, func() bool {
		var ok bool
		s, ok = storedState(t, kv, "mp")
		return ok && s.Replica == rep.R.ID()
	}, "the refresher did not save its state after the call")
	if s.Calls < higher {
		t.Fatalf("the refresher lowered the stored count of today's calls from %d to %d", higher, s.Calls)
	}
	if got := rep.R.Statuses()[0].CallsToday; got < higher {
		t.Errorf("the refresher's own count is %d after the merge, want at least %d", got, higher)
	}
}

// TestLostLeaseBucketRecovered: the lease bucket is deleted under two
// running replicas. They re-provision it (same config) and one of them
// takes the lease in it within seconds — no restart, never two leaders at
// once, no fetch of the still-valid token — and the new leader serves
// token.refresh. Before, every replica stayed leaderless for good (its
// Create on the missing bucket failed forever) while /readyz stayed
// green.
func TestLostLeaseBucketRecovered(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	cfg := e.Config(app)
	// Distinct ids: the default id is the same for replicas of one process.
	reps := []*harness.Replica{e.Start(cfg, refresher.WithReplicaID("replica-a")), e.Start(cfg, refresher.WithReplicaID("replica-b"))}
	_, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	testutil.WaitFor(t, 5*time.Second, func() bool { n, _ := leaders(reps); return n == 1 }, "no single leader")
	fetches := e.Sim.Fetches(app.AppID)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leaseBucket := contract.LeaseBucket(contract.DefaultBucket)
	if err := e.JS.DeleteKeyValue(ctx, leaseBucket); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	var lkv jetstream.KeyValue
	var holder string
	testutil.WaitFor(t, cfg.LeaseTTL+8*time.Second, func() bool {
		n, leader := leaders(reps)
		if n > 1 {
			t.Errorf("%d replicas lead at once after the lease bucket was lost", n)
		}
		kv, err := e.JS.KeyValue(ctx, leaseBucket)
		if err != nil || n != 1 {
			return false
		}
		ent, err := kv.Get(ctx, contract.LeaseKey)
		if err != nil {
			return false
		}
		var lr contract.LeaseRecord
		if json.Unmarshal(ent.Value(), &lr) != nil || lr.ID != leader.R.ID() {
			return false
		}
		lkv, holder = kv, lr.ID
		return true
	}, "no replica took the lease again after the lease bucket was lost")
	t.Logf("leader %s again %s after the lease bucket was deleted (lease_ttl %s)", holder, time.Since(deleted).Round(time.Millisecond), cfg.LeaseTTL)

	st, err := lkv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != cfg.LeaseTTL || st.History() != 1 {
		t.Errorf("re-provisioned lease bucket: ttl %s history %d, want %s and 1", st.TTL(), st.History(), cfg.LeaseTTL)
	}
	if n := e.Sim.Fetches(app.AppID); n != fetches {
		t.Errorf("the lease recovery fetched the still-valid token: %d fetches, want %d", n, fetches)
	}
	// The leader serves token.refresh: a rejected revision is replaced.
	// (Right after a change of leader, the old one may still answer "not
	// the leader" for a moment; clients retry, and so does this.)
	body, _ := json.Marshal(contract.RefreshRequest{StaleRevision: &rev})
	var last string
	if !testutil.Eventually(5*time.Second, func() bool {
		m, err := e.NC.Request(contract.RefreshSubject("mp"), body, 2*time.Second)
		if err != nil {
			last = err.Error()
			return false
		}
		last = string(m.Data)
		var rep contract.RefreshReply
		return m.Header.Get("Nats-Service-Error-Code") == "" && json.Unmarshal(m.Data, &rep) == nil &&
			rep.Revision > rev && e.Sim.Check(rep.AccessToken) == nil
	}) {
		t.Fatalf("token.refresh is not served after the recovery (last reply %s)", last)
	}
	for _, r := range reps {
		h := r.R.HealthHandler()
		testutil.WaitFor(t, 5*time.Second, func() bool { c, _ := healthReadiness(t, h); return c == http.StatusOK },
			"replica %s not ready after the lease recovery", r.R.ID())
	}
}

// TestLostTokensBucketRecovered: the token bucket (and the state bucket)
// is deleted under a running leader and follower. The leader re-creates
// both (same config) and writes a valid token again within seconds, the
// follower follows the new bucket, and the quota count is written again.
// Then the bucket vanishes while a fetch is in flight: the fetched token
// is stored in the re-created bucket rather than dropped as a failed
// refresh. Before, refreshing stopped until a restart: the write's "no
// response from stream" was a permanent failure.
func TestLostTokensBucketRecovered(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	cfg := e.Config(app)
	reps := []*harness.Replica{e.Start(cfg, refresher.WithReplicaID("replica-a")), e.Start(cfg, refresher.WithReplicaID("replica-b"))}
	_, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	var leader, follower *harness.Replica
	testutil.WaitFor(t, 5*time.Second, func() bool {
		n, l := leaders(reps)
		leader = l
		return n == 1
	}, "no single leader")
	follower = reps[0]
	if follower == leader {
		follower = reps[1]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	deleteBuckets := func() {
		t.Helper()
		for _, b := range []string{contract.DefaultBucket, contract.StateBucket(contract.DefaultBucket)} {
			if err := e.JS.DeleteKeyValue(ctx, b); err != nil {
				t.Fatalf("delete %s: %v", b, err)
			}
		}
	}

	// 1. Lost while idle.
	deleteBuckets()
	deleted := time.Now()
	var rec contract.Record
	testutil.WaitFor(t, 10*time.Second, func() bool {
		var ok bool
		rec, rev, ok = e.Record(contract.DefaultBucket, "mp")
		return ok && e.Sim.Check(rec.AccessToken) == nil && rec.Validate("mp", contract.MaxTokenLifetime) == nil
	}, "no valid token in a re-created token bucket")
	t.Logf("a valid token at revision %d %s after the buckets were deleted", rev, time.Since(deleted).Round(time.Millisecond))
	stream, err := e.JS.Stream(ctx, "KV_"+contract.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	if sc := stream.CachedInfo().Config; sc.MaxConsumers < 100000 || sc.MaxMsgsPerSubject != 1 {
		t.Errorf("re-created token bucket: max consumers %d, history %d; want the startup config", sc.MaxConsumers, sc.MaxMsgsPerSubject)
	}
	testutil.WaitFor(t, 5*time.Second, func() bool {
		st := follower.R.Statuses()[0]
		return st.Revision == rev && st.Valid
	}, "the follower does not follow the re-created bucket")
	testutil.WaitFor(t, 5*time.Second, func() bool {
		skv, err := e.JS.KeyValue(ctx, contract.StateBucket(contract.DefaultBucket))
		if err != nil {
			return false // not re-created yet
		}
		s, ok := storedState(t, skv, "mp")
		return ok && s.Calls >= 2
	}, "today's upstream calls were not written into a re-created state bucket")

	// 2. Lost while a fetch is in flight: the write that finds the bucket
	// gone is retried on the re-created bucket.
	e.Sim.SetFault(wechatsim.Fault{Latency: time.Second})
	type result struct {
		rep contract.RefreshReply
		err error
	}
	done := make(chan result, 1)
	stale := rev
	go func() {
		rep, err := leader.R.Refresh(ctx, "mp", &stale)
		done <- result{rep, err}
	}()
	testutil.WaitFor(t, 5*time.Second, func() bool { return e.Sim.InFlight(app.AppID) == 1 }, "the forced refresh did not reach upstream")
	deleteBuckets()
	res := <-done
	e.Sim.SetFault(wechatsim.Fault{})
	if res.err != nil {
		t.Fatalf("a refresh whose bucket vanished during the fetch failed: %v", res.err)
	}
	if err := e.Sim.Check(res.rep.AccessToken); err != nil {
		t.Fatalf("the refresh answered a token upstream rejects: %v", err)
	}
	testutil.WaitFor(t, 5*time.Second, func() bool {
		r, _, ok := e.Record(contract.DefaultBucket, "mp")
		return ok && r.AccessToken == res.rep.AccessToken
	}, "the token fetched while the bucket vanished was not stored")
	if st := leader.R.Statuses()[0]; st.Failures != 0 || st.LastError != "" {
		t.Errorf("the lost bucket counted as a failed refresh: %+v", st)
	}
	// And token.refresh answers from the new bucket.
	m, err := e.NC.Request(contract.RefreshSubject("mp"), nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var rep contract.RefreshReply
	if err := json.Unmarshal(m.Data, &rep); err != nil || rep.AccessToken != res.rep.AccessToken {
		t.Fatalf("token.refresh after the recovery: %s", m.Data)
	}
}

// TestReadyzReflectsNoLeader: when no replica can hold the lease (here
// the lease bucket refuses every write: its max message size is lowered
// under the running refresher), the holder steps down and /readyz turns
// 503 with a failing "leader" check within lease_ttl plus a margin, while
// the token is still valid; when the lease can be taken again, the
// replica leads and is ready again. Before, /readyz stayed green with no
// leader.
func TestReadyzReflectsNoLeader(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	cfg := e.Config(e.App("mp"))
	rep := e.Start(cfg)
	h := rep.R.HealthHandler()
	testutil.WaitFor(t, 5*time.Second, func() bool { c, _ := healthReadiness(t, h); return c == http.StatusOK && rep.R.Leader() }, "not ready")

	prev := setMaxMsgSize(t, e.JS, contract.LeaseBucket(contract.DefaultBucket), 8) // no lease record fits
	blocked := time.Now()
	var c refresher.Check
	testutil.WaitFor(t, 2*cfg.LeaseTTL+5*time.Second, func() bool {
		code, rd := healthReadiness(t, h)
		c, _ = findCheck(rd, refresher.CheckLeader, "")
		return code == http.StatusServiceUnavailable && !c.OK
	}, "/readyz stays ready with no lease holder")
	t.Logf("not ready %s after the lease became unwritable: %s", time.Since(blocked).Round(time.Millisecond), c.Reason)
	if rep.R.Leader() {
		t.Error("the replica still leads with a lease it cannot renew")
	}
	if !strings.Contains(c.Reason, "lease") {
		t.Errorf("leader check reason %q does not speak of the lease", c.Reason)
	}
	if a, _ := findCheck(mustReadiness(t, h), refresher.CheckApp, "mp"); !a.OK {
		t.Errorf("the app check failed too (%+v): the leader check is what must fail here", a)
	}

	setMaxMsgSize(t, e.JS, contract.LeaseBucket(contract.DefaultBucket), prev)
	testutil.WaitFor(t, 2*cfg.LeaseTTL+5*time.Second, func() bool {
		code, _ := healthReadiness(t, h)
		return code == http.StatusOK && rep.R.Leader()
	}, "not leading and ready again once the lease could be written")
	if c, ok := findCheck(mustReadiness(t, h), refresher.CheckLeader, ""); !ok || !c.OK {
		t.Errorf("leader check while leading: %+v (present %v)", c, ok)
	}
}

// mustReadiness returns the /readyz report of h.
func mustReadiness(t *testing.T, h http.Handler) refresher.Readiness {
	t.Helper()
	_, rd := healthReadiness(t, h)
	return rd
}
