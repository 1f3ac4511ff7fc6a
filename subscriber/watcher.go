package subscriber

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/internal/follow"
)

// orErr returns err, or def if err is nil.
func orErr(err, def error) error {
	if err == nil {
		return def
	}
	return err
}

// probeTimeoutMax bounds building a watch, a bucket lookup and one direct
// read (and the request timeout, if smaller): short, so that a server
// that is gone delays the next attempt (and the reaction to a reconnect)
// little.
const probeTimeoutMax = 2 * time.Second

// event handles one event of the follower; it returns the new rebase
// state.
func (s *Source) event(ev follow.Event, rebase bool) bool {
	switch ev.Kind {
	case follow.Entry:
		from := "watch"
		if ev.Polled {
			from = "direct read"
		}
		applied := s.entry(ev.Entry, from, rebase)
		if ev.Polled {
			s.log.Warn("the watch missed an update; the direct read found it", "revision", ev.Entry.Revision(), "applied", applied)
		}
		if ev.Entry.Operation() == jetstream.KeyValuePut {
			return false
		}
	case follow.Current:
		// Everything stored has been seen.
		if _, ok := s.valid(); !ok {
			if s.Revision() == 0 {
				s.setProblem("key %q is not in bucket %q yet", s.app, s.cfg.bucket)
			}
			s.ask()
		}
	case follow.Reset:
		s.log.Warn("the bucket was created anew; its revisions started over", "had", s.Revision())
		return true
	case follow.Problem:
		switch err := ev.Err; {
		case errors.Is(err, follow.ErrOpen):
			s.log.Debug("bucket not available; trying again", "err", err)
		case isConsumerLimit(err):
			// Not transient: every watcher is a consumer of the bucket's
			// stream. Until one is free, only the poll keeps this Source
			// current.
			s.log.Error("the bucket's stream has no consumer left for this watch; updates arrive only by polling until one is free (run a current refresher: it raises the stream's max_consumers)",
				"err", err, "poll_interval", s.cfg.poll)
		case errors.Is(err, follow.ErrReconnected), errors.Is(err, follow.ErrStalled), errors.Is(err, follow.ErrReplaced):
			s.log.Info("rebuilding the watch", "reason", err, "revision", s.Revision())
		default:
			s.log.Info("watch ended; rebuilding it", "err", err, "revision", s.Revision())
		}
	}
	return rebase
}

// entry handles one entry of the key, from the watch or a direct read; it
// reports whether it made a new token current. rebase: see apply.
func (s *Source) entry(e jetstream.KeyValueEntry, from string, rebase bool) bool {
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
		return false
	}
	tok, err := s.decode(e.Value(), e.Revision())
	if err != nil {
		s.log.Error("ignoring a record that does not parse", "revision", e.Revision(), "err", err)
		return false
	}
	return s.apply(tok, from, rebase)
}

// current is the token held, for logs.
func (s *Source) current() *Token { return s.state.Load().tok }

// decode parses a stored record: an access token record, or a ticket
// record (v2 ticket keys).
func (s *Source) decode(val []byte, rev uint64) (*Token, error) {
	var rec stored
	if err := json.Unmarshal(val, &rec); err != nil {
		return nil, err
	}
	if rec.credential() == "" {
		return nil, errors.New("record has no access_token (nor ticket)")
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
