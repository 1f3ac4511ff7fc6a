package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// WeChat's numbers, in real (uncompressed) time.
const (
	wechatLifetime = 7200 * time.Second
	wechatGrace    = 300 * time.Second
	wechatQuota    = 2000
	day            = 24 * time.Hour
)

// runCost counts upstream token fetches per app over a simulated day with
// compressed time (the emulator's 7200 s lifetime becomes -lifetime, and
// every other duration shrinks by the same factor), for tokenkeeper and
// for two naive designs with R replicas of a service:
//
//   - timer: each replica fetches its own token at the same refresh
//     moment (2/3 of the lifetime ± 5 %) and ignores rejections;
//   - sdk: each replica caches its token until 5 minutes before expiry
//     and fetches a new one whenever a business call answers 40001 or
//     42001 (what most WeChat SDKs do).
//
// Every replica makes a business call (getcallbackip) every -call-every
// (simulated); the emulator counts accepted and rejected calls.
func runCost(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("cost", flag.ContinueOnError)
	fs.SetOutput(out)
	lifetime := fs.Duration("lifetime", 8*time.Second, "real time standing for WeChat's 7200 s token lifetime (sets the compression)")
	days := fs.Float64("days", 1, "simulated days")
	replicasFlag := fs.String("replicas", "3,10", "comma-separated replica counts of the service")
	callEvery := fs.Duration("call-every", 60*time.Second, "simulated interval between business calls of one replica")
	if err := fs.Parse(args); err != nil {
		return err
	}
	reps, err := positiveInts("-replicas", *replicasFlag)
	if err != nil {
		return err
	}
	if *lifetime < 2*time.Second || *lifetime%time.Second != 0 {
		return errors.New("-lifetime must be whole seconds, at least 2s (expires_in is whole seconds)")
	}
	scale := float64(wechatLifetime) / float64(*lifetime)
	real := func(d time.Duration) time.Duration { return time.Duration(float64(d) / scale) }
	run := real(time.Duration(*days * float64(day)))

	type result struct {
		model                string
		replicas             int
		fetches, ok, refused int
		err                  error
	}
	var results []*result
	var wg sync.WaitGroup
	for _, r := range reps {
		for _, m := range []string{"tokenkeeper", "timer", "sdk"} {
			res := &result{model: m, replicas: r}
			results = append(results, res)
			wg.Add(1)
			go func() {
				defer wg.Done()
				opts := wechatsim.Options{ExpiresIn: *lifetime, Grace: real(wechatGrace), DailyQuota: -1}
				var sim *wechatsim.Sim
				switch m {
				case "tokenkeeper":
					sim, res.err = costTokenkeeper(ctx, opts, r, run, real, real(*callEvery))
				default:
					sim, res.err = costNaive(ctx, opts, m, r, run, real(*callEvery), real(wechatGrace))
				}
				if sim != nil {
					res.fetches = sim.Fetches(costAppID)
					res.ok, res.refused = sim.BusinessCalls()
				}
			}()
		}
	}
	wg.Wait()

	header(out, "Upstream cost: token fetches per app and day",
		fmt.Sprintf("compressed time: %s of WeChat (7200 s tokens, 300 s grace after a new token) run as %s (×%.0f); %.2g simulated day(s) = %s real; business call every %s (simulated) per replica; daily quota %d", wechatLifetime, *lifetime, scale, *days, run.Round(time.Second), *callEvery, wechatQuota))
	t := newTable("design", "replicas", "fetches / app / day (measured)", "model", "share of the 2000 quota", "business calls", "rejected (40001/42001)")
	var firstErr error
	for _, r := range results {
		if r.err != nil {
			firstErr = errors.Join(firstErr, fmt.Errorf("%s R=%d: %w", r.model, r.replicas, r.err))
			continue
		}
		perDay := float64(r.fetches) / *days
		t.add(costName(r.model), r.replicas, fmt.Sprintf("%.0f", perDay), costModel(r.model, r.replicas),
			fmt.Sprintf("%.1f %%", 100*perDay/wechatQuota), r.ok+r.refused,
			fmt.Sprintf("%d (%.1f %%)", r.refused, 100*float64(r.refused)/float64(max(1, r.ok+r.refused))))
	}
	t.print(out)
	fmt.Fprintln(out, "\nThe first day includes the startup fetch(es). Models: tokenkeeper ≈ 86400 / (2/3 · 7200) = 18 a day whatever R (+1 at startup);")
	fmt.Fprintln(out, "timer ≈ R · 18; sdk ≈ (R − 1) · 86400/300 = (R − 1) · 288 (each fetch invalidates the other replicas' tokens after the grace, and each of them then fetches).")
	return firstErr
}

const costApp, costAppID = "cost", "wxcost"

func costName(m string) string {
	switch m {
	case "tokenkeeper":
		return "tokenkeeper (1 refresher, R Sources)"
	case "timer":
		return "naive: each replica refreshes on its own timer"
	default:
		return "naive: SDK per replica, refetch on 40001/42001"
	}
}

func costModel(m string, r int) string {
	switch m {
	case "tokenkeeper":
		return "18 (+1)"
	case "timer":
		return fmt.Sprintf("%d (+%d)", 18*r, r)
	default:
		return fmt.Sprintf("%d", 288*(r-1))
	}
}

// costTokenkeeper runs a refresher with the default policy scaled to the
// compressed time and r Sources making business calls through the
// Source's RoundTripper.
func costTokenkeeper(ctx context.Context, opts wechatsim.Options, r int, run time.Duration, real func(time.Duration) time.Duration, callEvery time.Duration) (*wechatsim.Sim, error) {
	w, err := newWorld(opts)
	if err != nil {
		return nil, err
	}
	defer w.close()
	w.sim.AddApp(costAppID, benchSecret)
	ac := refresher.AppConfig{Name: costApp, Kind: "wechat", AppID: costAppID, APIBase: w.simURL}.WithSecret(benchSecret)
	passive, minLeft := real(refresher.DefaultPassiveMinInterval), real(refresher.DefaultPolicy.MinLeft)
	cfg, err := w.config([]refresher.AppConfig{ac}, func(c *refresher.Config) {
		c.Schedule = "@every 1s" // the safety-net tick; refreshes fire at their own moment
		c.PassiveMinInterval = &passive
		c.Policy.MinLeft = &minLeft
	})
	if err != nil {
		return w.sim, err
	}
	if _, err := w.startRefresher(ctx, cfg); err != nil {
		return w.sim, err
	}
	srcs := make([]*subscriber.Source, r)
	for i := range r {
		nc, err := w.connect(fmt.Sprintf("cost-%d", i))
		if err != nil {
			return w.sim, err
		}
		defer nc.Close()
		sctx, c := context.WithTimeout(ctx, 10*time.Second)
		srcs[i], err = subscriber.NewSource(sctx, nc, costApp)
		c()
		if err != nil {
			return w.sim, err
		}
		defer srcs[i].Close()
	}
	// The simulated day starts once the refresher and the Sources run
	// (the refresher's startup fetch counts).
	rctx, cancel := context.WithTimeout(ctx, run)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, r)
	for _, src := range srcs {
		client := &http.Client{Transport: src.RoundTripper(nil), Timeout: 5 * time.Second}
		wg.Add(1)
		go func() {
			defer wg.Done()
			every(rctx, callEvery, func() {
				req, _ := http.NewRequestWithContext(rctx, http.MethodGet, w.simURL+wechatsim.PathCallbackIP, nil)
				resp, err := client.Do(req)
				if err != nil {
					if rctx.Err() == nil {
						select {
						case errs <- err:
						default:
						}
					}
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			})
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return w.sim, fmt.Errorf("business call: %w", err)
	default:
	}
	return w.sim, nil
}

// costNaive runs r replicas that each fetch their own token (model timer
// or sdk) and make business calls with it.
func costNaive(ctx context.Context, opts wechatsim.Options, model string, r int, run, callEvery, grace time.Duration) (*wechatsim.Sim, error) {
	sim := wechatsim.New(opts)
	sim.AddApp(costAppID, benchSecret)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: sim.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	base := "http://" + ln.Addr().String()
	rctx, cancel := context.WithTimeout(ctx, run)
	defer cancel()
	var wg sync.WaitGroup
	var failures atomic.Int64
	for range r {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep := &naiveReplica{base: base, client: &http.Client{Timeout: 5 * time.Second}}
			if err := rep.fetch(rctx); err != nil {
				failures.Add(1)
				return
			}
			var timer <-chan time.Time
			if model == "timer" {
				// Refresh at 2/3 of the lifetime ± 5 %, like the refresher.
				timer = time.After(time.Duration(float64(rep.life) * (0.6167 + 0.1*rand.Float64())))
			}
			tick := time.NewTicker(callEvery)
			defer tick.Stop()
			for {
				select {
				case <-rctx.Done():
					return
				case <-timer:
					if rep.fetch(rctx) != nil && rctx.Err() == nil {
						failures.Add(1)
					}
					timer = time.After(time.Duration(float64(rep.life) * (0.6167 + 0.1*rand.Float64())))
				case <-tick.C:
					if model == "sdk" && time.Until(rep.expires) < grace {
						_ = rep.fetch(rctx) // the cache's margin: 5 minutes before expiry
					}
					code := rep.call(rctx)
					if model == "sdk" && (code == wechatsim.CodeInvalidCredential || code == wechatsim.CodeTokenExpired) {
						if rep.fetch(rctx) == nil {
							rep.call(rctx) // the retry
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	if n := failures.Load(); n > 0 {
		return sim, fmt.Errorf("%d token fetches failed", n)
	}
	return sim, nil
}

// naiveReplica is one service replica with its own token.
type naiveReplica struct {
	base    string
	client  *http.Client
	token   string
	life    time.Duration
	expires time.Time
}

func (n *naiveReplica) fetch(ctx context.Context) error {
	u := n.base + wechatsim.PathToken + "?grant_type=client_credential&appid=" + costAppID + "&secret=" + url.QueryEscape(benchSecret)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := n.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
		Errcode     int    `json:"errcode"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return err
	}
	if body.AccessToken == "" {
		return fmt.Errorf("errcode %d", body.Errcode)
	}
	n.token, n.life = body.AccessToken, time.Duration(body.ExpiresIn)*time.Second
	n.expires = time.Now().Add(n.life)
	return nil
}

// call makes one business call and returns its errcode (-2: no answer).
func (n *naiveReplica) call(ctx context.Context) int {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.base+wechatsim.PathCallbackIP+"?access_token="+url.QueryEscape(n.token), nil)
	resp, err := n.client.Do(req)
	if err != nil {
		return -2
	}
	defer resp.Body.Close()
	var body struct {
		Errcode int `json:"errcode"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return body.Errcode
}

// every runs f every d until ctx ends.
func every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}
