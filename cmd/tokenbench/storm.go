package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// runStorm fires many concurrent refresh requests for one stale revision
// at a refresher whose upstream answers after -latency, and counts the
// upstream fetches (target: exactly one) and the reply latencies (target:
// p99 ≤ latency + 50 ms). Mode raw sends {"stale_revision": N} with
// nc.Request (any language's client); mode source calls Source.Refresh
// (which also merges the callers of one process into one request).
func runStorm(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("storm", flag.ContinueOnError)
	fs.SetOutput(out)
	conns := fs.Int("conns", 1000, "client connections")
	requests := fs.Int("requests", 10000, "concurrent refresh requests, spread over the connections")
	latency := fs.Duration("latency", 100*time.Millisecond, "latency of the emulator's token endpoint")
	mode := fs.String("mode", "all", "raw (nc.Request from this process), raw-proc (nc.Request from a child process: the clients do not share this process's scheduler), source (Source.Refresh), both (raw, source) or all")
	timeout := fs.Duration("timeout", 30*time.Second, "bound of one request")
	slack := fs.Duration("slack", 50*time.Millisecond, "target: p99 ≤ latency + slack")
	maxConsumers := fs.Int("max-consumers", 0, "if > 0, override the tokens stream's max_consumers after the refresher has set it (1000000; see propagation -h); source mode holds one watch per connection")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *conns < 1 || *requests < *conns {
		return errors.New("want conns ≥ 1 and requests ≥ conns")
	}
	modes := map[string][]string{"raw": {"raw"}, "raw-proc": {"raw-proc"}, "source": {"source"}, "both": {"raw", "source"},
		"all": {"raw", "raw-proc", "source"}}[*mode]
	if modes == nil {
		return fmt.Errorf("-mode: %q is not raw, raw-proc, source, both or all", *mode)
	}
	if limit := raiseNoFile(); limit < uint64(2**conns+200) {
		return fmt.Errorf("open-file limit %d is below the %d this run needs; raise ulimit -n", limit, 2**conns+200)
	}

	const app = "storm"
	one, err := startOneApp(ctx, app, "tokenbench-storm", *maxConsumers)
	if err != nil {
		return err
	}
	w := one.w
	defer w.close()
	kv, mc, ac := one.kv, one.maxConsumers, one.app

	cs := make([]*nats.Conn, *conns)
	defer func() {
		for _, c := range cs {
			if c != nil {
				c.Close()
			}
		}
	}()
	if err := parallel(*conns, 32, func(i int) (err error) {
		cs[i], err = w.connect(fmt.Sprintf("tokenbench-storm-%d", i))
		return err
	}); err != nil {
		return err
	}

	header(out, "Refresh storm: concurrent refresh requests for one stale revision",
		fmt.Sprintf("%d requests from %d connections, all released at once; emulator latency %s; embedded nats-server on 127.0.0.1; refresher in-process (passive_min_interval 0); tokens stream max_consumers %s", *requests, *conns, *latency, mc))
	t := newTable("mode", "requests", "upstream fetches", "reply p50", "p99", "max", "errors", "last sent at", "upstream call", "first reply at", "last reply at", "fetches = 1", "p99 ≤ latency + slack")
	allOK := true
	for _, m := range modes {
		e, err := kv.Get(ctx, app)
		if err != nil {
			return err
		}
		stale := e.Revision()
		var lats []time.Duration
		var errs int
		var tl timeline
		var fetches int
		switch m {
		case "raw":
			w.sim.SetFault(wechatsim.Fault{Latency: *latency})
			f0 := w.sim.Fetches(ac.AppID)
			lats, errs, tl = rawStorm(ctx, cs, app, stale, *requests, *timeout)
			fetches = w.sim.Fetches(ac.AppID) - f0
		case "raw-proc":
			lats, errs, tl, err = rawStormProc(ctx, w, app, stale, *conns, *requests, *timeout, func() {
				w.sim.SetFault(wechatsim.Fault{Latency: *latency})
			}, func() int { return w.sim.Fetches(ac.AppID) }, &fetches)
			if err != nil {
				return err
			}
		case "source":
			srcs := make([]*subscriber.Source, len(cs))
			if err := parallel(len(cs), 32, func(i int) (err error) {
				sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				srcs[i], err = subscriber.NewSource(sctx, cs[i], app)
				return err
			}); err != nil {
				return err
			}
			w.sim.SetFault(wechatsim.Fault{Latency: *latency})
			f0 := w.sim.Fetches(ac.AppID)
			lats, errs, tl = sourceStorm(ctx, srcs, stale, *requests, *timeout)
			fetches = w.sim.Fetches(ac.AppID) - f0
			_ = parallel(len(srcs), 64, func(i int) error { return srcs[i].Close() })
		}
		if c := w.sim.MaxConcurrentFetches(ac.AppID); c > 1 {
			return fmt.Errorf("%d concurrent upstream fetches", c)
		}
		w.sim.SetFault(wechatsim.Fault{})
		d := summarize(lats)
		lim := *latency + *slack
		ok := fetches == 1 && d.p99 <= lim && errs == 0
		allOK = allOK && ok
		call := "-"
		if c := w.lastCall.Load(); c != nil && fetches > 0 {
			call = fmt.Sprintf("%s–%s", ms(c.start.Sub(tl.t0)), ms(c.end.Sub(tl.t0)))
		}
		t.add(m, *requests, fetches, d.p50, d.p99, d.max, errs, tl.lastSent, call, tl.firstReply, tl.lastReply, verdict(fetches == 1), verdict(d.p99 <= lim && errs == 0))
	}
	t.print(out)
	fmt.Fprintf(out, "\ntarget exactly 1 upstream fetch and p99 ≤ latency + %s: %s\n", ms(*slack), verdict(allOK))
	return nil
}

// timeline is when things happened in one storm, from the release.
type timeline struct {
	lastSent   time.Duration // the last request was sent
	firstReply time.Duration // the first reply arrived
	lastReply  time.Duration
	t0         time.Time // the release
}

// rawStorm sends n requests {"stale_revision": stale} at once, round robin
// over the connections, and returns every reply's latency and the number
// of failed or stale replies.
func rawStorm(ctx context.Context, cs []*nats.Conn, app string, stale uint64, n int, timeout time.Duration) ([]time.Duration, int, timeline) {
	body, _ := json.Marshal(contract.RefreshRequest{StaleRevision: &stale})
	return releaseAtOnce(ctx, n, timeout, func(ctx context.Context, i int) bool {
		m, err := cs[i%len(cs)].RequestWithContext(ctx, contract.RefreshSubject(app), body)
		var rep contract.RefreshReply
		return err == nil && json.Unmarshal(m.Data, &rep) == nil && rep.Revision > stale
	})
}

// sourceStorm calls Refresh(stale) n times at once, spread over the
// Sources, and returns every call's latency and the number of failures.
func sourceStorm(ctx context.Context, srcs []*subscriber.Source, stale uint64, n int, timeout time.Duration) ([]time.Duration, int, timeline) {
	return releaseAtOnce(ctx, n, timeout, func(ctx context.Context, i int) bool {
		tok, err := srcs[i%len(srcs)].Refresh(ctx, stale)
		return err == nil && tok.Revision > stale
	})
}

// releaseAtOnce starts n goroutines, releases them together, and times
// each call(ctx, i) (bounded by timeout); it returns every latency, the
// number of calls that reported failure, and the timeline of the storm.
func releaseAtOnce(ctx context.Context, n int, timeout time.Duration, call func(ctx context.Context, i int) bool) ([]time.Duration, int, timeline) {
	lats := make([]time.Duration, n)
	sent, got := make([]time.Time, n), make([]time.Time, n)
	var errs atomic.Int64
	start := make(chan struct{})
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var ready, done sync.WaitGroup
	for i := range n {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			ready.Done()
			<-start
			sent[i] = time.Now()
			ok := call(rctx, i)
			got[i] = time.Now()
			lats[i] = got[i].Sub(sent[i])
			if !ok {
				errs.Add(1)
			}
		}()
	}
	ready.Wait()
	t0 := time.Now()
	close(start)
	done.Wait()
	return lats, int(errs.Load()), timelineOf(t0, sent, got)
}

func timelineOf(t0 time.Time, sent, got []time.Time) timeline {
	tl := timeline{firstReply: time.Hour, t0: t0}
	for i := range sent {
		tl.lastSent = max(tl.lastSent, sent[i].Sub(t0))
		tl.firstReply = min(tl.firstReply, got[i].Sub(t0))
		tl.lastReply = max(tl.lastReply, got[i].Sub(t0))
	}
	return tl
}

// rawStormProc runs rawStorm in a child process (tokenbench
// storm-client) so that the 10k client goroutines do not share the
// refresher's and the server's Go scheduler. arm runs before the
// release; fetches counts the upstream fetches the storm made.
func rawStormProc(ctx context.Context, w *world, app string, stale uint64, conns, n int, timeout time.Duration, arm func(), count func() int, fetches *int) ([]time.Duration, int, timeline, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, 0, timeline{}, err
	}
	cmd := exec.CommandContext(ctx, exe, "storm-client", "-url", w.url, "-app", app, "-stale", strconv.FormatUint(stale, 10),
		"-conns", strconv.Itoa(conns), "-requests", strconv.Itoa(n), "-timeout", timeout.String())
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, 0, timeline{}, err
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		return nil, 0, timeline{}, err
	}
	if err := cmd.Start(); err != nil {
		return nil, 0, timeline{}, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	rd := bufio.NewReader(outp)
	if line, err := rd.ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		return nil, 0, timeline{}, fmt.Errorf("storm-client did not get ready: %q %v", line, err)
	}
	arm()
	f0 := count()
	if _, err := io.WriteString(in, "go\n"); err != nil {
		return nil, 0, timeline{}, err
	}
	var res stormClientResult
	if err := json.NewDecoder(rd).Decode(&res); err != nil {
		return nil, 0, timeline{}, fmt.Errorf("storm-client result: %w", err)
	}
	*fetches = count() - f0
	lats := make([]time.Duration, len(res.Lats))
	for i, l := range res.Lats {
		lats[i] = time.Duration(l)
	}
	return lats, res.Errs, timeline{lastSent: time.Duration(res.LastSent), firstReply: time.Duration(res.FirstReply),
		lastReply: time.Duration(res.LastReply), t0: time.Unix(0, res.T0)}, nil
}

// stormClientResult is what storm-client prints.
type stormClientResult struct {
	Lats                            []int64 // ns
	Errs                            int
	T0                              int64 // unix ns of the release
	LastSent, FirstReply, LastReply int64 // ns after T0
}

// runStormClient is the child of storm -mode raw-proc: it connects,
// prints "ready", waits for "go" on stdin, fires the requests and prints
// the result as JSON.
func runStormClient(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("storm-client", flag.ContinueOnError)
	url := fs.String("url", "", "NATS URL")
	app := fs.String("app", "", "app")
	stale := fs.Uint64("stale", 0, "stale revision")
	conns := fs.Int("conns", 1, "connections")
	n := fs.Int("requests", 1, "requests")
	timeout := fs.Duration("timeout", 30*time.Second, "bound of one request")
	if err := fs.Parse(args); err != nil {
		return err
	}
	raiseNoFile()
	cs := make([]*nats.Conn, *conns)
	defer func() {
		for _, c := range cs {
			if c != nil {
				c.Close()
			}
		}
	}()
	if err := parallel(*conns, 32, func(i int) (err error) {
		cs[i], err = nats.Connect(*url, nats.Name(fmt.Sprintf("tokenbench-storm-client-%d", i)))
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintln(out, "ready")
	if line, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil || strings.TrimSpace(line) != "go" {
		return fmt.Errorf("storm-client: want go on stdin, got %q %v", line, err)
	}
	lats, errs, tl := rawStorm(ctx, cs, *app, *stale, *n, *timeout)
	res := stormClientResult{Errs: errs, T0: tl.t0.UnixNano(), LastSent: int64(tl.lastSent), FirstReply: int64(tl.firstReply), LastReply: int64(tl.lastReply)}
	for _, l := range lats {
		res.Lats = append(res.Lats, int64(l))
	}
	return json.NewEncoder(out).Encode(res)
}

// parallel runs f(0..n-1) with at most width at a time and returns the
// errors joined.
func parallel(n, width int, f func(i int) error) error {
	var mu sync.Mutex
	var all error
	sem := make(chan struct{}, width)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f(i); err != nil {
				mu.Lock()
				all = errors.Join(all, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return all
}
