package subscriber

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/backoff"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Reasons for the watch loop to rebuild the watch.
var (
	errWatchEnded  = errors.New("watch ended")
	errReconnected = errors.New("connection reconnected")
	errStalled     = errors.New("watch missed an update that a direct read found, or the bucket is gone")
)

// watch keeps the Source current until Close: it finds the bucket, reads
// the key, watches it, and rebuilds the watch (resuming after the last
// revision) when it ends, on every reconnect, and when the poller found a
// revision the watch did not deliver. It runs on the Source's private
// context.
func (s *Source) watch() {
	defer s.wg.Done()
	reconnects := s.nc.StatusChanged(nats.CONNECTED)
	defer s.nc.RemoveStatusListener(reconnects)
	bo := backoff.New(s.cfg.backoffMin, s.cfg.backoffMax)
	var kv jetstream.KeyValue
	for s.ctx.Err() == nil {
		if s.nc.IsClosed() {
			s.log.Warn("NATS connection closed; the Source keeps its last token until it expires")
			s.setProblem("the NATS connection is closed")
			s.die(nats.ErrConnectionClosed)
			return
		}
		if kv == nil {
			var err error
			kv, err = s.bucket()
			if err != nil {
				if errors.Is(err, jetstream.ErrBucketNotFound) {
					s.setProblem("bucket %q does not exist yet", s.cfg.bucket)
					s.ask()
				} else {
					s.setProblem("cannot look up bucket %q: %v", s.cfg.bucket, err)
				}
				s.log.Debug("bucket not available; trying again", "err", err)
				if !sleep(s.ctx, min(bo.Next(), s.cfg.poll), reconnects) {
					return
				}
				continue
			}
			s.found(kv)
		}
		// Read the key directly first: a direct get is answered by any
		// replica, so this catches up even while a cluster fails over
		// and the watch cannot be built yet.
		if _, err := s.poll(kv); isBucketGone(err) {
			s.log.Warn("bucket disappeared; looking for it again", "err", err)
			kv = nil
			s.found(nil)
			continue
		}
		err := s.follow(kv, reconnects, bo)
		switch {
		case s.ctx.Err() != nil:
			return
		case errors.Is(err, errReconnected), errors.Is(err, errStalled):
			// Rebuild at once, resuming after the last revision.
			s.log.Info("rebuilding the watch", "reason", err, "revision", s.Revision())
			continue
		case isBucketGone(err):
			s.log.Warn("bucket disappeared; looking for it again", "err", err)
			kv = nil
			s.found(nil)
		case isConsumerLimit(err):
			// Not transient: every watcher is a consumer of the bucket's
			// stream. Until one is free, only the poll keeps this Source
			// current.
			s.log.Error("the bucket's stream has no consumer left for this watch; updates arrive only by polling until one is free (run a current refresher: it raises the stream's max_consumers)",
				"err", err, "poll_interval", s.cfg.poll)
		default:
			s.log.Info("watch ended; rebuilding it", "err", err, "revision", s.Revision())
		}
		// Never longer than the poll interval: each round starts with a
		// direct read, so the Source keeps up while the watch cannot be
		// built (a cluster failing over).
		if !sleep(s.ctx, min(bo.Next(), s.cfg.poll), reconnects) {
			return
		}
	}
}

// isBucketGone reports whether err says the bucket's stream is gone.
func isBucketGone(err error) bool {
	return errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, nats.ErrStreamNotFound)
}

// probeTimeout bounds building a watch and one direct read: short, so that
// a server that is gone delays the next attempt (and the reaction to a
// reconnect) little.
func (s *Source) probeTimeout() time.Duration { return min(s.cfg.requestTimeout, 2*time.Second) }

// bucket looks the bucket up, bounded by the request timeout.
func (s *Source) bucket() (jetstream.KeyValue, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.requestTimeout)
	defer cancel()
	return s.js.KeyValue(ctx, s.cfg.bucket)
}

// follow runs one watch of the key until it must be rebuilt, and returns
// why.
func (s *Source) follow(kv jetstream.KeyValue, reconnects <-chan nats.Status, bo *backoff.Backoff) error {
	ctx, cancel := context.WithCancel(s.ctx) // owns the watch
	defer cancel()
	var opts []jetstream.WatchOpt
	if last := s.Revision(); last > 0 {
		opts = append(opts, jetstream.ResumeFromRevision(last+1))
	}
	// Stall reports from before this watch are about an older one.
	select {
	case <-s.stalled:
	default:
	}
	// ctx must live as long as the watch, so it cannot carry a deadline:
	// cancel it if building takes too long (a lost server, a failover).
	timer := time.AfterFunc(s.probeTimeout(), cancel)
	w, err := kv.Watch(ctx, s.app, opts...)
	if !timer.Stop() {
		return fmt.Errorf("building the watch took over %s: %w", s.probeTimeout(), context.DeadlineExceeded)
	}
	if err != nil {
		return err
	}
	// No w.Stop() on the way out: cancelling ctx stops the watch, and
	// nats.go deletes its consumer in the background. Stop would block
	// here for up to the JetStream timeout when the server that holds
	// the consumer is gone, which is exactly when the watch must be
	// rebuilt at once.

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errWatchEnded
			}
			bo.Reset()
			if e == nil {
				// The initial values have been delivered.
				if _, ok := s.valid(); !ok {
					if s.Revision() == 0 {
						s.setProblem("key %q is not in bucket %q yet", s.app, s.cfg.bucket)
					}
					s.ask()
				}
				continue
			}
			s.entry(e)
		case <-reconnects:
			return errReconnected
		case <-s.stalled:
			return errStalled
		}
	}
}

// entry handles one entry of the watch.
func (s *Source) entry(e jetstream.KeyValueEntry) {
	switch e.Operation() {
	case jetstream.KeyValueDelete, jetstream.KeyValuePurge:
		// Keep serving the last token until it expires: a deleted record
		// does not make the token invalid upstream.
		s.log.Warn("the app's record was deleted from the bucket; keeping the last token until it expires",
			"op", e.Operation().String(), "revision", e.Revision(), "token", s.current())
		if _, ok := s.valid(); !ok {
			s.setProblem("key %q was deleted (revision %d)", s.app, e.Revision())
			s.ask()
		}
		return
	}
	tok, err := s.decode(e.Value(), e.Revision())
	if err != nil {
		s.log.Error("ignoring a record that does not parse", "revision", e.Revision(), "err", err)
		return
	}
	s.apply(tok, "watch", false)
}

// current is the token held, for logs.
func (s *Source) current() *Token { return s.state.Load().tok }

// decode parses a stored record.
func (s *Source) decode(val []byte, rev uint64) (*Token, error) {
	var rec contract.Record
	if err := json.Unmarshal(val, &rec); err != nil {
		return nil, err
	}
	if rec.AccessToken == "" {
		return nil, errors.New("record has no access_token")
	}
	return tokenOf(s.app, &rec, rev), nil
}

// isConsumerLimit reports a watch refused because the bucket's stream has
// no consumer left. nats.go builds KV watchers with its older API, whose
// error is a *nats.APIError, so match the server's error code too.
func isConsumerLimit(err error) bool {
	if errors.Is(err, jetstream.ErrMaximumConsumersLimit) {
		return true
	}
	var ae *nats.APIError
	return errors.As(err, &ae) && ae.ErrorCode == nats.ErrorCode(jetstream.JSErrCodeMaximumConsumersLimit)
}
