package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/seal"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// component-scale: one refresher process keeping N Open Platform
// authorizers of one component fresh (issue 12, item 7).
//
//  1. Provision: a refresher in this process creates the buckets, is
//     handed a verify ticket (sealed into the secrets bucket, as the
//     callback stores it) and fetches the component token; it stops.
//  2. Seed: the emulator authorizes N accounts (BulkAuthorize: refresh
//     token and a valid access token each, no HTTP); their sealed refresh
//     tokens go into the secrets bucket and their token records into the
//     tokens bucket, as an earlier refresher would have left them (ages
//     spread over half a lifetime: none due for minutes).
//  3. Start: cmd/refresher (or -inproc) starts; measured: exec → running
//     (everything loaded), exec → /status shows N valid authorizers
//     ("loaded"), and that while leading ("all valid"; the lease is taken
//     after the load), upstream calls until then (target 0), startup CPU,
//     peak RSS. /status is polled every -status-every.
//  4. Steady state over -window: tokenbench marks -rate stored records a
//     second as expired (the steady rate of N authorizers with 7200 s
//     tokens refreshed at 2/3 of the lifetime: N/4800 a second), which
//     the refresher follows and refreshes: upstream calls, their busiest
//     second, CPU per minute, RSS.
//
// With -tickets jsapi (authorizer_tickets of the component) each
// authorizer also holds a ticket the emulator issued (BulkAuthorizerTickets)
// and its stored record, aged like its token; "all valid" then also needs
// every ticket valid, getticket calls are counted beside the component
// calls (they pass the same rate limiter), and the steady state also makes
// -rate ticket records a second due, of other authorizers than the tokens
// (a token and its ticket have moments of their own).

const (
	benchComponent      = "comp"
	benchComponentAppID = "wxbenchcomponent"
	benchCallbackToken  = "tokenbenchcb"
)

func runComponentScale(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("component-scale", flag.ContinueOnError)
	fs.SetOutput(out)
	nFlag := fs.String("n", "100000", "comma-separated authorizer counts, one refresher run each")
	window := fs.Duration("window", 60*time.Second, "steady-state window after startup")
	rateFlag := fs.Float64("rate", -1, "stored records made due per second in the steady state (-1: n/4800, the steady rate at 7200 s tokens)")
	maxCalls := fs.Float64("max-calls", 0, "max_calls_per_second of the component (0: the default)")
	startupLimit := fs.Duration("startup-timeout", 10*time.Minute, "give up if startup takes longer")
	bin := fs.String("refresher-bin", "", "refresher binary (default: go build ./cmd/refresher)")
	rssTarget := fs.Int64("rss-target-mib", 384, "RSS target in MiB")
	inproc := fs.Bool("inproc", false, "run the refresher inside tokenbench (for -cpuprofile; CPU and RSS then include NATS and the emulator)")
	heapFile := fs.String("heap-profile", "", "with -inproc: write a heap profile to this file at the end of the steady window")
	memLimit := fs.String("gomemlimit", "", "GOMEMLIMIT of the refresher process (e.g. 300MiB; not with -inproc)")
	statusEvery := fs.Duration("status-every", 100*time.Millisecond, "how often /status is polled during startup (each poll walks every authorizer)")
	ticketsFlag := fs.String("tickets", "", "authorizer_tickets of the component, comma-separated (jsapi, wx_card): a stored ticket per authorizer and type")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sizes, err := positiveInts("-n", *nFlag)
	if err != nil {
		return err
	}
	ticketTypes, err := authorizerTicketTypes(*ticketsFlag)
	if err != nil {
		return err
	}
	if *memLimit != "" && *inproc {
		return errors.New("-gomemlimit applies to the refresher process: not with -inproc")
	}
	if *statusEvery <= 0 {
		return fmt.Errorf("-status-every %s: want a positive duration", *statusEvery)
	}
	tmp, refBin, err := benchDir(ctx, "tokenbench-cscale-", *bin, *inproc)
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	limit := fmt.Sprintf("max_calls_per_second %v", *maxCalls)
	if *maxCalls == 0 {
		limit = fmt.Sprintf("max_calls_per_second %d (the default)", refresher.DefaultMaxCallsPerSecond)
	}
	where := "cmd/refresher as a process"
	if *memLimit != "" {
		where += " with GOMEMLIMIT=" + *memLimit
	}
	if *inproc {
		where = "the refresher in-process (CPU and RSS include NATS and the emulator)"
	}
	stored := "stored tokens aged over half a lifetime; steady state over %s with -rate records made due a second"
	if len(ticketTypes) > 0 {
		stored = "authorizer_tickets " + strings.Join(ticketTypes, ", ") + "; stored tokens and tickets aged over half a lifetime; steady state over %s with -rate token records and -rate records of each ticket type made due a second"
	}
	header(out, "One refresher, one Open Platform component, N authorizers",
		fmt.Sprintf("%s (schedule @every 30s, concurrency 16, %s, log info, http on), embedded nats-server and emulator (7200 s tokens and tickets) in tokenbench; "+stored, where, limit, *window))
	callsCol, steadyCol := "upstream calls at start", "upstream calls"
	if len(ticketTypes) > 0 {
		callsCol, steadyCol = "upstream calls at start (component + getticket)", "upstream calls (component + getticket)"
	}
	t := newTable("authorizers", "seed", "exec → running", "exec → all loaded valid", "exec → all valid, leading", callsCol, "startup CPU", "peak RSS (VmHWM)",
		"steady: due/s", steadyCol, "refreshes/s", "busiest second", "CPU per minute", "steady RSS", "SIGTERM → exit", "RSS ≤ target")
	for _, n := range sizes {
		rate := *rateFlag
		if rate < 0 {
			rate = float64(n) / 4800
		}
		r, err := componentScaleOnce(ctx, componentScaleRun{bin: refBin, tmp: tmp, n: n, rate: rate, maxCalls: *maxCalls,
			window: *window, startupLimit: *startupLimit, heapFile: *heapFile, tickets: ticketTypes, statusEvery: *statusEvery, memLimit: *memLimit})
		if err != nil {
			t.print(out)
			return fmt.Errorf("n=%d: %w", n, err)
		}
		due := fmt.Sprintf("%.1f", rate)
		if len(ticketTypes) > 0 {
			due = fmt.Sprintf("%.1f + %.1f", rate, rate*float64(len(ticketTypes)))
		}
		t.add(n, r.seed.Round(100*time.Millisecond), r.running.Round(10*time.Millisecond), r.loaded.Round(10*time.Millisecond), r.allValid.Round(10*time.Millisecond), r.start.String(len(ticketTypes) > 0),
			fmt.Sprintf("%.1f s", r.startCPU.Seconds()), mib(r.peakRSS),
			due, r.steady.String(len(ticketTypes) > 0), fmt.Sprintf("%.1f", float64(r.steady.total())/r.steadyFor.Seconds()),
			r.busiest, fmt.Sprintf("%.2f s", r.cpuPerMinute.Seconds()), mib(r.steadyRSS),
			r.shutdown.Round(time.Millisecond), verdict(r.peakRSS <= *rssTarget<<20))
	}
	t.print(out)
	fmt.Fprintln(out, "\nCPU is user+system of the refresher process (NATS and the emulator run in tokenbench unless -inproc). \"upstream calls\" are the component endpoints' answered calls during the window (with -tickets: component + getticket); \"refreshes/s\" those calls a second; \"busiest second\" the most in any one-second window (getticket included: it passes the component's rate limiter too).")
	return nil
}

// authorizerTicketTypes parses -tickets: the ticket types a component may
// keep per authorizer, no duplicates ("" is none).
func authorizerTicketTypes(list string) ([]string, error) {
	if strings.TrimSpace(list) == "" {
		return nil, nil
	}
	var out []string
	for _, typ := range strings.Split(list, ",") {
		typ = strings.TrimSpace(typ)
		if typ != contract.TicketJSAPI && typ != contract.TicketWXCard {
			return nil, fmt.Errorf("-tickets: %q is not an authorizer ticket type (want %s or %s)", typ, contract.TicketJSAPI, contract.TicketWXCard)
		}
		if slices.Contains(out, typ) {
			return nil, fmt.Errorf("-tickets: %s given twice", typ)
		}
		out = append(out, typ)
	}
	return out, nil
}

// componentScaleRun is one run of component-scale.
type componentScaleRun struct {
	bin, tmp             string // bin "": in-process
	n                    int
	rate, maxCalls       float64
	window, startupLimit time.Duration
	heapFile             string
	tickets              []string // authorizer_tickets
	statusEvery          time.Duration
	memLimit             string // GOMEMLIMIT of the refresher process ("": none)
}

type componentScaleResult struct {
	seed, running, shutdown time.Duration
	loaded, allValid        time.Duration // every authorizer (and ticket) valid in /status; and leading
	start, steady           callCount
	steadyFor               time.Duration
	busiest                 int
	startCPU, cpuPerMinute  time.Duration
	peakRSS, steadyRSS      int64
}

// callCount is a number of answered upstream calls: to the component
// endpoints, and to getticket.
type callCount struct{ component, ticket int }

func (c callCount) total() int { return c.component + c.ticket }

// String is the total, or with tickets "total (component + getticket)".
func (c callCount) String(tickets bool) string {
	if !tickets {
		return fmt.Sprint(c.component)
	}
	return fmt.Sprintf("%d (%d + %d)", c.total(), c.component, c.ticket)
}

// callTimes records when the emulator answered each component call and
// each getticket call.
type callTimes struct {
	mu sync.Mutex
	at []callAt
}

type callAt struct {
	at     time.Time
	ticket bool
}

func (c *callTimes) on(call wechatsim.Call) {
	if call.Fault != "" {
		return
	}
	switch call.Path {
	case wechatsim.PathComponentToken, wechatsim.PathQueryAuth, wechatsim.PathAuthorizerToken, wechatsim.PathAuthorizerList, wechatsim.PathGetTicket:
		c.mu.Lock()
		c.at = append(c.at, callAt{time.Now(), call.Path == wechatsim.PathGetTicket})
		c.mu.Unlock()
	}
}

// since returns the moments of the calls answered from t0 on, in order,
// and how many were component and getticket calls.
func (c *callTimes) since(t0 time.Time) ([]time.Time, callCount) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []time.Time
	var n callCount
	for _, a := range c.at {
		if a.at.Before(t0) {
			continue
		}
		out = append(out, a.at)
		if a.ticket {
			n.ticket++
		} else {
			n.component++
		}
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out, n
}

func componentScaleOnce(ctx context.Context, run componentScaleRun) (componentScaleResult, error) {
	bin, tmp, n, rate, maxCalls, window, startupLimit, heapFile := run.bin, run.tmp, run.n, run.rate, run.maxCalls, run.window, run.startupLimit, run.heapFile
	var res componentScaleResult
	var calls callTimes
	w, err := newWorld(wechatsim.Options{OnCall: calls.on})
	if err != nil {
		return res, err
	}
	defer w.close()

	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	aesKey := strings.TrimRight(base64.StdEncoding.EncodeToString(raw), "=")
	key := make([]byte, seal.KeySize)
	_, _ = rand.Read(key)
	ring, err := seal.NewKeyring(key)
	if err != nil {
		return res, err
	}
	w.sim.AddComponent(benchComponentAppID, benchSecret, benchCallbackToken, aesKey)
	env := map[string]string{
		"TOKENBENCH_SECRET":      benchSecret,
		"TOKENBENCH_SECRETS_KEY": base64.StdEncoding.EncodeToString(key),
		"TOKENBENCH_CB_TOKEN":    benchCallbackToken,
		"TOKENBENCH_CB_AES":      aesKey,
	}
	httpAddr, err := freeAddr()
	if err != nil {
		return res, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "nats: {url: %q}\nhttp: {listen: %q}\nlog: {level: info}\nsecrets_key_env: TOKENBENCH_SECRETS_KEY\n", w.url, httpAddr)
	fmt.Fprintf(&b, "apps:\n  - name: %s\n    kind: wechat-component\n    appid: %s\n    api_base: %q\n    secret_env: TOKENBENCH_SECRET\n    callback: {token_env: TOKENBENCH_CB_TOKEN, aes_key_env: TOKENBENCH_CB_AES}\n",
		benchComponent, benchComponentAppID, w.simURL)
	if maxCalls > 0 {
		fmt.Fprintf(&b, "    max_calls_per_second: %v\n", maxCalls)
	}
	if len(run.tickets) > 0 {
		fmt.Fprintf(&b, "    authorizer_tickets: [%s]\n", strings.Join(run.tickets, ", "))
	}
	cfgPath := filepath.Join(tmp, fmt.Sprintf("component-scale-%d.yaml", n))
	if err := os.WriteFile(cfgPath, []byte(b.String()), 0o600); err != nil {
		return res, err
	}
	for k, v := range env {
		if err := os.Setenv(k, v); err != nil { // for the in-process refreshers
			return res, err
		}
	}

	// 1. Provision the buckets and the component token.
	nc, err := w.connect("tokenbench-component-scale")
	if err != nil {
		return res, err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	p0, err := startInproc(cfgPath)
	if err != nil {
		return res, err
	}
	if err := p0.waitLine(ctx, "refresher running", time.Minute); err != nil {
		p0.kill()
		return res, err
	}
	tokKV, err := tokensKV(ctx, js, contract.DefaultBucket)
	if err != nil {
		p0.kill()
		return res, err
	}
	secKV, err := tokensKV(ctx, js, contract.SecretsBucket(contract.DefaultBucket))
	if err != nil {
		p0.kill()
		return res, err
	}
	_ = w.sim.PushVerifyTicket(ctx, benchComponentAppID, "http://127.0.0.1:9/") // the ticket exists once pushed
	vtKey := benchComponent + ".verify_ticket"
	if err := putSealed(ctx, secKV, ring, vtKey, map[string]any{"component_appid": benchComponentAppID,
		"ticket": w.sim.LastVerifyTicket(benchComponentAppID), "create_time": time.Now().Unix(), "received_at": time.Now().UTC(), "replica": "tokenbench"}); err != nil {
		p0.kill()
		return res, err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		if e, err := tokKV.Get(ctx, benchComponent); err == nil && len(e.Value()) > 0 {
			break
		}
		if time.Now().After(deadline) {
			p0.kill()
			return res, fmt.Errorf("no component token after the verify ticket:\n%s", p0.out.tail())
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return res, err
		}
	}
	p0.kill()

	// 2. Seed N authorizers.
	t0 := time.Now()
	auths := w.sim.BulkAuthorize(benchComponentAppID, n, "wxa")
	if len(auths) != n {
		return res, fmt.Errorf("BulkAuthorize gave %d authorizers", len(auths))
	}
	// The ones the steady state makes due: tokens of the first
	// authorizers, tickets of the next ones.
	made := int(rate*window.Seconds()*1.5) + 1
	records := make(map[string]contract.Record, 0)
	if err := seedAuthorizers(ctx, js, ring, auths, func(i int, rec contract.Record) {
		if i < made {
			records[rec.Key] = rec
		}
	}); err != nil {
		return res, err
	}
	var tickets []contract.TicketRecord
	for _, typ := range run.tickets {
		all, err := seedAuthorizerTickets(ctx, js, w.sim, typ, auths)
		if err != nil {
			return res, err
		}
		tickets = append(tickets, all[min(made, n):min(2*made, n)]...)
	}
	res.seed = time.Since(t0)

	// 3. Start and measure.
	start := time.Now()
	var p *proc
	if bin == "" {
		p, err = startInproc(cfgPath)
	} else {
		var envList []string
		for k, v := range env {
			envList = append(envList, k+"="+v)
		}
		if run.memLimit != "" {
			envList = append(envList, "GOMEMLIMIT="+run.memLimit)
		}
		p, err = startProc(bin, cfgPath, "component-scale", envList)
	}
	if err != nil {
		return res, err
	}
	defer p.kill()
	if err := p.waitLine(ctx, "refresher running", startupLimit); err != nil {
		return res, err
	}
	res.running = time.Since(start)
	deadline = time.Now().Add(startupLimit)
	for {
		if s, err := readProc(p.pid()); err == nil {
			res.peakRSS = max(res.peakRSS, s.hwm)
		}
		auth, valid, ticketsValid, leader, err := componentStatus(ctx, httpAddr)
		all := err == nil && auth == n && valid == n && ticketsValid == n*len(run.tickets)
		if all && res.loaded == 0 {
			res.loaded = time.Since(start)
		}
		if all && leader {
			break
		}
		if p.exited() {
			return res, fmt.Errorf("refresher exited during startup:\n%s", p.out.tail())
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("after %s: %d authorizers, %d valid, %d tickets valid (err %v)", startupLimit, auth, valid, ticketsValid, err)
		}
		if err := sleepCtx(ctx, run.statusEvery); err != nil {
			return res, err
		}
	}
	res.allValid = time.Since(start)
	_, res.start = calls.since(start)
	s0, err := readProc(p.pid())
	if err != nil {
		return res, err
	}
	res.startCPU = s0.cpu
	res.peakRSS = max(res.peakRSS, s0.hwm)

	// 4. Steady state: make rate records a second due, measure.
	a, err := readProc(p.pid())
	if err != nil {
		return res, err
	}
	steadyStart := time.Now()
	keys := make([]string, 0, len(records))
	for k := range records {
		keys = append(keys, k)
	}
	var rss rssMeter
	made, madeTickets := 0, 0
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	nextSample := steadyStart.Add(time.Second)
	for end := steadyStart.Add(window); time.Now().Before(end); {
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-tick.C:
		}
		for want := int(rate * time.Since(steadyStart).Seconds()); made < want && made < len(keys); made++ {
			rec := records[keys[made]]
			rec.FetchedAt, rec.ExpiresAt = time.Now().Add(-3*time.Hour).UTC(), time.Now().Add(-time.Hour).UTC()
			val, _ := json.Marshal(rec)
			if _, err := tokKV.Put(ctx, rec.Key, val); err != nil {
				return res, err
			}
		}
		for want := int(rate * float64(len(run.tickets)) * time.Since(steadyStart).Seconds()); madeTickets < want && madeTickets < len(tickets); madeTickets++ {
			// An earlier ticket (another value), fetched 3 h ago.
			rec := tickets[madeTickets]
			rec.Ticket = "expired" + rec.Ticket[len("expired"):]
			rec.FetchedAt, rec.ExpiresAt = time.Now().Add(-3*time.Hour).UTC(), time.Now().Add(-time.Hour).UTC()
			val, _ := json.Marshal(rec)
			if _, err := tokKV.Put(ctx, rec.Key, val); err != nil {
				return res, err
			}
		}
		if time.Now().After(nextSample) {
			nextSample = nextSample.Add(time.Second)
			if err := rss.sample(p.pid()); err != nil {
				return res, err
			}
		}
	}
	res.peakRSS = max(res.peakRSS, rss.peak)
	z, err := readProc(p.pid())
	if err != nil {
		return res, err
	}
	res.cpuPerMinute = time.Duration(float64(z.cpu-a.cpu) / z.at.Sub(a.at).Minutes())
	res.steadyRSS = rss.mean()
	var steady []time.Time
	steady, res.steady = calls.since(steadyStart)
	res.steadyFor = z.at.Sub(steadyStart)
	res.busiest = busiestSecond(steady)
	if bin == "" && heapFile != "" {
		if f, err := os.Create(heapFile); err == nil {
			_ = pprof.WriteHeapProfile(f)
			f.Close()
		}
	}

	t1 := time.Now()
	if bin == "" {
		p.kill()
		res.shutdown = time.Since(t1)
		return res, nil
	}
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
		res.shutdown = time.Since(t1)
	case <-time.After(30 * time.Second):
		return res, errors.New("the refresher did not exit within 30 s of SIGTERM")
	}
	return res, nil
}

// seedAuthorizers writes each authorization's sealed refresh token
// (<component>.authorizer.<appid> in the secrets bucket, the refresher's
// record format) and its token record (<component>.<appid>) with
// asynchronous publishes. Ages spread over [0, 0.5) of the lifetime, so
// that none is due for the first minutes (the earliest refresh moment is
// 0.54 of the lifetime). seen is called with each record.
func seedAuthorizers(ctx context.Context, js jetstream.JetStream, ring *seal.Keyring, auths []wechatsim.Authorization, seen func(int, contract.Record)) error {
	now := time.Now().UTC()
	secSubj := "$KV." + contract.SecretsBucket(contract.DefaultBucket) + "."
	tokSubj := "$KV." + contract.DefaultBucket + "."
	const lifetime = 7200 * time.Second
	var futures []jetstream.PubAckFuture
	flush := func() error {
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		futures = futures[:0]
		return nil
	}
	for i, a := range auths {
		skey := benchComponent + ".authorizer." + a.AuthorizerAppID
		plain, _ := json.Marshal(map[string]any{"authorizer_appid": a.AuthorizerAppID, "refresh_token": a.RefreshToken,
			"state": "authorized", "updated_at": now, "source": "import"})
		sealed, err := ring.Seal(skey, plain)
		if err != nil {
			return err
		}
		age := time.Duration(float64(lifetime) * 0.5 * float64(i) / float64(len(auths)))
		key := contract.Key(benchComponent, a.AuthorizerAppID)
		rec := contract.Record{App: benchComponent, Key: key, AppID: benchComponentAppID, AuthorizerAppID: a.AuthorizerAppID,
			Kind: refresher.KindWeChatComponent, AccessToken: a.AccessToken, FetchedAt: now.Add(-age), ExpiresAt: now.Add(-age + lifetime),
			Source: contract.SourceManual}
		val, _ := json.Marshal(rec)
		f1, err := js.PublishAsync(secSubj+skey, sealed)
		if err != nil {
			return err
		}
		f2, err := js.PublishAsync(tokSubj+key, val)
		if err != nil {
			return err
		}
		futures = append(futures, f1, f2)
		seen(i, rec)
		if len(futures) >= 2000 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// seedAuthorizerTickets has the emulator issue each authorizer a ticket
// of typ (no calls) and writes its record <component>.<appid>.<typ> into
// the tokens bucket with asynchronous publishes, fetched a second after
// the authorizer's token as seedAuthorizers ages it. It returns the
// records in the order of auths.
func seedAuthorizerTickets(ctx context.Context, js jetstream.JetStream, sim *wechatsim.Sim, typ string, auths []wechatsim.Authorization) ([]contract.TicketRecord, error) {
	ids := make([]string, len(auths))
	for i, a := range auths {
		ids[i] = a.AuthorizerAppID
	}
	issued := sim.BulkAuthorizerTickets(benchComponentAppID, typ, ids)
	if len(issued) != len(auths) {
		return nil, fmt.Errorf("the emulator issued %d %s tickets for %d authorizers", len(issued), typ, len(auths))
	}
	now := time.Now().UTC()
	const lifetime = 7200 * time.Second
	tokSubj := "$KV." + contract.DefaultBucket + "."
	out := make([]contract.TicketRecord, len(auths))
	futures := make([]jetstream.PubAckFuture, 0, 2000)
	for i, a := range auths {
		age := time.Duration(float64(lifetime)*0.5*float64(i)/float64(len(auths))) - time.Second
		key := contract.Key(benchComponent, a.AuthorizerAppID, typ)
		out[i] = contract.TicketRecord{App: benchComponent, Key: key, TicketType: typ, Ticket: issued[i].Ticket,
			FetchedAt: now.Add(-age), ExpiresAt: now.Add(-age + lifetime), Source: contract.SourceScheduled}
		val, _ := json.Marshal(out[i])
		f, err := js.PublishAsync(tokSubj+key, val)
		if err != nil {
			return nil, err
		}
		if futures = append(futures, f); len(futures) == cap(futures) || i == len(auths)-1 {
			for _, f := range futures {
				select {
				case <-f.Ok():
				case err := <-f.Err():
					return nil, err
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			futures = futures[:0]
		}
	}
	return out, nil
}

// putSealed seals v under key into kv.
func putSealed(ctx context.Context, kv jetstream.KeyValue, ring *seal.Keyring, key string, v any) error {
	plain, err := json.Marshal(v)
	if err != nil {
		return err
	}
	sealed, err := ring.Seal(key, plain)
	if err != nil {
		return err
	}
	_, err = kv.Put(ctx, key, sealed)
	return err
}

// componentStatus reads the refresher's /status: the component's
// authorizers, how many hold a valid token, how many of their tickets are
// valid, and whether it leads.
func componentStatus(ctx context.Context, addr string) (authorizers, valid, ticketsValid int, leader bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, 0, false, err
	}
	defer resp.Body.Close()
	var rep refresher.StatusReport
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return 0, 0, 0, false, err
	}
	for _, s := range rep.Apps {
		if s.Component != nil {
			return s.Component.Authorizers, s.Component.Valid, s.Component.TicketsValid, rep.IsLeader, nil
		}
	}
	return 0, 0, 0, rep.IsLeader, errors.New("no component in /status")
}

// busiestSecond is the most calls within any one-second window.
func busiestSecond(ts []time.Time) int {
	best := 0
	for i, j := 0, 0; j < len(ts); j++ {
		for ts[j].Sub(ts[i]) > time.Second {
			i++
		}
		best = max(best, j-i+1)
	}
	return best
}

// freeAddr returns a loopback address with a port free now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
