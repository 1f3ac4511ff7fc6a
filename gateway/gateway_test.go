package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/gateway"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// TestGetReturnsRecordAsStored: a client allowed the key reads the token
// record and the ticket record byte for byte as the refresher stored
// them, with the revision in a header and no caching; the read is logged
// with the client's name and the key.
func TestGetReturnsRecordAsStored(t *testing.T) {
	w := setup(t, nil)
	for _, key := range []string{"mp", "mp.jsapi"} {
		r := w.do(t, "GET", "/v1/tokens/"+key, tokShop, "")
		mustStatus(t, "GET "+key, r, 200)
		stored, ok := w.stored(t, key)
		if !ok {
			t.Fatalf("%s: nothing stored", key)
		}
		if !bytes.Equal(r.body, stored) {
			t.Errorf("GET %s: body %s, want the record as stored %s", key, r.body, stored)
		}
		if r.header.Get("Cache-Control") != "no-store" {
			t.Errorf("GET %s: Cache-Control %q, want no-store", key, r.header.Get("Cache-Control"))
		}
		rev, err := strconv.ParseUint(r.header.Get("Tokenkeeper-Revision"), 10, 64)
		if err != nil || rev == 0 {
			t.Errorf("GET %s: revision header %q", key, r.header.Get("Tokenkeeper-Revision"))
		}
		if !w.logs.Contains("client=shop") || !w.logs.Contains("key="+key+" ") {
			t.Errorf("GET %s not logged with client and key:\n%s", key, w.logs)
		}
	}
	var rec contract.TicketRecord
	r := w.do(t, "GET", "/v1/tokens/mp.jsapi", tokAll, "")
	mustStatus(t, "GET mp.jsapi as all", r, 200)
	if err := json.Unmarshal(r.body, &rec); err != nil || rec.Ticket == "" || rec.Key != "mp.jsapi" {
		t.Errorf("ticket record %s: %v", r.body, err)
	}
}

// TestUnauthenticated: no token, another scheme and an unknown token get
// 401 with WWW-Authenticate and a JSON body, and read nothing.
func TestUnauthenticated(t *testing.T) {
	w := setup(t, nil)
	r := w.do(t, "GET", "/v1/tokens/mp", "", "")
	mustStatus(t, "no token", r, 401)
	r.errBody(t)
	if h := r.header.Get("WWW-Authenticate"); h != `Bearer realm="tokenkeeper"` {
		t.Errorf("no token: WWW-Authenticate %q", h)
	}
	r = w.do(t, "GET", "/v1/tokens/mp", tokShop+"x", "")
	mustStatus(t, "wrong token", r, 401)
	r.errBody(t)
	if h := r.header.Get("WWW-Authenticate"); !strings.Contains(h, `error="invalid_token"`) {
		t.Errorf("wrong token: WWW-Authenticate %q", h)
	}
	// The hash of a token is not a token.
	r = w.do(t, "GET", "/v1/tokens/mp", hash(tokShop), "")
	mustStatus(t, "the hash as token", r, 401)
	// Basic auth with the right token as password is not bearer.
	r = w.doHeader(t, "GET", "/v1/tokens/mp", "Basic "+tokShop)
	mustStatus(t, "basic auth", r, 401)
	// An unauthenticated caller learns nothing of the routes either.
	r = w.do(t, "GET", "/nope", "", "")
	mustStatus(t, "unknown path without token", r, 401)
	if bytes.Contains(r.body, []byte("access_token")) {
		t.Errorf("401 body carries a record: %s", r.body)
	}
}

// TestForbiddenAndNotFound: a key outside the client's patterns is 403
// (whether or not it exists), a key that does not exist 404, a bad key
// 400, an unknown path 404 and a wrong method 405, all with JSON bodies.
func TestForbiddenAndNotFound(t *testing.T) {
	w := setup(t, nil)
	for _, c := range []struct {
		what, method, path, tok, body string
		want                          int
	}{
		{"narrow reads mp", "GET", "/v1/tokens/mp", tokNarrow, "", 403},
		{"narrow reads mp.jsapi", "GET", "/v1/tokens/mp.jsapi", tokNarrow, "", 403},
		{"shop reads other", "GET", "/v1/tokens/other", tokShop, "", 403},
		{"shop reads a missing key outside its patterns", "GET", "/v1/tokens/nope", tokShop, "", 403},
		{"shop refreshes other", "POST", "/v1/tokens/other/refresh", tokShop, `{"stale_revision":1}`, 403},
		{"narrow signs for mp", "POST", "/v1/sign/mp", tokNarrow, `{"url":"https://x.example/"}`, 403},
		{"all reads a missing key", "GET", "/v1/tokens/nope", tokAll, "", 404},
		{"shop reads missing mp.wx_card", "GET", "/v1/tokens/mp.wx_card", tokShop, "", 404},
		{"bad key", "GET", "/v1/tokens/a..b", tokAll, "", 400},
		{"too many segments", "GET", "/v1/tokens/a.b.c.d", tokAll, "", 400},
		{"unknown path", "GET", "/v2/tokens/mp", tokAll, "", 404},
		{"POST on a record", "POST", "/v1/tokens/mp", tokAll, "", 405},
		{"GET on refresh", "GET", "/v1/tokens/mp/refresh", tokAll, "", 405},
	} {
		r := w.do(t, c.method, c.path, c.tok, c.body)
		mustStatus(t, c.what, r, c.want)
		d := r.errBody(t)
		if bytes.Contains(r.body, []byte("access_token")) || bytes.Contains(r.body, []byte(`"ticket"`)) {
			t.Errorf("%s: the error carries a record: %s", c.what, r.body)
		}
		t.Logf("%s: %d %s", c.what, r.status, d.Message)
	}
	if !w.logs.Contains("client=narrow") || !w.logs.Contains("status=403") {
		t.Errorf("403 not logged with the client:\n%s", w.logs)
	}
}

// TestRefresh: POST refresh with the current revision as stale makes the
// real refresher fetch a new token from the emulator; the reply is the
// refresh reply (record + revision) and the bucket holds it. Bad bodies
// are 400, big ones 413, and make no upstream call.
func TestRefresh(t *testing.T) {
	w := setup(t, nil)
	rec, rev := w.e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	fetches := w.e.Sim.Fetches("wxmp")

	r := w.do(t, "POST", "/v1/tokens/mp/refresh", tokShop, fmt.Sprintf(`{"stale_revision":%d}`, rev))
	mustStatus(t, "refresh", r, 200)
	var reply contract.RefreshReply
	if err := json.Unmarshal(r.body, &reply); err != nil {
		t.Fatalf("reply %s: %v", r.body, err)
	}
	if reply.Revision <= rev || reply.AccessToken == "" || reply.AccessToken == rec.AccessToken || reply.App != "mp" {
		t.Fatalf("reply revision %d (stale %d), new token %v: want a newer token", reply.Revision, rev, reply.AccessToken != rec.AccessToken)
	}
	if err := w.e.Sim.Check(reply.AccessToken); err != nil {
		t.Errorf("the emulator does not accept the refreshed token: %v", err)
	}
	now, nrev := w.e.WaitRecord(5*time.Second, "mp", func(_ contract.Record, v uint64) bool { return v >= reply.Revision })
	if nrev != reply.Revision || now.AccessToken != reply.AccessToken {
		t.Errorf("bucket at %d, reply at %d", nrev, reply.Revision)
	}
	if got := w.e.Sim.Fetches("wxmp"); got != fetches+1 {
		t.Errorf("upstream fetches %d, want %d", got, fetches+1)
	}

	// An old stale revision is answered from the bucket: no fetch.
	r = w.do(t, "POST", "/v1/tokens/mp/refresh", tokShop, fmt.Sprintf(`{"stale_revision":%d}`, rev))
	mustStatus(t, "refresh of an old revision", r, 200)
	fetches = w.e.Sim.Fetches("wxmp")

	for _, c := range []struct {
		what, body string
		want       int
	}{
		{"not JSON", `stale`, 400},
		{"negative", `{"stale_revision":-1}`, 400},
		{"string", `{"stale_revision":"3"}`, 400},
		{"unknown field", `{"stale_revision":3,"force":true}`, 400},
		{"two values", `{"stale_revision":3}{"stale_revision":4}`, 400},
		{"oversized", `{"stale_revision":3,"pad":"` + strings.Repeat("x", 8<<10) + `"}`, 413},
	} {
		r := w.do(t, "POST", "/v1/tokens/mp/refresh", tokShop, c.body)
		mustStatus(t, c.what, r, c.want)
		r.errBody(t)
	}
	// Chunked, so no Content-Length announces the size: still 413.
	r = w.doChunked(t, "/v1/tokens/mp/refresh", tokShop, strings.Repeat(" ", 64<<10))
	mustStatus(t, "oversized chunked", r, 413)
	if got := w.e.Sim.Fetches("wxmp"); got != fetches {
		t.Errorf("bad bodies made %d upstream fetches", got-fetches)
	}
	// A refresh of a key no refresher keeps: the refresher's 404.
	r = w.do(t, "POST", "/v1/tokens/nope/refresh", tokAll, `{}`)
	mustStatus(t, "refresh of an unknown key", r, 404)
	r.errBody(t)
}

// TestSign: POST /v1/sign/mp forwards the URL to token.sign.mp — here a
// small real NATS responder that signs with contract.JSSDKSignature — and
// returns its reply; its error replies come back with their code; with
// nobody serving the subject the answer is 503.
func TestSign(t *testing.T) {
	w := setup(t, nil)
	// The refresher's own sign service answers, over the jsapi ticket it
	// keeps for mp; WeChat's emulator checks the signature.
	url := "https://shop.example/pay?x=1#frag"
	var r response
	var reply contract.SignReply
	testutil.WaitFor(t, 10*time.Second, func() bool {
		r = w.do(t, "POST", "/v1/sign/mp", tokShop, `{"url":"`+url+`"}`)
		return r.status == 200 && json.Unmarshal(r.body, &reply) == nil
	}, "sign never answered 200")
	if reply.AppID != "wxmp" {
		t.Errorf("sign reply appId %q, want wxmp", reply.AppID)
	}
	if err := w.e.Sim.CheckSignature("wxmp", "https://shop.example/pay?x=1", reply.NonceStr, reply.Timestamp, reply.Signature); err != nil {
		t.Errorf("sign reply %+v does not sign %s: %v", reply, url, err)
	}

	// The service's own refusal comes through with its code and message.
	r = w.do(t, "POST", "/v1/sign/mp", tokShop, `{"url":"/relative/path"}`)
	mustStatus(t, "sign refused by the service", r, 400)
	if d := r.errBody(t); d.Message == "" {
		t.Errorf("the service's message did not come through: %+v", d)
	}
	for _, c := range []struct{ what, body string }{
		{"no url", `{}`},
		{"empty url", `{"url":""}`},
		{"bad ticket", `{"url":"https://x.example/","ticket":"wx_card"}`},
		{"not JSON", `url=https://x.example/`},
	} {
		r := w.do(t, "POST", "/v1/sign/mp", tokShop, c.body)
		mustStatus(t, c.what, r, 400)
		r.errBody(t)
	}
	// all may read other.jsapi, but other keeps no jsapi ticket: 404.
	r = w.do(t, "POST", "/v1/sign/other", tokAll, `{"url":"https://x.example/"}`)
	mustStatus(t, "sign of an app without the ticket", r, 404)
	r.errBody(t)
}

// TestFlood: a client limited to 1 request/s with a burst of 2 gets 429
// with Retry-After once its burst is spent; other clients are not
// limited by it.
func TestFlood(t *testing.T) {
	w := setup(t, nil)
	start := time.Now()
	ok, limited := 0, 0
	for i := 0; i < 12; i++ {
		r := w.do(t, "GET", "/v1/tokens/mp", tokFlood, "")
		switch r.status {
		case 200:
			ok++
		case 429:
			limited++
			d := r.errBody(t)
			if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 {
				t.Errorf("429 Retry-After %q, want whole seconds >= 1", r.header.Get("Retry-After"))
			}
			if !strings.Contains(d.Message, "flood") {
				t.Errorf("429 message %q does not name the client", d.Message)
			}
		default:
			t.Fatalf("flood: status %d: %s", r.status, r.body)
		}
	}
	elapsed := time.Since(start)
	// burst 2, plus at most one token per second elapsed.
	if max := 2 + int(elapsed.Seconds()) + 1; ok > max || ok < 2 {
		t.Errorf("%d requests allowed in %s, want 2..%d", ok, elapsed, max)
	}
	if limited == 0 {
		t.Errorf("no request was limited")
	}
	mustStatus(t, "another client meanwhile", w.do(t, "GET", "/v1/tokens/mp", tokShop, ""), 200)
	if !w.logs.Contains("client=flood") || !w.logs.Contains("status=429") {
		t.Errorf("429 not logged:\n%s", w.logs)
	}
}

// TestSetClients: a reload replaces the clients at once — a removed
// client gets 401, a new one is served, a widened pattern applies — and
// a reload that changes the listener, or has problems, changes nothing.
func TestSetClients(t *testing.T) {
	w := setup(t, nil)
	mustStatus(t, "shop before", w.do(t, "GET", "/v1/tokens/mp", tokShop, ""), 200)
	mustStatus(t, "narrow before", w.do(t, "GET", "/v1/tokens/mp", tokNarrow, ""), 403)

	clients := testClients()[1:] // shop removed
	clients[1].Keys = []string{"other", "mp"}
	const tokNew = "bearer-new-0123456789-must-never-be-logged"
	clients = append(clients, gateway.ClientConfig{Name: "new", TokenSHA256: hash(tokNew), Keys: []string{"mp"}})
	cfg := gateway.Config{Listen: "127.0.0.1:0", Clients: clients}

	moved := cfg
	moved.Listen = "127.0.0.1:1"
	if err := w.g.SetClients(moved); err == nil {
		t.Errorf("SetClients with another listen address: no error")
	}
	broken := gateway.Config{Listen: cfg.Listen, Clients: []gateway.ClientConfig{{Name: "x", TokenSHA256: "nope", Keys: []string{"*"}}}}
	if err := w.g.SetClients(broken); err == nil || !strings.Contains(err.Error(), "gateway.clients[0] (x).token_sha256") {
		t.Errorf("SetClients with a bad client: %v", err)
	}
	mustStatus(t, "shop after refused reloads", w.do(t, "GET", "/v1/tokens/mp", tokShop, ""), 200)

	if err := w.g.SetClients(cfg); err != nil {
		t.Fatal(err)
	}
	mustStatus(t, "shop removed", w.do(t, "GET", "/v1/tokens/mp", tokShop, ""), 401)
	mustStatus(t, "narrow widened", w.do(t, "GET", "/v1/tokens/mp", tokNarrow, ""), 200)
	mustStatus(t, "new client", w.do(t, "GET", "/v1/tokens/mp", tokNew, ""), 200)
	if w.logs.Contains(tokNew) {
		t.Errorf("the new client's token is in the log")
	}
}

// TestSignAsAuthorizer: POST /v1/sign/{component}.{authorizer} signs as
// the authorizer (appId the authorizer's, a signature WeChat's check
// accepts for it) for a client allowed to read the authorizer's ticket —
// "comp.*.jsapi" is enough, and reads no authorizer token —; other
// clients get 403; a ticket key or three segments are a 400; the
// component itself and an unknown authorizer are the refresher's 404s.
func TestSignAsAuthorizer(t *testing.T) {
	const tokComp = "bearer-comp-0123456789-must-never-be-logged"
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	comp, ring := e.Component("comp", "wxcomponent01")
	comp.AuthorizerTickets = []string{contract.TicketJSAPI}
	cfg := e.Config(comp)
	cfg.WithKeyring(ring)
	_, cb := e.StartComponent(cfg, "comp")
	const a1, a2 = "wxauthorizer0001", "wxauthorizer0002"
	for _, a := range []string{a1, a2} {
		if _, err := e.Sim.Authorize(context.Background(), "wxcomponent01", a, cb); err != nil {
			t.Fatalf("authorize %s: %v", a, err)
		}
	}
	e.WaitTicket(10*time.Second, "comp."+a1+".jsapi", nil)
	w := serveGateway(t, e, func(c *gateway.Config) {
		c.Clients = append(c.Clients, gateway.ClientConfig{Name: "comp-pages", TokenSHA256: hash(tokComp),
			Keys: []string{"comp.*.jsapi"}, RatePerSecond: 1000, Burst: 1000})
	})
	w.keys = []string{"comp", "comp." + a1, "comp." + a1 + ".jsapi", "comp." + a2, "comp." + a2 + ".jsapi"}
	w.more = []string{tokComp, harness.Secret("wxcomponent01")}

	const page = "https://shop.example/pay?x=1"
	for _, c := range []struct{ tok, authorizer string }{{tokComp, a1}, {tokAll, a2}} {
		r := w.do(t, "POST", "/v1/sign/comp."+c.authorizer, c.tok, `{"url":"`+page+`#frag"}`)
		mustStatus(t, "sign as "+c.authorizer, r, 200)
		var reply contract.SignReply
		if err := json.Unmarshal(r.body, &reply); err != nil || reply.AppID != c.authorizer {
			t.Fatalf("sign as %s: %s (%v), want appId %s", c.authorizer, r.body, err, c.authorizer)
		}
		if err := w.e.Sim.CheckSignature(c.authorizer, page, reply.NonceStr, reply.Timestamp, reply.Signature); err != nil {
			t.Fatalf("sign as %s: WeChat's check refuses %+v: %v", c.authorizer, reply, err)
		}
	}
	// comp-pages signs but reads no token; it reads the tickets.
	mustStatus(t, "comp-pages reads an authorizer token", w.do(t, "GET", "/v1/tokens/comp."+a1, tokComp, ""), 403)
	mustStatus(t, "comp-pages reads an authorizer ticket", w.do(t, "GET", "/v1/tokens/comp."+a1+".jsapi", tokComp, ""), 200)

	for _, c := range []struct {
		what, path, tok string
		status          int
		says            string
	}{
		{"shop signs for an authorizer", "/v1/sign/comp." + a1, tokShop, 403, "may not sign with key comp." + a1 + ".jsapi"},
		{"a ticket key", "/v1/sign/comp." + a1 + ".jsapi", tokAll, 400, "not the key"},
		{"an app's ticket key", "/v1/sign/comp.jsapi", tokAll, 400, "not the key"},
		{"the component itself", "/v1/sign/comp", tokAll, 404, "signs for its authorizers"},
		{"an unknown authorizer", "/v1/sign/comp.wxnobody", tokAll, 404, "has no authorizer"},
	} {
		r := w.do(t, "POST", c.path, c.tok, `{"url":"`+page+`"}`)
		mustStatus(t, c.what, r, c.status)
		if d := r.errBody(t); !strings.Contains(d.Message, c.says) {
			t.Errorf("%s: message %q, want it to say %q", c.what, d.Message, c.says)
		}
	}
}
