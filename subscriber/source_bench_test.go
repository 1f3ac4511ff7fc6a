package subscriber_test

// The read path, side by side: Source.Token() against a mutex-guarded
// cache (the usual hand-written token cache, written here as the
// baseline) and a KV Get per call (a naive service that reads the bucket
// on every business call). Each serial and under RunParallel.
//
//	go test ./subscriber -run '^$' -bench . -benchmem
//
// tokenbench read runs the same three in one process and prints the
// ratios; docs/benchmarks.md has the results.

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

const benchReadApp = "bench-read"

// benchReadFixture is an embedded server (reached over TCP loopback) with
// one valid record, a Source following it, and the bucket for direct Gets.
func benchReadFixture(b *testing.B) (*subscriber.Source, jetstream.KeyValue) {
	b.Helper()
	s := testutil.RunServer(b)
	nc, js := testutil.Connect(b, s.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := natsconf.EnsureBucket(ctx, js, natsconf.BucketConfig{Name: contract.DefaultBucket, History: 1})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now().UTC()
	val, _ := json.Marshal(contract.Record{App: benchReadApp, AppID: "wxbench", AccessToken: benchTokenValue,
		FetchedAt: now, ExpiresAt: now.Add(2 * time.Hour), Source: contract.SourceScheduled})
	if _, err := kv.Put(ctx, benchReadApp, val); err != nil {
		b.Fatal(err)
	}
	src, err := subscriber.NewSource(ctx, nc, benchReadApp)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = src.Close() })
	return src, kv
}

// A WeChat-sized token (136 characters).
const benchTokenValue = "TOKEN-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-01234"

var benchSinkTok atomic.Pointer[subscriber.Token]

// benchMutexCache is the baseline: the token cache a service writes by
// hand, a mutex around the token and its expiry, checked against the
// clock on every read.
type benchMutexCache struct {
	mu  sync.Mutex
	tok *subscriber.Token
	exp time.Time
}

func (c *benchMutexCache) Token() (*subscriber.Token, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !time.Now().Before(c.exp) {
		return c.tok, subscriber.ErrExpired
	}
	return c.tok, nil
}

// benchKVGet is the naive service: read the bucket on every call, decode
// the record, check its expiry.
func benchKVGet(ctx context.Context, kv jetstream.KeyValue) (string, error) {
	e, err := kv.Get(ctx, benchReadApp)
	if err != nil {
		return "", err
	}
	var rec contract.Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return "", err
	}
	if !time.Now().Before(rec.ExpiresAt) {
		return "", subscriber.ErrExpired
	}
	return rec.AccessToken, nil
}

// BenchmarkReadPath: Source.Token (its error is the expiry check: a timer
// flips it at ExpiresAt, so the read does not touch the clock), the same
// with an explicit clock check, the mutex cache, and a KV Get per call.
func BenchmarkReadPath(b *testing.B) {
	src, kv := benchReadFixture(b)
	tok, _ := src.Token()
	cache := &benchMutexCache{tok: tok, exp: tok.ExpiresAt}
	ctx := context.Background()

	b.Run("Source.Token", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			t, err := src.Token()
			if err != nil {
				b.Fatal(err)
			}
			_ = t
		}
	})
	b.Run("Source.Token+ValidAt(time.Now)", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			t, err := src.Token()
			if err != nil || !t.ValidAt(time.Now()) {
				b.Fatal("expired")
			}
		}
	})
	b.Run("MutexCache", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := cache.Token(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("KVGetPerCall", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := benchKVGet(ctx, kv); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("Source.Token/parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var t *subscriber.Token
			for pb.Next() {
				var err error
				if t, err = src.Token(); err != nil {
					b.Error(err)
					return
				}
			}
			benchSinkTok.Store(t)
		})
	})
	b.Run("MutexCache/parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := cache.Token(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("KVGetPerCall/parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := benchKVGet(ctx, kv); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
