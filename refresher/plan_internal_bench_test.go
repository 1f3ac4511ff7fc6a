package refresher

// Benchmarks of the planner at scale: what one tick (or one wake-up of the
// loop after a refresh finished) costs with N apps loaded. They call the
// unexported plan() on a Refresher whose apps hold stored records and
// whose lease is held, with no I/O: no app is due, so plan only scans.
//
//	go test ./refresher -run '^$' -bench 'Plan|Statuses' -benchmem
//
// docs/benchmarks.md has the results and what they mean.

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

// benchPlanSizes are the app counts of the planner benchmarks.
var benchPlanSizes = []int{1_000, 10_000, 100_000}

// benchRefresher returns a leading Refresher with n apps, each holding a
// token fetched within the last 70 minutes of a 2-hour lifetime, so that
// none is due (its refresh moment is 80 ± 6 minutes after the fetch).
func benchRefresher(b *testing.B, n int) *Refresher {
	b.Helper()
	s := testutil.RunServer(b)
	nc, _ := testutil.Connect(b, s.ClientURL())
	cfg := &Config{Apps: make([]AppConfig, n)}
	for i := range cfg.Apps {
		cfg.Apps[i] = AppConfig{
			Name: fmt.Sprintf("app-%06d", i), Kind: wechat.KindClassic,
			AppID: fmt.Sprintf("wx%016d", i), APIBase: "http://127.0.0.1:1",
		}.WithSecret("bench-secret")
	}
	cfg.SetDefaults()
	r, err := New(cfg, nc, WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, a := range r.apps {
		fetched := now.Add(-time.Duration(rng.Int64N(int64(70 * time.Minute)))).UTC()
		rec := &contract.Record{App: a.name, AppID: a.cfg.AppID, AccessToken: "tok-" + a.name,
			FetchedAt: fetched, ExpiresAt: fetched.Add(2 * time.Hour), Source: contract.SourceScheduled}
		a.adopt(rec, uint64(rng.Int64N(1<<40))+1)
	}
	// A held lease, trusted for the whole benchmark (no renewals: plan
	// only reads Held).
	r.lease = &lease{id: r.id, ttl: 24 * time.Hour, held: true, renewed: time.Now(), now: time.Now,
		wakeReport: make(chan struct{}, 1), log: r.log}
	if due := r.plan(); due.IsZero() || !due.After(now) {
		b.Fatalf("benchmark setup: next refresh %v is not in the future", due)
	}
	return r
}

// BenchmarkPlan is one planning pass over every app: what each cron tick,
// each timer expiry and each wake-up after a finished refresh costs.
func BenchmarkPlan(b *testing.B) {
	for _, n := range benchPlanSizes {
		b.Run(fmt.Sprintf("apps=%d", n), func(b *testing.B) {
			r := benchRefresher(b, n)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if r.plan().IsZero() {
					b.Fatal("nothing planned")
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/app")
		})
	}
}

// BenchmarkStatuses is one /status (or /readyz) snapshot of every app.
func BenchmarkStatuses(b *testing.B) {
	for _, n := range benchPlanSizes {
		b.Run(fmt.Sprintf("apps=%d", n), func(b *testing.B) {
			r := benchRefresher(b, n)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if len(r.Statuses()) != n {
					b.Fatal("short status")
				}
			}
		})
	}
}
