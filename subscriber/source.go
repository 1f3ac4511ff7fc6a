// Package subscriber is what a service imports to get its app's access
// token from tokenkeeper: a Source watches the app's key in the tokens
// KV bucket and serves the token from memory, asks the refresher for a
// new one over token.refresh.<app> when upstream rejects it, and wraps an
// http.RoundTripper that sets the token on WeChat API calls and retries
// once when it is rejected.
//
// The model is go-spiffe's workloadapi.X509Source: NewSource blocks until
// the first valid token has arrived; afterwards reads never block and
// never touch the network (Token is one atomic load); a private goroutine
// keeps the token current and rebuilds a broken watch behind a backoff;
// Close is idempotent and makes every getter return ErrClosed.
//
// A watch on a JetStream KV key can stall silently (after a server
// restart, or when the cluster node holding its consumer goes away) for
// ~20 s until the client notices missed heartbeats. A Source therefore
// also rebuilds its watch, resuming after the last revision it saw, on
// every reconnect of the connection, reads the key directly every poll
// interval (WithPollInterval) and compares revisions, and rebuilds the
// watch with backoff whenever it ends.
//
// The wire contract (bucket, record, subjects, error codes) is package
// contract and docs/protocol.md; services in other languages follow the
// same contract with a stock NATS client.
package subscriber

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// Source holds the current token of one app and keeps it current. Make it
// with NewSource; all its methods are safe for concurrent use. Reads
// (Token, AccessToken, Revision, ExpiresAt, Fresh, Updated) never block
// and do no I/O.
type Source struct {
	nc  *nats.Conn
	app string // the key followed
	// client follows the key (ownClient: a Client of this Source alone,
	// made by NewSource and closed with it).
	client    *Client
	ownClient bool
	// rebase: the bucket was created anew, take its next token whatever
	// its revision (touched by the client's run goroutine only).
	rebase bool
	cfg    config
	log    *slog.Logger

	// state is what readers load: the token and the error to return
	// with it. It is replaced (never modified) under mu.
	state atomic.Pointer[state]
	// tail is the last node of the update list (see notify.go).
	tail atomic.Pointer[update]

	ctx    context.Context // private: cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	expiry    *time.Timer
	first     chan struct{} // closed when the first valid token is applied
	firstDone bool
	dead      chan struct{} // closed when the watch loop gave up for good
	deadErr   error
	problem   string // why there is no valid token, for NewSource's error
	lastAsk   error  // the last failed ask of the refresher, ditto
	asking    bool   // the ask loop runs
	flights   map[uint64]*flight
}

// state is one immutable read state of a Source.
type state struct {
	tok *Token
	err error // nil, ErrExpired, ErrNoToken (before the first token) or ErrClosed
}

var (
	stateNoToken = &state{err: ErrNoToken}
	stateClosed  = &state{err: ErrClosed}
)

// NewSource returns a Source for app's token in the tokens bucket, read
// over nc, and blocks until the first valid (unexpired) token has arrived.
// ctx bounds only that wait: the Source then runs until Close, on a
// private context. nc stays the caller's: the Source adds no handlers to
// it (it listens for reconnects with nc.StatusChanged) and does not close
// it. A Source follows the connection through reconnects; if nc is closed
// the Source keeps its last token until it expires.
//
// While it waits, NewSource copes with a tokenkeeper that is not there
// yet: a bucket that does not exist is looked up again with backoff, and
// when the bucket or the key is missing, or the stored token has expired,
// the Source asks the refresher for a token with an empty token.refresh
// request (with backoff; "no responders" just means try again).
//
// If ctx ends first, NewSource stops everything it started and returns an
// error that matches ErrNoToken and ctx.Err() and says what it was
// waiting for; if nc is closed, one that matches ErrNoToken and
// nats.ErrConnectionClosed. Invalid arguments give an error matching
// ErrInvalidArgument, before any I/O.
//
// Options: WithBucket, WithPollInterval, WithLogger, WithOnUpdate,
// WithClock, WithBackoff, WithRequestTimeout.
func NewSource(ctx context.Context, nc *nats.Conn, app string, opts ...Option) (*Source, error) {
	if nc == nil {
		return nil, fmt.Errorf("%w: nil NATS connection", ErrInvalidArgument)
	}
	if !contract.ValidKey(app) {
		return nil, fmt.Errorf("%w: key %q is not an app name (1-64 of [A-Za-z0-9_-]) or a tokenkeeper key", ErrInvalidArgument, app)
	}
	cfg := defaults()
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	// A Source of its own: a Client that follows this one key.
	c, err := newClient(nc, cfg)
	if err != nil {
		return nil, err
	}
	s := newSource(c, app, cfg)
	s.ownClient = true
	if err := c.op(s, true); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s.waitFirst(ctx)
}

// newSource returns a Source of key followed by c; c.op(s, true) starts
// following it.
func newSource(c *Client, key string, cfg config) *Source {
	s := &Source{
		nc:      c.nc,
		client:  c,
		app:     key,
		cfg:     cfg,
		log:     cfg.log.With("component", "tokenkeeper-subscriber", "app", key, "bucket", cfg.bucket),
		first:   make(chan struct{}),
		dead:    make(chan struct{}),
		problem: "the watch has not started",
		flights: map[uint64]*flight{},
	}
	s.state.Store(stateNoToken)
	s.tail.Store(&update{done: make(chan struct{})})
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if cfg.onUpdate != nil {
		l := s.Listen()
		s.wg.Add(1)
		go s.notify(l, cfg.onUpdate)
	}
	return s
}

// waitFirst waits until the Source's first valid token arrived, its
// follower died, or ctx ended; it closes the Source in the last two cases.
func (s *Source) waitFirst(ctx context.Context) (*Source, error) {
	select {
	case <-s.first:
		return s, nil
	case <-s.dead:
		s.mu.Lock()
		err := s.deadErr
		s.mu.Unlock()
		_ = s.Close()
		return nil, fmt.Errorf("%w for app %q: %w", ErrNoToken, s.app, err)
	case <-ctx.Done():
		// A token may have arrived at the same instant: prefer it.
		select {
		case <-s.first:
			return s, nil
		default:
		}
		why := s.why()
		_ = s.Close()
		return nil, fmt.Errorf("%w for app %q in bucket %q: %w (%s)", ErrNoToken, s.app, s.cfg.bucket, ctx.Err(), why)
	}
}

// notify calls f with every update, in order, until Close.
func (s *Source) notify(l *Listener, f func(*Token)) {
	defer s.wg.Done()
	for {
		t, err := l.Next(context.Background())
		if err != nil {
			return
		}
		f(t)
	}
}

// App returns the app name the Source follows.
func (s *Source) App() string { return s.app }

// Token returns the current token. It never blocks, does no I/O and does
// not read the clock: one atomic load (about 1 ns, no allocation).
//
// The error is nil while the token is valid. Once the token has passed its
// ExpiresAt without a newer one arriving, Token returns it together with
// ErrExpired (an expiry timer flips this state at ExpiresAt; see
// WithClock). After Close it returns nil, ErrClosed. Safe for concurrent
// use.
func (s *Source) Token() (*Token, error) {
	st := s.state.Load()
	return st.tok, st.err
}

// AccessToken returns the current token string, as Token does: with
// ErrExpired, the expired token's string; after Close, "" and ErrClosed.
// Safe for concurrent use; it never blocks.
func (s *Source) AccessToken() (string, error) {
	st := s.state.Load()
	if st.tok == nil {
		return "", st.err
	}
	return st.tok.AccessToken, st.err
}

// Revision returns the KV revision of the current token, 0 after Close.
// Safe for concurrent use; it never blocks.
func (s *Source) Revision() uint64 {
	if t := s.state.Load().tok; t != nil {
		return t.Revision
	}
	return 0
}

// ExpiresAt returns when the current token expires, the zero time after
// Close. Safe for concurrent use; it never blocks.
func (s *Source) ExpiresAt() time.Time {
	if t := s.state.Load().tok; t != nil {
		return t.ExpiresAt
	}
	return time.Time{}
}

// Fresh reports whether the Source holds a token that is valid now by its
// clock (WithClock). False after Close. Safe for concurrent use; it never
// blocks.
func (s *Source) Fresh() bool {
	st := s.state.Load()
	return st.err != ErrClosed && st.tok.ValidAt(s.cfg.now())
}

// Close stops the Source: its goroutines end (Close waits for them,
// including a running OnUpdate callback), pending Refresh calls return
// ErrClosed, Updated channels are closed, and every getter returns
// ErrClosed (or a zero value) afterwards. The NATS connection is left
// open. Close is idempotent and always returns nil; safe for concurrent
// use.
func (s *Source) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.state.Store(stateClosed)
	if s.expiry != nil {
		s.expiry.Stop()
	}
	s.publishClosed()
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	// No event reaches the Source once op returns.
	_ = s.client.op(s, false)
	if s.ownClient {
		_ = s.client.Close()
	}
	return nil
}

// apply makes tok the current token if it is newer than the one held: a
// higher revision, or a valid token where the one held has expired (only
// after the bucket was recreated can a valid token have a lower
// revision), or any token if rebase is set (the bucket was recreated and
// its revisions started over). It reports whether it did. from says
// where tok came from, for the log.
func (s *Source) apply(tok *Token, from string, rebase bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	now := s.cfg.now()
	valid := tok.ValidAt(now)
	held := s.state.Load()
	if held.tok != nil && tok.Revision <= held.tok.Revision && !rebase &&
		!(valid && held.err == ErrExpired && tok.AccessToken != held.tok.AccessToken) {
		return false
	}
	st := &state{tok: tok}
	if !valid {
		st.err = ErrExpired
	}
	s.state.Store(st)
	if s.expiry != nil {
		s.expiry.Stop()
		s.expiry = nil
	}
	if valid {
		s.expiry = time.AfterFunc(tok.ExpiresAt.Sub(now), func() { s.expire(st) })
	}
	s.publish(&update{tok: tok, done: make(chan struct{})})
	if valid {
		s.problem, s.lastAsk = "", nil
		if !s.firstDone {
			s.firstDone = true
			close(s.first)
		}
		s.log.Debug("token updated", "token", tok, "from", from, "source", tok.Source)
	} else {
		s.log.Warn("token arrived already expired; asking the refresher for a valid one", "token", tok, "from", from)
		s.problem = fmt.Sprintf("the stored token (revision %d) expired at %s", tok.Revision, tok.ExpiresAt.UTC().Format(time.RFC3339))
		s.askLocked()
	}
	return true
}

// expire runs at the ExpiresAt of the token of st: if no newer token has
// arrived, readers get ErrExpired from now on, and the refresher is asked.
func (s *Source) expire(st *state) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.state.Load() != st {
		return
	}
	s.state.Store(&state{tok: st.tok, err: ErrExpired})
	s.problem = fmt.Sprintf("the token (revision %d) expired at %s", st.tok.Revision, st.tok.ExpiresAt.UTC().Format(time.RFC3339))
	s.log.Warn("token expired and no newer one arrived; asking the refresher", "token", st.tok)
	s.askLocked()
}

// valid reports whether the Source holds an unexpired token (by the
// expiry timer), and its revision.
func (s *Source) valid() (*Token, bool) {
	st := s.state.Load()
	return st.tok, st.tok != nil && st.err == nil
}

// setProblem records why there is no valid token yet.
func (s *Source) setProblem(format string, args ...any) {
	s.mu.Lock()
	s.problem = fmt.Sprintf(format, args...)
	s.mu.Unlock()
}

func (s *Source) why() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	why := s.problem
	if why == "" {
		why = "no valid token"
	}
	if s.lastAsk != nil {
		why += "; last token.refresh: " + s.lastAsk.Error()
	}
	return why
}

// die records that the watch loop cannot go on (the connection was
// closed); NewSource returns err if it is still waiting.
func (s *Source) die(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deadErr == nil {
		s.deadErr = err
		close(s.dead)
	}
}

// errConnClosed reports whether err means the connection is gone for good.
func errConnClosed(err error) bool {
	return errors.Is(err, nats.ErrConnectionClosed)
}
