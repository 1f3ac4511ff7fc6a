package e2e_test

import (
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// TestSignals: SIGTERM hands the lease over at once (target < 500 ms);
// SIGKILL is replaced within lease_ttl + 1 s; neither new leader fetches
// the still-valid token again.
func TestSignals(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	const ttl = 2 * time.Second
	cfg := writeConfig(t, e.URL, ttl, "", app)
	procs := []*proc{startProc(t, cfg, "r1", app), startProc(t, cfg, "r2", app), startProc(t, cfg, "r3", app)}
	e.WaitRecord(10*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	var leader string
	testutil.WaitFor(t, 5*time.Second, func() bool { leader = leaseHolder(t, e.JS); return leader != "" }, "no leader")
	fetches := e.Sim.Fetches(app.AppID)

	// SIGTERM the leader.
	start := time.Now()
	old := byID(procs, leader)
	old.signal(syscall.SIGTERM)
	testutil.WaitFor(t, 5*time.Second, func() bool { l := leaseHolder(t, e.JS); return l != "" && l != old.id }, "no takeover after SIGTERM")
	graceful := time.Since(start)
	if code := old.wait(10 * time.Second); code != 0 {
		t.Errorf("SIGTERM exit code %d, want 0", code)
	}
	t.Logf("SIGTERM handover: %v", graceful.Round(time.Millisecond))
	if graceful > 500*time.Millisecond {
		t.Errorf("SIGTERM handover took %v, want < 500ms", graceful)
	}
	if !old.out.Contains("released leadership") {
		t.Error("the stopped leader did not release its lease")
	}

	// SIGKILL the new leader.
	leader = leaseHolder(t, e.JS)
	victim := byID(procs, leader)
	start = time.Now()
	victim.signal(syscall.SIGKILL)
	testutil.WaitFor(t, ttl+5*time.Second, func() bool { l := leaseHolder(t, e.JS); return l != "" && l != victim.id }, "no takeover after SIGKILL")
	crash := time.Since(start)
	t.Logf("SIGKILL failover: %v (lease_ttl %v)", crash.Round(time.Millisecond), ttl)
	if crash > ttl+time.Second {
		t.Errorf("SIGKILL failover took %v, want ≤ lease_ttl+1s = %v", crash, ttl+time.Second)
	}
	// The survivor serves refresh requests (a client retries "no
	// responders" during the handover) and did not re-fetch.
	var rr contract.RefreshReply
	testutil.WaitFor(t, 2*time.Second, func() bool {
		rep, err := e.NC.Request(contract.RefreshSubject("mp"), nil, time.Second)
		return err == nil && json.Unmarshal(rep.Data, &rr) == nil && rr.AccessToken != ""
	}, "no refresh reply after the failover")
	if n := e.Sim.Fetches(app.AppID); n != fetches {
		t.Errorf("failovers fetched a still-valid token: %d fetches, want %d", n, fetches)
	}
}

// TestFencingPausedLeader: a leader paused (SIGSTOP) in the middle of a
// fetch loses its lease; when it resumes, it writes nothing, and the token
// the new leader stored stays.
func TestFencingPausedLeader(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour, Grace: 30 * time.Second}})
	app := e.App("mp")
	const ttl = 2 * time.Second
	cfg := writeConfig(t, e.URL, ttl, "", app)
	procs := []*proc{startProc(t, cfg, "a", app), startProc(t, cfg, "b", app)}
	_, rev := e.WaitRecord(10*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	var leaderID string
	testutil.WaitFor(t, 5*time.Second, func() bool { leaderID = leaseHolder(t, e.JS); return leaderID != "" }, "no leader")
	leader := byID(procs, leaderID)

	// Make the leader fetch slowly, and pause it while the call is upstream.
	e.Sim.SetFault(wechatsim.Fault{Latency: 1500 * time.Millisecond})
	go func() {
		body, _ := json.Marshal(map[string]uint64{"stale_revision": rev})
		_, _ = e.NC.Request(contract.RefreshSubject("mp"), body, 20*time.Second)
	}()
	testutil.WaitFor(t, 5*time.Second, func() bool { return e.Sim.InFlight(app.AppID) == 1 }, "the leader did not call upstream")
	leader.signal(syscall.SIGSTOP)

	// The lease passes to the other replica.
	var newID string
	testutil.WaitFor(t, ttl+5*time.Second, func() bool {
		newID = leaseHolder(t, e.JS)
		return newID != "" && newID != leaderID
	}, "the lease did not move away from the paused leader")
	e.Sim.SetFault(wechatsim.Fault{})
	testutil.WaitFor(t, 5*time.Second, func() bool { return e.Sim.InFlight(app.AppID) == 0 }, "the paused leader's upstream call did not finish")

	// The new leader refreshes (the paused one still holds a queue
	// subscription, so a request may land on it: retry until answered).
	var fresh contract.RefreshReply
	testutil.WaitFor(t, 20*time.Second, func() bool {
		body, _ := json.Marshal(map[string]uint64{"stale_revision": rev})
		m, err := e.NC.Request(contract.RefreshSubject("mp"), body, time.Second)
		if err != nil {
			return false
		}
		return json.Unmarshal(m.Data, &fresh) == nil && fresh.Revision > rev
	}, "the new leader did not refresh")
	tokenN, _ := e.Sim.LastToken(app.AppID)
	if fresh.AccessToken != tokenN {
		t.Fatalf("the new leader stored an older token than the newest upstream")
	}

	// Resume the paused leader. Its upstream attempt ran under a context
	// that ends with its trust window, which passed while it was paused:
	// on waking, either that context ends the attempt first ("refresh
	// stopped"), or the answer is read first and the token, fetched after
	// the lease was gone, is discarded at the write. Either way it must say
	// so, and must not write.
	leader.signal(syscall.SIGCONT)
	testutil.WaitFor(t, 10*time.Second, func() bool {
		return leader.out.Contains("the fetched token is discarded") || leader.out.Contains("refresh stopped: this replica no longer holds the lease")
	}, "the resumed leader's fetch was neither discarded nor stopped")
	rec, gotRev, _ := e.Record(contract.DefaultBucket, "mp")
	if gotRev != fresh.Revision || rec.AccessToken != tokenN {
		t.Fatalf("after the paused leader resumed the record moved to revision %d (want %d)", gotRev, fresh.Revision)
	}
	if err := e.Sim.Check(rec.AccessToken); err != nil {
		t.Fatalf("stored token rejected upstream: %v", err)
	}
	if strings.Count(leader.out.String(), "token refreshed") > 1 {
		t.Errorf("the paused leader wrote after its first token:\n%s", leader.out.String())
	}
}
