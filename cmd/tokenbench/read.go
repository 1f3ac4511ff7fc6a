package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// runRead measures the read path in one process and one run, so that the
// ratios compare like with like: Source.Token(), a mutex-guarded cache
// with a clock check (the hand-written baseline), and a KV Get per call
// over TCP loopback (a naive service). subscriber/source_bench_test.go
// has the same as go test benchmarks.
func runRead(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("read", flag.ContinueOnError)
	fs.SetOutput(out)
	benchtime := fs.Duration("benchtime", time.Second, "minimum time per benchmark (testing.Benchmark's default is 1s)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	testing.Init()
	if err := flag.Set("test.benchtime", benchtime.String()); err != nil {
		return err
	}
	w, err := newWorld(wechatsim.Options{})
	if err != nil {
		return err
	}
	defer w.close()
	nc, err := w.connect("tokenbench-read")
	if err != nil {
		return err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	kv, err := natsconf.EnsureBucket(ctx, js, natsconf.BucketConfig{Name: contract.DefaultBucket, History: 1})
	if err != nil {
		return err
	}
	const app = "bench-read"
	now := time.Now().UTC()
	val, _ := json.Marshal(contract.Record{App: app, AppID: "wxbench", AccessToken: fmt.Sprintf("%0136d", 7),
		FetchedAt: now, ExpiresAt: now.Add(2 * time.Hour), Source: contract.SourceScheduled})
	if _, err := kv.Put(ctx, app, val); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	src, err := subscriber.NewSource(sctx, nc, app)
	cancel()
	if err != nil {
		return err
	}
	defer src.Close()
	tok, _ := src.Token()
	cache := &mutexCache{tok: tok, exp: tok.ExpiresAt}

	kvGet := func() error {
		e, err := kv.Get(ctx, app)
		if err != nil {
			return err
		}
		var rec contract.Record
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			return err
		}
		if !time.Now().Before(rec.ExpiresAt) {
			return subscriber.ErrExpired
		}
		return nil
	}
	type bench struct {
		name string
		f    func() error
	}
	benches := []bench{
		{"Source.Token()", func() error { _, err := src.Token(); return err }},
		{"mutex cache (lock + time.Now check)", func() error { _, err := cache.Token(); return err }},
		{"KV Get per call (+ decode + check)", kvGet},
		{"time.Now() alone (reference)", func() error { _ = time.Now(); return nil }},
	}
	header(out, "Read path", fmt.Sprintf("testing.Benchmark, benchtime %s, KV over TCP loopback, 136-character token", *benchtime))
	t := newTable("read", "serial ns/op", "parallel ns/op (RunParallel, 2 Ps)", "allocs/op", "serial ÷ Source.Token", "parallel ÷ Source.Token")
	var base, baseP float64
	var notes []string
	for i, b := range benches {
		var ferr error
		var once sync.Once
		serial := testing.Benchmark(func(tb *testing.B) {
			tb.ReportAllocs()
			for tb.Loop() {
				if err := b.f(); err != nil {
					once.Do(func() { ferr = err })
				}
			}
		})
		par := testing.Benchmark(func(tb *testing.B) {
			tb.ReportAllocs()
			tb.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := b.f(); err != nil {
						once.Do(func() { ferr = err })
					}
				}
			})
		})
		if ferr != nil {
			return fmt.Errorf("%s: %w", b.name, ferr)
		}
		s, p := nsPerOp(serial), nsPerOp(par)
		if i == 0 {
			base, baseP = s, p
		}
		t.add(b.name, fmt.Sprintf("%.2f", s), fmt.Sprintf("%.2f", p), serial.AllocsPerOp(),
			fmt.Sprintf("%.0f×", s/base), fmt.Sprintf("%.0f×", p/baseP))
		switch i {
		case 0:
			notes = append(notes, fmt.Sprintf("target Source.Token ≤ 10 ns/op, 0 allocs/op, flat under RunParallel: %s (serial %.2f ns, parallel %.2f ns, %d allocs)",
				verdict(s <= 10 && p <= 10 && serial.AllocsPerOp() == 0), s, p, serial.AllocsPerOp()))
		case 2:
			notes = append(notes, fmt.Sprintf("target KV Get per call ≥ 1000× slower than Source.Token: %s (%.0f× serial, %.0f× parallel)",
				verdict(s/base >= 1000 && p/baseP >= 1000), s/base, p/baseP))
		}
	}
	t.print(out)
	fmt.Fprintln(out)
	for _, n := range notes {
		fmt.Fprintln(out, n)
	}
	return nil
}

func nsPerOp(r testing.BenchmarkResult) float64 {
	if r.N == 0 {
		return 0
	}
	return float64(r.T.Nanoseconds()) / float64(r.N)
}

// mutexCache is the baseline token cache: a mutex around the token and
// its expiry, checked against the clock on every read.
type mutexCache struct {
	mu  sync.Mutex
	tok *subscriber.Token
	exp time.Time
}

func (c *mutexCache) Token() (*subscriber.Token, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !time.Now().Before(c.exp) {
		return c.tok, subscriber.ErrExpired
	}
	return c.tok, nil
}
