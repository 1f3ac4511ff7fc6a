package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
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
func runPropagation(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("propagation", flag.ContinueOnError)
	fs.SetOutput(out)
	ns := fs.String("n", "1,100,1000", "comma-separated numbers of Sources (one connection each)")
	writes := fs.Int("writes", 50, "direct kv.Update writes per N")
	refreshes := fs.Int("refreshes", 5, "refreshes through the refresher per N (token.refresh with the current revision)")
	gap := fs.Duration("gap", 20*time.Millisecond, "pause between writes")
	perWrite := fs.Duration("write-timeout", 10*time.Second, "how long to wait for every Source to hold one write")
	target := fs.Duration("target", 20*time.Millisecond, "p99 target for N = the largest N")
	maxConsumers := fs.Int("max-consumers", 0, "if > 0, override the tokens stream's max_consumers after the refresher has set it (the refresher sets 1000000; 1000 reproduces nats-server 2.12+'s default per stream, which applied before the refresher set a limit: every Source's watch is one consumer)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sizes, err := positiveInts("-n", *ns)
	if err != nil {
		return err
	}
	limit := raiseNoFile()
	if need := uint64(2*sizes[len(sizes)-1] + 200); limit < need {
		return fmt.Errorf("open-file limit %d is below the %d this run needs (client and server ends of each connection); raise ulimit -n", limit, need)
	}

	const app = "prop"
	one, err := startOneApp(ctx, app, "tokenbench-writer", *maxConsumers)
	if err != nil {
		return err
	}
	w := one.w
	defer w.close()
	nc, kv, mc := one.nc, one.kv, one.maxConsumers
	// A separate watcher learns the server's timestamp of every write.
	stamps := newStamps()
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watcher, err := kv.Watch(wctx, app, jetstream.UpdatesOnly())
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

	header(out, "Propagation: KV write → every one of N Sources",
		fmt.Sprintf("embedded nats-server on 127.0.0.1 (TCP), one connection per Source, default Source options; tokens stream max_consumers %s; %d direct kv.Update writes and %d refreshes through the refresher per N, %s apart; latency from the server's timestamp of the stored message to the OnUpdate callback", mc, *writes, *refreshes, *gap))
	t := newTable("N Sources", "writer", "writes", "all N hold it: p50", "p99", "max", "one Source: p50", "p99", "max", "deliveries > 1 s", "lost", "CPU per write")
	var lastP99 time.Duration
	for _, n := range sizes {
		fl, err := newFleet(ctx, w, app, n)
		if err != nil {
			return fmt.Errorf("N=%d: %w", n, err)
		}
		// Direct writes.
		res, err := fl.run(ctx, *writes, *gap, *perWrite, stamps, func() (uint64, error) { return directWrite(ctx, kv, app) })
		if err != nil {
			fl.close()
			return fmt.Errorf("N=%d direct: %w", n, err)
		}
		da, do := summarize(res.all), summarize(res.one)
		t.add(n, "kv.Update", len(res.all), da.p50, da.p99, da.max, do.p50, do.p99, do.max, res.slow, res.lost, res.cpu)
		lastP99 = da.p99
		if len(res.all) < *writes {
			lastP99 = *perWrite // some write never reached every Source
		}
		if *refreshes > 0 {
			// Through the refresher: a passive refresh of the current revision.
			res, err = fl.run(ctx, *refreshes, *gap, *perWrite, stamps, func() (uint64, error) { return refreshVia(ctx, nc, kv, app) })
			if err != nil {
				fl.close()
				return fmt.Errorf("N=%d refresher: %w", n, err)
			}
			ra, ro := summarize(res.all), summarize(res.one)
			t.add(n, "refresher", len(res.all), ra.p50, ra.p99, ra.max, ro.p50, ro.p99, ro.max, res.slow, res.lost, res.cpu)
		}
		fl.close()
	}
	t.print(out)
	fmt.Fprintf(out, "\ntarget p99 (all N hold the new token) ≤ %s at N = %d: %s (%s)\n", ms(*target), sizes[len(sizes)-1], verdict(lastP99 <= *target), ms(lastP99))
	return nil
}

// directWrite replaces app's token with a new one by kv.Update over the
// current revision (what the refresher's write does, without the fetch).
func directWrite(ctx context.Context, kv jetstream.KeyValue, app string) (uint64, error) {
	e, err := kv.Get(ctx, app)
	if err != nil {
		return 0, err
	}
	var rec contract.Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return 0, err
	}
	now := time.Now().UTC()
	rec.AccessToken = fmt.Sprintf("direct-%d-%0120d", e.Revision()+1, now.UnixNano())
	rec.FetchedAt, rec.ExpiresAt, rec.Source = now, now.Add(2*time.Hour), contract.SourceScheduled
	val, _ := json.Marshal(rec)
	return kv.Update(ctx, app, val, e.Revision())
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

// fleet is N Sources of one app, each on its own connection, recording
// when each received which revision.
type fleet struct {
	n       int
	conns   []*nats.Conn
	srcs    []*subscriber.Source
	at      []atomic.Int64  // unix nanos of the last arrival, per Source
	rev     []atomic.Uint64 // its revision
	expect  atomic.Uint64   // arrivals of revisions >= expect count
	arrived atomic.Int64
	done    atomic.Pointer[chan struct{}]
}

func newFleet(ctx context.Context, w *world, app string, n int) (*fleet, error) {
	f := &fleet{n: n, conns: make([]*nats.Conn, n), srcs: make([]*subscriber.Source, n), at: make([]atomic.Int64, n), rev: make([]atomic.Uint64, n)}
	f.expect.Store(^uint64(0))
	ch := make(chan struct{})
	f.done.Store(&ch)
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
			nc, err := w.connect(fmt.Sprintf("tokenbench-source-%d", i))
			if err == nil {
				f.conns[i] = nc
				sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				f.srcs[i], err = subscriber.NewSource(sctx, nc, app, subscriber.WithOnUpdate(func(t *subscriber.Token) { f.arrive(i, t) }))
				cancel()
			}
			if err != nil {
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
	for i := range n {
		for f.rev[i].Load() == 0 {
			if err := sleepCtx(wctx, time.Millisecond); err != nil {
				f.close()
				return nil, fmt.Errorf("source %d: the first token's callback did not run: %w", i, err)
			}
		}
	}
	return f, nil
}

func (f *fleet) arrive(i int, t *subscriber.Token) {
	now := time.Now().UnixNano()
	f.at[i].Store(now)
	f.rev[i].Store(t.Revision)
	if t.Revision >= f.expect.Load() {
		if f.arrived.Add(1) == int64(f.n) {
			close(*f.done.Load())
		}
	}
}

// run makes count writes with write and returns, per write, the time until
// all N Sources held it, and every single Source's latency.
func (f *fleet) run(ctx context.Context, count int, gap, timeout time.Duration, st *stamps, write func() (uint64, error)) (r runResult, err error) {
	for range count {
		cpu0 := cpuTime()
		// Arm for the next revision: any revision above the current one.
		var cur uint64
		for i := range f.n {
			cur = max(cur, f.rev[i].Load())
		}
		ch := make(chan struct{})
		f.done.Store(&ch)
		f.arrived.Store(0)
		f.expect.Store(cur + 1)
		rev, err := write()
		if err != nil {
			return r, err
		}
		wctx, cancel := context.WithTimeout(ctx, timeout)
		select {
		case <-ch:
		case <-wctx.Done():
		}
		stamp, serr := st.wait(wctx, rev)
		cancel()
		r.cpu += cpuTime() - cpu0
		if serr != nil {
			return r, serr
		}
		var last time.Duration
		got := 0
		for i := range f.n {
			if f.rev[i].Load() < rev {
				r.lost++
				continue
			}
			d := time.Unix(0, f.at[i].Load()).Sub(stamp)
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
		f.expect.Store(^uint64(0))
		if err := sleepCtx(ctx, gap); err != nil {
			return r, err
		}
	}
	if count > 0 {
		r.cpu /= time.Duration(count)
	}
	return r, nil
}

// runResult is what fleet.run measured.
type runResult struct {
	all, one   []time.Duration // per write: until all N held it; per delivery
	lost, slow int             // deliveries missing after the timeout; over 1 s (the poll, not the watch)
	cpu        time.Duration   // CPU time of this process per write (server and all clients)
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
			if f.srcs[i] != nil {
				_ = f.srcs[i].Close()
			}
			if f.conns[i] != nil {
				f.conns[i].Close()
			}
		}()
	}
	wg.Wait()
}
