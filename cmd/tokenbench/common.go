package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// ---- the world: embedded NATS, the emulator ----

// world is one scenario's tokenkeeper world on loopback.
type world struct {
	dir    string
	ns     *server.Server
	url    string
	sim    *wechatsim.Sim
	simURL string
	accept *atomic.Int64 // TCP connections the emulator accepted
	// lastCall is the last token call the emulator answered.
	lastCall atomic.Pointer[simCall]
	closes   []func()
}

// newWorld starts an embedded nats-server (JetStream, 127.0.0.1, random
// port, a temporary store) and the WeChat emulator on its own listener.
func newWorld(simOpts wechatsim.Options) (*world, error) {
	dir, err := os.MkdirTemp("", "tokenbench-")
	if err != nil {
		return nil, err
	}
	w := &world{dir: dir, accept: &atomic.Int64{}}
	w.closes = append(w.closes, func() { _ = os.RemoveAll(dir) })
	w.ns, err = natsconf.StartEmbedded(natsconf.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "nats")})
	if err != nil {
		w.close()
		return nil, err
	}
	w.closes = append(w.closes, func() { w.ns.Shutdown(); w.ns.WaitForShutdown() })
	w.url = w.ns.ClientURL()
	onCall := simOpts.OnCall
	simOpts.OnCall = func(c wechatsim.Call) {
		if c.Path == wechatsim.PathToken || c.Path == wechatsim.PathStableToken {
			end := time.Now()
			w.lastCall.Store(&simCall{start: end.Add(-c.Duration), end: end})
		}
		if onCall != nil {
			onCall(c)
		}
	}
	w.sim = wechatsim.New(simOpts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		w.close()
		return nil, err
	}
	srv := &http.Server{Handler: w.sim.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(&countingListener{Listener: ln, n: w.accept}) }()
	w.closes = append(w.closes, func() { _ = srv.Close() })
	w.simURL = "http://" + ln.Addr().String()
	return w, nil
}

// simCall is when one upstream token call started and ended.
type simCall struct{ start, end time.Time }

// close stops everything in reverse order of start.
func (w *world) close() {
	for i := len(w.closes) - 1; i >= 0; i-- {
		w.closes[i]()
	}
	w.closes = nil
}

// onClose registers f to run at close (before what was started earlier).
func (w *world) onClose(f func()) { w.closes = append(w.closes, f) }

// countingListener counts accepted connections: how many TCP (and, for
// WeChat, TLS) handshakes the refresher's HTTP client made.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// connect opens a client connection to the world's server over TCP.
func (w *world) connect(name string) (*nats.Conn, error) {
	return nats.Connect(w.url, nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
}

// benchSecret is the AppSecret of every benchmark app.
const benchSecret = "tokenbench-secret-0123456789"

// addApp registers appid with the emulator and returns its app config.
func (w *world) addApp(name string) refresher.AppConfig {
	appid := "wx" + name
	w.sim.AddApp(appid, benchSecret)
	return refresher.AppConfig{Name: name, Kind: wechat.KindClassic, AppID: appid, APIBase: w.simURL}.WithSecret(benchSecret)
}

// inproc is a refresher running in this process on its own connection.
type inproc struct {
	r      *refresher.Refresher
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan error
}

// startRefresher runs a refresher for cfg in this process and waits until
// it has loaded the bucket (Ready).
func (w *world) startRefresher(ctx context.Context, cfg *refresher.Config, opts ...refresher.Option) (*inproc, error) {
	nc, err := w.connect("tokenbench-refresher")
	if err != nil {
		return nil, err
	}
	all := append([]refresher.Option{
		refresher.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		refresher.WithUpstream(wechat.New(wechat.WithTimeout(30 * time.Second))),
	}, opts...)
	r, err := refresher.New(cfg, nc, all...)
	if err != nil {
		nc.Close()
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	p := &inproc{r: r, nc: nc, cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- r.Run(rctx) }()
	select {
	case <-r.Ready():
	case err := <-p.done:
		cancel()
		nc.Close()
		return nil, fmt.Errorf("refresher stopped before ready: %v", err)
	case <-ctx.Done():
		p.stop()
		return nil, ctx.Err()
	}
	w.onClose(p.stop)
	return p, nil
}

func (p *inproc) stop() {
	if p.cancel == nil {
		return
	}
	p.cancel()
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
	}
	p.cancel = nil
	p.nc.Close()
}

// config returns a validated refresher config for apps against the
// world's server with the project's defaults, changed by mod.
func (w *world) config(apps []refresher.AppConfig, mod func(*refresher.Config)) (*refresher.Config, error) {
	c := &refresher.Config{NATS: natsconf.Options{URL: w.url}, Apps: apps}
	if mod != nil {
		mod(c)
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// tokensKV returns the tokens bucket (waiting for it to exist).
func tokensKV(ctx context.Context, js jetstream.JetStream, bucket string) (jetstream.KeyValue, error) {
	for {
		kv, err := js.KeyValue(ctx, bucket)
		if err == nil {
			return kv, nil
		}
		if !errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, err
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// waitRecord waits until app's record exists and returns its revision.
func waitRecord(ctx context.Context, kv jetstream.KeyValue, app string, after uint64) (uint64, error) {
	for {
		e, err := kv.Get(ctx, app)
		if err == nil && e.Revision() > after {
			return e.Revision(), nil
		}
		if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return 0, err
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return 0, fmt.Errorf("waiting for the record of %s: %w", app, err)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// ---- statistics and tables ----

// dist summarises durations.
type dist struct {
	n                                  int
	min, p50, p90, p95, p99, max, mean time.Duration
}

func summarize(ds []time.Duration) dist {
	if len(ds) == 0 {
		return dist{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return dist{n: len(s), min: s[0], p50: pct(s, 0.50), p90: pct(s, 0.90), p95: pct(s, 0.95), p99: pct(s, 0.99), max: s[len(s)-1], mean: sum / time.Duration(len(s))}
}

// pct is the nearest-rank percentile of sorted s.
func pct(s []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// ms formats d in milliseconds with sensible precision.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f ms", v)
	case v >= 10:
		return fmt.Sprintf("%.1f ms", v)
	default:
		return fmt.Sprintf("%.2f ms", v)
	}
}

// table is a Markdown table.
type table struct {
	head []string
	rows [][]string
}

func newTable(head ...string) *table { return &table{head: head} }

func (t *table) add(cells ...any) {
	row := make([]string, len(cells))
	for i, c := range cells {
		switch v := c.(type) {
		case time.Duration:
			row[i] = ms(v)
		case float64:
			row[i] = strconv.FormatFloat(v, 'f', -1, 64)
		default:
			row[i] = fmt.Sprint(v)
		}
	}
	t.rows = append(t.rows, row)
}

func (t *table) print(w io.Writer) {
	width := make([]int, len(t.head))
	for i, h := range t.head {
		width[i] = len([]rune(h))
	}
	for _, r := range t.rows {
		for i, c := range r {
			if i < len(width) {
				width[i] = max(width[i], len([]rune(c)))
			}
		}
	}
	line := func(cells []string) {
		var b strings.Builder
		b.WriteString("|")
		for i := range t.head {
			c := ""
			if i < len(cells) {
				c = cells[i]
			}
			b.WriteString(" " + c + strings.Repeat(" ", width[i]-len([]rune(c))) + " |")
		}
		fmt.Fprintln(w, b.String())
	}
	line(t.head)
	sep := make([]string, len(t.head))
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
	}
	line(sep)
	for _, r := range t.rows {
		line(r)
	}
}

// verdict formats a target check.
func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// machine describes where the numbers were taken.
func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d CPUs (GOMAXPROCS %d), %s %s/%s, %s", cpu, runtime.NumCPU(), runtime.GOMAXPROCS(0),
		runtime.Version(), runtime.GOOS, runtime.GOARCH, time.Now().UTC().Format("2006-01-02 15:04 UTC"))
}

func header(w io.Writer, title string, params string) {
	fmt.Fprintf(w, "\n## %s\n\nmachine: %s\nbuild: %s\nparameters: %s\n\n", title, machine(), buildInfo(), params)
}

// buildInfo names the commit tokenbench (and its in-process refresher)
// was built from.
func buildInfo() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "", ""
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = " (with uncommitted changes)"
			}
		}
	}
	if rev == "" {
		return "no VCS information"
	}
	return "commit " + rev[:min(len(rev), 12)] + dirty
}

// raiseNoFile raises the soft open-file limit to the hard one and
// returns the new soft limit.
func raiseNoFile() uint64 {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) != nil {
		return 0
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	}
	return l.Cur
}

// ---- refresher processes ----

// refresherBinary returns bin, or builds ./cmd/refresher into dir.
func refresherBinary(ctx context.Context, bin, dir string) (string, error) {
	if bin != "" {
		return bin, nil
	}
	out := filepath.Join(dir, "refresher")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/tokenkeeper/tokenkeeper/cmd/refresher")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building cmd/refresher (run tokenbench from the repository, or pass -refresher-bin): %v\n%s", err, stderr.String())
	}
	return out, nil
}

// proc is one refresher process.
type proc struct {
	id   string
	cmd  *exec.Cmd // nil for a refresher in this process
	stop func()    // stops an in-process refresher

	out  *watchWriter
	done chan struct{}
}

// startProc starts bin with config path as replica id; secrets come from
// env. It does not wait for readiness (see waitLine).
func startProc(bin, path, id string, env []string) (*proc, error) {
	p := &proc{id: id, out: newWatchWriter(64 << 10), done: make(chan struct{})}
	p.cmd = exec.Command(bin, "--config", path, "--replica-id", id)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) pid() int {
	if p.cmd == nil {
		return os.Getpid()
	}
	return p.cmd.Process.Pid
}

// signal sends s; an in-process refresher is stopped by any signal.
func (p *proc) signal(s syscall.Signal) {
	if p.cmd == nil {
		p.stop()
		return
	}
	_ = p.cmd.Process.Signal(s)
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill ends the process (SIGKILL) and waits for it, at most 10 s.
func (p *proc) kill() {
	if !p.exited() {
		p.signal(syscall.SIGKILL)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}

// waitLine waits until the process printed a line containing s.
func (p *proc) waitLine(ctx context.Context, s string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		if p.out.seen(s) {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("replica %s exited:\n%s", p.id, p.out.tail())
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return fmt.Errorf("replica %s: no %q after %s:\n%s", p.id, s, d, p.out.tail())
		}
	}
}

// watchWriter keeps the last max bytes of a process's output and counts
// lines by substring, so that long logs (10k apps) cost little memory.
type watchWriter struct {
	mu      sync.Mutex
	max     int
	buf     []byte
	partial []byte
	marks   map[string]int
	watch   []string
}

func newWatchWriter(maxBytes int) *watchWriter {
	return &watchWriter{max: maxBytes, marks: map[string]int{},
		watch: []string{"refresher running", "released leadership", "acquired leadership", "token refreshed", "level=ERROR", "ALERT"}}
}

func (w *watchWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	if len(w.buf) > 2*w.max {
		w.buf = append(w.buf[:0:0], w.buf[len(w.buf)-w.max:]...)
	}
	w.partial = append(w.partial, b...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := w.partial[:i]
		for _, m := range w.watch {
			if bytes.Contains(line, []byte(m)) {
				w.marks[m]++
			}
		}
		w.partial = w.partial[i+1:]
	}
	if len(w.partial) > 1<<20 {
		w.partial = nil
	}
	return len(b), nil
}

func (w *watchWriter) seen(s string) bool { return w.count(s) > 0 }

func (w *watchWriter) count(s string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.marks[s]
}

func (w *watchWriter) tail() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := w.buf
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

// ---- /proc ----

// procSample is one reading of a process's CPU time and memory.
type procSample struct {
	at       time.Time
	cpu      time.Duration // user + system
	rss, hwm int64         // bytes
	threads  int
}

// readProc samples /proc/<pid>/stat and /proc/<pid>/status.
func readProc(pid int) (procSample, error) {
	s := procSample{at: time.Now()}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// Fields after the command name (which may hold spaces) start after ')'.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return s, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64) // field 14 utime
	st, _ := strconv.ParseInt(f[12], 10, 64) // field 15 stime
	const clkTck = 100                       // USER_HZ on Linux
	s.cpu = time.Duration(ut+st) * time.Second / clkTck
	st2, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	defer st2.Close()
	sc := bufio.NewScanner(st2)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fs[0], 10, 64)
		switch k {
		case "VmRSS":
			s.rss = n << 10
		case "VmHWM":
			s.hwm = n << 10
		case "Threads":
			s.threads = int(n)
		}
	}
	return s, nil
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// oneApp is a world with one app, its refresher running in-process and
// its first token stored: the start of the propagation and storm runs.
type oneApp struct {
	w   *world
	app refresher.AppConfig
	nc  *nats.Conn // the bench's own connection
	js  jetstream.JetStream
	kv  jetstream.KeyValue
	// maxConsumers describes the token stream's max_consumers as the run
	// sees it, for the report header.
	maxConsumers string
}

// startOneApp builds a oneApp for app with passive_min_interval 0 (so that
// one run's forced refresh is not answered from the previous one's rate
// limit). maxConsumers > 0 overrides the limit the refresher set on the
// token stream. Close it with w.close.
func startOneApp(ctx context.Context, app, connName string, maxConsumers int) (*oneApp, error) {
	w, err := newWorld(wechatsim.Options{})
	if err != nil {
		return nil, err
	}
	o := &oneApp{w: w}
	fail := func(err error) (*oneApp, error) { w.close(); return nil, err }
	o.app = w.addApp(app)
	zero := time.Duration(0)
	cfg, err := w.config([]refresher.AppConfig{o.app}, func(c *refresher.Config) { c.PassiveMinInterval = &zero })
	if err != nil {
		return fail(err)
	}
	if _, err := w.startRefresher(ctx, cfg); err != nil {
		return fail(err)
	}
	if o.nc, err = w.connect(connName); err != nil {
		return fail(err)
	}
	w.onClose(o.nc.Close)
	o.js, _ = jetstream.New(o.nc)
	if o.kv, err = tokensKV(ctx, o.js, contract.DefaultBucket); err != nil {
		return fail(err)
	}
	if _, err := waitRecord(ctx, o.kv, app, 0); err != nil {
		return fail(err)
	}
	if maxConsumers > 0 {
		if err := setMaxConsumers(ctx, o.js, contract.DefaultBucket, maxConsumers); err != nil {
			return fail(err)
		}
	}
	if o.maxConsumers, err = streamMaxConsumers(ctx, o.js, contract.DefaultBucket); err != nil {
		return fail(err)
	}
	return o, nil
}

// positiveInts parses a comma-separated list of positive numbers given to
// flag.
func positiveInts(flag, list string) ([]int, error) {
	var out []int
	for _, s := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s: %q is not a positive number", flag, s)
		}
		out = append(out, n)
	}
	return out, nil
}
