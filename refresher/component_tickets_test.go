package refresher_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
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
		m, err := w.e.NC.Request(contract.RefreshSubject(key), []byte(body), 10*time.Second)
		if err != nil {
			return refresher.TicketReply{}, err
		}
		if code := m.Header.Get(contract.ErrorCodeHeader); code != "" {
			return refresher.TicketReply{}, fmt.Errorf("%s %s", code, m.Header.Get(contract.ErrorHeader))
		}
		var rep refresher.TicketReply
		return rep, json.Unmarshal(m.Data, &rep)
	}
	calls := w.e.Sim.TicketCalls(authz)
	if r, err := ask(""); err != nil || r.Revision != rev || r.Ticket != first.Ticket {
		t.Fatalf("empty request: revision %d %v, want %d", r.Revision, err, rev)
	}
	body := fmt.Sprintf(`{"stale_revision":%d}`, rev)
	reps := make([]refresher.TicketReply, 200)
	errs := make([]error, 200)
	var wg sync.WaitGroup
	for i := range reps {
		wg.Add(1)
		go func() { defer wg.Done(); reps[i], errs[i] = ask(body) }()
	}
	wg.Wait()
	for i := range reps {
		if errs[i] != nil {
			t.Fatalf("storm request: %v", errs[i])
		}
		if reps[i].Revision <= rev || reps[i].Ticket == first.Ticket {
			t.Fatalf("a reply kept the stale ticket (revision %d, stale %d)", reps[i].Revision, rev)
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
