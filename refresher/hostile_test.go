package refresher_test

// Hostile and bogus token.refresh requests (issue 9, "Keep the promise
// under faults"): whatever a service user publishes on token.refresh.>,
// the leader neither crashes, nor grows, nor calls WeChat for it.

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// refreshRequest sends one token.refresh request on subject with body and
// optional headers (key, value pairs) and fails the test on a transport
// error.
func refreshRequest(t *testing.T, nc *nats.Conn, subject, body string, hdr ...string) *nats.Msg {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Data = []byte(body)
	for i := 0; i+1 < len(hdr); i += 2 {
		m.Header.Set(hdr[i], hdr[i+1])
	}
	rep, err := nc.RequestMsg(m, 10*time.Second)
	if err != nil {
		t.Fatalf("request on %q: %v", subject, err)
	}
	return rep
}

// okReply decodes a successful reply, failing the test on an error reply.
func okReply(t *testing.T, m *nats.Msg) contract.RefreshReply {
	t.Helper()
	if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
		t.Fatalf("error reply %s: %s (%s)", code, m.Header.Get(micro.ErrorHeader), m.Data)
	}
	var rep contract.RefreshReply
	if err := json.Unmarshal(m.Data, &rep); err != nil || rep.AccessToken == "" {
		t.Fatalf("reply %q: %v", m.Data, err)
	}
	return rep
}

// TestStaleRevisionFromTheFutureDoesNotFetch: a stale_revision greater
// than the stored revision names no token anyone holds; it is answered
// like an empty request, with the stored record and no upstream call, on
// the fast path (passive) and through Refresh (manual) alike. A request
// naming the stored revision still forces its one fetch.
func TestStaleRevisionFromTheFutureDoesNotFetch(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	e.Start(e.Config(app)) // passive_min_interval 0: nothing but the revision check stands between a request and a fetch
	rec, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	calls := e.Sim.Calls(app.AppID)

	subj := contract.RefreshSubject("mp")
	for _, stale := range []uint64{rev + 1, rev + 1000, math.MaxUint64} {
		body := `{"stale_revision": ` + strconv.FormatUint(stale, 10) + `}`
		for _, hdr := range [][]string{nil, {contract.SourceHeader, contract.SourceManual}} {
			got := okReply(t, refreshRequest(t, e.NC, subj, body, hdr...))
			if got.Revision != rev || got.AccessToken != rec.AccessToken {
				t.Errorf("stale %d (headers %v): reply revision %d, want the stored %d", stale, hdr, got.Revision, rev)
			}
		}
	}
	if n := e.Sim.Calls(app.AppID) - calls; n != 0 {
		t.Fatalf("stale revisions from the future caused %d upstream calls, want 0", n)
	}

	// The stored revision itself was rejected: that one is refreshed.
	got := okReply(t, refreshRequest(t, e.NC, subj, `{"stale_revision": `+strconv.FormatUint(rev, 10)+`}`))
	if got.Revision <= rev {
		t.Fatalf("stale %d (the stored revision): reply revision %d, want a newer one", rev, got.Revision)
	}
	if n := e.Sim.Calls(app.AppID); n != calls+1 {
		t.Fatalf("%d upstream calls after rejecting the stored revision, want %d", n, calls+1)
	}
}

// errorReply checks that m is a well-formed micro error reply with code
// (headers and JSON body agree, the message is valid UTF-8 without
// control characters) and returns its message.
func errorReply(t *testing.T, m *nats.Msg, code int) string {
	t.Helper()
	if err := checkErrorReply(m); err != nil {
		t.Fatal(err)
	}
	if got := m.Header.Get(micro.ErrorCodeHeader); got != strconv.Itoa(code) {
		t.Fatalf("error code %q (%s), want %d", got, m.Header.Get(micro.ErrorHeader), code)
	}
	return m.Header.Get(micro.ErrorHeader)
}

// checkErrorReply: headers and body of an error reply agree, and the
// message is printable, valid UTF-8.
func checkErrorReply(m *nats.Msg) error {
	code, msg := m.Header.Get(micro.ErrorCodeHeader), m.Header.Get(micro.ErrorHeader)
	var er contract.ErrorReply
	if err := json.Unmarshal(m.Data, &er); err != nil || strconv.Itoa(er.Error.Code) != code || er.Error.Message != msg {
		return fmt.Errorf("error reply: headers %q %q, body %q (%v)", code, msg, m.Data, err)
	}
	if !utf8.ValidString(msg) || strings.ContainsFunc(msg, func(c rune) bool { return !unicode.IsPrint(c) }) {
		return fmt.Errorf("error message %q is not printable UTF-8", msg)
	}
	return nil
}

// seriesCount is the number of series (label sets) in g.
func seriesCount(t testing.TB, g prometheus.Gatherer) int {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	n := 0
	for _, mf := range mfs {
		n += len(mf.GetMetric())
	}
	return n
}

// TestNonUTF8SubjectDoesNotCrashLeader: a request whose app token is not
// valid UTF-8 reached a Prometheus label and panicked the leader (any
// service user could crash each new leader in turn). With the real
// metrics observer installed, it now gets a 404 (and a bad body a 400),
// and the leader goes on serving.
func TestNonUTF8SubjectDoesNotCrashLeader(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	reg := prometheus.NewRegistry()
	rep := e.Start(e.Config(app), refresher.WithObserver(refresher.NewMetrics(reg)))
	_, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	calls := e.Sim.Calls(app.AppID)

	subj := "token.refresh.\xff\xfe"
	for _, c := range []struct {
		body string
		hdr  []string
		code int
	}{
		{``, nil, contract.CodeNotFound},
		{`{"stale_revision": 1}`, []string{contract.SourceHeader, contract.SourceManual}, contract.CodeNotFound},
		{`{"stale_revision": "\xff"}`, nil, contract.CodeBadRequest},
	} {
		errorReply(t, refreshRequest(t, e.NC, subj, c.body, c.hdr...), c.code)
	}
	if v, _ := metricValue(t, reg, "tokenkeeper_passive_requests_total", map[string]string{"app": refresher.UnknownAppLabel, "outcome": "404"}); v != 2 {
		t.Errorf(`passive_requests_total{app=%q,outcome="404"} = %v, want 2`, refresher.UnknownAppLabel, v)
	}

	// Still the leader, still serving.
	if got := okReply(t, refreshRequest(t, e.NC, contract.RefreshSubject("mp"), "")); got.Revision != rev {
		t.Fatalf("after the hostile requests: revision %d, want %d", got.Revision, rev)
	}
	if !rep.R.Leader() {
		t.Fatal("the replica lost its leadership")
	}
	if n := e.Sim.Calls(app.AppID) - calls; n != 0 {
		t.Fatalf("%d upstream calls", n)
	}
}

// TestUnknownAppNamesDoNotGrowMetrics: every request for a made-up app
// name created metric series of its own (a loop over random names grew
// the leader's memory without bound). 1000 random names now add one
// series: app="(unknown)".
func TestUnknownAppNamesDoNotGrowMetrics(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	reg := prometheus.NewRegistry()
	e.Start(e.Config(app), refresher.WithObserver(refresher.NewMetrics(reg)))
	e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	// One request of each outcome for the configured app first, so that
	// the count below is of series the unknown names add.
	okReply(t, refreshRequest(t, e.NC, contract.RefreshSubject("mp"), ""))
	before := seriesCount(t, reg)

	const n = 1000
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
	rng := rand.New(rand.NewPCG(9, 9))
	for i := range n {
		name := make([]byte, 1+rng.IntN(64))
		for j := range name {
			name[j] = alphabet[rng.IntN(len(alphabet))]
		}
		if string(name) == "mp" {
			name = append(name, 'x')
		}
		body := ""
		if i%2 == 1 {
			body = `{"stale_revision": 1}`
		}
		errorReply(t, refreshRequest(t, e.NC, contract.RefreshSubject(string(name)), body), contract.CodeNotFound)
	}
	if after := seriesCount(t, reg); after > before+1 {
		t.Fatalf("%d requests for unknown apps grew the metrics from %d to %d series, want at most one more", n, before, after)
	}
	// The counter is bumped right after each reply is sent: the last one
	// may trail the reply the test got.
	var v float64
	if !testutil.Eventually(5*time.Second, func() bool {
		v, _ = metricValue(t, reg, "tokenkeeper_passive_requests_total", map[string]string{"app": refresher.UnknownAppLabel, "outcome": "404"})
		return v == n
	}) {
		t.Fatalf(`passive_requests_total{app=%q,outcome="404"} = %v, want %d`, refresher.UnknownAppLabel, v, n)
	}
}

// asyncReply is the outcome of an asyncRequest.
type asyncReply struct {
	m   *nats.Msg
	err error
}

// asyncRequest sends a request (headers as key, value pairs) and delivers
// its reply or error on ch.
func asyncRequest(nc *nats.Conn, subject, body string, ch chan<- asyncReply, hdr ...string) {
	m := nats.NewMsg(subject)
	m.Data = []byte(body)
	for i := 0; i+1 < len(hdr); i += 2 {
		m.Header.Set(hdr[i], hdr[i+1])
	}
	go func() {
		rep, err := nc.RequestMsg(m, 10*time.Second)
		ch <- asyncReply{rep, err}
	}()
}

// TestRefreshQueueBoundedReplies503: the requests waiting for a fetch were
// unbounded (one goroutine or parked closure each, and an unbounded
// subscription queue in front). With a bound of 2 and a slow upstream,
// one request runs the fetch, one parks on it, and the other 18 get a 503
// "overloaded, retry later" at once, while the fetch is still running;
// every request is answered, and the bound frees up afterwards.
func TestRefreshQueueBoundedReplies503(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	e.Start(e.Config(app), refresher.WithMaxPendingRequests(2))
	_, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	fetches := e.Sim.Fetches(app.AppID)

	e.Sim.SetFault(wechatsim.Fault{Latency: 1500 * time.Millisecond}) // under the harness client's 2 s timeout
	subj := contract.RefreshSubject("mp")
	stale := `{"stale_revision": ` + strconv.FormatUint(rev, 10) + `}`
	const n = 20
	replies := make(chan asyncReply, n)
	asyncRequest(e.NC, subj, stale, replies) // takes slot 1 and starts the fetch
	testutil.WaitFor(t, 5*time.Second, func() bool { return e.Sim.InFlight(app.AppID) == 1 }, "the forced fetch did not start")
	for range n - 1 {
		asyncRequest(e.NC, subj, stale, replies) // one parks (slot 2), the rest are refused
	}

	var ok, refused int
	for range n - 2 {
		r := <-replies
		if r.err != nil {
			t.Fatalf("request: %v", r.err)
		}
		if r.m.Header.Get(micro.ErrorCodeHeader) == "" {
			ok++
			continue
		}
		msg := errorReply(t, r.m, contract.CodeUnavailable)
		if !strings.Contains(msg, "overloaded") || !strings.Contains(msg, "retry later") {
			t.Errorf("503 message %q does not say overloaded, retry later", msg)
		}
		refused++
	}
	if f := e.Sim.Fetches(app.AppID); f != fetches || ok != 0 {
		t.Fatalf("%d replies (%d refused) came only after the fetch: not refused at once", ok+refused, refused)
	}
	for range 2 {
		r := <-replies
		if r.err != nil {
			t.Fatalf("request: %v", r.err)
		}
		if got := okReply(t, r.m); got.Revision <= rev {
			t.Errorf("reply revision %d, want newer than %d", got.Revision, rev)
		}
	}
	if refused != n-2 {
		t.Fatalf("%d requests refused, want %d", refused, n-2)
	}
	if !e.Logs.Contains("token.refresh overloaded") {
		t.Error("no overload warning logged")
	}

	// The slots are free again: two requests that need one each are served.
	e.Sim.SetFault(wechatsim.Fault{})
	_, rev2 := e.WaitRecord(5*time.Second, "mp", func(_ contract.Record, v uint64) bool { return v > rev })
	for range 2 {
		asyncRequest(e.NC, subj, `{"stale_revision": `+strconv.FormatUint(rev2, 10)+`}`, replies)
	}
	for range 2 {
		r := <-replies
		if r.err != nil {
			t.Fatalf("request: %v", r.err)
		}
		okReply(t, r.m)
	}
}

// TestHandlerPanicRecovered: a panic anywhere in the request path (on the
// subscription's goroutine, in a slow request's goroutine, in a request
// parked on a fetch) killed the process. Injected through the test hook,
// each is now recovered, logged with the subject made printable and cut,
// answered with a 500, and gives back its slot.
func TestHandlerPanicRecovered(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	var panicAt atomic.Value // stage at which the hook panics
	panicAt.Store("")
	hook := func(stage, subject string) {
		if stage == panicAt.Load().(string) {
			panic("injected panic on " + subject)
		}
	}
	// Bound 2: a slot leaked by each of the two panics off the
	// subscription's goroutine would refuse the last requests.
	e.Start(e.Config(app), refresher.WithRequestHook(hook), refresher.WithMaxPendingRequests(2))
	_, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })

	// On the subscription's goroutine, with a subject full of escapes,
	// invalid UTF-8 and length.
	hostile := "token.refresh.boom\x1b[31m\xff\xfe\x00" + strings.Repeat("x", 300)
	panicAt.Store(refresher.StageReceive)
	errorReply(t, refreshRequest(t, e.NC, hostile, ""), contract.CodeInternal)
	want := refresher.Sanitize(hostile, refresher.MaxLoggedSubject)
	if !strings.HasPrefix(want, "token.refresh.boom?[31m\uFFFD?x") || !strings.HasSuffix(want, "x…") || len(want) > refresher.MaxLoggedSubject+len("…") {
		t.Fatalf("sanitised subject %q", want)
	}
	logs := e.Logs.String()
	i := strings.Index(logs, "handler panicked")
	if i < 0 {
		t.Fatalf("no log line of the panic:\n%s", logs)
	}
	line := logs[i:]
	line = line[:strings.IndexByte(line, '\n')]
	if !strings.Contains(line, `subject="`+want+`"`) || strings.Contains(line, `\x1b`) || strings.Contains(line, `\xff`) {
		t.Fatalf("the panic's log line does not carry the sanitised subject %q:\n%s", want, line)
	}

	// In a slow request's goroutine (a manual request takes that path).
	panicAt.Store(refresher.StageSlow)
	errorReply(t, refreshRequest(t, e.NC, contract.RefreshSubject("mp"), "", contract.SourceHeader, contract.SourceManual), contract.CodeInternal)

	// In a request parked on a fetch: the fetch's own request is served.
	panicAt.Store(refresher.StageParked)
	e.Sim.SetFault(wechatsim.Fault{Latency: 500 * time.Millisecond})
	stale := `{"stale_revision": ` + strconv.FormatUint(rev, 10) + `}`
	replies := make(chan asyncReply, 2)
	asyncRequest(e.NC, contract.RefreshSubject("mp"), stale, replies)
	testutil.WaitFor(t, 5*time.Second, func() bool { return e.Sim.InFlight(app.AppID) == 1 }, "the forced fetch did not start")
	asyncRequest(e.NC, contract.RefreshSubject("mp"), stale, replies)
	var codes []string
	for range 2 {
		r := <-replies
		if r.err != nil {
			t.Fatalf("request: %v", r.err)
		}
		codes = append(codes, r.m.Header.Get(micro.ErrorCodeHeader))
		if r.m.Header.Get(micro.ErrorCodeHeader) != "" {
			errorReply(t, r.m, contract.CodeInternal)
		}
	}
	slices.Sort(codes)
	if !slices.Equal(codes, []string{"", "500"}) {
		t.Fatalf("reply codes %q, want one ok and one 500 (the parked request)", codes)
	}
	if n := strings.Count(e.Logs.String(), "handler panicked"); n != 3 {
		t.Errorf("%d panics logged, want 3", n)
	}

	// Nothing leaked: both slots serve again, and so does the fast path.
	// A slot is given back just after its reply left, so the pair is
	// retried briefly; a leaked slot would refuse it for good.
	panicAt.Store("")
	e.Sim.SetFault(wechatsim.Fault{})
	var last []string
	if !testutil.Eventually(5*time.Second, func() bool {
		for range 2 {
			asyncRequest(e.NC, contract.RefreshSubject("mp"), "", replies, contract.SourceHeader, contract.SourceManual)
		}
		last = last[:0]
		for range 2 {
			r := <-replies
			if r.err != nil {
				t.Fatalf("request: %v", r.err)
			}
			last = append(last, r.m.Header.Get(micro.ErrorCodeHeader))
		}
		return last[0] == "" && last[1] == ""
	}) {
		t.Fatalf("after the panics, two concurrent requests still get codes %q: a request slot leaked", last)
	}
	okReply(t, refreshRequest(t, e.NC, contract.RefreshSubject("mp"), ""))
}

// panickyObserver panics in PassiveRequest, like a third-party observer
// with a bug.
type panickyObserver struct{ *refresher.Metrics }

func (panickyObserver) PassiveRequest(app, outcome string) {
	panic("observer bug: " + app + " " + outcome)
}

// TestPanickingObserverDoesNotCrashLeader: an observer that panics in
// PassiveRequest killed the leader on the first request. Replies are now
// sent before the observer is told, and its panic is recovered: every
// request gets its real answer (the record, a 404), and the leader serves
// on.
func TestPanickingObserverDoesNotCrashLeader(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	rep := e.Start(e.Config(app), refresher.WithObserver(panickyObserver{refresher.NewMetrics(nil)}))
	_, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })

	subj := contract.RefreshSubject("mp")
	for range 2 {
		if got := okReply(t, refreshRequest(t, e.NC, subj, "")); got.Revision != rev { // fast path
			t.Fatalf("revision %d, want %d", got.Revision, rev)
		}
		okReply(t, refreshRequest(t, e.NC, subj, "", contract.SourceHeader, contract.SourceManual)) // slow path
		errorReply(t, refreshRequest(t, e.NC, contract.RefreshSubject("nope"), ""), contract.CodeNotFound)
	}
	if !rep.R.Leader() {
		t.Fatal("the replica lost its leadership")
	}
	// Each panic is logged after its reply went out.
	testutil.WaitFor(t, 5*time.Second, func() bool { return strings.Count(e.Logs.String(), "handler panicked") == 6 },
		"not 6 panics logged")
}

// TestMetricsSurviveInvalidLabels: Prometheus panics on a label value
// that is not valid UTF-8; Metrics makes every label value valid itself,
// so no caller of any Observer method can panic it.
func TestMetricsSurviveInvalidLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := refresher.NewMetrics(reg)
	bad := "a\xffb\xfe"
	m.UpstreamCall(bad, time.Millisecond, nil)
	m.UpstreamCall(bad, time.Millisecond, errors.New("x"))
	m.Refreshed(bad, bad, time.Now().Add(time.Hour))
	m.RefreshFailed(bad, bad, errors.New("x"))
	m.WriteConflict(bad)
	m.PassiveRequest(bad, bad)
	m.QuotaUsed(bad, 1)
	if v, ok := metricValue(t, reg, "tokenkeeper_passive_requests_total", map[string]string{"app": "a\uFFFDb\uFFFD", "outcome": "a\uFFFDb\uFFFD"}); !ok || v != 1 {
		t.Errorf("passive_requests_total of the made-valid labels = %v, %v", v, ok)
	}
	if _, ok := metricValue(t, reg, "tokenkeeper_token_expiry_seconds", map[string]string{"app": "a\uFFFDb\uFFFD"}); !ok {
		t.Error("no expiry gauge for the made-valid app label")
	}
	m.Forget(bad)
	if n := seriesCount(t, reg); n != 1 { // tokenkeeper_leader
		t.Errorf("%d series after Forget, want 1", n)
	}
}

// FuzzRefreshRequestPath drives the token.refresh handler, with the real
// metrics observer installed, with any subject token, body and source
// header: every request is answered, with a record of the configured app
// or a well-formed error (never a 500: that is a recovered panic), never
// with an upstream call for another name, and the metrics stay gatherable
// and bounded. One embedded server and refresher per fuzzing process; the
// requests are handed to the handler directly (Refresher.HandleDirect), so
// that bytes no NATS client can publish are tried too.
//
//	go test ./refresher -run '^$' -fuzz '^FuzzRefreshRequestPath$' -fuzztime 20s
func FuzzRefreshRequestPath(f *testing.F) {
	e := harness.New(f, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	cfg := e.Config(app)
	limit := time.Hour // forced refreshes: the first fetches, the rest get the record
	cfg.PassiveMinInterval = &limit
	reg := prometheus.NewRegistry()
	rep := e.Start(cfg, refresher.WithObserver(refresher.NewMetrics(reg)))
	e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	maxSeries := seriesCount(f, reg) + 16 // (unknown) and mp × the reply codes, some slack

	for _, c := range []struct {
		name, body string
		manual     bool
	}{
		{"mp", "", false}, {"mp", "", true}, {"mp", `{"stale_revision": 1}`, false},
		{"mp", `{"stale_revision": 2}`, true}, {"mp", `{"stale_revision": 18446744073709551615}`, false},
		{"mp", `{"stale_revision": -1}`, false}, {"mp", `{`, true}, {"mp", strings.Repeat(" ", 2000), false},
		{"\xff\xfe", "", false}, {"\xff\xfe", `{"stale_revision": 1}`, true}, {"nope", `{"stale_revision": "\xff"}`, false},
		{"a\x00b\x1b[31m", "null", false}, {"", "", false}, {"mp.jsapi", "{}", false}, {strings.Repeat("x", 5000), "", true},
	} {
		f.Add([]byte(c.name), []byte(c.body), c.manual)
	}
	f.Fuzz(func(t *testing.T, name, body []byte, manual bool) {
		calls := e.Sim.Calls(app.AppID)
		var hdr nats.Header
		if manual {
			hdr = nats.Header{contract.SourceHeader: {contract.SourceManual}}
		}
		m := rep.R.HandleDirect(contract.RefreshPrefix+string(name), hdr, body, 20*time.Second)
		if m == nil {
			t.Fatal("no reply")
		}
		if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
			if err := checkErrorReply(m); err != nil {
				t.Fatal(err)
			}
			if !slices.Contains([]string{"400", "404", "429", "502", "503"}, code) {
				t.Fatalf("error %s: %s", code, m.Header.Get(micro.ErrorHeader))
			}
		} else {
			var r contract.RefreshReply
			if err := json.Unmarshal(m.Data, &r); err != nil || r.App != "mp" || string(name) != "mp" || r.AccessToken == "" {
				t.Fatalf("request for %q answered %q (%v)", name, m.Data, err)
			}
		}
		if string(name) != "mp" && e.Sim.Calls(app.AppID) != calls {
			t.Fatalf("a request for %q made an upstream call", name)
		}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatalf("gather: %v", err)
		}
		n := 0
		for _, mf := range mfs {
			n += len(mf.GetMetric())
			for _, s := range mf.GetMetric() {
				for _, l := range s.GetLabel() {
					if l.GetName() == "app" && l.GetValue() != "mp" && l.GetValue() != refresher.UnknownAppLabel {
						t.Fatalf("%s has app=%q", mf.GetName(), l.GetValue())
					}
				}
			}
		}
		if n > maxSeries {
			t.Fatalf("%d series, want at most %d", n, maxSeries)
		}
		s := refresher.Sanitize(string(name)+string(body), refresher.MaxLoggedSubject)
		if !utf8.ValidString(s) || len(s) > refresher.MaxLoggedSubject+len("…") || strings.ContainsFunc(s, func(c rune) bool { return !unicode.IsPrint(c) }) {
			t.Fatalf("sanitize(%q) = %q", string(name)+string(body), s)
		}
	})
}
