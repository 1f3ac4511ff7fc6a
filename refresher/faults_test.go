package refresher_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// callLog records every token call the emulator answered, with its send
// time (the moment the call arrived).
type callLog struct {
	mu    sync.Mutex
	calls []simCall
}

type simCall struct {
	at time.Time
	wechatsim.Call
}

func (l *callLog) record(c wechatsim.Call) {
	if c.Path != "/cgi-bin/token" && c.Path != "/cgi-bin/stable_token" {
		return
	}
	l.mu.Lock()
	l.calls = append(l.calls, simCall{time.Now().Add(-c.Duration), c})
	l.mu.Unlock()
}

func (l *callLog) all() []simCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]simCall(nil), l.calls...)
}

// TestPartitionedLeaderMakesNoUpstreamCall: the leader is retrying a
// failing fetch when its NATS link is blackholed. Another replica takes
// over and stores a new token. The old leader's retries must not reach
// WeChat any more: each attempt needs the lease's trust window, which the
// partition lets run out. Before, its next attempt got a token that
// invalidated the stored one (two issued, one stored).
func TestPartitionedLeaderMakesNoUpstreamCall(t *testing.T) {
	var calls callLog
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour, Grace: 300 * time.Millisecond, OnCall: calls.record}})
	app := e.App("mp")
	proxy := testutil.NewProxy(t, e.Server.Addr().String())
	cfgA := e.Config(app)
	cfgA.NATS.URL = proxy.URL()
	// A slow retry loop: up to 40 attempts 200 ms apart, about 8 s.
	slow := wechat.New(wechat.WithRetry(wechat.RetryPolicy{Attempts: 40, Base: 200 * time.Millisecond, Max: 200 * time.Millisecond}),
		wechat.WithTimeout(2*time.Second))
	a := e.Start(cfgA, refresher.WithReplicaID("a"), refresher.WithUpstream(slow))
	_, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	testutil.WaitFor(t, 5*time.Second, a.R.Leader, "a never led")
	b := e.Start(e.Config(app), refresher.WithReplicaID("b"))

	// a starts a fetch that upstream keeps refusing with -1 (retryable).
	e.Sim.SetFault(wechatsim.Fault{Busy: -1})
	n0 := len(calls.all())
	done := make(chan error, 1)
	go func() {
		_, err := a.R.Refresh(context.Background(), "mp", &rev)
		done <- err
	}()
	testutil.WaitFor(t, 5*time.Second, func() bool { return len(calls.all()) > n0 }, "a made no upstream attempt")

	// Partition a from NATS while it retries.
	proxy.Blackhole()
	cut := time.Now()
	testutil.WaitFor(t, 10*time.Second, b.R.Leader, "b did not take over from the partitioned leader")
	t.Logf("b leads %v after the partition", time.Since(cut).Round(time.Millisecond))

	// Upstream recovers; b refreshes the rejected revision and stores.
	e.Sim.SetFault(wechatsim.Fault{})
	rep, err := b.R.Refresh(context.Background(), "mp", &rev)
	if err != nil {
		t.Fatalf("b's refresh: %v", err)
	}
	stored := rep.AccessToken

	// a's fetch must end without a token: its attempts stop at the lease.
	select {
	case err := <-done:
		if !errors.Is(err, refresher.ErrNotLeader) {
			t.Errorf("a's refresh ended with %v, want ErrNotLeader", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("a's fetch did not end")
	}
	proxy.Restore()

	if issued := e.Sim.Issued(app.AppID); issued != 2 {
		t.Errorf("upstream issued %d tokens, want 2 (the first, and b's): a partitioned leader fetched", issued)
	}
	// Past the emulator's grace, the stored token must still be valid.
	testutil.WaitFor(t, 5*time.Second, func() bool {
		cur, _ := e.Sim.LastToken(app.AppID)
		return cur == stored
	}, "the stored token is not the newest upstream issued")
	if err := e.Sim.Check(stored); err != nil {
		t.Errorf("the stored token is rejected upstream: %v", err)
	}
	// No call reached upstream from a after b took over: every call after
	// the partition plus a's trust window (3/4 lease_ttl) is b's one fetch.
	late := 0
	for _, c := range calls.all() {
		if c.at.After(cut.Add(cfgA.LeaseTTL * 3 / 4)) {
			late++
		}
	}
	if late != 1 {
		t.Errorf("%d upstream calls after a's trust window closed, want 1 (b's)", late)
	}
}

// TestFetchedAtIsSendTimeOfSuccessfulAttempt: with retries, fetched_at is
// when the attempt that got the token was sent, not when the first one
// was (that would make expires_at late by the retries' time).
func TestFetchedAtIsSendTimeOfSuccessfulAttempt(t *testing.T) {
	var calls callLog
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour, OnCall: calls.record}})
	app := e.App("mp")
	e.Sim.SetFault(wechatsim.Fault{Busy: 4})
	// Backoffs are drawn in [0, 1s): four of them add up to well over
	// the 200 ms this test needs to tell attempts apart.
	c := wechat.New(wechat.WithRetry(wechat.RetryPolicy{Attempts: 6, Base: time.Second, Max: time.Second}))
	e.Start(e.Config(app), refresher.WithUpstream(c))
	rec, _ := e.WaitRecord(10*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	cs := calls.all()
	if len(cs) != 5 {
		t.Fatalf("%d upstream calls, want 5 (four busy, one token)", len(cs))
	}
	ok := cs[4].at
	if ok.Sub(cs[0].at) < 200*time.Millisecond {
		t.Fatalf("the retries took %v: too little to tell the attempts' send times apart", ok.Sub(cs[0].at))
	}
	if d := rec.FetchedAt.Sub(ok); d < -50*time.Millisecond || d > 50*time.Millisecond {
		t.Errorf("fetched_at %v is %v from the successful attempt's send time (first attempt %v before it)",
			rec.FetchedAt, d, ok.Sub(cs[0].at).Round(time.Millisecond))
	}
}

// TestFailedWriteKeepsFetchedToken: the bucket refuses writes (its stream's
// MaxMsgSize is lowered under the record's size; reads go on). The token
// fetched meanwhile must be kept and only its write retried, never a new
// fetch while it is valid; once writes work again, that very token is
// stored. Before, every retry fetched again, each fetch invalidating the
// previous token.
func TestFailedWriteKeepsFetchedToken(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	cfg := e.Config(app)
	cfg.Policy.Retry = 100 * time.Millisecond
	reg := prometheus.NewRegistry()
	rep := e.Start(cfg, refresher.WithObserver(refresher.NewMetrics(reg)))
	_, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	fetches := e.Sim.Fetches(app.AppID)

	ctx := context.Background()
	orig := setMaxMsgSize(t, e.JS, contract.DefaultBucket, 64)

	// A rejected token: the refresher fetches, and cannot write.
	if _, err := rep.R.Refresh(ctx, "mp", &rev); err == nil {
		t.Fatal("refresh succeeded with a bucket that refuses writes")
	}
	fetched, _ := e.Sim.LastToken(app.AppID)
	if !e.Logs.Contains("ALERT token_not_stored") {
		t.Error("no ALERT token_not_stored log line")
	}
	if n := alertCount(t, reg, "mp", refresher.AlertTokenNotStored); n != 1 {
		t.Errorf("tokenkeeper_alerts_total{alert=token_not_stored} = %v, want 1 (one per token kept)", n)
	}
	// Let several write retries run (retry 100 ms, doubling) and ask
	// again meanwhile: no new fetch.
	testutil.WaitFor(t, 10*time.Second, func() bool {
		return strings.Count(e.Logs.String(), "fetched token not stored yet") >= 4
	}, "the write was not retried: %s", e.Logs)
	if _, err := rep.R.Refresh(ctx, "mp", &rev); err == nil {
		t.Fatal("refresh succeeded with a bucket that refuses writes")
	}
	if n := e.Sim.Fetches(app.AppID); n != fetches+1 {
		t.Fatalf("%d fetches while the write failed, want 1", n-fetches)
	}

	// Writes work again: the token fetched earlier is what gets stored.
	setMaxMsgSize(t, e.JS, contract.DefaultBucket, orig)
	rec, _ := e.WaitRecord(10*time.Second, "mp", func(_ contract.Record, v uint64) bool { return v > rev })
	if rec.AccessToken != fetched {
		t.Error("the stored token is not the one fetched while writes failed")
	}
	if n := e.Sim.Fetches(app.AppID); n != fetches+1 {
		t.Errorf("%d fetches in all, want 1", n-fetches)
	}
	if err := e.Sim.Check(rec.AccessToken); err != nil {
		t.Errorf("stored token rejected upstream: %v", err)
	}
}

// TestPassiveRequestsHonourUpstreamStops: after an alert-worthy errcode
// (40164 IP not whitelisted, 89503 risk control) or 45009 (quota gone for
// the day), scheduled refreshes wait; so must every passive and manual
// request: an error reply with the reason and the retry time, or the
// current record, and never an upstream call inside the stop.
func TestPassiveRequestsHonourUpstreamStops(t *testing.T) {
	for _, tc := range []struct {
		errcode int
		code    string
	}{
		{40164, "503"},
		{89503, "503"},
		{45009, "429"},
	} {
		t.Run(itoa(tc.errcode), func(t *testing.T) {
			var log callLog
			e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour, OnCall: log.record}})
			app := e.App("mp")
			e.Start(e.Config(app))
			_, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })

			e.Sim.SetFault(wechatsim.Fault{Errcode: tc.errcode})
			// The first rejected-token request meets the errcode.
			m, err := e.NC.Request(contract.RefreshSubject("mp"), []byte(`{"stale_revision":`+utoa(rev)+`}`), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if m.Header.Get("Nats-Service-Error-Code") == "" {
				t.Fatalf("refresh during errcode %d answered a token", tc.errcode)
			}
			calls := len(log.all())

			// A fleet keeps asking: nothing reaches upstream.
			for i := range 50 {
				body := []byte(`{"stale_revision":` + utoa(rev) + `}`)
				msg := nats.NewMsg(contract.RefreshSubject("mp"))
				msg.Data = body
				if i%2 == 1 {
					msg.Header.Set(contract.SourceHeader, contract.SourceManual)
				}
				m, err := e.NC.RequestMsg(msg, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if got := m.Header.Get("Nats-Service-Error-Code"); got != tc.code {
					t.Fatalf("request %d answered code %q (%s), want %s", i, got, m.Data, tc.code)
				}
				var er contract.ErrorReply
				if err := json.Unmarshal(m.Data, &er); err != nil {
					t.Fatal(err)
				}
				if er.Error.RetryAt.Before(time.Now()) || !strings.Contains(er.Error.Message, itoa(tc.errcode)) {
					t.Fatalf("error reply %s: want the errcode and a retry time in the future", m.Data)
				}
			}
			// "Give me a valid token" is answered with the current record.
			m, err = e.NC.Request(contract.RefreshSubject("mp"), nil, 5*time.Second)
			if err != nil || m.Header.Get("Nats-Service-Error-Code") != "" {
				t.Fatalf("empty request during a stop: %v %s", err, m.Data)
			}
			if n := len(log.all()); n != calls {
				t.Fatalf("%d upstream calls inside the stop, want 0", n-calls)
			}
		})
	}
}

func utoa(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// TestDeposedLeaderLeavesNoZombieResponder: a leader partitioned from NATS
// loses its lease and stops its token.refresh endpoint while its link is
// down; micro stops an endpoint by draining it, and the UNSUB is lost with
// the dead connection, so on reconnect the subscription comes back and
// answers nothing until the drain times out. In a shared queue group it
// swallowed about half of all refresh requests for 30 s (seen in the
// soak). Every request must still be answered by the new leader.
func TestDeposedLeaderLeavesNoZombieResponder(t *testing.T) {
	e := harness.New(t, harness.Options{
		Sim: wechatsim.Options{ExpiresIn: time.Hour},
		// The server drops a client that stops answering pings at once.
		NATS: []func(*server.Options){func(o *server.Options) { o.PingInterval, o.MaxPingsOut = 200*time.Millisecond, 2 }},
	})
	app := e.App("mp")
	proxy := testutil.NewProxy(t, e.Server.Addr().String())
	cfgA := e.Config(app)
	cfgA.NATS.URL = proxy.URL()
	a := e.Start(cfgA, refresher.WithReplicaID("a"))
	e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	testutil.WaitFor(t, 5*time.Second, a.R.Leader, "a never led")
	b := e.Start(e.Config(app), refresher.WithReplicaID("b"))

	proxy.Blackhole()
	testutil.WaitFor(t, 10*time.Second, b.R.Leader, "b did not take over")
	// a notices on its own that it lost the lease, while still cut off.
	testutil.WaitFor(t, 15*time.Second, func() bool { return e.Logs.Contains("lost leadership") }, "a did not step down")
	reconnects := a.NC.Stats().Reconnects
	proxy.Restore()
	testutil.WaitFor(t, 10*time.Second, func() bool {
		return a.NC.Stats().Reconnects > reconnects && a.NC.IsConnected() && a.NC.Flush() == nil
	}, "a did not reconnect")

	for i := range 40 {
		m, err := e.NC.Request(contract.RefreshSubject("mp"), nil, time.Second)
		if err != nil {
			t.Fatalf("request %d after the partition healed: %v", i, err)
		}
		if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
			t.Fatalf("request %d answered %s: %s", i, code, m.Data)
		}
	}
}

// alertCount reads tokenkeeper_alerts_total{app, alert} from reg.
func alertCount(t *testing.T, reg *prometheus.Registry, app, alert string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tokenkeeper_alerts_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["app"] == app && labels["alert"] == alert {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
