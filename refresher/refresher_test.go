package refresher_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

func TestFirstFetchLandsInKV(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp-main")
	events := subscribeEvents(t, e.NC, "mp-main")
	before := time.Now()
	e.Start(e.Config(app))

	rec, rev := e.WaitRecord(5*time.Second, "mp-main", func(contract.Record, uint64) bool { return true })
	classic, _ := e.Sim.LastToken(app.AppID)
	if rec.AccessToken != classic || classic == "" {
		t.Fatalf("stored token %q is not the emulator's %q", rec.AccessToken, classic)
	}
	if rec.App != "mp-main" || rec.Source != contract.SourceStartup {
		t.Errorf("record app=%q source=%q, want mp-main/startup", rec.App, rec.Source)
	}
	if rec.FetchedAt.Before(before.Add(-time.Second)) || rec.FetchedAt.After(time.Now()) {
		t.Errorf("fetched_at %v is not about now", rec.FetchedAt)
	}
	if life := rec.ExpiresAt.Sub(rec.FetchedAt); life != time.Hour {
		t.Errorf("lifetime %v, want 1h (expires_in of the emulator)", life)
	}
	if rec.ExpiresAt.Location() != time.UTC {
		t.Errorf("expires_at not in UTC: %v", rec.ExpiresAt)
	}
	if err := e.Sim.Check(rec.AccessToken); err != nil {
		t.Errorf("stored token is not valid upstream: %v", err)
	}
	ev := nextEvent(t, events)
	if ev.Revision != rev || ev.App != "mp-main" || ev.Source != contract.SourceStartup || !ev.ExpiresAt.Equal(rec.ExpiresAt) {
		t.Errorf("event %+v does not match the record (revision %d)", ev, rev)
	}
	if got := e.Sim.Fetches(app.AppID); got != 1 {
		t.Errorf("upstream fetches = %d, want 1", got)
	}
}

type rawEvent struct {
	contract.Event
	raw map[string]any
}

func subscribeEvents(t *testing.T, nc *nats.Conn, app string) chan rawEvent {
	t.Helper()
	ch := make(chan rawEvent, 100)
	sub, err := nc.Subscribe(contract.UpdatedSubject(app), func(m *nats.Msg) {
		var ev rawEvent
		if err := json.Unmarshal(m.Data, &ev.Event); err != nil {
			t.Errorf("event does not parse: %v", err)
		}
		_ = json.Unmarshal(m.Data, &ev.raw)
		ch <- ev
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return ch
}

func nextEvent(t *testing.T, ch chan rawEvent) rawEvent {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no token.updated event within 5s")
	}
	return rawEvent{}
}

func TestRefreshHappensBeforeExpiryAndEventCarriesNoToken(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: 3 * time.Second, Grace: time.Second}})
	app := e.App("short")
	events := subscribeEvents(t, e.NC, "short")
	e.Start(e.Config(app))

	first := nextEvent(t, events)
	second := nextEvent(t, events)
	if second.Revision <= first.Revision {
		t.Fatalf("revisions did not grow: %d then %d", first.Revision, second.Revision)
	}
	if !second.FetchedAt.Before(first.ExpiresAt) {
		t.Fatalf("refresh at %v came after the old token expired at %v", second.FetchedAt, first.ExpiresAt)
	}
	if second.Source != contract.SourceScheduled {
		t.Errorf("source %q, want scheduled", second.Source)
	}
	for _, ev := range []rawEvent{first, second} {
		for k := range ev.raw {
			if strings.Contains(strings.ToLower(k), "token") {
				t.Errorf("event carries key %q: %v", k, ev.raw)
			}
		}
		if len(ev.raw) != 5 {
			t.Errorf("event keys %v, want app, revision, expires_at, fetched_at, source", ev.raw)
		}
	}
	rec, rev, _ := e.Record(contract.DefaultBucket, "short")
	if rev < second.Revision {
		t.Fatalf("KV revision %d behind the event's %d", rev, second.Revision)
	}
	if err := e.Sim.Check(rec.AccessToken); err != nil {
		t.Fatalf("stored token rejected upstream: %v", err)
	}
}

func TestRestartReusesStoredToken(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp-main")
	cfg := e.Config(app)
	rep := e.Start(cfg)
	rec, rev := e.WaitRecord(5*time.Second, "mp-main", func(contract.Record, uint64) bool { return true })
	if err := rep.Stop(); err != nil {
		t.Fatal(err)
	}
	fetches := e.Sim.Fetches(app.AppID)

	rep2 := e.Start(cfg)
	testutil.WaitFor(t, 5*time.Second, rep2.R.Leader, "restarted refresher did not take the lease")
	// Ask it for a token the way a service does: it must answer with the
	// stored one, without fetching.
	got, err := rep2.R.Refresh(context.Background(), "mp-main", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Revision != rev || got.AccessToken != rec.AccessToken {
		t.Fatalf("after restart got revision %d, want the stored %d", got.Revision, rev)
	}
	// Several planner passes (tick every second, plus the wake on
	// leadership) must not fetch either.
	for range 3 {
		rep2.R.Tick()
	}
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if n := e.Sim.Fetches(app.AppID); n != fetches {
			t.Fatalf("restart fetched: %d upstream fetches, want %d", n, fetches)
		}
		time.Sleep(10 * time.Millisecond)
	}
	st := rep2.R.Statuses()
	if len(st) != 1 || st[0].Revision != rev || !st[0].RefreshAt.After(time.Now()) {
		t.Fatalf("status after restart %+v, want revision %d and a future refresh", st, rev)
	}
}

func TestUpstreamOutageKeepsOldToken(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: 4 * time.Second, Grace: 4 * time.Second}})
	app := e.App("mp")
	rep := e.Start(e.Config(app))
	rec, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })

	e.Sim.SetFault(wechatsim.Fault{HTTP5xx: -1})
	testutil.WaitFor(t, 8*time.Second, func() bool {
		st := rep.R.Statuses()
		return st[0].Failures >= 2
	}, "refresh did not fail during the outage")
	got, gotRev, ok := e.Record(contract.DefaultBucket, "mp")
	if !ok || gotRev != rev || got.AccessToken != rec.AccessToken || got.AccessToken == "" {
		t.Fatalf("during the outage the record changed: rev %d→%d, token kept %v", rev, gotRev, got.AccessToken == rec.AccessToken)
	}
	st := rep.R.Statuses()[0]
	if !strings.Contains(st.LastError, "502") {
		t.Errorf("last error %q does not say what failed", st.LastError)
	}
	// Wait past the expiry: the record stays (expired), never blanked.
	testutil.WaitFor(t, 6*time.Second, func() bool { return time.Now().After(rec.ExpiresAt) }, "clock")
	got, gotRev, _ = e.Record(contract.DefaultBucket, "mp")
	if gotRev != rev || got.AccessToken != rec.AccessToken {
		t.Fatal("an expired token was deleted or blanked during the outage")
	}

	e.Sim.SetFault(wechatsim.Fault{})
	rec2, _ := e.WaitRecord(10*time.Second, "mp", func(_ contract.Record, v uint64) bool { return v > rev })
	if err := e.Sim.Check(rec2.AccessToken); err != nil {
		t.Fatalf("token after recovery rejected: %v", err)
	}
}

func TestLongTokenStoredIntact(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour, TokenLength: 2048}})
	app := e.App("long")
	e.Start(e.Config(app))
	rec, _ := e.WaitRecord(5*time.Second, "long", func(contract.Record, uint64) bool { return true })
	want, _ := e.Sim.LastToken(app.AppID)
	if len(rec.AccessToken) != 2048 || rec.AccessToken != want {
		t.Fatalf("stored token of %d chars differs from the issued one of %d", len(rec.AccessToken), len(want))
	}
}

// TestConcurrentWritersConflictCleanly: another writer updates the key
// behind the refresher's back; the refresher's next write must not
// overwrite what it has not read, and must not lose its own token either.
func TestConcurrentWritersConflictCleanly(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	rep := e.Start(e.Config(app))
	_, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })

	kv, err := e.JS.KeyValue(context.Background(), contract.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	// Writers racing with plain revision-checked updates: exactly one of
	// several writers of the same revision wins.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, conflicts := 0, 0
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, _ := json.Marshal(contract.Record{App: "mp", AccessToken: "other-writer-" + string(rune('a'+i)),
				FetchedAt: time.Now().UTC().Add(-time.Hour), ExpiresAt: time.Now().UTC().Add(time.Minute), Source: "manual"})
			_, err := kv.Update(context.Background(), "mp", v, rev)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, jetstream.ErrKeyRevisionMismatch):
				conflicts++
			default:
				t.Errorf("update: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || conflicts != 7 {
		t.Fatalf("wins=%d conflicts=%d, want 1 and 7", wins, conflicts)
	}
	// The refresher saw the other write; a forced refresh of that
	// revision writes over it (revision-checked), with a newer token.
	_, rev2, _ := e.Record(contract.DefaultBucket, "mp")
	testutil.WaitFor(t, 5*time.Second, func() bool { return rep.R.Statuses()[0].Revision == rev2 }, "refresher did not follow the other writer")
	got, err := rep.R.Refresh(context.Background(), "mp", &rev2)
	if err != nil {
		t.Fatal(err)
	}
	if got.Revision <= rev2 || strings.HasPrefix(got.AccessToken, "other-writer") {
		t.Fatalf("refresh after the foreign write: %+v", got.Revision)
	}
	if err := e.Sim.Check(got.AccessToken); err != nil {
		t.Fatal(err)
	}
}

func TestSecretsNeverLeak(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	good := e.App("good")
	wrong := e.App("wrongsecret").WithSecret(harness.Secret("wxwrongsecret") + "-rotated")
	dead := e.App("deadhost")
	dead.APIBase = "http://127.0.0.1:1" // connection refused
	all := subscribeEvents(t, e.NC, "*")
	cfg := e.Config(good, wrong, dead)
	rep := e.Start(cfg)
	e.WaitRecord(5*time.Second, "good", func(contract.Record, uint64) bool { return true })
	e.Sim.SetFault(wechatsim.Fault{HTTP5xx: 1, Garbage: 1})
	testutil.WaitFor(t, 10*time.Second, func() bool {
		st := rep.R.Statuses()
		return st[0].Failures > 0 && st[2].Failures > 0
	}, "the bad apps did not fail")
	// A passive refresh of the good app through the faults.
	_, _ = rep.R.Refresh(context.Background(), "good", nil)
	_ = rep.Stop()

	secrets := []string{harness.Secret(good.AppID), harness.Secret(wrong.AppID), harness.Secret(dead.AppID), wrong.Secret()}
	haystacks := map[string]string{"logs": e.Logs.String()}
	for _, s := range rep.R.Statuses() {
		haystacks["status "+s.App] = s.LastError
	}
	kv, _ := e.JS.KeyValue(context.Background(), contract.DefaultBucket)
	keys, _ := kv.ListKeys(context.Background())
	for k := range keys.Keys() {
		ent, _ := kv.Get(context.Background(), k)
		haystacks["kv "+k] = string(ent.Value())
	}
	for drained := false; !drained; {
		select {
		case ev := <-all:
			b, _ := json.Marshal(ev.raw)
			haystacks["event"] += string(b)
		default:
			drained = true
		}
	}
	if haystacks["event"] == "" {
		t.Error("no events were captured to check")
	}
	for where, text := range haystacks {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("secret found in %s", where)
			}
		}
	}
	if !strings.Contains(haystacks["logs"], "errcode=40001") && !strings.Contains(haystacks["logs"], "errcode=40125") {
		t.Errorf("the wrong-secret failure is not logged with its errcode:\n%s", haystacks["logs"])
	}
	if !strings.Contains(haystacks["logs"], "alert=secret_wrong_or_rotated") {
		t.Errorf("the wrong secret does not raise its alert")
	}
	// The token itself appears only as a fingerprint.
	rec, _, _ := e.Record(contract.DefaultBucket, "good")
	if strings.Contains(haystacks["logs"], rec.AccessToken) {
		t.Error("a full token appears in the logs")
	}
	if !strings.Contains(haystacks["logs"], contract.Fingerprint(rec.AccessToken)) {
		t.Error("the token's fingerprint is not logged")
	}
}

// TestBucketAllowsManyWatchers: the refresher lifts the server's default
// of 1000 consumers per stream on the token bucket, so the 1001st
// watching service still gets a watch (docs/benchmarks.md, propagation).
func TestBucketAllowsManyWatchers(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	e.Start(e.Config(e.App("mp")))
	st, err := e.JS.Stream(context.Background(), "KV_"+contract.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().Config.MaxConsumers; n < 100000 {
		t.Fatalf("token bucket's stream allows %d consumers, want ≥ 100000", n)
	}
}
