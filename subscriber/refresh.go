package subscriber

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/backoff"

	"github.com/nats-io/nats.go"
)

// flight is one token.refresh request (with its retries) that every
// caller of Refresh for the same stale revision shares.
type flight struct {
	done    chan struct{}
	tok     *Token // valid once done is closed
	err     error
	waiters int                // callers still waiting; under Source.mu
	lastErr error              // the last failed attempt; under Source.mu
	cancel  context.CancelFunc // stops the flight when no one waits
}

// Refresh asks the refresher for a token newer than revision stale — "the
// token at revision stale was rejected by upstream" — and returns it. It
// blocks until a reply has arrived or ctx ends.
//
// If the Source already holds a valid token with a revision greater than
// stale, Refresh returns it at once without a request. Otherwise
// concurrent callers in this process with the same stale revision share
// one request (and the refresher shares one upstream fetch among all
// requests for that revision, across processes). "No responders" (no
// refresher, or a leader handover), a timed-out attempt
// (WithRequestTimeout) and a 503 reply are retried with backoff until ctx
// ends; a newer revision arriving through the watch meanwhile also ends
// the wait. The token of a successful reply is applied to the Source if it
// is newer, so Token sees it at once.
//
// Errors: *RequestError for the refresher's error replies (errors.As);
// when ctx ends, an error wrapping ctx.Err() and, if no refresher
// answered, ErrNoResponders; ErrBadReply; ErrClosed once the Source is
// closed. Safe for concurrent use.
func (s *Source) Refresh(ctx context.Context, stale uint64) (*Token, error) {
	st := s.state.Load()
	if st.err == ErrClosed {
		return nil, ErrClosed
	}
	if st.err == nil && st.tok.Revision > stale {
		return st.tok, nil
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	if t, ok := s.valid(); ok && t.Revision > stale {
		s.mu.Unlock()
		return t, nil
	}
	f := s.flights[stale]
	if f == nil {
		fctx, cancel := context.WithCancel(s.ctx)
		f = &flight{done: make(chan struct{}), cancel: cancel}
		s.flights[stale] = f
		s.wg.Add(1)
		go s.fly(fctx, f, stale)
	}
	f.waiters++
	s.mu.Unlock()

	select {
	case <-f.done:
		return f.tok, f.err
	case <-ctx.Done():
	}
	s.mu.Lock()
	f.waiters--
	if f.waiters == 0 {
		// Nobody waits any more: stop asking.
		f.cancel()
		if s.flights[stale] == f {
			delete(s.flights, stale)
		}
	}
	last := f.lastErr
	s.mu.Unlock()
	select {
	case <-f.done: // finished meanwhile: prefer its answer
		if f.err == nil {
			return f.tok, nil
		}
	default:
	}
	switch {
	case errors.Is(last, ErrNoResponders):
		return nil, fmt.Errorf("%w: %w", ErrNoResponders, ctx.Err())
	case last != nil:
		return nil, fmt.Errorf("subscriber: refresh of %s: %w (last attempt: %w)", s.app, ctx.Err(), last)
	}
	return nil, fmt.Errorf("subscriber: refresh of %s: %w", s.app, ctx.Err())
}

// fly runs one flight: it asks until a reply or a permanent error, or
// until a valid token newer than stale arrives by other means.
func (s *Source) fly(ctx context.Context, f *flight, stale uint64) {
	defer s.wg.Done()
	bo := backoff.New(s.cfg.backoffMin, s.cfg.backoffMax)
	var tok *Token
	var err error
	for {
		if t, ok := s.valid(); ok && t.Revision > stale {
			tok, err = t, nil
			break
		}
		updated := s.Updated()
		tok, err = s.request(ctx, &stale)
		if err == nil {
			s.apply(tok, "refresh reply", false)
			if t, ok := s.valid(); ok && t.Revision > tok.Revision {
				tok = t // an even newer one arrived meanwhile
			}
			break
		}
		if ctx.Err() != nil {
			err = ctx.Err()
			if s.ctx.Err() != nil {
				err = ErrClosed
			}
			break
		}
		if !retryable(err) {
			break
		}
		s.mu.Lock()
		f.lastErr = err
		s.mu.Unlock()
		s.log.Debug("token.refresh attempt failed; trying again", "stale_revision", stale, "err", err)
		wait := bo.Next()
		var re *RequestError
		if errors.As(err, &re) && time.Until(re.RetryAt) > wait {
			// The refresher paused upstream calls until then: asking
			// sooner gets the same answer.
			wait = time.Until(re.RetryAt)
		}
		backoff.SleepOr(ctx, wait, updated)
	}
	s.mu.Lock()
	if s.flights[stale] == f {
		delete(s.flights, stale)
	}
	f.tok, f.err = tok, err
	s.mu.Unlock()
	f.cancel()
	close(f.done)
}

// retryable reports whether a failed attempt is worth another: no
// responders, a timeout, or a 503 (no leader yet, shutting down).
func retryable(err error) bool {
	var re *RequestError
	if errors.As(err, &re) {
		return re.Code == contract.CodeUnavailable
	}
	return errors.Is(err, ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, nats.ErrTimeout)
}

// request makes one token.refresh.<app> request: with stale nil an empty
// body ("give me a valid token"), else {"stale_revision": N}. It is
// bounded by the request timeout and ctx.
func (s *Source) request(ctx context.Context, stale *uint64) (*Token, error) {
	msg := nats.NewMsg(contract.RefreshSubject(s.app))
	// Who asks, for the refresher's audit trail: the connection's name.
	if name := s.nc.Opts.Name; name != "" {
		msg.Header.Set(contract.RequesterHeader, name)
	}
	if stale != nil {
		msg.Data, _ = json.Marshal(contract.RefreshRequest{StaleRevision: stale})
	}
	actx, cancel := context.WithTimeout(ctx, s.cfg.requestTimeout)
	defer cancel()
	rep, err := s.nc.RequestMsgWithContext(actx, msg)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return nil, fmt.Errorf("%w (%w)", ErrNoResponders, err)
		}
		return nil, fmt.Errorf("subscriber: token.refresh.%s: %w", s.app, err)
	}
	return s.parseReply(rep)
}

// parseReply turns a token.refresh reply into a Token or an error.
func (s *Source) parseReply(rep *nats.Msg) (*Token, error) {
	if re := errorOf(rep, ""); re != nil {
		return nil, re
	}
	// A reply is the record plus "revision": for a ticket key, the
	// ticket record.
	var body struct {
		stored
		Revision uint64                `json:"revision"`
		Error    *contract.ErrorDetail `json:"error"`
	}
	if err := json.Unmarshal(rep.Data, &body); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadReply, err)
	}
	if body.Error != nil {
		return nil, &RequestError{Code: body.Error.Code, Message: body.Error.Message}
	}
	r := &body.stored
	switch {
	case r.storedKey() != "" && r.storedKey() != s.app:
		return nil, fmt.Errorf("%w: record of key %q, want %q", ErrBadReply, r.storedKey(), s.app)
	case r.credential() == "":
		return nil, fmt.Errorf("%w: no access_token (nor ticket)", ErrBadReply)
	case body.Revision == 0:
		return nil, fmt.Errorf("%w: no revision", ErrBadReply)
	}
	return tokenOf(s.app, r, body.Revision), nil
}

// errorOf returns the micro error reply rep as a *RequestError of op
// ("": token.refresh), or nil if rep is no error reply.
func errorOf(rep *nats.Msg, op string) *RequestError {
	code := rep.Header.Get(contract.ErrorCodeHeader)
	if code == "" {
		return nil
	}
	re := &RequestError{Message: rep.Header.Get(contract.ErrorHeader), op: op}
	re.Code, _ = strconv.Atoi(strings.TrimSpace(code))
	var body contract.ErrorReply
	if json.Unmarshal(rep.Data, &body) == nil {
		if body.Error.Message != "" && re.Message == "" {
			re.Message = body.Error.Message
		}
		re.RetryAt = body.Error.RetryAt
	}
	return re
}

// ask starts the ask loop unless it runs: it asks the refresher for a
// valid token until the Source holds one.
func (s *Source) ask() {
	s.mu.Lock()
	s.askLocked()
	s.mu.Unlock()
}

// askLocked is ask for callers that hold s.mu.
func (s *Source) askLocked() {
	if s.asking || s.closed {
		return
	}
	s.asking = true
	s.wg.Add(1)
	go s.askLoop()
}

// askLoop sends empty token.refresh requests ("give me a valid token"),
// with backoff, until the Source holds a valid token or is closed.
func (s *Source) askLoop() {
	defer s.wg.Done()
	bo := backoff.New(s.cfg.backoffMin, s.cfg.backoffMax)
	for {
		s.mu.Lock()
		if _, ok := s.valid(); ok || s.closed || s.ctx.Err() != nil {
			s.asking = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		updated := s.Updated()
		tok, err := s.request(s.ctx, nil)
		if err == nil {
			s.apply(tok, "refresh reply", false)
			if _, ok := s.valid(); ok {
				continue
			}
			err = fmt.Errorf("%w: the reply's token %s is not valid", ErrBadReply, tok)
		}
		if s.ctx.Err() != nil {
			continue // the loop head ends it
		}
		s.noteAskFailure(err)
		if errConnClosed(err) {
			s.mu.Lock()
			s.asking = false
			s.mu.Unlock()
			return
		}
		backoff.SleepOr(s.ctx, bo.Next(), updated)
	}
}

// noteAskFailure records why the last ask failed.
func (s *Source) noteAskFailure(err error) {
	var re *RequestError
	if errors.As(err, &re) && re.Code == contract.CodeNotFound {
		s.log.Error("the refresher does not know this app; check its configuration", "err", err)
	} else {
		s.log.Debug("asking the refresher for a token failed", "err", err)
	}
	s.mu.Lock()
	s.lastAsk = err
	s.mu.Unlock()
}
