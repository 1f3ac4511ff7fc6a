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
// each rebuild resumes after the last revision seen. When kv is a
// bucketKV whose bucket was lost and re-provisioned (or created anew),
// the watch is rebuilt at once and from the new bucket's start. The nil
// marker after the initial values is not passed on.
func followKV(ctx context.Context, nc *nats.Conn, kv jetstream.KeyValue, key string, handle func(jetstream.KeyValueEntry)) {
	reconnects := nc.StatusChanged(nats.CONNECTED)
	defer nc.RemoveStatusListener(reconnects)
	bo := backoff.New(100*time.Millisecond, 5*time.Second)
	gk, _ := kv.(interface {
		generation() (uint64, <-chan struct{})
	})
	var last, lastGen uint64
	for ctx.Err() == nil {
		var gone <-chan struct{} // nil: never
		if gk != nil {
			var gen uint64
			gen, gone = gk.generation()
			if gen != lastGen {
				// Another bucket: its revisions start over.
				last, lastGen = 0, gen
			}
		}
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
			if !sleepOr(ctx, bo.Next(), gone) {
				return
			}
			continue
		}
		if gk != nil {
			if gen, _ := gk.generation(); gen != lastGen {
				// Replaced while the watch was made (it may resume
				// at an old revision): start over on the new one.
				stop()
				continue
			}
		}
		rebuild := false
		for !rebuild {
			select {
			case <-ctx.Done():
				stop()
				return
			case <-reconnects:
				rebuild = true
			case <-gone:
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
		if !sleepOr(ctx, bo.Next(), gone) {
			return
		}
	}
}

// sleepOr waits d, or less if wake is closed; it returns false if ctx
// ended first.
func sleepOr(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-wake:
		return true
	case <-t.C:
		return true
	}
}
