package refresher

import (
	"context"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/internal/follow"
)

// followKV calls handle with every entry of key in kv (all keys when key
// is ""), deletes and purges included, in order, until ctx ends or nc is
// closed. It runs internal/follow, which rebuilds the watch (resuming
// after the last revision seen) at once when nc reconnects and with
// backoff when it ends: a KV watcher can go silent for ~20 s after a
// server restart or the loss of the cluster node holding it. When kv is a
// bucketKV whose bucket was lost and re-provisioned (or created anew),
// the watch is rebuilt at once and from the new bucket's start. No poll:
// the lease loop reads the lease key itself, and a new leader re-reads
// every token (loadAll).
func followKV(ctx context.Context, nc *nats.Conn, kv jetstream.KeyValue, key string, handle func(jetstream.KeyValueEntry)) {
	cfg := follow.Config{Open: func(context.Context) (jetstream.KeyValue, error) { return kv, nil }}
	if key != "" {
		cfg.Keys = []string{key}
	}
	if gk, ok := kv.(interface {
		generation() (uint64, <-chan struct{})
	}); ok {
		cfg.Replaced = gk.generation
	}
	f, err := follow.Start(nc, cfg)
	if err != nil {
		return // only for a config it cannot use: not this one
	}
	defer f.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-f.Events():
			if !ok {
				return
			}
			if ev.Kind == follow.Entry {
				handle(ev.Entry)
			}
		}
	}
}
