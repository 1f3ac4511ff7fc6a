package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
)

// runPropagation measures how long a KV write takes to reach every one of
// N Sources, each on its own connection: direct kv.Update writes (the
// propagation alone) and refreshes through a real refresher. The clock
// starts at the server's timestamp of the stored message (the write) and
// stops when the last Source's OnUpdate callback runs with the new token.
//
// Against it, in the same run and on the same N connections, it measures
// the transport's floor: core NATS fan-out of a payload of the record's
// size to one plain subscription per connection (and key), the clock
// starting at the publish. Direct writes and core publishes alternate, so
// that the machine's noise falls on both alike; the report gives their
// ratio and the JetStream consumers on the tokens stream while the N
// connections follow it.
//
// With -keys K every connection follows K keys (K Sources and K core
// subscriptions); each write goes to one key, in turn, and is done when
// the N connections following that key hold it.
func runPropagation(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("propagation", flag.ContinueOnError)
	fs.SetOutput(out)
	ns := fs.String("n", "1,100,1000", "comma-separated numbers of connections (each a process following the keys)")
	keys := fs.Int("keys", 1, "keys each connection follows: one Source (and one core subscription) per key")
	writes := fs.Int("writes", 50, "direct kv.Update writes per N, and as many core publishes, alternating")
	refreshes := fs.Int("refreshes", 5, "refreshes through the refresher per N (token.refresh with the current revision)")
	gap := fs.Duration("gap", 20*time.Millisecond, "pause between writes")
	perWrite := fs.Duration("write-timeout", 10*time.Second, "how long to wait for every Source to hold one write")
	target := fs.Duration("target", 20*time.Millisecond, "p99 target for N = the largest N")
	ratio := fs.Float64("ratio", 1.5, "target for Source p99 ÷ core fan-out p99 (all N hold it) at the largest N")
	profile := fs.String("cpuprofile-writes", "", "write a CPU profile of the largest N's direct writes and core publishes (not the setup) to this file")
	maxConsumers := fs.Int("max-consumers", 0, "if > 0, override the tokens stream's max_consumers after the refresher has set it (the refresher sets 1000000; 1000 reproduces nats-server 2.12+'s default per stream, which applied before the refresher set a limit: every Source's watch is one consumer)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sizes, err := positiveInts("-n", *ns)
	if err != nil {
		return err
	}
	if *keys < 1 {
		return fmt.Errorf("-keys: %d is not a positive number", *keys)
	}
	limit := raiseNoFile()
	if need := uint64(2*sizes[len(sizes)-1] + 200); limit < need {
		return fmt.Errorf("open-file limit %d is below the %d this run needs (client and server ends of each connection); raise ulimit -n", limit, need)
	}

	apps := keyNames("prop", *keys)
	one, err := startApps(ctx, apps, "tokenbench-writer", *maxConsumers)
	if err != nil {
		return err
	}
	w := one.w
	defer w.close()
	nc, js, kv, mc := one.nc, one.js, one.kv, one.maxConsumers
	// A separate watcher learns the server's timestamp of every write.
	stamps := newStamps()
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watcher, err := kv.WatchAll(wctx, jetstream.UpdatesOnly())
	if err != nil {
		return err
	}
	go func() {
		for e := range watcher.Updates() {
			if e != nil {
				stamps.put(e.Revision(), e.Created())
			}
		}
	}()
	src := &path{name: "Source (kv.Update)",
		write: func(key int) (uint64, time.Time, error) {
			rev, err := directWrite(ctx, kv, apps[key])
			return rev, time.Time{}, err
		},
		start: func(ctx context.Context, rev uint64, _ time.Time) (time.Time, error) { return stamps.wait(ctx, rev) },
	}
	viaRefresher := &path{name: "Source (refresher)",
		write: func(key int) (uint64, time.Time, error) {
			rev, err := refreshVia(ctx, nc, kv, apps[key])
			return rev, time.Time{}, err
		},
		start: src.start,
	}
	core := &path{name: "core fan-out", write: corePublisher(ctx, nc, kv, apps),
		start: func(_ context.Context, _ uint64, t0 time.Time) (time.Time, error) { return t0, nil },
	}

	header(out, "Propagation: KV write → every one of N Sources, against core NATS fan-out to the same N connections",
		fmt.Sprintf("embedded nats-server on 127.0.0.1 (TCP), N connections each following %d key(s) with default Source options; tokens stream max_consumers %s; per N %d direct kv.Update writes alternating with %d core publishes of a payload of the record's size to one plain subscription per connection and key, then %d refreshes through the refresher, %s apart; Source latency from the server's timestamp of the stored message to the OnUpdate callback, core latency from the publish to the subscription's callback",
			*keys, mc, *writes, *writes, *refreshes, *gap))
	t := newTable("N conns", "keys each", "path", "writes", "all N hold it: p50", "p99", "max", "one delivery: p50", "p99", "max", "deliveries > 1 s", "lost", "CPU per write")
	cmp := newTable("N conns", "keys each", "Source: p50", "p99", "core fan-out: p50", "p99", "p99 ratio", "p50 ratio", "consumers on the stream", "of them the N connections'", "per connection")
	var lastP99, lastCoreP99 time.Duration
	var lastPerConn float64
	// The consumers before any Source: the refresher's watch and the
	// timestamp watch above.
	base, err := streamConsumers(ctx, js, contract.DefaultBucket)
	if err != nil {
		return err
	}
	for _, n := range sizes {
		fl, err := newFleet(ctx, w, apps, n)
		if err != nil {
			return fmt.Errorf("N=%d: %w", n, err)
		}
		src.lane, viaRefresher.lane, core.lane = fl.src, fl.src, fl.core
		// Direct writes and core publishes, alternating (and alternating
		// which goes first).
		var rs, rc runResult
		if *profile != "" && n == sizes[len(sizes)-1] {
			stop, err := startProfile(*profile)
			if err != nil {
				fl.close()
				return err
			}
			defer stop()
		}
		for i := range *writes {
			first, second, r1, r2 := src, core, &rs, &rc
			if i%2 == 1 {
				first, second, r1, r2 = core, src, &rc, &rs
			}
			if err := fl.measure(ctx, first, i%*keys, *gap, *perWrite, r1); err != nil {
				fl.close()
				return fmt.Errorf("N=%d %s: %w", n, first.name, err)
			}
			if err := fl.measure(ctx, second, i%*keys, *gap, *perWrite, r2); err != nil {
				fl.close()
				return fmt.Errorf("N=%d %s: %w", n, second.name, err)
			}
		}
		if *profile != "" && n == sizes[len(sizes)-1] {
			pprof.StopCPUProfile()
		}
		// The consumers while the N connections follow their keys.
		during, err := streamConsumers(ctx, js, contract.DefaultBucket)
		if err != nil {
			fl.close()
			return err
		}
		sa := t.addRun(n, *keys, src.name, rs)
		ca := t.addRun(n, *keys, core.name, rc)
		perConn := float64(during-base) / float64(n)
		cmp.add(n, *keys, sa.p50, sa.p99, ca.p50, ca.p99, times(sa.p99, ca.p99), times(sa.p50, ca.p50),
			during, during-base, strconv.FormatFloat(perConn, 'f', -1, 64))
		lastP99, lastCoreP99, lastPerConn = sa.p99, ca.p99, perConn
		if len(rs.all) < *writes {
			lastP99 = *perWrite // some write never reached every Source
		}
		if len(rc.all) < *writes {
			lastCoreP99 = *perWrite // some publish never reached every connection
		}
		if *refreshes > 0 {
			// Through the refresher: a passive refresh of the current revision.
			var rr runResult
			for i := range *refreshes {
				if err := fl.measure(ctx, viaRefresher, i%*keys, *gap, *perWrite, &rr); err != nil {
					fl.close()
					return fmt.Errorf("N=%d refresher: %w", n, err)
				}
			}
			t.addRun(n, *keys, viaRefresher.name, rr)
		}
		fl.close()
		if n == sizes[len(sizes)-1] {
			break
		}
		// nats.go deletes a stopped watch's consumer in the background:
		// let the next N start from the same count.
		if err := waitConsumers(ctx, js, contract.DefaultBucket, base, 10*time.Second); err != nil {
			fmt.Fprintf(out, "note: %v; the next N's count includes them\n", err)
		}
	}
	t.print(out)
	fmt.Fprintf(out, "\nSource against core NATS fan-out to the same connections (all N hold it; consumers counted with the JetStream API while the N connections follow their keys, the rest being the refresher's and this run's timestamp watch):\n\n")
	cmp.print(out)
	largest := sizes[len(sizes)-1]
	fmt.Fprintf(out, "\ntarget p99 (all N hold the new token) ≤ %s at N = %d: %s (%s)\n", ms(*target), largest, verdict(lastP99 <= *target), ms(lastP99))
	fmt.Fprintf(out, "target Source p99 ≤ %s× core fan-out p99 at N = %d: %s (%s)\n", strconv.FormatFloat(*ratio, 'f', -1, 64), largest,
		verdict(lastCoreP99 > 0 && float64(lastP99) <= *ratio*float64(lastCoreP99)), times(lastP99, lastCoreP99))
	fmt.Fprintf(out, "target ≤ 1 consumer per connection (process) at N = %d: %s (%s)\n", largest, verdict(lastPerConn <= 1), strconv.FormatFloat(lastPerConn, 'f', -1, 64))
	return nil
}

// startProfile starts a CPU profile into path; stop ends it (again).
func startProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("-cpuprofile-writes (not with tokenbench -cpuprofile): %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// keyNames names k apps: base alone for one (the key of earlier runs),
// base-0 … base-(k-1) for more.
func keyNames(base string, k int) []string {
	if k == 1 {
		return []string{base}
	}
	names := make([]string, k)
	for i := range names {
		names[i] = fmt.Sprintf("%s-%d", base, i)
	}
	return names
}

// times formats a ÷ b as a ratio.
func times(a, b time.Duration) string {
	if b <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", float64(a)/float64(b))
}

// streamConsumers counts the consumers on bucket's stream.
func streamConsumers(ctx context.Context, js jetstream.JetStream, bucket string) (int, error) {
	st, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Consumers, nil
}

// waitConsumers waits, at most d, until bucket's stream has at most want
// consumers.
func waitConsumers(ctx context.Context, js jetstream.JetStream, bucket string, want int, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		n, err := streamConsumers(ctx, js, bucket)
		if err == nil && n <= want {
			return nil
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return fmt.Errorf("%d consumers left on the tokens stream after %s (want %d)", n, d, want)
		}
	}
}

// corePublisher returns the core path's write: a core NATS publish to
// key's fan-out subject of a payload as long as the record a direct write
// stores, its first 20 bytes the publish's sequence number. It returns
// the sequence and the time just before the publish.
func corePublisher(ctx context.Context, nc *nats.Conn, kv jetstream.KeyValue, apps []string) func(key int) (uint64, time.Time, error) {
	var seq uint64
	return func(key int) (uint64, time.Time, error) {
		seq++
		e, err := kv.Get(ctx, apps[key])
		if err != nil {
			return 0, time.Time{}, err
		}
		val, err := benchRecord(e.Value(), e.Revision())
		if err != nil {
			return 0, time.Time{}, err
		}
		copy(val, fmt.Sprintf("%020d", seq))
		t0 := time.Now()
		if err := nc.Publish(fanoutSubject(apps[key]), val); err != nil {
			return 0, time.Time{}, err
		}
		return seq, t0, nc.Flush()
	}
}

// fanoutSubject is the core subject of app's fan-out.
func fanoutSubject(app string) string { return "tokenbench.fanout." + app }

// directWrite replaces app's token with a new one by kv.Update over the
// current revision (what the refresher's write does, without the fetch).
func directWrite(ctx context.Context, kv jetstream.KeyValue, app string) (uint64, error) {
	e, err := kv.Get(ctx, app)
	if err != nil {
		return 0, err
	}
	val, err := benchRecord(e.Value(), e.Revision())
	if err != nil {
		return 0, err
	}
	return kv.Update(ctx, app, val, e.Revision())
}

// benchRecord is the record a direct write stores over val (stored at
// rev): a new token, fetched now.
func benchRecord(val []byte, rev uint64) ([]byte, error) {
	var rec contract.Record
	if err := json.Unmarshal(val, &rec); err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	rec.AccessToken = fmt.Sprintf("direct-%d-%0120d", rev+1, now.UnixNano())
	rec.FetchedAt, rec.ExpiresAt, rec.Source = now, now.Add(2*time.Hour), contract.SourceScheduled
	return json.Marshal(rec)
}

// refreshVia asks the refresher to replace the token at the current
// revision (a passive refresh: one upstream fetch, then the write).
func refreshVia(ctx context.Context, nc *nats.Conn, kv jetstream.KeyValue, app string) (uint64, error) {
	e, err := kv.Get(ctx, app)
	if err != nil {
		return 0, err
	}
	body, _ := json.Marshal(contract.RefreshRequest{StaleRevision: ptr(e.Revision())})
	m, err := nc.Request(contract.RefreshSubject(app), body, 10*time.Second)
	if err != nil {
		return 0, err
	}
	var rep contract.RefreshReply
	if err := json.Unmarshal(m.Data, &rep); err != nil || rep.Revision <= e.Revision() {
		return 0, fmt.Errorf("refresh reply %q: %v", m.Data, err)
	}
	return rep.Revision, nil
}

// setMaxConsumers sets max_consumers of bucket's stream.
func setMaxConsumers(ctx context.Context, js jetstream.JetStream, bucket string, n int) error {
	st, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return err
	}
	cfg := st.CachedInfo().Config
	cfg.MaxConsumers = n
	_, err = js.UpdateStream(ctx, cfg)
	return err
}

// streamMaxConsumers describes max_consumers of bucket's stream as the
// server applies it: -1 (not set) means nats-server 2.12+'s default of
// 1000 per stream.
func streamMaxConsumers(ctx context.Context, js jetstream.JetStream, bucket string) (string, error) {
	st, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return "", err
	}
	n := st.CachedInfo().Config.MaxConsumers
	if n <= 0 {
		return fmt.Sprintf("%d (not set: the server's default, 1000 per stream)", n), nil
	}
	return strconv.Itoa(n), nil
}

func ptr[T any](v T) *T { return &v }

// stamps maps revisions to the server's timestamps.
type stamps struct {
	mu sync.Mutex
	m  map[uint64]time.Time
	ch chan struct{}
}

func newStamps() *stamps { return &stamps{m: map[uint64]time.Time{}, ch: make(chan struct{})} }

func (s *stamps) put(rev uint64, t time.Time) {
	s.mu.Lock()
	s.m[rev] = t
	close(s.ch)
	s.ch = make(chan struct{})
	s.mu.Unlock()
}

func (s *stamps) wait(ctx context.Context, rev uint64) (time.Time, error) {
	for {
		s.mu.Lock()
		t, ok := s.m[rev]
		ch := s.ch
		s.mu.Unlock()
		if ok {
			return t, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("no timestamp for revision %d: %w", rev, ctx.Err())
		}
	}
}

// path is one way a new token reaches the N connections.
type path struct {
	name string
	lane *lane
	// write makes one write to key and returns its sequence (a revision
	// for a KV write) and, if the clock starts at the write, its time.
	write func(key int) (seq uint64, t0 time.Time, err error)
	// start is when the clock of write seq started.
	start func(ctx context.Context, seq uint64, t0 time.Time) (time.Time, error)
}

// lane records one path's arrivals: per connection and key, when the last
// one came and its sequence.
type lane struct {
	n, k    int
	at      []atomic.Int64  // unix nanos of the last arrival, per connection × key
	seq     []atomic.Uint64 // its sequence
	key     atomic.Int64    // the key armed for, -1 for none
	expect  atomic.Uint64   // arrivals of sequences >= expect count
	arrived atomic.Int64
	done    atomic.Pointer[chan struct{}]
	written uint64 // the highest sequence written so far
}

func newLane(n, k int) *lane {
	l := &lane{n: n, k: k, at: make([]atomic.Int64, n*k), seq: make([]atomic.Uint64, n*k)}
	l.key.Store(-1)
	l.expect.Store(^uint64(0))
	ch := make(chan struct{})
	l.done.Store(&ch)
	return l
}

// arrive records that connection conn received seq of key.
func (l *lane) arrive(conn, key int, seq uint64) {
	now := time.Now().UnixNano()
	i := conn*l.k + key
	l.at[i].Store(now)
	l.seq[i].Store(seq)
	if l.key.Load() == int64(key) && seq >= l.expect.Load() {
		if l.arrived.Add(1) == int64(l.n) {
			close(*l.done.Load())
		}
	}
}

// arm makes the lane wait for the next write to key and returns the
// channel closed when all N connections hold it.
func (l *lane) arm(key int) chan struct{} {
	cur := l.written
	for i := range l.seq {
		cur = max(cur, l.seq[i].Load())
	}
	ch := make(chan struct{})
	l.done.Store(&ch)
	l.arrived.Store(0)
	l.key.Store(int64(key))
	l.expect.Store(cur + 1)
	return ch
}

func (l *lane) disarm() {
	l.key.Store(-1)
	l.expect.Store(^uint64(0))
}

// fleet is N connections, each following the same K keys with one Client
// (one watch, one consumer) and a Source of it per key, and one core
// subscription per key, recording when each received which
// revision (src) or core sequence (core).
type fleet struct {
	n, k      int
	conns     []*nats.Conn
	clients   []*subscriber.Client // per connection: one watch for its K keys
	srcs      []*subscriber.Source // per connection × key
	subs      []*nats.Subscription // per connection × key
	src, core *lane
}

func newFleet(ctx context.Context, w *world, apps []string, n int) (*fleet, error) {
	k := len(apps)
	f := &fleet{n: n, k: k, conns: make([]*nats.Conn, n), clients: make([]*subscriber.Client, n), srcs: make([]*subscriber.Source, n*k),
		subs: make([]*nats.Subscription, n*k), src: newLane(n, k), core: newLane(n, k)}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f.open(ctx, w, apps, i); err != nil {
				mu.Lock()
				firstErr = errors.Join(firstErr, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		f.close()
		return nil, firstErr
	}
	// OnUpdate runs on the Source's own goroutine: wait until every
	// callback of the first token has run, so that none counts later.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for i := range f.srcs {
		for f.src.seq[i].Load() == 0 {
			if err := sleepCtx(wctx, time.Millisecond); err != nil {
				f.close()
				return nil, fmt.Errorf("source %d: the first token's callback did not run: %w", i, err)
			}
		}
	}
	return f, nil
}

// open connects connection i and starts its Sources and subscriptions.
func (f *fleet) open(ctx context.Context, w *world, apps []string, i int) error {
	nc, err := w.connect(fmt.Sprintf("tokenbench-source-%d", i))
	if err != nil {
		return err
	}
	f.conns[i] = nc
	// One Client per connection (a process): one consumer for its K keys.
	if f.clients[i], err = subscriber.NewClient(nc); err != nil {
		return err
	}
	for j, app := range apps {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		f.srcs[i*f.k+j], err = f.clients[i].Source(sctx, app, subscriber.WithOnUpdate(func(t *subscriber.Token) { f.src.arrive(i, j, t.Revision) }))
		cancel()
		if err != nil {
			return err
		}
		f.subs[i*f.k+j], err = nc.Subscribe(fanoutSubject(app), func(m *nats.Msg) {
			if len(m.Data) >= 20 {
				if seq, err := strconv.ParseUint(string(m.Data[:20]), 10, 64); err == nil {
					f.core.arrive(i, j, seq)
				}
			}
		})
		if err != nil {
			return err
		}
	}
	return nc.Flush() // the subscriptions are registered
}

// measure makes one write of p to key and adds, to r, the time until all
// N connections held it and every single delivery's latency; then it
// pauses gap.
func (f *fleet) measure(ctx context.Context, p *path, key int, gap, timeout time.Duration, r *runResult) error {
	l := p.lane
	cpu0 := cpuTime()
	ch := l.arm(key)
	seq, t0, err := p.write(key)
	if err != nil {
		return err
	}
	l.written = max(l.written, seq)
	wctx, cancel := context.WithTimeout(ctx, timeout)
	select {
	case <-ch:
	case <-wctx.Done():
	}
	start, serr := p.start(wctx, seq, t0)
	cancel()
	r.cpu += cpuTime() - cpu0
	r.count++
	if serr != nil {
		return serr
	}
	var last time.Duration
	got := 0
	for c := range f.n {
		i := c*f.k + key
		if l.seq[i].Load() < seq {
			r.lost++
			continue
		}
		d := time.Unix(0, l.at[i].Load()).Sub(start)
		r.one = append(r.one, d)
		if d > time.Second {
			r.slow++
		}
		last = max(last, d)
		got++
	}
	if got == f.n {
		r.all = append(r.all, last)
	}
	l.disarm()
	return sleepCtx(ctx, gap)
}

// runResult is what fleet.measure measured over several writes.
type runResult struct {
	all, one   []time.Duration // per write: until all N held it; per delivery
	lost, slow int             // deliveries missing after the timeout; over 1 s (the poll, not the watch)
	cpu        time.Duration   // CPU time of this process (server and all clients), summed
	count      int             // writes
}

// cpuPerWrite is the CPU time per write.
func (r runResult) cpuPerWrite() time.Duration {
	if r.count == 0 {
		return 0
	}
	return r.cpu / time.Duration(r.count)
}

// addRun adds a row for r and returns the summary of its writes (until
// all N held each).
func (t *table) addRun(n, k int, name string, r runResult) dist {
	all, one := summarize(r.all), summarize(r.one)
	t.add(n, k, name, len(r.all), all.p50, all.p99, all.max, one.p50, one.p99, one.max, r.slow, r.lost, r.cpuPerWrite())
	return all
}

// cpuTime is this process's user + system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (f *fleet) close() {
	var wg sync.WaitGroup
	for i := range f.n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range f.k {
				if s := f.srcs[i*f.k+j]; s != nil {
					_ = s.Close()
				}
				if s := f.subs[i*f.k+j]; s != nil {
					_ = s.Unsubscribe()
				}
			}
			if f.clients[i] != nil {
				_ = f.clients[i].Close()
			}
			if f.conns[i] != nil {
				f.conns[i].Close()
			}
		}()
	}
	wg.Wait()
}
