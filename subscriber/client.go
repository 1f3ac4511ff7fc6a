package subscriber

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/follow"
)

// Client follows any number of keys of the tokens bucket over one watch:
// one JetStream consumer, filtered by all its keys, whatever the number of
// Sources it serves. A process that needs several tokens (apps, their
// tickets) makes one Client and takes a Source per key from it, so that
// the consumers on the bucket's stream grow with processes, not with
// processes × keys.
//
// The watch is the resilient follow loop of internal/follow: built with a
// timeout, resumed after the last revision, rebuilt on reconnect, with a
// poll of every followed key as a safety net. Adding a key rebuilds the
// watch over the new set of keys (one consumer still). Safe for
// concurrent use.
type Client struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	cfg config
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	ops    chan clientOp

	mu      sync.Mutex
	closed  bool
	sources map[string][]*Source // key -> its Sources; written by run under mu
}

// clientOp adds or removes a Source; run acknowledges it by closing done,
// after which no event reaches a removed Source.
type clientOp struct {
	s    *Source
	add  bool
	done chan struct{}
}

// NewClient returns a Client reading the bucket over nc. It does no I/O;
// each Source does its first wait. Options (a Source taken from the
// Client inherits them): WithBucket, WithPollInterval, WithLogger,
// WithBackoff, WithRequestTimeout, WithClock.
func NewClient(nc *nats.Conn, opts ...Option) (*Client, error) {
	if nc == nil {
		return nil, fmt.Errorf("%w: nil NATS connection", ErrInvalidArgument)
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
	return newClient(nc, cfg)
}

func newClient(nc *nats.Conn, cfg config) (*Client, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("subscriber: jetstream: %w", err)
	}
	c := &Client{
		nc: nc, js: js, cfg: cfg,
		log:     cfg.log.With("component", "tokenkeeper-subscriber", "bucket", cfg.bucket),
		done:    make(chan struct{}),
		ops:     make(chan clientOp),
		sources: map[string][]*Source{},
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	go c.run()
	return c, nil
}

// Source returns a Source for key (an app name, or a v2 key such as
// "<app>.jsapi") followed by this Client, and blocks until its first
// valid token has arrived, as NewSource does (see there for ctx and the
// errors). Options may add WithOnUpdate, WithLogger or WithClock for this
// Source; the bucket, poll, backoff and request timeout are the Client's.
// Several Sources of one key each get every update.
func (c *Client) Source(ctx context.Context, key string, opts ...Option) (*Source, error) {
	if !contract.ValidKey(key) {
		return nil, fmt.Errorf("%w: key %q is not a valid tokenkeeper key", ErrInvalidArgument, key)
	}
	cfg := c.cfg
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.bucket != c.cfg.bucket || cfg.poll != c.cfg.poll {
		return nil, fmt.Errorf("%w: a Client's Sources use the Client's bucket and poll interval", ErrInvalidArgument)
	}
	s := newSource(c, key, cfg)
	if err := c.op(s, true); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s.waitFirst(ctx)
}

// Close stops the watch and closes every Source taken from the Client
// (their readers get ErrClosed). Idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.done
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	<-c.done
	for _, s := range c.snapshot() {
		_ = s.Close()
	}
	return nil
}

// op hands an add or a remove to run and waits until it took effect.
func (c *Client) op(s *Source, add bool) error {
	o := clientOp{s: s, add: add, done: make(chan struct{})}
	select {
	case c.ops <- o:
	case <-c.done:
		if add {
			return ErrClosed
		}
		return nil
	}
	<-o.done
	return nil
}

// keys returns the followed keys, sorted.
func (c *Client) keys() []string {
	ks := make([]string, 0, len(c.sources))
	for k := range c.sources {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// run owns the follower and the map of Sources: it applies adds and
// removes between events, rebuilds the follower when the set of keys
// changes, and hands each event to the Sources it concerns.
func (c *Client) run() {
	defer close(c.done)
	var f *follow.Follower
	var followed []string
	stop := func() {
		if f != nil {
			f.Stop()
			f = nil
		}
	}
	defer stop()
	for {
		var events <-chan follow.Event
		if f != nil {
			events = f.Events()
		}
		select {
		case <-c.ctx.Done():
			return
		case o := <-c.ops:
			c.apply(o)
			close(o.done)
			// Every add or remove already waiting is applied before the
			// rebuild: Sources taken at once share one (a rebuild per
			// Source made taking 1000 of them take a minute).
			for more := true; more; {
				select {
				case o := <-c.ops:
					c.apply(o)
					close(o.done)
				default:
					more = false
				}
			}
			if keys := c.keys(); !slices.Equal(keys, followed) {
				stop()
				followed = keys
				if len(keys) > 0 {
					f = c.start(keys)
				}
			}
		case ev, ok := <-events:
			if !ok {
				err := orErr(f.Err(), nats.ErrConnectionClosed)
				f = nil
				if c.ctx.Err() == nil {
					c.log.Warn("NATS connection closed; the Sources keep their last tokens until they expire")
					c.each(func(s *Source) {
						s.setProblem("the NATS connection is closed")
						s.die(err)
					})
				}
				continue
			}
			c.dispatch(ev)
		}
	}
}

// apply adds or removes one Source.
func (c *Client) apply(o clientOp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := o.s.app
	if o.add {
		c.sources[key] = append(c.sources[key], o.s)
		return
	}
	ss := slices.DeleteFunc(c.sources[key], func(s *Source) bool { return s == o.s })
	if len(ss) == 0 {
		delete(c.sources, key)
	} else {
		c.sources[key] = ss
	}
}

// start starts a follower of keys, over one consumer.
func (c *Client) start(keys []string) *follow.Follower {
	f, err := follow.Start(c.nc, follow.Config{
		Open:         c.open,
		Keys:         keys,
		PollInterval: c.cfg.poll,
		Timeout:      min(c.cfg.requestTimeout, probeTimeoutMax),
		BackoffMin:   c.cfg.backoffMin,
		BackoffMax:   c.cfg.backoffMax,
	})
	if err != nil {
		c.each(func(s *Source) {
			s.setProblem("cannot follow key %q: %v", s.app, err)
			s.die(err)
		})
		return nil
	}
	return f
}

// each calls fn for every Source (from run only).
func (c *Client) each(fn func(*Source)) {
	for _, ss := range c.sources {
		for _, s := range ss {
			fn(s)
		}
	}
}

// dispatch hands an entry to the Sources of its key, and everything else
// to every Source.
func (c *Client) dispatch(ev follow.Event) {
	if ev.Kind == follow.Entry {
		for _, s := range c.sources[ev.Entry.Key()] {
			s.rebase = s.event(ev, s.rebase)
		}
		return
	}
	c.each(func(s *Source) { s.rebase = s.event(ev, s.rebase) })
}

// open looks the bucket up (the follower's Open). A bucket that does not
// exist yet makes every Source ask the refresher for a token.
func (c *Client) open(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := c.js.KeyValue(ctx, c.cfg.bucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		for _, s := range c.snapshot() {
			s.setProblem("bucket %q does not exist yet", c.cfg.bucket)
			s.ask()
		}
	case err != nil:
		for _, s := range c.snapshot() {
			s.setProblem("cannot look up bucket %q: %v", c.cfg.bucket, err)
		}
	}
	return kv, err
}

// snapshot returns every Source, for the follower's goroutine, which
// runs beside run (run writes the map under c.mu).
func (c *Client) snapshot() []*Source {
	c.mu.Lock()
	defer c.mu.Unlock()
	var all []*Source
	for _, ss := range c.sources {
		all = append(all, ss...)
	}
	return all
}
