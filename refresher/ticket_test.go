package refresher_test

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// ticketApp is e.App(name) with tickets.
func ticketApp(e *harness.Env, name string, tickets ...string) refresher.AppConfig {
	a := e.App(name)
	a.Tickets = tickets
	return a
}

// ticketRecord reads the ticket record under key (ok false if none).
func ticketRecord(t testing.TB, e *harness.Env, key string) (contract.TicketRecord, uint64, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	kv, err := e.JS.KeyValue(ctx, contract.DefaultBucket)
	if err != nil {
		return contract.TicketRecord{}, 0, false
	}
	ent, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return contract.TicketRecord{}, 0, false
	}
	if err != nil {
		t.Logf("get %s: %v", key, err)
		return contract.TicketRecord{}, 0, false
	}
	var rec contract.TicketRecord
	if err := json.Unmarshal(ent.Value(), &rec); err != nil {
		t.Fatalf("ticket record of %s does not parse: %v", key, err)
	}
	return rec, ent.Revision(), true
}

// waitTicket waits up to d for the ticket record under key to satisfy
// cond.
func waitTicket(t testing.TB, e *harness.Env, d time.Duration, key string, cond func(contract.TicketRecord, uint64) bool) (contract.TicketRecord, uint64) {
	t.Helper()
	var rec contract.TicketRecord
	var rev uint64
	testutil.WaitFor(t, d, func() bool {
		r, v, ok := ticketRecord(t, e, key)
		if ok && cond(r, v) {
			rec, rev = r, v
			return true
		}
		return false
	}, "ticket record %s did not reach the expected state", key)
	return rec, rev
}

// TestTicketStoredAfterToken: with tickets: [jsapi] the refresher stores
// the app's token, then <app>.jsapi: a ticket record the emulator
// accepts (and a JS-SDK signature made with it), announced on
// token.updated.<app>.jsapi with app and key.
func TestTicketStoredAfterToken(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := ticketApp(e, "mp", contract.TicketJSAPI)
	events := subscribeEvents(t, e.NC, "mp.jsapi")
	rep := e.Start(e.Config(app))

	rec, rev := waitTicket(t, e, 10*time.Second, "mp.jsapi", func(contract.TicketRecord, uint64) bool { return true })
	tok, _ := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	if err := rec.Validate("mp.jsapi", contract.MaxTokenLifetime); err != nil {
		t.Fatalf("stored ticket record is not valid: %v", err)
	}
	if rec.App != "mp" || rec.Key != "mp.jsapi" || rec.TicketType != contract.TicketJSAPI || rec.Source != contract.SourceStartup {
		t.Errorf("ticket record app=%q key=%q type=%q source=%q", rec.App, rec.Key, rec.TicketType, rec.Source)
	}
	if rec.Ticket != e.Sim.LastTicket(app.AppID, contract.TicketJSAPI) {
		t.Errorf("stored ticket is not the emulator's latest")
	}
	if err := e.Sim.CheckTicket(rec.Ticket); err != nil {
		t.Errorf("stored ticket is not valid upstream: %v", err)
	}
	ts := time.Now().Unix()
	sig := contract.JSSDKSignature(rec.Ticket, "nonce123", ts, "https://shop.example/page?x=1")
	if err := e.Sim.CheckSignature(app.AppID, "https://shop.example/page?x=1", "nonce123", ts, sig); err != nil {
		t.Errorf("signature made with the stored ticket refused: %v", err)
	}
	if rec.FetchedAt.Before(tok.FetchedAt) {
		t.Errorf("ticket fetched at %v, before the token (%v)", rec.FetchedAt, tok.FetchedAt)
	}
	if life := rec.ExpiresAt.Sub(rec.FetchedAt); life != time.Hour {
		t.Errorf("ticket lifetime %v, want 1h", life)
	}
	ev := nextEvent(t, events)
	if ev.App != "mp" || ev.Key != "mp.jsapi" || ev.Revision != rev || !ev.ExpiresAt.Equal(rec.ExpiresAt) || ev.Source != contract.SourceStartup {
		t.Errorf("event %+v does not match the ticket record (revision %d)", ev.Event, rev)
	}
	for _, f := range []string{"ticket", "access_token"} {
		if _, ok := ev.raw[f]; ok {
			t.Errorf("event carries %q", f)
		}
	}
	if n := e.Sim.TicketsIssued(app.AppID, contract.TicketJSAPI); n != 1 {
		t.Errorf("tickets issued = %d, want 1", n)
	}
	if n := e.Sim.TicketsIssued(app.AppID, contract.TicketWXCard); n != 0 {
		t.Errorf("wx_card tickets issued = %d, want 0 (not configured)", n)
	}
	testutil.WaitFor(t, 5*time.Second, func() bool {
		st := rep.R.Statuses()
		return len(st) == 1 && len(st[0].Tickets) == 1 && st[0].Tickets[0].Revision == rev
	}, "status does not list the ticket at revision %d", rev)
	ts0 := rep.R.Statuses()[0].Tickets[0]
	if ts0.Key != "mp.jsapi" || !ts0.Valid || ts0.CallsToday != 1 || !ts0.ExpiresAt.Equal(rec.ExpiresAt) || ts0.RefreshAt.IsZero() {
		t.Errorf("ticket status %+v", ts0)
	}
}

// TestTicketRefreshedBeforeExpiryWhileTokenRotates: with 6 s lifetimes
// the token and the ticket both rotate; over about two lifetimes every
// stored ticket is valid upstream when it is stored, each is fetched
// before the previous one expires, and every ticket issued is stored.
func TestTicketRefreshedBeforeExpiryWhileTokenRotates(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: 6 * time.Second}})
	app := ticketApp(e, "rot", contract.TicketJSAPI)
	rep := e.Start(e.Config(app))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kv, err := e.JS.KeyValue(ctx, contract.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.Watch(ctx, "rot.jsapi")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop() }()

	var mu sync.Mutex
	var stored []contract.TicketRecord
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ent := range w.Updates() {
			if ent == nil || ent.Operation() != jetstream.KeyValuePut {
				continue
			}
			var rec contract.TicketRecord
			if err := json.Unmarshal(ent.Value(), &rec); err != nil {
				t.Errorf("revision %d does not parse: %v", ent.Revision(), err)
				continue
			}
			if err := e.Sim.CheckTicket(rec.Ticket); err != nil {
				t.Errorf("ticket at revision %d is not valid upstream when stored: %v", ent.Revision(), err)
			}
			mu.Lock()
			stored = append(stored, rec)
			mu.Unlock()
		}
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(stored) }

	testutil.WaitFor(t, 20*time.Second, func() bool { return count() >= 4 }, "fewer than 4 tickets stored in 20s")
	if n := e.Sim.Issued(app.AppID); n < 3 {
		t.Errorf("tokens issued = %d, want the token to rotate too", n)
	}
	if err := rep.Stop(); err != nil {
		t.Fatal(err)
	}
	issued := e.Sim.TicketsIssued(app.AppID, contract.TicketJSAPI)
	testutil.WaitFor(t, 5*time.Second, func() bool { return count() == issued },
		"stored tickets (%d) != issued tickets (%d)", count(), issued)
	cancel()
	<-done

	mu.Lock()
	defer mu.Unlock()
	seen := map[string]bool{}
	for i, rec := range stored {
		if seen[rec.Ticket] {
			t.Errorf("ticket %d stored twice", i)
		}
		seen[rec.Ticket] = true
		if i > 0 && !rec.FetchedAt.Before(stored[i-1].ExpiresAt) {
			t.Errorf("ticket %d fetched at %v, after its predecessor expired (%v)", i, rec.FetchedAt, stored[i-1].ExpiresAt)
		}
	}
}

// TestTicketWithRejectedTokenRefreshesTokenFirst: a ticket fetch with a
// token upstream has just invalidated refreshes the token once (one
// flight, stale revision) and then fetches the ticket once, without the
// wrong-secret alert of the token endpoint's 40001.
func TestTicketWithRejectedTokenRefreshesTokenFirst(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := ticketApp(e, "rej", contract.TicketJSAPI)
	tokEvents := subscribeEvents(t, e.NC, "rej")
	rep := e.Start(e.Config(app))

	first, _ := waitTicket(t, e, 10*time.Second, "rej.jsapi", func(contract.TicketRecord, uint64) bool { return true })
	tok, tokRev := e.WaitRecord(5*time.Second, "rej", func(contract.Record, uint64) bool { return true })
	nextEvent(t, tokEvents)
	fetches, ticketCalls := e.Sim.Fetches(app.AppID), e.Sim.TicketCalls(app.AppID)
	issued := e.Sim.TicketsIssued(app.AppID, contract.TicketJSAPI)

	if !e.Sim.Revoke(tok.AccessToken) {
		t.Fatal("emulator does not know the stored token")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rep.R.RefreshTicketNow(ctx, "rej.jsapi"); err != nil {
		t.Fatalf("ticket refresh with a revoked token: %v", err)
	}
	if n := e.Sim.Fetches(app.AppID) - fetches; n != 1 {
		t.Errorf("token fetches = %d, want exactly 1", n)
	}
	if n := e.Sim.TicketCalls(app.AppID) - ticketCalls; n != 1 {
		t.Errorf("ticket calls with a valid token = %d, want exactly 1", n)
	}
	if n := e.Sim.TicketsIssued(app.AppID, contract.TicketJSAPI) - issued; n != 1 {
		t.Errorf("tickets issued = %d, want exactly 1", n)
	}
	ntok, ntokRev, _ := e.Record(contract.DefaultBucket, "rej")
	if ntokRev <= tokRev || ntok.AccessToken == tok.AccessToken {
		t.Fatalf("token not refreshed: revision %d -> %d", tokRev, ntokRev)
	}
	if err := e.Sim.Check(ntok.AccessToken); err != nil {
		t.Errorf("new token not valid upstream: %v", err)
	}
	ev := nextEvent(t, tokEvents)
	if ev.Revision != ntokRev || ev.Source != contract.SourcePassive {
		t.Errorf("token event %+v, want revision %d source passive", ev.Event, ntokRev)
	}
	rec, _, _ := ticketRecord(t, e, "rej.jsapi")
	if rec.Ticket == first.Ticket || rec.Ticket != e.Sim.LastTicket(app.AppID, contract.TicketJSAPI) {
		t.Errorf("stored ticket is not the one fetched after the token refresh")
	}
	if err := e.Sim.CheckTicket(rec.Ticket); err != nil {
		t.Errorf("new ticket not valid upstream: %v", err)
	}
	if e.Logs.Contains("secret_wrong_or_rotated") {
		t.Errorf("a ticket's rejected token raised the wrong-secret alert")
	}
}

// TestTicketPassiveRefresh: token.refresh.<app>.jsapi is served like
// token.refresh.<app>: an empty request gets the stored ticket with no
// fetch; 500 concurrent requests naming the stored revision as stale cost
// one ticket fetch and all get the new ticket; an unconfigured ticket key
// is a 404.
func TestTicketPassiveRefresh(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := ticketApp(e, "pas", contract.TicketJSAPI)
	e.Start(e.Config(app))
	first, rev := waitTicket(t, e, 10*time.Second, "pas.jsapi", func(contract.TicketRecord, uint64) bool { return true })
	issued := e.Sim.TicketsIssued(app.AppID, contract.TicketJSAPI)

	var rep refresher.TicketReply
	m, err := e.NC.Request(contract.RefreshSubject("pas.jsapi"), nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(m.Data, &rep); err != nil || rep.Revision != rev || rep.Ticket != first.Ticket || rep.Key != "pas.jsapi" {
		t.Fatalf("empty request: reply %s (err %v), want the stored ticket at revision %d", m.Data, err, rev)
	}

	body := []byte(`{"stale_revision":` + strconv.FormatUint(rev, 10) + `}`)
	const n = 500
	replies := make([]refresher.TicketReply, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := e.NC.Request(contract.RefreshSubject("pas.jsapi"), body, 10*time.Second)
			if err == nil {
				if code := m.Header.Get(contract.ErrorCodeHeader); code != "" {
					err = errors.New(code + " " + m.Header.Get(contract.ErrorHeader))
				} else {
					err = json.Unmarshal(m.Data, &replies[i])
				}
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		if replies[i].Revision <= rev || replies[i].Ticket == first.Ticket {
			t.Fatalf("request %d got revision %d, want a new ticket after %d", i, replies[i].Revision, rev)
		}
		if err := e.Sim.CheckTicket(replies[i].Ticket); err != nil {
			t.Errorf("request %d: ticket not valid upstream: %v", i, err)
		}
	}
	if got := e.Sim.TicketsIssued(app.AppID, contract.TicketJSAPI) - issued; got != 1 {
		t.Errorf("%d concurrent stale requests cost %d ticket fetches, want 1", n, got)
	}

	m, err = e.NC.Request(contract.RefreshSubject("pas.wx_card"), nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code := m.Header.Get(contract.ErrorCodeHeader); code != "404" {
		t.Errorf("unconfigured ticket: code %q, want 404", code)
	}
	if got := e.Sim.TicketsIssued(app.AppID, contract.TicketWXCard); got != 0 {
		t.Errorf("wx_card fetched %d times", got)
	}
}

// TestTicketsShareTheConcurrencySlots: with refresh.concurrency 1, tickets
// and tokens of several apps take turns in the one slot; every token and
// every ticket gets stored (a ticket giving its slot back starts the
// token refresh queued meanwhile).
func TestTicketsShareTheConcurrencySlots(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	var apps []refresher.AppConfig
	names := []string{"c1", "c2", "c3", "c4", "c5"}
	for _, n := range names {
		apps = append(apps, ticketApp(e, n, contract.TicketJSAPI, contract.TicketWXCard))
	}
	cfg := e.Config(apps...)
	cfg.Policy.Concurrency = 1
	e.Start(cfg)
	for _, n := range names {
		e.WaitRecord(10*time.Second, n, func(contract.Record, uint64) bool { return true })
		for _, typ := range []string{contract.TicketJSAPI, contract.TicketWXCard} {
			rec, _ := waitTicket(t, e, 10*time.Second, contract.Key(n, typ), func(contract.TicketRecord, uint64) bool { return true })
			if err := e.Sim.CheckTicket(rec.Ticket); err != nil {
				t.Errorf("%s.%s: ticket not valid upstream: %v", n, typ, err)
			}
		}
	}
}

// TestTicketAddedByReload: a ticket added to an app by Reload is fetched
// with the app's token, which stays as it was.
func TestTicketAddedByReload(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("rl")
	rep := e.Start(e.Config(app))
	tok, tokRev := e.WaitRecord(5*time.Second, "rl", func(contract.Record, uint64) bool { return true })

	app.Tickets = []string{contract.TicketWXCard}
	if _, err := rep.R.Reload(e.Config(app)); err != nil {
		t.Fatal(err)
	}
	rec, _ := waitTicket(t, e, 10*time.Second, "rl.wx_card", func(contract.TicketRecord, uint64) bool { return true })
	if rec.TicketType != contract.TicketWXCard || e.Sim.CheckTicket(rec.Ticket) != nil {
		t.Errorf("ticket record %s of type %q not valid upstream", rec.Key, rec.TicketType)
	}
	if now, rev, _ := e.Record(contract.DefaultBucket, "rl"); rev != tokRev || now.AccessToken != tok.AccessToken {
		t.Errorf("token rewritten by the reload: revision %d -> %d", tokRev, rev)
	}
	if n := e.Sim.Fetches(app.AppID); n != 1 {
		t.Errorf("token fetches = %d, want 1", n)
	}
}

// TestFailedTicketWriteKeepsFetchedTicket: a ticket fetched while the
// bucket refuses writes is kept and only its write retried — no second
// getticket call, which would supersede it as the fetch superseded the
// stored one — and once writes work that very ticket is stored; the
// alert token_not_stored is raised once, naming the ticket's key.
func TestFailedTicketWriteKeepsFetchedTicket(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := ticketApp(e, "mp", contract.TicketJSAPI)
	cfg := e.Config(app)
	cfg.Policy.Retry = 100 * time.Millisecond
	reg := prometheus.NewRegistry()
	rep := e.Start(cfg, refresher.WithObserver(refresher.NewMetrics(reg)))
	_, rev := waitTicket(t, e, 10*time.Second, "mp.jsapi", func(contract.TicketRecord, uint64) bool { return true })
	calls := e.Sim.TicketCalls(app.AppID)

	ctx := context.Background()
	orig := setMaxMsgSize(t, e.JS, contract.DefaultBucket, 64)
	if err := rep.R.RefreshTicketNow(ctx, "mp.jsapi"); err == nil {
		t.Fatal("ticket refresh succeeded with a bucket that refuses writes")
	}
	fetched := e.Sim.LastTicket(app.AppID, contract.TicketJSAPI)
	if !e.Logs.Contains("ALERT token_not_stored: a ticket") {
		t.Error("no ALERT token_not_stored log line for the ticket")
	}
	testutil.WaitFor(t, 10*time.Second, func() bool {
		return strings.Count(e.Logs.String(), "fetched token not stored yet") >= 3
	}, "the ticket's write was not retried")
	if n := e.Sim.TicketCalls(app.AppID) - calls; n != 1 {
		t.Fatalf("%d ticket calls while the write failed, want 1", n)
	}
	if n := alertCount(t, reg, "mp.jsapi", refresher.AlertTokenNotStored); n != 1 {
		t.Errorf("tokenkeeper_alerts_total{app=mp.jsapi,alert=token_not_stored} = %v, want 1", n)
	}

	setMaxMsgSize(t, e.JS, contract.DefaultBucket, orig)
	rec, _ := waitTicket(t, e, 10*time.Second, "mp.jsapi", func(_ contract.TicketRecord, v uint64) bool { return v > rev })
	if rec.Ticket != fetched {
		t.Error("the stored ticket is not the one fetched while writes failed")
	}
	if err := e.Sim.CheckTicket(rec.Ticket); err != nil {
		t.Errorf("the stored ticket is not valid upstream: %v", err)
	}
	if n := e.Sim.TicketCalls(app.AppID) - calls; n != 1 {
		t.Errorf("%d ticket calls in all, want 1", n)
	}
}
