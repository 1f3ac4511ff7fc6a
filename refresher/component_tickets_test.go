package refresher_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// Authorizer tickets (authorizer_tickets): <component>.<authorizer>.<ticket>
// kept with the authorizer's token, served by token.refresh and
// token.sign.<component>.<authorizer>.

// authorizerTickets sets the component's authorizer_tickets.
func (w *compWorld) authorizerTickets(types ...string) {
	for i := range w.cfg.Apps {
		if w.cfg.Apps[i].Name == compName {
			w.cfg.Apps[i].AuthorizerTickets = types
		}
	}
}

// askRefresh sends a token.refresh request for key with body and decodes
// the reply into T, or returns the error reply's code and message.
func askRefresh[T any](w *compWorld, key, body string) (T, error) {
	var rep T
	m, err := w.e.NC.Request(contract.RefreshSubject(key), []byte(body), 10*time.Second)
	if err != nil {
		return rep, err
	}
	if code := m.Header.Get(contract.ErrorCodeHeader); code != "" {
		return rep, fmt.Errorf("%s %s", code, m.Header.Get(contract.ErrorHeader))
	}
	return rep, json.Unmarshal(m.Data, &rep)
}

// stormRefresh sends n concurrent token.refresh requests for key naming
// revision stale and returns their replies; any error reply fails t.
func stormRefresh[T any](t *testing.T, w *compWorld, key string, stale uint64, n int) []T {
	t.Helper()
	body := fmt.Sprintf(`{"stale_revision":%d}`, stale)
	reps := make([]T, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range reps {
		wg.Add(1)
		go func() { defer wg.Done(); reps[i], errs[i] = askRefresh[T](w, key, body) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("storm request: %v", err)
		}
	}
	return reps
}

// signAs asks token.sign.<key> for url and returns the reply or the
// error code and message of an error reply.
func (w *compWorld) signAs(key, url, ticket string) (contract.SignReply, error) {
	w.t.Helper()
	body, _ := json.Marshal(contract.SignRequest{URL: url, Ticket: ticket})
	m, err := w.e.NC.Request(contract.SignSubject(key), body, 10*time.Second)
	if err != nil {
		return contract.SignReply{}, err
	}
	if code := m.Header.Get(contract.ErrorCodeHeader); code != "" {
		return contract.SignReply{}, fmt.Errorf("%s %s", code, m.Header.Get(contract.ErrorHeader))
	}
	var rep contract.SignReply
	return rep, json.Unmarshal(m.Data, &rep)
}

// TestComponentAuthorizerTickets: with authorizer_tickets [jsapi,
// wx_card], every authorizer's tickets are fetched with its own token
// once it is authorized, stored under <component>.<authorizer>.<ticket>
// (a record readers accept, an event), refreshed before they expire while
// token.sign.<component>.<authorizer> signs as the authorizer — every
// signature accepted by the emulator's check across ticket rotations —,
// counted under the component in metrics, shown in status, and deleted
// when the authorizer unauthorizes (the other authorizer's stay).
func TestComponentAuthorizerTickets(t *testing.T) {
	w := newCompWorld(t, wechatsim.Options{ExpiresIn: 4 * time.Second, Grace: 2 * time.Second})
	w.authorizerTickets(contract.TicketJSAPI, contract.TicketWXCard)
	reg := prometheus.NewRegistry()
	rep, cb := w.startWithTicket(refresher.WithObserver(refresher.NewMetrics(reg)))
	ctx := context.Background()

	const a1, a2 = "wxauthtk01", "wxauthtk02"
	jsKey := contract.Key(compName, a1, contract.TicketJSAPI)
	events := subscribeEvents(t, w.e.NC, jsKey)
	pushed := time.Now()
	for _, a := range []string{a1, a2} {
		if _, err := w.e.Sim.Authorize(ctx, compAppID, a, cb); err != nil {
			t.Fatalf("authorize %s: %v", a, err)
		}
	}
	rec, _ := waitTicket(t, w.e, 5*time.Second, jsKey, func(contract.TicketRecord, uint64) bool { return true })
	t.Logf("authorized → jsapi ticket stored in %s", time.Since(pushed).Round(time.Millisecond))
	if rec.App != compName || rec.Key != jsKey || rec.TicketType != contract.TicketJSAPI {
		t.Fatalf("ticket record: app %q key %q type %q", rec.App, rec.Key, rec.TicketType)
	}
	if err := rec.Validate(jsKey, 24*time.Hour); err != nil {
		t.Fatalf("stored ticket record does not validate: %v", err)
	}
	if err := w.e.Sim.CheckTicket(rec.Ticket); err != nil {
		t.Fatalf("the stored ticket is not valid upstream: %v", err)
	}
	ev := nextEvent(t, events)
	if ev.Key != jsKey || ev.App != compName || ev.Revision == 0 {
		t.Fatalf("event %+v for %s", ev.Event, jsKey)
	}
	for _, key := range []string{contract.Key(compName, a1, contract.TicketWXCard), contract.Key(compName, a2, contract.TicketJSAPI), contract.Key(compName, a2, contract.TicketWXCard)} {
		waitTicket(t, w.e, 5*time.Second, key, func(contract.TicketRecord, uint64) bool { return true })
	}
	r2, _, _ := ticketRecord(t, w.e, contract.Key(compName, a2, contract.TicketJSAPI))
	if r2.Ticket == rec.Ticket {
		t.Fatal("two authorizers share a ticket")
	}

	// Sign as authorizer a1 across ticket rotations (4 s lifetimes):
	// every signature is accepted by WeChat's check for a1.
	url := "https://shop.example/pay?x=1#frag"
	seen := map[string]bool{}
	deadline := time.Now().Add(10 * time.Second)
	signed, rejected := 0, 0
	for time.Now().Before(deadline) {
		sr, err := w.signAs(contract.Key(compName, a1), url, "")
		if err != nil {
			t.Fatalf("sign as %s: %v", a1, err)
		}
		if sr.AppID != a1 {
			t.Fatalf("signature appId %q, want the authorizer's %q", sr.AppID, a1)
		}
		if w.e.Sim.CheckSignature(a1, "https://shop.example/pay?x=1", sr.NonceStr, sr.Timestamp, sr.Signature) != nil {
			rejected++
		}
		signed++
		cur, _, _ := ticketRecord(t, w.e, jsKey)
		seen[cur.Ticket] = true
		time.Sleep(20 * time.Millisecond) // pacing of the business load, not synchronisation
	}
	t.Logf("%d signatures as %s over %d tickets, %d rejected", signed, a1, len(seen), rejected)
	if rejected != 0 {
		t.Errorf("%d of %d signatures rejected by the emulator", rejected, signed)
	}
	if len(seen) < 3 {
		t.Errorf("the jsapi ticket was stored %d times in 10 s of 4 s lifetimes; want rotations", len(seen))
	}

	// Sign errors name what is missing.
	for _, c := range []struct{ key, ticket, want string }{
		{compName, "", "signs for its authorizers"},
		{contract.Key(compName, "wxnobody"), "", "has no authorizer"},
		{contract.Key(compName, a1), contract.TicketAgentConfig, "keeps no agent_config"},
		{contract.Key(compName, a1, contract.TicketJSAPI), "", "nothing signs"},
	} {
		if _, err := w.signAs(c.key, url, c.ticket); err == nil || !strings.Contains(err.Error(), "404") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("sign %s (ticket %q): %v, want a 404 saying %q", c.key, c.ticket, err, c.want)
		}
	}

	// Status shows each authorizer's tickets; metrics have no series of
	// an authorizer.
	var st refresher.AuthorizerStatus
	for _, s := range rep.R.AuthorizerStatuses(compName) {
		if s.AuthorizerAppID == a1 {
			st = s
		}
	}
	if len(st.Tickets) != 2 || !st.Tickets[0].Valid || !st.Tickets[1].Valid {
		t.Errorf("status of %s: tickets %+v", a1, st.Tickets)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, mm := range mf.GetMetric() {
			for _, lp := range mm.GetLabel() {
				if strings.Contains(lp.GetValue(), "wxauthtk") {
					t.Errorf("metric %s has a per-authorizer label %s=%q", mf.GetName(), lp.GetName(), lp.GetValue())
				}
			}
		}
	}

	// Every ticket call is in the audit trail under the ticket's key,
	// without the ticket.
	recs, raw := readAudit(t, w.e.JS)
	audited := 0
	for _, ar := range recs {
		if ar.Key == jsKey {
			audited++
			if ar.Endpoint != wechatsim.PathGetTicket {
				t.Errorf("audit endpoint of %s: %q", jsKey, ar.Endpoint)
			}
		}
	}
	if audited < len(seen) {
		t.Errorf("%d audit records of %s for %d tickets stored", audited, jsKey, len(seen))
	}
	for tk := range seen {
		if strings.Contains(strings.Join(raw, "\n"), tk) {
			t.Fatal("a ticket appears in the audit trail")
		}
	}

	// Unauthorized: a1's ticket keys are deleted, a2's stay.
	if err := w.e.Sim.Unauthorize(ctx, compAppID, a1, cb); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, func() bool {
		gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, e1 := w.tokKV.Get(gctx, jsKey)
		_, e2 := w.tokKV.Get(gctx, contract.Key(compName, a1, contract.TicketWXCard))
		return errors.Is(e1, jetstream.ErrKeyNotFound) && errors.Is(e2, jetstream.ErrKeyNotFound)
	}, "the unauthorized authorizer's ticket keys were not deleted")
	if _, _, ok := ticketRecord(t, w.e, contract.Key(compName, a2, contract.TicketJSAPI)); !ok {
		t.Fatal("the other authorizer's ticket was deleted")
	}
	if _, err := w.signAs(contract.Key(compName, a1), url, ""); err == nil {
		t.Fatal("signed for an unauthorized authorizer")
	}
}

// TestComponentAuthorizerTicketPassiveAndRejected: 200 concurrent
// token.refresh.<component>.<authorizer>.jsapi naming the stored revision
// cost one ticket call; a ticket fetch that WeChat answers 40001 (the
// authorizer's token revoked) refreshes the authorizer's token once —
// even inside passive_min_interval — and then fetches the ticket.
func TestComponentAuthorizerTicketPassiveAndRejected(t *testing.T) {
	w := newCompWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.authorizerTickets(contract.TicketJSAPI)
	w.cfg.PassiveMinInterval = new(time.Duration)
	*w.cfg.PassiveMinInterval = time.Hour
	rep, cb := w.startWithTicket()
	ctx := context.Background()
	const authz = "wxauthtk09"
	key := contract.Key(compName, authz, contract.TicketJSAPI)
	if _, err := w.e.Sim.Authorize(ctx, compAppID, authz, cb); err != nil {
		t.Fatal(err)
	}
	first, rev := waitTicket(t, w.e, 5*time.Second, key, func(contract.TicketRecord, uint64) bool { return true })

	ask := func(body string) (refresher.TicketReply, error) {
		return askRefresh[refresher.TicketReply](w, key, body)
	}
	calls := w.e.Sim.TicketCalls(authz)
	if r, err := ask(""); err != nil || r.Revision != rev || r.Ticket != first.Ticket {
		t.Fatalf("empty request: revision %d %v, want %d", r.Revision, err, rev)
	}
	for _, r := range stormRefresh[refresher.TicketReply](t, w, key, rev, 200) {
		if r.Revision <= rev || r.Ticket == first.Ticket {
			t.Fatalf("a reply kept the stale ticket (revision %d, stale %d)", r.Revision, rev)
		}
	}
	if n := w.e.Sim.TicketCalls(authz) - calls; n != 1 {
		t.Errorf("200 requests for one stale revision cost %d ticket calls, want 1", n)
	}
	if _, err := ask(""); err != nil {
		t.Fatal(err)
	}
	if _, err := w.e.NC.Request(contract.RefreshSubject(contract.Key(compName, authz, contract.TicketWXCard)), nil, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	// The authorizer's token revoked: the ticket fetch is answered 40001;
	// the token is refreshed once (passive_min_interval is an hour), then
	// the ticket fetched with the new one.
	tok, tokRev := w.waitToken(contract.Key(compName, authz), time.Second, nil)
	if !w.e.Sim.Revoke(tok.AccessToken) {
		t.Fatal("the emulator does not know the authorizer's token")
	}
	tokCalls, tkCalls := w.e.Sim.AuthorizerTokenCalls(compAppID, authz), w.e.Sim.TicketCalls(authz)
	before, _, _ := ticketRecord(t, w.e, key)
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := rep.R.RefreshTicketNow(rctx, key); err != nil {
		t.Fatalf("ticket refresh with a revoked authorizer token: %v", err)
	}
	if n := w.e.Sim.AuthorizerTokenCalls(compAppID, authz) - tokCalls; n != 1 {
		t.Errorf("api_authorizer_token calls = %d, want 1", n)
	}
	if n := w.e.Sim.TicketCalls(authz) - tkCalls; n != 1 {
		// The emulator counts calls with a valid token: the rejected one
		// is not among them.
		t.Errorf("ticket calls with a valid token = %d, want 1 (after the token refresh)", n)
	}
	ntok, ntokRev := w.waitToken(contract.Key(compName, authz), time.Second, nil)
	if ntokRev <= tokRev || ntok.AccessToken == tok.AccessToken {
		t.Fatal("the authorizer's token was not replaced")
	}
	after, _, _ := ticketRecord(t, w.e, key)
	if after.Ticket == before.Ticket || w.e.Sim.CheckTicket(after.Ticket) != nil {
		t.Fatal("the ticket fetched after the token refresh is not stored or not valid")
	}
}

// TestComponentAuthorizerTicketsStartup: a start with 500 stored
// authorizers whose tokens and tickets are valid makes no upstream call
// for them; the one whose stored ticket has expired gets exactly one
// ticket call (which shows the planner ran), and nothing else is called.
func TestComponentAuthorizerTicketsStartup(t *testing.T) {
	const n = 500
	var log upstreamLog
	w := newCompWorld(t, wechatsim.Options{OnCall: log.on})
	w.authorizerTickets(contract.TicketJSAPI)
	stop, _ := w.startWithComponentToken()
	stop()

	auths := w.e.Sim.BulkAuthorize(compAppID, n, "wxtkscale")
	w.seedAuthorizers(auths, func(_ int, a wechatsim.Authorization) (time.Time, time.Time) {
		return a.ExpiresAt.Add(-2 * time.Hour), a.ExpiresAt
	})
	stale := auths[7].AuthorizerAppID
	sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	now := time.Now().UTC()
	for _, a := range auths {
		key := contract.Key(compName, a.AuthorizerAppID, contract.TicketJSAPI)
		fetched, expires := now.Add(-10*time.Minute), now.Add(110*time.Minute)
		if a.AuthorizerAppID == stale {
			fetched, expires = now.Add(-3*time.Hour), now.Add(-time.Hour)
		}
		val, _ := json.Marshal(contract.TicketRecord{App: compName, Key: key, TicketType: contract.TicketJSAPI,
			Ticket: "seeded-" + a.AuthorizerAppID, FetchedAt: fetched, ExpiresAt: expires, Source: contract.SourceScheduled})
		if _, err := w.tokKV.Put(sctx, key, val); err != nil {
			t.Fatal(err)
		}
	}

	mark := time.Now()
	rep, _ := w.start()
	staleKey := contract.Key(compName, stale, contract.TicketJSAPI)
	waitTicket(t, w.e, 30*time.Second, staleKey, func(r contract.TicketRecord, _ uint64) bool { return r.Ticket != "seeded-"+stale })
	testutil.WaitFor(t, 30*time.Second, func() bool {
		st := rep.R.AuthorizerStatuses(compName)
		if len(st) != n {
			return false
		}
		for _, s := range st {
			if !s.Valid || len(s.Tickets) != 1 || !s.Tickets[0].Valid || s.Tickets[0].RefreshAt.IsZero() {
				return false
			}
		}
		return true
	}, "not all %d authorizers hold a valid token and ticket with a refresh moment", n)
	t.Logf("start with %d stored authorizers and tickets: all valid and planned in %s", n, time.Since(mark).Round(time.Millisecond))
	rep.R.Tick()
	calls := log.since(mark, append([]string{wechatsim.PathGetTicket}, componentPaths...)...)
	if len(calls) != 1 || calls[0].path != wechatsim.PathGetTicket || calls[0].appid != stale {
		t.Fatalf("upstream calls after the start: %v; want exactly the stale ticket's getticket", calls)
	}
}

// TestComponentAuthorizerTicketsTwoFailovers: 40 authorizers with jsapi
// tickets living 6 s (12 s under -race), three replicas; services sign as
// the authorizers all along (token.sign answered by any replica) while the
// leader is killed and later the next leader stopped. Every signature is
// accepted by the emulator's check, no sign request fails, and every
// ticket issued is stored — but for answers in flight at the kill, which
// no process can store.
func TestComponentAuthorizerTicketsTwoFailovers(t *testing.T) {
	const n = 40
	life := 6 * time.Second
	if raceEnabled {
		life = 12 * time.Second
	}
	book := newIssueBook() // tickets by authorizer appid
	simOpts := wechatsim.Options{ExpiresIn: life, Grace: 3 * time.Second, OnCall: func(c wechatsim.Call) {
		if c.Path == wechatsim.PathGetTicket && c.Status == http.StatusOK && c.Errcode == 0 && c.Token != "" {
			book.issue(c.AppID, c.Token, c.Duration)
		}
	}}
	w, _ := newCompWorldWith(t, harness.Options{Sim: simOpts})
	w.authorizerTickets(contract.TicketJSAPI)
	w.cfg.Policy.At = 0.5
	reps := w.startThree(t)
	ctx := context.Background()
	book.follow(t, w.tokKV, compName+".*."+contract.TicketJSAPI, func(val []byte) (string, string, bool) {
		var rec contract.TicketRecord
		if json.Unmarshal(val, &rec) != nil {
			return "", "", false
		}
		_, rest, _ := strings.Cut(rec.Key, ".")
		authz, _, _ := strings.Cut(rest, ".")
		return authz, contract.Fingerprint(rec.Ticket), true
	})

	authz := make([]string, n)
	cb := callbackURL(t, reps[1], compName) // a follower answers the pushes
	for i := range authz {
		authz[i] = fmt.Sprintf("wxtkfo%04d", i)
		if _, err := w.e.Sim.Authorize(ctx, compAppID, authz[i], cb); err != nil {
			t.Fatal(err)
		}
	}
	testutil.WaitFor(t, 30*time.Second, func() bool { k, _ := book.counts(); return k == n }, "not every authorizer got a ticket")

	// Services sign as the authorizers all along, through the client a
	// service uses (a request lost with a killed replica is sent again
	// after its 1 s timeout).
	cl, err := subscriber.NewClient(w.e.NC, subscriber.WithRequestTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var signed, rejected, failed atomic.Int64
	stopLoad := businessLoad(n, func(i int) {
		url := "https://shop.example/p/" + authz[i]
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		sr, err := cl.Sign(sctx, contract.Key(compName, authz[i]), url)
		cancel()
		if err != nil {
			if failed.Add(1) <= 5 {
				t.Logf("sign as %s: %v", authz[i], err)
			}
			return
		}
		signed.Add(1)
		if w.e.Sim.CheckSignature(authz[i], url, sr.NonceStr, sr.Timestamp, sr.Signature) != nil {
			if rejected.Add(1) <= 5 {
				t.Logf("signature as %s rejected by the emulator", authz[i])
			}
		}
	})
	defer stopLoad()

	kills := twoFailovers(t, &reps, book, n, 40*time.Second)
	stopLoad()
	if err := reps[0].Stop(); err != nil {
		t.Fatal(err)
	}
	total, lostAtKill, _ := book.settle(t, kills)
	sum := 0
	for _, a := range authz {
		sum += w.e.Sim.TicketsIssued(a, contract.TicketJSAPI)
	}
	if sum != total {
		t.Fatalf("the emulator issued %d authorizer tickets, its call log shows %d", sum, total)
	}
	t.Logf("%d authorizer tickets issued, %d stored, %d lost in flight at the kill; %d signatures, %d rejected, %d failed",
		total, total-lostAtKill, lostAtKill, signed.Load(), rejected.Load(), failed.Load())
	if rejected.Load() != 0 || failed.Load() != 0 {
		t.Errorf("%d signatures rejected upstream, %d sign requests failed", rejected.Load(), failed.Load())
	}
	if signed.Load() < int64(n) {
		t.Errorf("only %d signatures made", signed.Load())
	}
}
