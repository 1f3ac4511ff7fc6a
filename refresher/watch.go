package refresher

import (
	"context"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/backoff"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// followKV calls handle with every entry of key in kv (all keys when key
// is ""), in order, until ctx ends. A KV watcher rides on an ordered
// consumer that can go silent for ~20 s after a server restart or the
// loss of the cluster node holding it (nats.go#1094, #1729), so the watch
// is rebuilt at once when nc reconnects, and with backoff when it ends;
// each rebuild resumes after the last revision seen. The nil marker after
// the initial values is not passed on.
func followKV(ctx context.Context, nc *nats.Conn, kv jetstream.KeyValue, key string, handle func(jetstream.KeyValueEntry)) {
	reconnects := nc.StatusChanged(nats.CONNECTED)
	defer nc.RemoveStatusListener(reconnects)
	bo := backoff.New(100*time.Millisecond, 5*time.Second)
	var last uint64
	for ctx.Err() == nil {
		var opts []jetstream.WatchOpt
		if last > 0 {
			opts = append(opts, jetstream.ResumeFromRevision(last+1))
		}
		// The watch gets its own ctx: cancelling it stops the watcher
		// without waiting on a server that may be gone.
		wctx, stop := context.WithCancel(ctx)
		var w jetstream.KeyWatcher
		var err error
		if key == "" {
			w, err = kv.WatchAll(wctx, opts...)
		} else {
			w, err = kv.Watch(wctx, key, opts...)
		}
		if err != nil {
			stop()
			if !backoff.Sleep(ctx, bo.Next()) {
				return
			}
			continue
		}
		rebuild := false
		for !rebuild {
			select {
			case <-ctx.Done():
				stop()
				return
			case <-reconnects:
				rebuild = true
			case e, ok := <-w.Updates():
				if !ok {
					rebuild = true
					break
				}
				if e == nil {
					continue
				}
				bo.Reset()
				last = e.Revision()
				handle(e)
			}
		}
		stop()
		if !backoff.Sleep(ctx, bo.Next()) {
			return
		}
	}
}
