package subscriber

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// pollLoop is the safety net under the watch: every poll interval it
// reads the key directly and compares revisions. A revision the watch has
// not delivered is applied at once, and the watch loop is told to rebuild
// the watch (it has stalled). It runs apart from the watch loop, so that
// its bound holds whatever state the watch is in.
func (s *Source) pollLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.poll)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		kv := s.bucketHandle()
		if kv == nil {
			continue // the watch loop is still looking for the bucket
		}
		applied, err := s.poll(kv)
		if !applied && !isBucketGone(err) {
			continue
		}
		if applied {
			s.log.Warn("the watch missed an update; the direct read found it", "revision", s.Revision())
		}
		select {
		case s.stalled <- struct{}{}:
		default:
		}
	}
}

// found records the bucket handle the watch loop uses (nil: none), for
// the poller.
func (s *Source) found(kv jetstream.KeyValue) {
	var created time.Time
	if kv != nil {
		created = s.created(kv)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kv = kv
	if s.bucketCreated.IsZero() {
		s.bucketCreated = created
	}
}

func (s *Source) bucketHandle() jetstream.KeyValue {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kv
}

// poll reads the key directly and applies a revision newer than the one
// held; it reports whether it did. Errors other than a lost bucket are
// logged and left to the next attempt (nil).
func (s *Source) poll(kv jetstream.KeyValue) (bool, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.probeTimeout())
	defer cancel()
	e, err := kv.Get(ctx, s.app)
	switch {
	case err == nil:
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		if _, ok := s.valid(); !ok {
			if s.Revision() == 0 {
				s.setProblem("key %q is not in bucket %q yet", s.app, s.cfg.bucket)
			}
			s.ask()
		}
		return false, nil
	case isBucketGone(err):
		return false, err
	default:
		if s.ctx.Err() == nil {
			s.log.Debug("direct read of the key failed", "err", err)
		}
		return false, nil
	}
	rebase := false
	if held := s.Revision(); e.Revision() <= held {
		// A lower revision: a replica answering a little behind, or a
		// bucket that was deleted and created again, whose revisions
		// started over. Only the second changes the stream's creation
		// time.
		if e.Revision() == held || !s.recreated(kv) {
			return false, nil
		}
		s.log.Warn("the bucket was created anew; its revisions started over", "had", held, "revision", e.Revision())
		rebase = true
	}
	tok, err := s.decode(e.Value(), e.Revision())
	if err != nil {
		s.log.Error("ignoring a record that does not parse", "revision", e.Revision(), "err", err)
		return false, nil
	}
	return s.apply(tok, "direct read", rebase), nil
}

// created returns when the bucket's stream was created (zero if unknown).
func (s *Source) created(kv jetstream.KeyValue) time.Time {
	ctx, cancel := context.WithTimeout(s.ctx, s.probeTimeout())
	defer cancel()
	st, err := kv.Status(ctx)
	if err != nil {
		return time.Time{}
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil {
		return time.Time{}
	}
	return bs.StreamInfo().Created
}

// recreated reports whether the bucket's stream was created after the
// one the Source knew (and remembers the new one).
func (s *Source) recreated(kv jetstream.KeyValue) bool {
	c := s.created(kv)
	if c.IsZero() {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bucketCreated.IsZero() {
		s.bucketCreated = c
		return false
	}
	if c.Equal(s.bucketCreated) {
		return false
	}
	s.bucketCreated = c
	return true
}
