package follow

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/internal/backoff"
)

// watchLoop opens the bucket, watches the keys and rebuilds the watch
// until Stop, or until the connection is closed.
func (f *Follower) watchLoop() {
	defer f.wg.Done()
	status := f.nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	defer f.nc.RemoveStatusListener(status)
	bo := backoff.New(f.cfg.BackoffMin, f.cfg.BackoffMax)
	for first := true; f.ctx.Err() == nil; first = false {
		if f.nc.IsClosed() {
			f.fail(nats.ErrConnectionClosed)
			return
		}
		if !first {
			// A direct read while the watch is rebuilt: it catches up
			// even while a cluster fails over and no watch can be built.
			f.signal(f.kick)
		}
		err := f.watch(status, bo)
		if f.ctx.Err() != nil {
			return
		}
		if errors.Is(err, nats.ErrConnectionClosed) && f.nc.IsClosed() {
			continue // the loop head ends it
		}
		f.send(Event{Kind: Problem, Err: err})
		switch {
		case errors.Is(err, ErrReconnected), errors.Is(err, ErrStalled), errors.Is(err, ErrReplaced):
			continue // at once, resuming after the last revision
		case isGone(err):
			f.mu.Lock()
			f.kv = nil // open it again
			f.mu.Unlock()
		}
		if !f.pause(bo.Next(), status) {
			return
		}
	}
}

// pause waits d, less if the connection reconnects or closes; it reports
// false if the Follower stopped.
func (f *Follower) pause(d time.Duration, status <-chan nats.Status) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-f.ctx.Done():
		return false
	case <-t.C:
	case <-status:
	}
	return true
}

// bucket returns the bucket handle, opening the bucket if there is none.
func (f *Follower) bucket() (jetstream.KeyValue, error) {
	if kv, _, _ := f.snapshot(); kv != nil {
		return kv, nil
	}
	ctx, cancel := context.WithTimeout(f.ctx, f.cfg.Timeout)
	defer cancel()
	kv, err := f.cfg.Open(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOpen, err)
	}
	if kv == nil {
		return nil, fmt.Errorf("%w: Open returned no bucket", ErrOpen)
	}
	if f.cfg.Replaced == nil {
		// Which bucket this is: one created anew starts its revisions over.
		f.adopt(f.identify(ctx, kv))
	}
	f.mu.Lock()
	f.kv = kv
	f.mu.Unlock()
	return kv, nil
}

// watch builds one watch and hands its entries over until it must be
// rebuilt; it returns why.
func (f *Follower) watch(status <-chan nats.Status, bo *backoff.Backoff) error {
	kv, err := f.bucket()
	if err != nil {
		return err
	}
	var gen uint64
	var replaced <-chan struct{} // nil: never
	if f.cfg.Replaced != nil {
		gen, replaced = f.cfg.Replaced()
		f.adopt(identity{gen: gen})
	}
	// A rebuild asked for before this watch concerned an older one.
	select {
	case <-f.stall:
	default:
	}
	_, epoch, pos := f.snapshot()
	var opts []jetstream.WatchOpt
	if pos > 0 {
		opts = append(opts, jetstream.ResumeFromRevision(pos+1))
	}

	// ctx owns the watch, so it cannot carry a deadline: cancel it if
	// building takes too long (a lost server, a failover, a partition).
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	timer := time.AfterFunc(f.cfg.Timeout, cancel)
	// WatchFiltered rewrites the slice it is given.
	w, err := kv.WatchFiltered(ctx, append([]string(nil), f.cfg.Keys...), opts...)
	if !timer.Stop() {
		if err == nil {
			discard(w)
		}
		return fmt.Errorf("%w (%s)", ErrBuildTimeout, f.cfg.Timeout)
	}
	if err != nil {
		return err
	}
	// No w.Stop(): it waits for the server to delete the consumer, up to
	// the JetStream timeout when the server is gone, which is exactly
	// when the watch must be rebuilt at once. Cancelling ctx stops it.
	defer discard(w)
	if replaced != nil {
		if now, _ := f.cfg.Replaced(); now != gen {
			return ErrReplaced // it may resume at an old revision
		}
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return ErrWatchEnded
			}
			bo.Reset()
			if e == nil {
				f.current(epoch)
				continue
			}
			f.emit(epoch, e, true)
		case st := <-status:
			if st == nats.CLOSED {
				return nats.ErrConnectionClosed
			}
			return ErrReconnected
		case <-f.stall:
			return ErrStalled
		case <-replaced:
			return ErrReplaced
		}
	}
}

// discard lets a watch whose ctx is (being) cancelled wind down: nats.go
// blocks its delivery on a full updates channel, so read it to its end.
func discard(w jetstream.KeyWatcher) {
	go func() {
		for range w.Updates() {
		}
	}()
}
