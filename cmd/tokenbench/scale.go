package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// runScale runs one refresher process (cmd/refresher, built or given)
// with many apps against the embedded server and the emulator of this
// process, and measures from /proc: the time from exec to every app
// holding a token, CPU and peak RSS during that startup, then CPU and RSS
// in the steady state, and the shutdown time.
func runScale(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	fs.SetOutput(out)
	appsFlag := fs.String("apps", "10000", "comma-separated app counts, one refresher run each")
	latency := fs.Duration("latency", 0, "latency of the emulator's token endpoint (WeChat answers in tens of ms)")
	window := fs.Duration("window", 60*time.Second, "steady-state measurement window after startup (covers two 30 s ticks)")
	startupLimit := fs.Duration("startup-timeout", 15*time.Minute, "give up if startup takes longer")
	bin := fs.String("refresher-bin", "", "refresher binary (default: go build ./cmd/refresher)")
	rssTarget := fs.Int64("rss-target-mib", 256, "RSS target in MiB")
	heapAt = fs.String("heap-profile", "", "with -inproc: write a heap profile to this file when half of the tokens are stored (the startup's peak)")
	concurrency := fs.Int("concurrency", 0, "refresh.concurrency of the generated config: fetches at once (0: the refresher's default, 16)")
	inproc := fs.Bool("inproc", false, "run the refresher inside tokenbench instead (for -cpuprofile/-memprofile; CPU and RSS then include NATS and the emulator)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *concurrency < 0 {
		return fmt.Errorf("-concurrency: %d is negative", *concurrency)
	}
	conc := "concurrency 16 (the default)"
	if *concurrency > 0 {
		conc = fmt.Sprintf("refresh.concurrency %d", *concurrency)
	}
	sizes, err := positiveInts("-apps", *appsFlag)
	if err != nil {
		return err
	}
	tmp, refBin, err := benchDir(ctx, "tokenbench-scale-", *bin, *inproc)
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	header(out, "Scale of one refresher process",
		fmt.Sprintf("cmd/refresher as a process (default settings: schedule @every 30s, %s, lease_ttl 10s, http on, log info), embedded nats-server and emulator (7200 s tokens, latency %s) in tokenbench; steady state measured over %s; CPU and memory from /proc/<pid>", conc, *latency, *window))
	t := newTable("apps", "exec → running", "exec → all tokens", "refreshes/s", "startup CPU", "CPU per app", "peak RSS (VmHWM)",
		"steady CPU", "steady RSS", "upstream TCP conns", "SIGTERM → exit", "RSS ≤ target")
	var notes []string
	for _, n := range sizes {
		r, err := scaleOnce(ctx, refBin, tmp, n, *concurrency, *latency, *window, *startupLimit)
		if err != nil {
			t.print(out)
			return fmt.Errorf("apps=%d: %w", n, err)
		}
		if *inproc {
			notes = append(notes, fmt.Sprintf("apps=%d in-process: peak goroutines %d, peak stack memory %s, peak heap in use %s (this process, NATS and emulator included)\n",
				n, r.peakGoroutines, mib(r.peakStacks), mib(r.peakHeap)))
		}
		t.add(n, r.ready, fmt.Sprintf("%.1f s", r.allTokens.Seconds()), fmt.Sprintf("%.0f", float64(n)/r.allTokens.Seconds()),
			fmt.Sprintf("%.1f s", r.startCPU.Seconds()), fmt.Sprintf("%.0f µs", float64(r.startCPU.Microseconds())/float64(n)), mib(r.peakRSS),
			fmt.Sprintf("%.2f %%", r.steadyCPU*100), mib(r.steadyRSS), r.conns, r.shutdown, verdict(r.peakRSS <= *rssTarget<<20))
	}
	t.print(out)
	for _, n := range notes {
		fmt.Fprintln(out, n)
	}
	fmt.Fprintln(out, "\nCPU is user+system of the refresher process only (NATS and the emulator run in tokenbench). The planner's cost per tick: go test ./refresher -bench Plan.")
	return nil
}

var heapAt *string

type scaleResult struct {
	ready, allTokens, shutdown time.Duration
	startCPU                   time.Duration
	peakRSS, steadyRSS         int64
	steadyCPU                  float64 // cores
	conns                      int64
	// In-process runs only (this process, NATS included).
	peakGoroutines       int
	peakStacks, peakHeap int64
}

func scaleOnce(ctx context.Context, bin, tmp string, n, concurrency int, latency, window, startupLimit time.Duration) (scaleResult, error) {
	var res scaleResult
	w, err := newWorld(wechatsim.Options{})
	if err != nil {
		return res, err
	}
	defer w.close()
	if latency > 0 {
		w.sim.SetFault(wechatsim.Fault{Latency: latency})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "nats: {url: %q}\nhttp: {listen: \"127.0.0.1:0\"}\nlog: {level: info}\n", w.url)
	if concurrency > 0 {
		fmt.Fprintf(&b, "refresh: {concurrency: %d}\n", concurrency)
	}
	b.WriteString("apps:\n")
	for i := range n {
		name := fmt.Sprintf("app-%07d", i)
		appid := "wx" + name
		w.sim.AddApp(appid, benchSecret)
		fmt.Fprintf(&b, "  - {name: %s, appid: %s, api_base: %q, secret_env: TOKENBENCH_SECRET}\n", name, appid, w.simURL)
	}
	cfgPath := filepath.Join(tmp, fmt.Sprintf("scale-%d.yaml", n))
	if err := os.WriteFile(cfgPath, []byte(b.String()), 0o600); err != nil {
		return res, err
	}
	conns0 := w.accept.Load()
	start := time.Now()
	var p *proc
	if bin == "" {
		p, err = startInproc(cfgPath)
	} else {
		p, err = startProc(bin, cfgPath, "scale", []string{"TOKENBENCH_SECRET=" + benchSecret})
	}
	if err != nil {
		return res, err
	}
	defer p.kill()
	if err := p.waitLine(ctx, "refresher running", startupLimit); err != nil {
		return res, err
	}
	res.ready = time.Since(start)

	// Until every app's token is stored: count the refresher's own
	// "token refreshed" lines (one per stored token), sampling /proc.
	deadline := time.Now().Add(startupLimit)
	for p.out.count("token refreshed") < n {
		if p.exited() {
			return res, fmt.Errorf("refresher exited during startup:\n%s", p.out.tail())
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("only %d of %d tokens after %s", p.out.count("token refreshed"), n, startupLimit)
		}
		if s, err := readProc(p.pid()); err == nil {
			res.peakRSS = max(res.peakRSS, s.hwm)
		}
		if bin == "" && *heapAt != "" && p.out.count("token refreshed") >= n/2 {
			if f, err := os.Create(*heapAt); err == nil {
				_ = pprof.WriteHeapProfile(f)
				f.Close()
			}
			*heapAt = ""
		}
		if bin == "" {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			res.peakGoroutines = max(res.peakGoroutines, runtime.NumGoroutine())
			res.peakStacks = max(res.peakStacks, int64(ms.StackInuse))
			res.peakHeap = max(res.peakHeap, int64(ms.HeapInuse))
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return res, err
		}
	}
	res.allTokens = time.Since(start)
	s0, err := readProc(p.pid())
	if err != nil {
		return res, err
	}
	res.startCPU = s0.cpu
	res.conns = w.accept.Load() - conns0

	// Check against the bucket itself.
	nc, err := w.connect("tokenbench-scale")
	if err != nil {
		return res, err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	kv, err := tokensKV(ctx, js, contract.DefaultBucket)
	if err != nil {
		return res, err
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return res, err
	}
	if st.Values() < uint64(n) {
		return res, fmt.Errorf("the bucket holds %d records, want %d", st.Values(), n)
	}

	// Steady state.
	if err := sleepCtx(ctx, 2*time.Second); err != nil { // let the startup's tail settle
		return res, err
	}
	a, err := readProc(p.pid())
	if err != nil {
		return res, err
	}
	var rss rssMeter
	end := time.Now().Add(window)
	for time.Now().Before(end) {
		if err := sleepCtx(ctx, time.Second); err != nil {
			return res, err
		}
		if err := rss.sample(p.pid()); err != nil {
			return res, err
		}
	}
	res.peakRSS = max(res.peakRSS, rss.peak)
	z, err := readProc(p.pid())
	if err != nil {
		return res, err
	}
	res.steadyCPU = (z.cpu - a.cpu).Seconds() / z.at.Sub(a.at).Seconds()
	res.steadyRSS = rss.mean()

	t0 := time.Now()
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
		res.shutdown = time.Since(t0)
	case <-time.After(30 * time.Second):
		return res, errors.New("the refresher did not exit within 30 s of SIGTERM")
	}
	return res, nil
}

// startInproc runs the refresher of the config at path inside this
// process, as a proc whose pid is ours and whose signal stops it.
func startInproc(path string) (*proc, error) {
	if err := os.Setenv("TOKENBENCH_SECRET", benchSecret); err != nil {
		return nil, err
	}
	cfg, err := refresher.LoadConfig(path)
	if err != nil {
		return nil, err
	}
	p := &proc{id: "inproc", out: newWatchWriter(64 << 10), done: make(chan struct{})}
	log := refresher.NewLogger(cfg.Log, p.out)
	nc, err := nats.Connect(cfg.NATS.URL)
	if err != nil {
		return nil, err
	}
	r, err := refresher.New(cfg, nc, refresher.WithLogger(log), refresher.WithObserver(refresher.NewMetrics(prometheus.NewRegistry())))
	if err != nil {
		nc.Close()
		return nil, err
	}
	var srv *http.Server
	if cfg.HTTP.Listen != "" {
		// /status and /readyz as cmd/refresher serves them.
		ln, err := net.Listen("tcp", cfg.HTTP.Listen)
		if err != nil {
			nc.Close()
			return nil, err
		}
		srv = &http.Server{Handler: r.HealthHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	go func() {
		_ = r.Run(ctx)
		if srv != nil {
			_ = srv.Close()
		}
		nc.Close()
		close(p.done)
	}()
	return p, nil
}
