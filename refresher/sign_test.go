package refresher_test

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// signRequest sends one token.sign request and returns the reply.
func signRequest(t *testing.T, nc *nats.Conn, subject, body string) *nats.Msg {
	t.Helper()
	rep, err := nc.Request(subject, []byte(body), 10*time.Second)
	if err != nil {
		t.Fatalf("request on %q: %v", subject, err)
	}
	return rep
}

// signOK decodes a successful token.sign reply and checks its shape.
func signOK(t *testing.T, m *nats.Msg, appID string) contract.SignReply {
	t.Helper()
	if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
		t.Fatalf("error reply %s: %s (%s)", code, m.Header.Get(micro.ErrorHeader), m.Data)
	}
	var rep contract.SignReply
	if err := json.Unmarshal(m.Data, &rep); err != nil {
		t.Fatalf("reply %q: %v", m.Data, err)
	}
	var raw map[string]any
	_ = json.Unmarshal(m.Data, &raw)
	if _, ok := raw["timestamp"].(float64); !ok || strings.Contains(string(m.Data), `"timestamp":"`) {
		t.Fatalf("timestamp is not a JSON number: %s", m.Data)
	}
	if _, ok := raw["agentId"]; ok {
		t.Fatalf("agentId in a jsapi reply: %s", m.Data)
	}
	if rep.AppID != appID {
		t.Errorf("appId %q, want %q", rep.AppID, appID)
	}
	if d := time.Since(time.Unix(rep.Timestamp, 0)); d < -2*time.Second || d > 10*time.Second {
		t.Errorf("timestamp %d is %v from now", rep.Timestamp, d)
	}
	if b, err := hex.DecodeString(rep.NonceStr); err != nil || len(b) != 16 {
		t.Errorf("nonceStr %q is not 32 hex characters", rep.NonceStr)
	}
	if b, err := hex.DecodeString(rep.Signature); err != nil || len(b) != 20 {
		t.Errorf("signature %q is not a hex SHA-1", rep.Signature)
	}
	return rep
}

// TestSignAcceptedWhileTicketRotates: two replicas serve token.sign (a
// queue group: both answer some); while the jsapi ticket rotates every
// few seconds for a minute, every signature either gives is accepted by the
// emulator's JS-SDK check, and no two carry the same nonce.
func TestSignAcceptedWhileTicketRotates(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: 6 * time.Second, Grace: 2 * time.Second}})
	app := ticketApp(e, "mp", contract.TicketJSAPI)
	regs := []*prometheus.Registry{prometheus.NewRegistry(), prometheus.NewRegistry()}
	for _, reg := range regs {
		e.Start(e.Config(app), refresher.WithObserver(refresher.NewMetrics(reg)))
	}
	waitTicket(t, e, 15*time.Second, "mp.jsapi", func(contract.TicketRecord, uint64) bool { return true })
	first := e.Sim.TicketsIssued(app.AppID, contract.TicketJSAPI)

	nonces := map[string]bool{}
	n := 0
	// A minute of signing while the 6-second ticket rotates (the issue's
	// "for a minute"), at least three rotations.
	start := time.Now()
	deadline := start.Add(90 * time.Second)
	urls := []string{"https://shop.example/p?id=1", "https://shop.example/cart#top", "http://shop.example/a/b?x=%E4%BD%A0&y=2"}
	tick := time.NewTicker(10 * time.Millisecond) // pacing the load, not synchronising
	defer tick.Stop()
	for e.Sim.TicketsIssued(app.AppID, contract.TicketJSAPI) < first+3 || n < 200 || time.Since(start) < time.Minute {
		if time.Now().After(deadline) {
			t.Fatalf("after 90s: %d tickets issued (started at %d), %d signatures", e.Sim.TicketsIssued(app.AppID, contract.TicketJSAPI), first, n)
		}
		<-tick.C
		u := urls[n%len(urls)]
		rep := signOK(t, signRequest(t, e.NC, contract.SignSubject("mp"), `{"url":`+strconv.Quote(u)+`}`), app.AppID)
		if err := e.Sim.CheckSignature(app.AppID, strings.Split(u, "#")[0], rep.NonceStr, rep.Timestamp, rep.Signature); err != nil {
			t.Fatalf("signature %d (%s) refused: %v", n, u, err)
		}
		if nonces[rep.NonceStr] {
			t.Fatalf("nonce %s given twice", rep.NonceStr)
		}
		nonces[rep.NonceStr] = true
		n++
	}
	ok, rejected := e.Sim.SignatureChecks()
	if rejected != 0 || ok != n {
		t.Fatalf("signature checks: %d ok, %d rejected, want %d and 0", ok, rejected, n)
	}
	var total float64
	for i, reg := range regs {
		v, _ := metricValue(t, reg, "tokenkeeper_sign_requests_total", map[string]string{"app": "mp", "outcome": "ok"})
		if v == 0 {
			t.Errorf("replica %d answered no token.sign request (both are in the queue group)", i)
		}
		total += v
	}
	if total != float64(n) {
		t.Errorf("sign_requests_total{ok} over the replicas = %v, want %d", total, n)
	}
	t.Logf("%d signatures over %d ticket rotations, all accepted", n, e.Sim.TicketsIssued(app.AppID, contract.TicketJSAPI)-first)
}

// TestSignNeverWithExpiredTicket: once the stored ticket has expired and
// upstream refuses a new one (the ticket day's limit), token.sign answers
// an error on every replica, never a signature over the expired ticket,
// and the requests cost no upstream call (the refused fetch paused the
// ticket's calls).
func TestSignNeverWithExpiredTicket(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: 3 * time.Second, Grace: -1, TicketDailyQuota: 1}})
	app := ticketApp(e, "mp", contract.TicketJSAPI)
	e.Start(e.Config(app))
	e.Start(e.Config(app))
	rec, _ := waitTicket(t, e, 10*time.Second, "mp.jsapi", func(contract.TicketRecord, uint64) bool { return true })
	testutil.WaitFor(t, 20*time.Second, func() bool { return time.Now().After(rec.ExpiresAt.Add(time.Second)) }, "ticket did not expire")
	testutil.WaitFor(t, 10*time.Second, func() bool { return e.Sim.TicketCalls(app.AppID) >= 2 }, "no refused ticket refresh")
	calls := e.Sim.TicketCalls(app.AppID)

	for range 20 {
		m := signRequest(t, e.NC, contract.SignSubject("mp"), `{"url":"https://shop.example/"}`)
		if m.Header.Get(micro.ErrorCodeHeader) == "" {
			t.Fatalf("signed with an expired ticket: %s", m.Data)
		}
		code, _ := strconv.Atoi(m.Header.Get(micro.ErrorCodeHeader))
		msg := errorReply(t, m, code)
		if code != contract.CodeUnavailable && code != contract.CodeTooMany {
			t.Fatalf("error %d %q, want 503 or 429", code, msg)
		}
	}
	if n := e.Sim.TicketCalls(app.AppID) - calls; n != 0 {
		t.Fatalf("20 sign requests made %d ticket calls upstream", n)
	}
}

// TestSignHostileRequests: bad bodies, bad URLs, unknown apps, tickets not
// configured, a ticket key, an unknown component and non-UTF-8 subjects get
// well-formed 400/404 error replies, cost no upstream call, count under a
// configured app or "(unknown)" only, and the replica goes on signing.
func TestSignHostileRequests(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := ticketApp(e, "mp", contract.TicketJSAPI)
	plain := e.App("plain") // no tickets
	reg := prometheus.NewRegistry()
	rep := e.Start(e.Config(app, plain), refresher.WithObserver(refresher.NewMetrics(reg)))
	waitTicket(t, e, 10*time.Second, "mp.jsapi", func(contract.TicketRecord, uint64) bool { return true })
	e.WaitRecord(5*time.Second, "plain", func(contract.Record, uint64) bool { return true })
	calls, tcalls := e.Sim.Calls(app.AppID)+e.Sim.Calls(plain.AppID), e.Sim.TicketCalls(app.AppID)

	mp := contract.SignSubject("mp")
	for _, c := range []struct {
		subject, body string
		code          int
		says          string
	}{
		{mp, ``, 400, "JSON object"},
		{mp, `null`, 400, "JSON object"},
		{mp, `[]`, 400, "JSON object"},
		{mp, `{"url":`, 400, "not"},
		{mp, `{"url": 42}`, 400, "not"},
		{mp, `{}`, 400, "url is missing"},
		{mp, `{"url":""}`, 400, "url is missing"},
		{mp, `{"url":"/relative/page"}`, 400, "absolute"},
		{mp, `{"url":"shop.example/page"}`, 400, "absolute"},
		{mp, `{"url":"ftp://shop.example/"}`, 400, "absolute"},
		{mp, `{"url":"https:///nohost"}`, 400, "absolute"},
		{mp, `{"url":"https://shop.example/\u0001"}`, 400, "parse"},
		{mp, `{"url":"https://shop.example/` + strings.Repeat("a", contract.MaxSignURL) + `"}`, 400, "over the limit"},
		{mp, `{"url":"https://x/` + strings.Repeat(" ", contract.MaxSignRequestBody) + `"}`, 400, "over the limit"},
		{mp, `{"url":"https://shop.example/","ticket":"wx_card"}`, 400, "cannot sign"},
		{mp, `{"url":"https://shop.example/","ticket":"\u00ff\u0000"}`, 400, "cannot sign"},
		{mp, `{"url":"https://shop.example/","ticket":"agent_config"}`, 404, "no agent_config ticket"},
		{contract.SignSubject("plain"), `{"url":"https://shop.example/"}`, 404, "no jsapi ticket"},
		{contract.SignSubject("nope"), `{"url":"https://shop.example/"}`, 404, "unknown app"},
		{contract.SignSubject("mp.jsapi"), `{"url":"https://shop.example/"}`, 404, "token.sign takes a configured app"},
		{contract.SignSubject("comp.wxauthorizer"), `{"url":"https://shop.example/"}`, 404, "unknown app"},
		{contract.SignSubject("a.b.c.d"), `{"url":"https://shop.example/"}`, 400, "invalid key"},
		{"token.sign.\xff\xfe", `{"url":"https://shop.example/"}`, 400, "invalid key"},
		{"token.sign.mp\x00x", `{"url":"https://shop.example/"}`, 400, "invalid key"},
	} {
		t.Run(fmt.Sprintf("%.40q", c.subject+" "+c.body), func(t *testing.T) {
			msg := errorReply(t, signRequest(t, e.NC, c.subject, c.body), c.code)
			if !strings.Contains(msg, c.says) {
				t.Errorf("message %q does not say %q", msg, c.says)
			}
		})
	}
	if n := e.Sim.Calls(app.AppID) + e.Sim.Calls(plain.AppID) - calls; n != 0 {
		t.Errorf("%d token calls upstream", n)
	}
	if n := e.Sim.TicketCalls(app.AppID) - tcalls; n != 0 {
		t.Errorf("%d ticket calls upstream", n)
	}
	if v, _ := metricValue(t, reg, "tokenkeeper_sign_requests_total", map[string]string{"app": refresher.UnknownAppLabel, "outcome": "404"}); v != 2 {
		t.Errorf(`sign_requests_total{app="(unknown)",outcome="404"} = %v, want 2 (nope, comp)`, v)
	}
	if v, _ := metricValue(t, reg, "tokenkeeper_sign_requests_total", map[string]string{"app": "mp", "outcome": "400"}); v != 16 {
		t.Errorf(`sign_requests_total{app="mp",outcome="400"} = %v, want 16`, v)
	}
	signOK(t, signRequest(t, e.NC, mp, `{"url":"https://shop.example/ok"}`), app.AppID)
	if !rep.R.Leader() {
		t.Fatal("the replica lost its leadership")
	}
}

// FuzzSignRequestPath drives the token.sign handler, with the real
// metrics observer installed, with any subject token and body: every
// request is answered, with a signature the emulator accepts (for "mp"
// and a valid URL only) or a well-formed 400/404 error; no upstream call;
// metric labels stay configured keys or "(unknown)".
//
//	go test ./refresher -run '^$' -fuzz '^FuzzSignRequestPath$' -fuzztime 20s
func FuzzSignRequestPath(f *testing.F) {
	e := harness.New(f, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := ticketApp(e, "mp", contract.TicketJSAPI)
	reg := prometheus.NewRegistry()
	rep := e.Start(e.Config(app), refresher.WithObserver(refresher.NewMetrics(reg)))
	waitTicket(f, e, 10*time.Second, "mp.jsapi", func(contract.TicketRecord, uint64) bool { return true })

	for _, c := range []struct{ name, body string }{
		{"mp", `{"url":"https://a.example/"}`}, {"mp", `{"url":"https://a.example/#x","ticket":"jsapi"}`},
		{"mp", `{"url":"https://a.example/","ticket":"agent_config"}`}, {"mp", `{"url":"/x"}`}, {"mp", ``},
		{"mp", `{"url":"https://a.example/","url":"ftp://b"}`}, {"\xff\xfe", `{"url":"https://a.example/"}`},
		{"comp.auth", `{"url":"https://a.example/"}`}, {"mp.jsapi", `{}`}, {strings.Repeat("x", 5000), ``},
		{"mp", `{"url":"https://a.example/\xff"}`}, {"mp", `{"url":"http://[::1]:80/"}`},
	} {
		f.Add([]byte(c.name), []byte(c.body))
	}
	f.Fuzz(func(t *testing.T, name, body []byte) {
		calls, tcalls := e.Sim.Calls(app.AppID), e.Sim.TicketCalls(app.AppID)
		m := rep.R.SignDirect(contract.SignPrefix+string(name), body, 20*time.Second)
		if m == nil {
			t.Fatal("no reply")
		}
		if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
			if err := checkErrorReply(m); err != nil {
				t.Fatal(err)
			}
			if !slices.Contains([]string{"400", "404"}, code) {
				t.Fatalf("error %s: %s", code, m.Header.Get(micro.ErrorHeader))
			}
		} else {
			var r contract.SignReply
			var req contract.SignRequest
			if err := json.Unmarshal(m.Data, &r); err != nil || string(name) != "mp" || json.Unmarshal(body, &req) != nil {
				t.Fatalf("request for %q %q answered %q (%v)", name, body, m.Data, err)
			}
			if err := contract.CheckSignURL(req.URL); err != nil {
				t.Fatalf("signed an URL it should refuse: %q: %v", req.URL, err)
			}
			u, _, _ := strings.Cut(req.URL, "#")
			if err := e.Sim.CheckSignature(app.AppID, u, r.NonceStr, r.Timestamp, r.Signature); err != nil {
				t.Fatalf("signature for %q refused: %v", req.URL, err)
			}
		}
		if e.Sim.Calls(app.AppID) != calls || e.Sim.TicketCalls(app.AppID) != tcalls {
			t.Fatalf("a sign request made an upstream call")
		}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatalf("gather: %v", err)
		}
		for _, mf := range mfs {
			for _, s := range mf.GetMetric() {
				for _, l := range s.GetLabel() {
					if l.GetName() == "app" && !slices.Contains([]string{"mp", "mp.jsapi", refresher.UnknownAppLabel}, l.GetValue()) {
						t.Fatalf("%s has app=%q", mf.GetName(), l.GetValue())
					}
				}
			}
		}
	})
}
