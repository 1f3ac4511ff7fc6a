package refresher_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// TestQuotaReserveAndRestart: forced refreshes stop at 90 % of the daily
// quota (the rest is kept for scheduled refreshes), the count is kept in
// KV across a restart, and 45009 stops fetching until WeChat's midnight.
func TestQuotaReserveAndRestart(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour, DailyQuota: 10}})
	app := e.App("mp")
	app.DailyQuota = 10
	cfg := e.Config(app)
	rep := e.Start(cfg)
	_, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })

	var refused error
	for i := 0; i < 20 && refused == nil; i++ {
		got, err := rep.R.Refresh(context.Background(), "mp", &rev)
		if err != nil {
			refused = err
			break
		}
		rev = got.Revision
	}
	if !errors.Is(refused, refresher.ErrQuotaReserved) {
		t.Fatalf("forced refreshes were not stopped by the quota reserve: %v", refused)
	}
	if used := e.Sim.QuotaUsed(app.AppID); used != 9 {
		t.Fatalf("upstream calls when forced refreshes stopped = %d, want 9 (90%% of 10)", used)
	}
	if st := rep.R.Statuses()[0]; st.CallsToday != 9 {
		t.Fatalf("status calls_today = %d, want 9", st.CallsToday)
	}
	if err := rep.Stop(); err != nil {
		t.Fatal(err)
	}

	// A new process remembers today's calls.
	rep2 := e.Start(cfg)
	if st := rep2.R.Statuses()[0]; st.CallsToday != 9 {
		t.Fatalf("after restart calls_today = %d, want 9 (kept in KV)", st.CallsToday)
	}
	testutil.WaitFor(t, 5*time.Second, rep2.R.Leader, "no leader")
	if _, err := rep2.R.Refresh(context.Background(), "mp", &rev); !errors.Is(err, refresher.ErrQuotaReserved) {
		t.Fatalf("after restart a forced refresh = %v, want ErrQuotaReserved", err)
	}
}

func TestQuotaExhaustedWaitsForMidnight(t *testing.T) {
	var tokenCalls atomic.Int64 // every token call, faults included
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour, OnCall: func(c wechatsim.Call) {
		if c.Path == wechatsim.PathToken {
			tokenCalls.Add(1)
		}
	}}})
	app := e.App("mp")
	e.Sim.SetFault(wechatsim.Fault{Errcode: 45009})
	rep := e.Start(e.Config(app))
	testutil.WaitFor(t, 5*time.Second, func() bool { return rep.R.Statuses()[0].Failures > 0 }, "no failure")
	st := rep.R.Statuses()[0]
	cst := time.FixedZone("CST", 8*3600)
	now := time.Now().In(cst)
	midnight := time.Date(now.Year(), now.Month(), now.Day()+1, 0, 0, 0, 0, cst)
	if st.RetryAt.Before(midnight) || st.RetryAt.After(midnight.Add(2*time.Minute)) {
		t.Fatalf("after 45009 next attempt at %v, want just after %v (WeChat's midnight)", st.RetryAt, midnight)
	}
	calls := tokenCalls.Load()
	if calls == 0 {
		t.Fatal("no token call was seen")
	}
	for range 3 {
		rep.R.Tick()
	}
	// Ticks must not call upstream again (watch for a second).
	if testutil.Eventually(time.Second, func() bool { return tokenCalls.Load() != calls }) {
		t.Fatalf("the refresher kept calling after 45009")
	}
	if !e.Logs.Contains("alert=daily_quota_exhausted") {
		t.Error("45009 did not raise its alert in the log")
	}
}

// TestAlertPolitePaceAndRecovery: 40164 (IP not on the allow list) raises
// its own log line and alert, is retried at a polite, growing pace, and a
// fixed allow list recovers without a restart.
func TestAlertPolitePaceAndRecovery(t *testing.T) {
	var tokenCalls atomic.Int64
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour, OnCall: func(c wechatsim.Call) {
		if c.Path == wechatsim.PathToken {
			tokenCalls.Add(1)
		}
	}}})
	app := e.App("mp")
	e.Sim.SetFault(wechatsim.Fault{Errcode: 40164})
	cfg := e.Config(app)
	cfg.Policy.PermanentRetry = 500 * time.Millisecond // 0.5 s, 1 s, 2 s …
	rep := e.Start(cfg)
	testutil.WaitFor(t, 5*time.Second, func() bool { return rep.R.Statuses()[0].Failures >= 2 }, "no retry after 40164")
	start := time.Now()
	testutil.WaitFor(t, 10*time.Second, func() bool { return rep.R.Statuses()[0].Failures >= 4 }, "retries stopped")
	// Failures 2→4 take the 1 s and 2 s pauses (±20 %): about 2.4 s at least.
	if d := time.Since(start); d < 2*time.Second {
		t.Fatalf("retries 3 and 4 came %v after retry 2: not polite", d)
	}
	if n := tokenCalls.Load(); n > 6 {
		t.Fatalf("%d token calls for 4 failures: hammering", n)
	}
	if !e.Logs.Contains("ALERT ip_not_whitelisted") {
		t.Error("no distinct ALERT line for 40164")
	}
	e.Sim.SetFault(wechatsim.Fault{}) // the allow list is fixed
	e.WaitRecord(15*time.Second, "mp", func(contract.Record, uint64) bool { return true })
}
