package e2e_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// TestSoak is the test that matters: compressed time (tokens live 8 s,
// the previous token dies 3 s after a new one), three refresher processes
// on a 3-node NATS cluster, a business client that follows the KV with a
// subscriber.Source and calls WeChat's getcallbackip every 50 ms, and a
// requester of token.refresh every 200 ms — while the leader is SIGKILLed,
// another replica SIGTERMed, the upstream slow and failing (-1, 502), the
// leader partitioned from NATS while its process runs (its link
// blackholed), and a NATS node stopped and restarted.
//
// It asserts: zero business calls with a token upstream had invalidated,
// zero duplicate fetches (every token upstream issued was stored), never
// two fetches at once, and every refresh request answered within
// lease_ttl + 2 s.
func TestSoak(t *testing.T) {
	const (
		life  = 8 * time.Second
		grace = 3 * time.Second
		ttl   = 2 * time.Second
		phase = 7 * time.Second
	)
	// Servers drop a client that stopped answering pings within about a
	// second (the default is minutes): a partitioned leader's queue
	// subscription then stops taking refresh requests. Clients learn no
	// other server addresses, so each replica stays behind its proxies.
	c := testutil.NewClusterFrom(t, 3, func(int) *server.Options {
		return &server.Options{PingInterval: 300 * time.Millisecond, MaxPingsOut: 2, Cluster: server.ClusterOpts{NoAdvertise: true}}
	})
	e := harness.New(t, harness.Options{URL: c.URLs(), Sim: wechatsim.Options{ExpiresIn: life, Grace: grace}})
	app := e.App("mp")
	// Each replica reaches the cluster through proxies of its own, so
	// that its link can be cut while its process runs.
	extra := "refresh: {at: 0.5, jitter: 0.1, min_left: 0s}"
	proxies := map[string][]*testutil.Proxy{}
	start := func(id string) *proc {
		var urls []string
		for i := range c.N() {
			px := testutil.NewProxy(t, strings.TrimPrefix(c.URL(i), "nats://"))
			proxies[id] = append(proxies[id], px)
			urls = append(urls, px.URL())
		}
		// Refresh at half the lifetime: 4 s of margin covers a crash
		// failover (lease_ttl + 1 s) even when it comes just before a
		// refresh.
		return startProc(t, writeConfig(t, strings.Join(urls, ","), ttl, extra, app), id, app)
	}
	procs := []*proc{start("r1"), start("r2"), start("r3")}
	e.WaitRecord(20*time.Second, "mp", func(contract.Record, uint64) bool { return true })

	// The business client: its own connection, a Source, plain calls
	// (no RoundTripper retry: every rejection upstream counts).
	bnc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bnc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	src, err := subscriber.NewSource(ctx, bnc, "mp", subscriber.WithPollInterval(500*time.Millisecond))
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var calls, noToken, clientRejected atomic.Int64
	wg.Add(1)
	go func() { // business calls every 50 ms
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			tok, err := src.AccessToken()
			if err != nil {
				noToken.Add(1)
				continue
			}
			resp, err := http.Get(e.SimURL + "/cgi-bin/getcallbackip?access_token=" + url.QueryEscape(tok))
			if err != nil {
				t.Errorf("business call: %v", err)
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			calls.Add(1)
			if strings.Contains(string(body), "errcode") {
				clientRejected.Add(1)
				t.Logf("business call rejected at revision %d: %s", src.Revision(), body)
			}
		}
	}()

	var requests atomic.Int64
	var worstReply, worstAt atomic.Int64
	t0 := time.Now()
	at := func() string { return time.Since(t0).Round(100 * time.Millisecond).String() }
	wg.Add(1)
	go func() { // refresh requests every 200 ms, each retried until answered
		defer wg.Done()
		rnc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		if err != nil {
			t.Error(err)
			return
		}
		defer rnc.Close()
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			start := time.Now()
			var tries []string // what each failed attempt got, for a slow answer's log
			for {
				m, err := rnc.Request(contract.RefreshSubject("mp"), nil, time.Second)
				if err == nil && m.Header.Get("Nats-Service-Error-Code") == "" {
					var rep contract.RefreshReply
					if json.Unmarshal(m.Data, &rep) == nil && rep.AccessToken != "" {
						break
					}
				}
				why := ""
				if err != nil {
					why = err.Error()
				} else {
					why = m.Header.Get("Nats-Service-Error-Code") + " " + m.Header.Get("Nats-Service-Error")
				}
				tries = append(tries, "+"+at()+" "+why)
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
			requests.Add(1)
			if time.Since(start) > 2*time.Second {
				t.Logf("a refresh request sent at +%v waited %v: %s", start.Sub(t0).Round(100*time.Millisecond),
					time.Since(start).Round(time.Millisecond), strings.Join(tries, "; "))
			}
			if d := int64(time.Since(start)); d > worstReply.Load() {
				worstReply.Store(d)
				worstAt.Store(int64(start.Sub(t0)))
			}
		}
	}()

	leader := func() *proc {
		var id string
		testutil.WaitFor(t, ttl+10*time.Second, func() bool { id = leaseHolder(t, e.JS); return byID(procs, id) != nil }, "no leader")
		return byID(procs, id)
	}
	wait := func(d time.Duration) {
		select {
		case <-time.After(d):
		case <-stop:
		}
	}

	wait(phase)
	victim := leader()
	t.Logf("+%s SIGKILL leader %s", at(), victim.id)
	victim.signal(syscall.SIGKILL)
	wait(phase)
	procs = append(procs, start(victim.id+"-restarted"))

	// A slow upstream, then a burst of -1 and 5xx answers.
	t.Logf("+%s upstream: 1.5 s latency", at())
	e.Sim.SetFault(wechatsim.Fault{Latency: 1500 * time.Millisecond})
	wait(phase)
	t.Logf("+%s upstream: 3 × -1, 2 × HTTP 502", at())
	e.Sim.SetFault(wechatsim.Fault{Busy: 3, HTTP5xx: 2})
	wait(phase)

	// Partition the leader from NATS while its process runs, with the
	// upstream slow so that a fetch is likely in flight.
	e.Sim.SetFault(wechatsim.Fault{Latency: 500 * time.Millisecond})
	cut := leader()
	t.Logf("+%s partition leader %s from NATS", at(), cut.id)
	for _, px := range proxies[cut.id] {
		px.Blackhole()
	}
	wait(phase)
	for _, px := range proxies[cut.id] {
		px.Restore()
	}
	e.Sim.SetFault(wechatsim.Fault{})
	t.Logf("+%s partition of %s healed", at(), cut.id)
	wait(phase)

	wait(phase)
	term := leader()
	t.Logf("+%s SIGTERM leader %s", at(), term.id)
	term.signal(syscall.SIGTERM)
	wait(phase)

	node := c.StreamLeader("$G", "KV_"+contract.DefaultBucket)
	t.Logf("+%s stop NATS node %d (leader of the bucket's stream)", at(), node)
	c.StopNode(node)
	wait(phase)
	c.RestartNode(node)
	t.Logf("+%s NATS node %d back", at(), node)
	wait(phase)

	close(stop)
	wg.Wait()
	for _, p := range procs {
		p.signal(syscall.SIGTERM)
	}
	for _, p := range procs {
		if !p.exited() {
			p.wait(20 * time.Second)
		}
	}

	ok, rejected := e.Sim.BusinessCalls()
	refreshed := 0
	for _, p := range procs {
		refreshed += strings.Count(p.out.String(), `msg="token refreshed"`)
	}
	issued := e.Sim.Issued(app.AppID)
	t.Logf("business calls: %d ok, %d rejected upstream; %d moments without a valid token", ok, rejected, noToken.Load())
	t.Logf("upstream: %d tokens issued, %d stored; max concurrent fetches %d", issued, refreshed, e.Sim.MaxConcurrentFetches(app.AppID))
	t.Logf("refresh requests: %d answered, slowest %v (sent at +%v)", requests.Load(),
		time.Duration(worstReply.Load()).Round(time.Millisecond), time.Duration(worstAt.Load()).Round(100*time.Millisecond))

	if rejected != 0 || clientRejected.Load() != 0 {
		t.Errorf("%d business calls used a token upstream had invalidated or expired", rejected)
	}
	if calls.Load() < 300 || int64(ok) != calls.Load() {
		t.Errorf("business calls: %d made, %d ok upstream", calls.Load(), ok)
	}
	if noToken.Load() != 0 {
		t.Errorf("the business client had no valid token %d times", noToken.Load())
	}
	if issued != refreshed {
		t.Errorf("upstream issued %d tokens but %d were stored: duplicate fetches", issued, refreshed)
	}
	if m := e.Sim.MaxConcurrentFetches(app.AppID); m != 1 {
		t.Errorf("max concurrent fetches %d, want 1", m)
	}
	if issued < 8 {
		t.Errorf("only %d tokens issued: refreshing stalled", issued)
	}
	if requests.Load() < 50 {
		t.Errorf("only %d refresh requests answered", requests.Load())
	}
	if w := time.Duration(worstReply.Load()); w > ttl+2*time.Second {
		t.Errorf("a refresh request waited %v for an answer, want ≤ lease_ttl+2s", w)
	}
}
