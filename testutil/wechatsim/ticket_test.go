package wechatsim_test

import (
	"errors"
	"net/http"
	"net/url"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// ticketReply is the getticket answer.
type ticketReply struct {
	Errcode   int    `json:"errcode"`
	Errmsg    string `json:"errmsg"`
	Ticket    string `json:"ticket"`
	ExpiresIn int    `json:"expires_in"`
}

func (e *env) getTicket(tok, typ string) ticketReply {
	e.t.Helper()
	q := url.Values{}
	if tok != "" {
		q.Set("access_token", tok)
	}
	if typ != "" {
		q.Set("type", typ)
	}
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+wechatsim.PathGetTicket+"?"+q.Encode(), nil)
	var r ticketReply
	e.doJSON(req, &r)
	return r
}

func mustTicket(t *testing.T, r ticketReply) string {
	t.Helper()
	if r.Errcode != 0 || r.Errmsg != "ok" || r.Ticket == "" || r.ExpiresIn != 7200 {
		t.Fatalf("want {errcode:0, errmsg:ok, ticket, expires_in:7200}, got %+v", r)
	}
	return r.Ticket
}

func wantTicketErr(t *testing.T, r ticketReply, code int) {
	t.Helper()
	if r.Errcode != code || r.Ticket != "" {
		t.Fatalf("want errcode %d and no ticket, got %+v", code, r)
	}
}

func wantTicketCheck(t *testing.T, sim *wechatsim.Sim, ticket string, want error) {
	t.Helper()
	if err := sim.CheckTicket(ticket); !errors.Is(err, want) {
		t.Fatalf("CheckTicket = %v, want %v", err, want)
	}
}

// Each fetch issues a new ticket; the previous one of the same type stays
// valid for the grace period, then is invalid; every ticket expires after
// expires_in; the two types are separate chains.
func TestTicketRotationGraceExpiry(t *testing.T) {
	e := newEnv(t, wechatsim.Options{}) // 7200 s, grace 300 s
	tok := mustToken(t, e.classic())
	first := mustTicket(t, e.getTicket(tok, contract.TicketJSAPI))
	card := mustTicket(t, e.getTicket(tok, contract.TicketWXCard))
	e.clock.Advance(time.Hour)
	second := mustTicket(t, e.getTicket(tok, contract.TicketJSAPI))
	if second == first || card == first {
		t.Fatal("a fetch returned an existing ticket")
	}
	if got := e.sim.LastTicket(appID, contract.TicketJSAPI); got != second {
		t.Fatal("LastTicket is not the latest jsapi ticket")
	}
	if n := e.sim.TicketsIssued(appID, contract.TicketJSAPI); n != 2 {
		t.Fatalf("TicketsIssued(jsapi) = %d, want 2", n)
	}
	wantTicketCheck(t, e.sim, first, nil) // inside the grace
	wantTicketCheck(t, e.sim, card, nil)  // a jsapi fetch does not touch wx_card
	e.clock.Advance(300*time.Second - time.Millisecond)
	wantTicketCheck(t, e.sim, first, nil)
	e.clock.Advance(time.Millisecond)
	wantTicketCheck(t, e.sim, first, wechatsim.ErrInvalidToken)
	wantTicketCheck(t, e.sim, second, nil)
	wantTicketCheck(t, e.sim, card, nil)
	e.clock.Advance(time.Hour - 300*time.Second) // card is 2 h old
	wantTicketCheck(t, e.sim, card, wechatsim.ErrExpiredToken)
	wantTicketCheck(t, e.sim, second, nil)
	wantTicketCheck(t, e.sim, "no-such-ticket", wechatsim.ErrInvalidToken)
	// A ticket is not an access token, nor the other way round.
	wantCheck(t, e.sim, second, wechatsim.ErrInvalidToken)
	wantTicketCheck(t, e.sim, tok, wechatsim.ErrInvalidToken)
}

// A ticket needs an access token that is valid now, classic or stable.
func TestTicketNeedsValidToken(t *testing.T) {
	e := newEnv(t, wechatsim.Options{})
	old := mustToken(t, e.classic())
	cur := mustToken(t, e.classic())
	stable := mustToken(t, e.stable(false))
	mustTicket(t, e.getTicket(old, contract.TicketJSAPI)) // old is inside its grace
	mustTicket(t, e.getTicket(stable, contract.TicketJSAPI))
	wantTicketErr(t, e.getTicket("", contract.TicketJSAPI), wechatsim.CodeTokenMissing)
	wantTicketErr(t, e.getTicket("unknown-token", contract.TicketJSAPI), wechatsim.CodeInvalidCredential)
	e.clock.Advance(300 * time.Second)
	wantTicketErr(t, e.getTicket(old, contract.TicketJSAPI), wechatsim.CodeInvalidCredential)
	mustTicket(t, e.getTicket(cur, contract.TicketWXCard))
	e.sim.Revoke(stable)
	wantTicketErr(t, e.getTicket(stable, contract.TicketJSAPI), wechatsim.CodeInvalidCredential)
	e.clock.Advance(7200 * time.Second)
	wantTicketErr(t, e.getTicket(cur, contract.TicketJSAPI), wechatsim.CodeTokenExpired)
	if n := e.sim.TicketsIssued(appID, contract.TicketJSAPI); n != 2 {
		t.Fatalf("TicketsIssued(jsapi) = %d, want 2 (rejected calls issue nothing)", n)
	}
}

func TestTicketBadType(t *testing.T) {
	e := newEnv(t, wechatsim.Options{})
	tok := mustToken(t, e.classic())
	wantTicketErr(t, e.getTicket(tok, ""), wechatsim.CodeInvalidArgs)
	wantTicketErr(t, e.getTicket(tok, "agent_config"), wechatsim.CodeInvalidArgs) // WeCom's, not WeChat's
	if n := e.sim.TicketQuotaUsed(appID); n != 0 {
		t.Fatalf("TicketQuotaUsed = %d after bad calls, want 0", n)
	}
	if n := e.sim.TicketCalls(appID); n != 2 {
		t.Fatalf("TicketCalls = %d, want 2", n)
	}
}

// Tickets have their own daily limit, separate from the token quota, and
// it resets at midnight Asia/Shanghai.
func TestTicketDailyLimit(t *testing.T) {
	e := newEnv(t, wechatsim.Options{TicketDailyQuota: 2, DailyQuota: 1})
	tok := mustToken(t, e.classic()) // the token quota is now used up
	wantErrcode(t, e.classic(), wechatsim.CodeDailyQuota)
	mustTicket(t, e.getTicket(tok, contract.TicketJSAPI))
	mustTicket(t, e.getTicket(tok, contract.TicketWXCard))
	wantTicketErr(t, e.getTicket(tok, contract.TicketJSAPI), wechatsim.CodeDailyQuota)
	if n := e.sim.TicketQuotaUsed(appID); n != 2 {
		t.Fatalf("TicketQuotaUsed = %d, want 2", n)
	}
	if n := e.sim.QuotaUsed(appID); n != 1 {
		t.Fatalf("QuotaUsed = %d, want 1 (tickets do not count against the token quota)", n)
	}
	e.clock.Set(time.Date(2024, 3, 1, 16, 0, 0, 0, time.UTC)) // 00:00 next day in Shanghai
	tok = mustToken(t, e.classic())
	mustTicket(t, e.getTicket(tok, contract.TicketJSAPI))
	if n := e.sim.TicketQuotaUsed(appID); n != 1 {
		t.Fatalf("TicketQuotaUsed = %d on the next day, want 1", n)
	}
}

// CheckSignature accepts exactly the signatures of the app's jsapi
// tickets that are valid now, as wx.config would.
func TestCheckSignature(t *testing.T) {
	e := newEnv(t, wechatsim.Options{})
	e.sim.AddApp("wxother", "other-secret")
	tok := mustToken(t, e.classic())
	first := mustTicket(t, e.getTicket(tok, contract.TicketJSAPI))
	card := mustTicket(t, e.getTicket(tok, contract.TicketWXCard))
	const page, nonce, ts = "https://shop.example.com/p?id=1", "Wm3WZYTPz0wzccnW", int64(1709265600)
	check := func(sig, u string) error { return e.sim.CheckSignature(appID, u, nonce, ts, sig) }

	sig1 := contract.JSSDKSignature(first, nonce, ts, page)
	if err := check(sig1, page); err != nil {
		t.Fatalf("current ticket: %v", err)
	}
	if err := check(sig1, page+"#frag"); err != nil {
		t.Fatalf("the fragment must not matter: %v", err)
	}
	for name, err := range map[string]error{
		"other url":   check(sig1, page+"&x=1"),
		"other nonce": e.sim.CheckSignature(appID, page, nonce+"x", ts, sig1),
		"other ts":    e.sim.CheckSignature(appID, page, nonce, ts+1, sig1),
		"other app":   e.sim.CheckSignature("wxother", page, nonce, ts, sig1),
		"wx_card":     check(contract.JSSDKSignature(card, nonce, ts, page), page),
		"no ticket":   check(contract.JSSDKSignature("forged", nonce, ts, page), page),
	} {
		if !errors.Is(err, wechatsim.ErrInvalidSignature) {
			t.Errorf("%s: %v, want ErrInvalidSignature", name, err)
		}
	}
	second := mustTicket(t, e.getTicket(tok, contract.TicketJSAPI))
	if err := check(sig1, page); err != nil {
		t.Fatalf("previous ticket inside its grace: %v", err)
	}
	e.clock.Advance(300 * time.Second)
	if err := check(sig1, page); !errors.Is(err, wechatsim.ErrInvalidSignature) {
		t.Fatalf("previous ticket past its grace: %v", err)
	}
	if err := check(contract.JSSDKSignature(second, nonce, ts, page), page); err != nil {
		t.Fatalf("current ticket: %v", err)
	}
	if ok, bad := e.sim.SignatureChecks(); ok != 4 || bad != 7 {
		t.Fatalf("SignatureChecks = %d ok, %d rejected; want 4, 7", ok, bad)
	}
}

// BulkAuthorizerTickets issues authorizer tickets without calls: real
// tickets (CheckTicket, CheckSignature), counted as issued, not as calls
// or quota; a getticket with the authorizer's token supersedes them as
// usual (the bulk one stays valid for the grace period). Bad input issues
// nothing.
func TestBulkAuthorizerTickets(t *testing.T) {
	e := newCompEnv(t, wechatsim.Options{})
	bulk := e.sim.BulkAuthorize(compID, 3, "wxbt")
	ids := []string{bulk[0].AuthorizerAppID, bulk[1].AuthorizerAppID, bulk[2].AuthorizerAppID}
	if got := e.sim.BulkAuthorizerTickets(compID, contract.TicketJSAPI, append(ids, "wxnosuch")); got != nil {
		t.Fatalf("an unknown authorizer was accepted: %v", got)
	}
	for _, bad := range []struct{ comp, typ string }{{"wxnosuch", contract.TicketJSAPI}, {compID, contract.TicketAgentConfig}, {compID, ""}} {
		if got := e.sim.BulkAuthorizerTickets(bad.comp, bad.typ, ids); got != nil {
			t.Fatalf("BulkAuthorizerTickets(%q, %q) = %v, want nil", bad.comp, bad.typ, got)
		}
	}
	if n := e.sim.TicketsIssued(ids[0], contract.TicketJSAPI); n != 0 {
		t.Fatalf("refused input issued %d tickets", n)
	}
	tk := e.sim.BulkAuthorizerTickets(compID, contract.TicketJSAPI, ids)
	if len(tk) != 3 {
		t.Fatalf("got %d tickets", len(tk))
	}
	for i, id := range ids {
		if tk[i].Ticket != e.sim.LastTicket(id, contract.TicketJSAPI) || !tk[i].ExpiresAt.Equal(e.clock.Now().Add(2*time.Hour)) {
			t.Fatalf("ticket %d: %+v, last %q", i, tk[i], e.sim.LastTicket(id, contract.TicketJSAPI))
		}
		wantTicketCheck(t, e.sim, tk[i].Ticket, nil)
		if e.sim.TicketsIssued(id, contract.TicketJSAPI) != 1 || e.sim.TicketCalls(id) != 0 || e.sim.TicketQuotaUsed(id) != 0 {
			t.Fatalf("%s: issued %d, calls %d, quota %d; want 1, 0, 0", id, e.sim.TicketsIssued(id, contract.TicketJSAPI),
				e.sim.TicketCalls(id), e.sim.TicketQuotaUsed(id))
		}
	}
	const page, nonce, ts = "https://example.com/a", "n0nce", 1700000000
	if err := e.sim.CheckSignature(ids[1], page, nonce, ts, contract.JSSDKSignature(tk[1].Ticket, nonce, ts, page)); err != nil {
		t.Fatalf("a bulk ticket does not sign: %v", err)
	}
	if err := e.sim.CheckSignature(ids[0], page, nonce, ts, contract.JSSDKSignature(tk[1].Ticket, nonce, ts, page)); err == nil {
		t.Fatal("another authorizer's ticket signed")
	}
	next := mustTicket(t, e.getTicket(bulk[0].AccessToken, contract.TicketJSAPI))
	if next == tk[0].Ticket || e.sim.TicketCalls(ids[0]) != 1 || e.sim.TicketsIssued(ids[0], contract.TicketJSAPI) != 2 {
		t.Fatal("getticket after the bulk ticket did not issue a new one")
	}
	wantTicketCheck(t, e.sim, tk[0].Ticket, nil)
	e.clock.Advance(300 * time.Second)
	wantTicketCheck(t, e.sim, tk[0].Ticket, wechatsim.ErrInvalidToken)
	wantTicketCheck(t, e.sim, next, nil)
}

// The emulator's memory for 100 000 authorizers holding a jsapi ticket
// each (what tokenbench component-scale -tickets jsapi sets up): measured
// as live heap after a GC, bounded so that a leak per ticket fails.
func TestBulkAuthorizerTicketsMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	e := newCompEnv(t, wechatsim.Options{})
	const n = 100_000
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	h0 := heap()
	bulk := e.sim.BulkAuthorize(compID, n, "wxm")
	h1 := heap()
	ids := make([]string, n)
	for i, b := range bulk {
		ids[i] = b.AuthorizerAppID
	}
	tk := e.sim.BulkAuthorizerTickets(compID, contract.TicketJSAPI, ids)
	if len(tk) != n {
		t.Fatalf("got %d tickets", len(tk))
	}
	h2 := heap()
	runtime.KeepAlive(bulk)
	runtime.KeepAlive(tk)
	perAuth := float64(h1-h0) / n
	perTicket := float64(h2-h1)/n - float64(unsafe.Sizeof(wechatsim.IssuedTicket{})+86) // less the test's own slice and values
	t.Logf("emulator heap at %d authorizers: %.0f MB (%.0f B each, with the test's Authorization slice); their jsapi tickets: +%.0f MB (%.0f B each, the emulator's share)",
		n, float64(h1-h0)/1e6, perAuth, float64(h2-h1)/1e6, perTicket)
	if perTicket > 2048 {
		t.Fatalf("%.0f B of emulator heap per authorizer ticket; want ≤ 2 KiB", perTicket)
	}
}
