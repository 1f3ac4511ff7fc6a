package follow

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// pollLoop is the safety net under the watch: every poll interval, and
// when the watch loop kicks it, it reads the followed keys directly. It
// runs apart from the watch loop, so that its bound holds whatever state
// the watch is in (a creation that hangs included).
func (f *Follower) pollLoop() {
	defer f.wg.Done()
	t := time.NewTicker(f.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-t.C:
		case <-f.kick:
		}
		f.poll()
	}
}

// poll reads every followed key once (the stream's state when following
// all keys).
func (f *Follower) poll() {
	kv, _, _ := f.snapshot()
	if kv == nil {
		return // the watch loop is still opening the bucket
	}
	if f.cfg.Replaced == nil && !f.identified() {
		f.adopt(f.identify(f.ctx, kv))
	}
	_, epoch, _ := f.snapshot()
	if len(f.cfg.Keys) == 0 {
		f.pollStream(kv)
		return
	}
	all := true
	for _, key := range f.cfg.Keys {
		all = f.pollKey(kv, key) && all
	}
	if all {
		f.current(epoch)
	}
}

// pollKey reads key and hands over a revision newer than the one held;
// it reports whether the read told where the key stands.
func (f *Follower) pollKey(kv jetstream.KeyValue, key string) bool {
	_, epoch, _ := f.snapshot()
	held := f.held(key)
	ctx, cancel := context.WithTimeout(f.ctx, f.cfg.Timeout)
	defer cancel()
	e, err := kv.Get(ctx, key)
	switch {
	case err == nil && e.Revision() > held.rev:
		if f.emit(epoch, e, false) {
			f.signal(f.stall)
		}
	case err == nil && e.Revision() < held.rev:
		// A replica answering a little behind, or a bucket created
		// anew, whose revisions started over.
		if f.adopt(f.identify(ctx, kv)) {
			_, epoch, _ = f.snapshot()
			f.emit(epoch, e, false)
		}
	case err == nil:
	case errors.Is(err, jetstream.ErrKeyNotFound):
		if held.rev == 0 || held.op != jetstream.KeyValuePut {
			return true
		}
		// A value is held but none is stored: a delete the watch
		// missed, or a bucket created anew.
		if !f.adopt(f.identify(ctx, kv)) && f.flag(key, held.rev) {
			f.signal(f.stall)
		}
	case mayBeGone(err):
		// The rebuild finds out whether the bucket is gone (a direct get
		// of a deleted stream has no responders; neither has one while a
		// cluster elects the stream's leader).
		f.signal(f.stall)
		return false
	default:
		return false // a timeout, no responders: the next poll
	}
	return true
}

// pollStream compares the stream's last sequence with the last revision
// the watches delivered, and has the watch rebuilt if it is behind: the
// rebuilt watch resumes after that revision and delivers what it missed.
func (f *Follower) pollStream(kv jetstream.KeyValue) {
	ctx, cancel := context.WithTimeout(f.ctx, f.cfg.Timeout)
	defer cancel()
	st, err := kv.Status(ctx)
	if mayBeGone(err) {
		f.signal(f.stall)
		return
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if err != nil || !ok || bs.StreamInfo() == nil {
		return
	}
	info := bs.StreamInfo()
	if f.cfg.Replaced == nil && f.adopt(identity{created: info.Created}) {
		return
	}
	// A message removed before the watch saw it (an aged-out key) keeps
	// the last sequence above what any watch delivers: act once on it.
	if _, _, pos := f.snapshot(); info.State.LastSeq > pos && f.flag("", info.State.LastSeq) {
		f.signal(f.stall)
	}
}
