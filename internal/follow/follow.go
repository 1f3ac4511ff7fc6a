package follow

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults of Config's zero fields.
const (
	DefaultTimeout    = 2 * time.Second
	DefaultBackoffMin = 100 * time.Millisecond
	DefaultBackoffMax = 5 * time.Second
)

// Config says what to follow and how. Only Open is required.
type Config struct {
	// Open returns the bucket to follow. It is called (with a ctx bounded
	// by Timeout) before the first watch, and again after the bucket was
	// found gone; an error is reported as a Problem and Open is tried
	// again after a backoff. A caller that holds a handle already returns
	// it.
	Open func(ctx context.Context) (jetstream.KeyValue, error)
	// Keys are the keys to follow, all over one consumer. None: every key
	// of the bucket. With a PollInterval, keys must be plain keys (no
	// wildcard): the poll reads each one.
	Keys []string
	// PollInterval is how often the poll reads the followed keys directly
	// (0: no poll). It bounds how stale the Follower can be while its
	// watch is stalled.
	PollInterval time.Duration
	// Timeout bounds opening the bucket, building a watch and one direct
	// read (default DefaultTimeout).
	Timeout time.Duration
	// BackoffMin and BackoffMax bound the jittered backoff between failed
	// attempts to open the bucket or build the watch (defaults
	// DefaultBackoffMin, DefaultBackoffMax).
	BackoffMin, BackoffMax time.Duration
	// Replaced, if set, tells which incarnation of the bucket the handle
	// Open returns works on now, and gives a channel closed when that one
	// is replaced (a handle that swaps its bucket when it is lost and
	// re-created). The watch is then rebuilt at once, from the new
	// bucket's start, after a Reset event. Without it, a bucket created
	// anew is recognised by its stream's creation time (see Reset).
	// Open and Replaced are called from the Follower's goroutines, and
	// must be safe for concurrent use.
	Replaced func() (generation uint64, replaced <-chan struct{})
}

// Kind says what an Event reports.
type Kind int

const (
	// Entry: Event.Entry is a new entry of a followed key: a put, a
	// delete or a purge (Entry.Operation()), with a revision above every
	// one handed over for that key before.
	Entry Kind = iota
	// Current: everything stored for the followed keys has been handed
	// over, as far as the Follower can tell (after each watch's initial
	// values, and after each poll that found nothing newer).
	Current
	// Reset: the bucket was created anew; its revisions started over.
	// Entries after this event are of the new bucket, and may have lower
	// revisions than the ones before it.
	Reset
	// Problem: the watch could not be built or must be rebuilt; Event.Err
	// says why (ErrReconnected, ErrStalled, …, or a NATS error). The
	// Follower is already trying again: Problems are for logs.
	Problem
)

// String names k for logs.
func (k Kind) String() string {
	switch k {
	case Entry:
		return "entry"
	case Current:
		return "current"
	case Reset:
		return "reset"
	case Problem:
		return "problem"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Event is what a Follower hands over; see Kind.
type Event struct {
	Kind  Kind
	Entry jetstream.KeyValueEntry // Kind Entry
	// Polled (Kind Entry): the poll found the entry, not the watch: the
	// watch had missed it, and is being rebuilt.
	Polled bool
	Err    error // Kind Problem
}

// Follower follows keys of a bucket until Stop; make it with Start. Its
// methods are safe for concurrent use.
type Follower struct {
	nc     *nats.Conn
	cfg    Config
	events chan Event

	ctx     context.Context // private: cancelled by Stop
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stopped chan struct{} // closed once every goroutine has ended

	stall chan struct{} // poll → watch loop: rebuild the watch now
	kick  chan struct{} // watch loop → poll: read now

	mu      sync.Mutex // guards the fields below, and serialises events
	kv      jetstream.KeyValue
	id      identity
	epoch   uint64            // +1 at every reset: events of older ones are dropped
	pos     uint64            // the last revision the watches delivered
	handed  map[string]handed // per key: the last entry handed over
	flagged map[string]uint64 // per key ("" for all): a miss already acted on
	err     error             // why the events channel was closed
}

// handed is the last entry of a key handed over.
type handed struct {
	rev uint64
	op  jetstream.KeyValueOp
}

// identity tells incarnations of a bucket apart: by Config.Replaced's
// generation if set, otherwise by the stream's creation time. Zero:
// unknown.
type identity struct {
	gen     uint64
	created time.Time
}

func (id identity) known() bool { return id.gen != 0 || !id.created.IsZero() }

// Start validates cfg and starts following; it does not wait for
// anything. The events are on Events until Stop, or until nc is closed.
// nc stays the caller's: the Follower adds no handler to it and does not
// close it. It returns an error matching ErrInvalidConfig if cfg has no
// Open, an empty key, a wildcard key with a PollInterval, or a negative
// duration.
func Start(nc *nats.Conn, cfg Config) (*Follower, error) {
	if err := cfg.check(nc); err != nil {
		return nil, err
	}
	f := &Follower{
		nc:      nc,
		cfg:     cfg,
		events:  make(chan Event),
		stopped: make(chan struct{}),
		stall:   make(chan struct{}, 1),
		kick:    make(chan struct{}, 1),
		handed:  map[string]handed{},
		flagged: map[string]uint64{},
	}
	f.cfg.Keys = append([]string(nil), cfg.Keys...)
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.wg.Add(1)
	go f.watchLoop()
	if cfg.PollInterval > 0 {
		f.wg.Add(1)
		go f.pollLoop()
	}
	go func() {
		f.wg.Wait()
		close(f.events)
		close(f.stopped)
	}()
	return f, nil
}

// check validates c and fills in its defaults.
func (c *Config) check(nc *nats.Conn) error {
	switch {
	case nc == nil:
		return fmt.Errorf("%w: nil connection", ErrInvalidConfig)
	case c.Open == nil:
		return fmt.Errorf("%w: no Open", ErrInvalidConfig)
	case c.PollInterval < 0 || c.Timeout < 0 || c.BackoffMin < 0 || c.BackoffMax < 0:
		return fmt.Errorf("%w: negative duration", ErrInvalidConfig)
	}
	for _, k := range c.Keys {
		if k == "" {
			return fmt.Errorf("%w: empty key", ErrInvalidConfig)
		}
		if c.PollInterval > 0 && strings.ContainsAny(k, "*>") {
			return fmt.Errorf("%w: key %q is a wildcard; the poll reads plain keys only", ErrInvalidConfig, k)
		}
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = DefaultBackoffMin
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = max(DefaultBackoffMax, c.BackoffMin)
	}
	if c.BackoffMax < c.BackoffMin {
		return fmt.Errorf("%w: backoff %s..%s: want min <= max", ErrInvalidConfig, c.BackoffMin, c.BackoffMax)
	}
	return nil
}

// Events returns the channel of events. It is closed after Stop, or
// when the connection was closed (then Err says so).
func (f *Follower) Events() <-chan Event { return f.events }

// Stop stops following and returns once the Follower's goroutines have
// ended, which is at once: every request in flight is cancelled, and the
// watch is stopped by cancelling its context (nats.go deletes its
// consumer in the background), never by waiting on a server that may be
// gone. An Open or a KeyValue that ignores its ctx delays it. Events is
// closed when Stop returns. Stop is idempotent.
func (f *Follower) Stop() {
	f.cancel()
	<-f.stopped
}

// Err returns why Events was closed: nats.ErrConnectionClosed if the
// connection was closed; nil after Stop, or while Events is open.
func (f *Follower) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// fail ends the Follower for good because of err.
func (f *Follower) fail(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
	f.cancel()
}

// sendLocked hands ev over, or gives up when the Follower stops. f.mu is
// held, so that events leave in the order their state changes were made.
func (f *Follower) sendLocked(ev Event) bool {
	select {
	case f.events <- ev:
		return true
	case <-f.ctx.Done():
		return false
	}
}

// send is sendLocked for callers that do not hold f.mu.
func (f *Follower) send(ev Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sendLocked(ev)
}

// emit hands e over if it is newer than the last entry handed over for
// its key, and reports whether it did. fromWatch entries also move the
// watch position. Entries of an older epoch (before a reset) are dropped.
func (f *Follower) emit(epoch uint64, e jetstream.KeyValueEntry, fromWatch bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if epoch != f.epoch {
		return false
	}
	if fromWatch && e.Revision() > f.pos {
		f.pos = e.Revision()
	}
	key := e.Key()
	prev, seen := f.handed[key]
	if e.Revision() <= prev.rev {
		return false
	}
	if !seen {
		// The key is a slice of the message's subject: a copy of its own
		// keeps the map from holding every subject ever seen (at 100 000
		// keys, megabytes).
		key = strings.Clone(key)
	}
	f.handed[key] = handed{rev: e.Revision(), op: e.Operation()}
	return f.sendLocked(Event{Kind: Entry, Entry: e, Polled: !fromWatch})
}

// current reports that everything stored has been handed over, unless a
// reset came in between.
func (f *Follower) current(epoch uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if epoch == f.epoch {
		f.sendLocked(Event{Kind: Current})
	}
}

// snapshot returns the bucket handle (nil: none yet), the epoch and the
// watch position.
func (f *Follower) snapshot() (jetstream.KeyValue, uint64, uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.kv, f.epoch, f.pos
}

// held returns the last entry handed over for key.
func (f *Follower) held(key string) handed {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.handed[key]
}

// flag records that a miss seen at rev (for key; "" for all keys) is
// acted on, and reports whether it was new: each miss is acted on once.
func (f *Follower) flag(key string, rev uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.flagged[key] == rev {
		return false
	}
	f.flagged[key] = rev
	return true
}

// adopt records id as the bucket's identity. If another one was known,
// the bucket was replaced: everything known about the old one is dropped,
// a Reset event is sent, and the watch is rebuilt from the new bucket's
// start. It reports whether it reset.
func (f *Follower) adopt(id identity) bool {
	if !id.known() {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.id
	f.id = id
	if !old.known() || old == id {
		return false
	}
	f.epoch++
	f.pos = 0
	f.handed = map[string]handed{}
	f.flagged = map[string]uint64{}
	f.sendLocked(Event{Kind: Reset})
	f.signal(f.stall)
	return true
}

// identify learns which incarnation of the bucket kv works on: with
// Config.Replaced its generation, otherwise its stream's creation time
// (one request; zero if it fails).
func (f *Follower) identify(ctx context.Context, kv jetstream.KeyValue) identity {
	if f.cfg.Replaced != nil {
		gen, _ := f.cfg.Replaced()
		return identity{gen: gen}
	}
	ctx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
	defer cancel()
	st, err := kv.Status(ctx)
	if err != nil {
		return identity{}
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil {
		return identity{}
	}
	return identity{created: bs.StreamInfo().Created}
}

// identified reports whether the bucket's identity is known.
func (f *Follower) identified() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.id.known()
}

// signal wakes the goroutine reading ch, unless it has a wake-up pending.
func (f *Follower) signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// mayBeGone reports whether err is how a read of a bucket whose stream
// is gone fails.
func mayBeGone(err error) bool {
	return isGone(err) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse)
}

// isGone reports whether err says the bucket's stream is gone.
func isGone(err error) bool {
	return errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, nats.ErrStreamNotFound)
}
