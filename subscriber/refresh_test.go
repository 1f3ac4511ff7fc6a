package subscriber_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// 1000 Source.Refresh calls (10 Sources on their own connections, 100
// each) and 500 raw requests for one stale revision cost one upstream
// fetch; a request for an older revision costs none.
func TestRefreshStormCostsOneFetch(t *testing.T) {
	const sources, perSource, raw = 10, 100, 500
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.start()
	log, _ := logBuffer(t)

	requests := countRequests(t, w.URL, "mp-main")

	srcs := make([]*subscriber.Source, sources)
	for i := range srcs {
		nc, _ := testutil.Connect(t, w.URL)
		srcs[i] = newSource(t, nc, "mp-main", subscriber.WithLogger(log))
	}
	rawConns := make([]*nats.Conn, 5)
	for i := range rawConns {
		rawConns[i], _ = testutil.Connect(t, w.URL)
	}
	_, stale, _ := w.Record(contract.DefaultBucket, "mp-main")
	for i, s := range srcs {
		testutil.WaitFor(t, 5*time.Second, func() bool { return s.Revision() == stale }, "source %d not at revision %d", i, stale)
	}
	fetches := w.Sim.Fetches(w.app.AppID)
	requests.Store(0)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	revs := map[uint64]int{}
	tokens := map[string]bool{}
	record := func(rev uint64, tok string) {
		mu.Lock()
		revs[rev]++
		tokens[tok] = true
		mu.Unlock()
	}
	for _, s := range srcs {
		for range perSource {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				tok, err := s.Refresh(ctx, stale)
				if err != nil {
					t.Errorf("Refresh: %v", err)
					return
				}
				record(tok.Revision, tok.AccessToken)
			}()
		}
	}
	for i := range raw {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			rep, err := rawRefresh(rawConns[i%len(rawConns)], "mp-main", &stale, 20*time.Second)
			if err != nil {
				t.Errorf("raw request: %v", err)
				return
			}
			record(rep.Revision, rep.AccessToken)
		}()
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		return
	}
	if got := w.Sim.Fetches(w.app.AppID) - fetches; got != 1 {
		t.Errorf("%d callers cost %d upstream fetches, want 1", sources*perSource+raw, got)
	}
	if len(revs) != 1 || len(tokens) != 1 {
		t.Errorf("callers got revisions %v and %d distinct tokens, want one of each", revs, len(tokens))
	}
	var fresh uint64
	for r := range revs {
		fresh = r
	}
	if fresh <= stale {
		t.Errorf("got revision %d, not newer than the stale %d", fresh, stale)
	}
	n := requests.Load()
	if n < raw+1 || n > raw+sources {
		t.Errorf("%d requests reached token.refresh; want the %d raw ones plus 1..%d from the Sources (one per Source at most)", n, raw, sources)
	}
	t.Logf("%d Refresh calls + %d raw requests: %d requests on the wire, 1 fetch", sources*perSource, raw, n)

	// Every Source now holds the new token (the reply was applied).
	for i, s := range srcs {
		if s.Revision() < fresh {
			t.Errorf("source %d at revision %d after Refresh returned %d", i, s.Revision(), fresh)
		}
	}
	// Older revisions cost nothing: the Source answers itself, the
	// refresher answers from the store.
	requests.Store(0)
	before := w.Sim.Fetches(w.app.AppID)
	tok, err := srcs[0].Refresh(ctx, stale)
	if err != nil || tok.Revision != fresh {
		t.Fatalf("Refresh(old revision) = %v, %v", tok, err)
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("Refresh of an old revision sent %d requests", n)
	}
	older := fresh - 1
	rep, err := rawRefresh(w.NC, "mp-main", &older, 5*time.Second)
	if err != nil || rep.Revision != fresh {
		t.Fatalf("raw request for revision %d = %+v, %v", older, rep, err)
	}
	if got := w.Sim.Fetches(w.app.AppID) - before; got != 0 {
		t.Errorf("requests for older revisions cost %d fetches", got)
	}
}

// Refresh rides out a time without refresher ("no responders"), and ends
// with ErrNoResponders when its ctx does.
func TestRefreshRetriesNoResponders(t *testing.T) {
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	rep := w.start()
	log, _ := logBuffer(t)
	src := newSource(t, w.NC, "mp-main", subscriber.WithLogger(log), subscriber.WithBackoff(10*time.Millisecond, 100*time.Millisecond))
	if err := rep.Stop(); err != nil {
		t.Fatal(err)
	}
	stale := src.Revision()

	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := src.Refresh(short, stale)
	if !errors.Is(err, subscriber.ErrNoResponders) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Refresh without a refresher = %v, want ErrNoResponders and DeadlineExceeded", err)
	}

	ctx, cancel2 := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel2()
	type result struct {
		tok *subscriber.Token
		err error
	}
	res := make(chan result, 1)
	go func() {
		tok, err := src.Refresh(ctx, stale)
		res <- result{tok, err}
	}()
	w.start() // a new leader comes up while Refresh retries
	r := <-res
	if r.err != nil || r.tok.Revision <= stale {
		t.Fatalf("Refresh across the handover = %v, %v", r.tok, r.err)
	}
	if cur, _ := src.Token(); cur.Revision < r.tok.Revision {
		t.Errorf("the Source holds revision %d, Refresh returned %d", cur.Revision, r.tok.Revision)
	}
}

// Error replies become *RequestError with the refresher's code; bad
// replies ErrBadReply. A stand-in refresher on the wire contract answers.
func TestRefreshErrorReplies(t *testing.T) {
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	kv := ensureBucket(t, w.JS)
	rev := putRecord(t, kv, contract.Record{App: "mp-main", AccessToken: "TOKEN-ONE", ExpiresAt: time.Now().Add(time.Hour), FetchedAt: time.Now(), Source: "manual"})
	log, _ := logBuffer(t)
	src := newSource(t, w.NC, "mp-main", subscriber.WithLogger(log))

	var reply atomic.Value // func(*nats.Msg)
	sub, err := w.NC.Subscribe(contract.RefreshSubject("mp-main"), func(m *nats.Msg) { reply.Load().(func(*nats.Msg))(m) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	errReply := func(code int, msg string) func(*nats.Msg) {
		return func(m *nats.Msg) {
			r := nats.NewMsg(m.Reply)
			r.Header.Set("Nats-Service-Error-Code", itoa(code))
			r.Header.Set("Nats-Service-Error", msg)
			r.Data, _ = json.Marshal(contract.ErrorReply{Error: contract.ErrorDetail{Code: code, Message: msg}})
			_ = m.RespondMsg(r)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, code := range []int{contract.CodeBadRequest, contract.CodeNotFound, contract.CodeTooMany, contract.CodeUpstream} {
		reply.Store(errReply(code, "it failed"))
		_, err := src.Refresh(ctx, rev)
		var re *subscriber.RequestError
		if !errors.As(err, &re) || re.Code != code || re.Message != "it failed" {
			t.Errorf("code %d: Refresh = %v", code, err)
		}
	}
	reply.Store(func(m *nats.Msg) { _ = m.Respond([]byte(`{"app":"other","access_token":"X","revision":99}`)) })
	if _, err := src.Refresh(ctx, rev); !errors.Is(err, subscriber.ErrBadReply) {
		t.Errorf("another app's record: %v", err)
	}
	reply.Store(func(m *nats.Msg) { _ = m.Respond([]byte(`not json`)) })
	if _, err := src.Refresh(ctx, rev); !errors.Is(err, subscriber.ErrBadReply) {
		t.Errorf("not JSON: %v", err)
	}
	// 503 is retried until the refresher can answer.
	var n atomic.Int32
	reply.Store(func(m *nats.Msg) {
		if n.Add(1) < 3 {
			errReply(contract.CodeUnavailable, "not leader")(m)
			return
		}
		nrev := putRecord(t, kv, contract.Record{App: "mp-main", AccessToken: "TOKEN-TWO", ExpiresAt: time.Now().Add(time.Hour), FetchedAt: time.Now(), Source: "passive"})
		b, _ := json.Marshal(contract.RefreshReply{Record: contract.Record{App: "mp-main", AccessToken: "TOKEN-TWO", ExpiresAt: time.Now().Add(time.Hour)}, Revision: nrev})
		_ = m.Respond(b)
	})
	tok, err := src.Refresh(ctx, rev)
	if err != nil || tok.AccessToken != "TOKEN-TWO" || n.Load() != 3 {
		t.Fatalf("Refresh through two 503s = %v, %v after %d requests", tok, err, n.Load())
	}
}

// TestRefreshWaitsForTheRefreshersRetryTime: while the refresher has
// paused upstream calls after a failure (here 40164, IP not whitelisted),
// its 503 replies carry retry_at, and Refresh waits until then instead of
// asking again at its own backoff: a fleet of Sources does not hammer.
func TestRefreshWaitsForTheRefreshersRetryTime(t *testing.T) {
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.start()
	log, _ := logBuffer(t)
	src := newSource(t, w.NC, "mp-main", subscriber.WithLogger(log), subscriber.WithBackoff(10*time.Millisecond, 50*time.Millisecond))
	rev := src.Revision()

	w.Sim.SetFault(wechatsim.Fault{Errcode: 40164})
	// The first rejected-token request meets the errcode; the app is then
	// paused for permanent_retry (1 min by default).
	if _, err := rawRefresh(w.NC, "mp-main", &rev, 5*time.Second); err == nil {
		t.Fatal("refresh during 40164 answered a token")
	}
	requests := countRequests(t, w.URL, "mp-main")

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := src.Refresh(ctx, rev)
	var re *subscriber.RequestError
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &re) || re.RetryAt.Before(time.Now().Add(30*time.Second)) {
		t.Fatalf("Refresh = %v, want the deadline and the refresher's 503 with retry_at about a minute away", err)
	}
	// With a 10–50 ms backoff it would have asked ~30 times in a second.
	if n := requests.Load(); n != 1 {
		t.Fatalf("Refresh sent %d requests in a second while the refresher was paused, want 1", n)
	}
}

// countRequests counts the requests that reach token.refresh.<app> (a
// plain subscription gets a copy of each; the refresher answers).
func countRequests(t *testing.T, url, app string) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	mon, _ := testutil.Connect(t, url)
	sub, err := mon.Subscribe(contract.RefreshSubject(app), func(*nats.Msg) { n.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := mon.Flush(); err != nil {
		t.Fatal(err)
	}
	return &n
}
