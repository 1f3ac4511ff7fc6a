package refresher

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// lease is leader election through one key in a KV bucket, safe on each
// process's monotonic clock alone.
//
// Every write of the lease is a publish with an expected last *stream*
// sequence (the bucket holds one key, so the stream's last sequence is the
// lease's revision, and it survives the key's expiry):
//
//   - the holder renews every ttl/4 over the revision it last wrote, and
//     trusts the lease for trustFor (3/4 ttl) after it *sent* its last
//     successful renewal;
//   - a contender claims only after it has itself seen the stream's last
//     sequence unchanged for longer than ttl, and claims over exactly that
//     sequence; or at once over an explicit release (a delete marker the
//     holder wrote when it stopped trusting), or over a bucket never
//     written (last sequence 0, first look of this process).
//
// Why no two replicas trust at once: the holder's last successful renewal
// landed at some sequence S before the contender first saw S (or a later
// sequence), so it was sent before the contender's observation began; the
// holder's trust ends 3/4 ttl after that send, the contender's claim comes
// more than ttl after its observation. A claim over S fails if anything
// was written after S. Only the rate of each process's monotonic clock
// matters (it would have to be off by 25 %); the servers' wall clocks, and
// the bucket's MaxAge, which expires the key on the stream leader's wall
// clock, play no part: if the key expires early, the holder's next renewal
// simply writes it again (the stream's last sequence is still its own).
type lease struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	kv      jetstream.KeyValue
	stream  string // KV_<bucket>
	subject string // $KV.<bucket>.leader
	id      string
	ttl     time.Duration
	log     *slog.Logger

	// changed is called, in order and from one goroutine (report), when
	// leadership is gained or lost.
	changed func(leader bool)

	renewMu    sync.Mutex // serialises renewals
	wakeReport chan struct{}

	mu       sync.Mutex
	held     bool
	rev      uint64    // the lease's revision (stream sequence) we last wrote
	acquired time.Time // when we acquired it (wall clock, in the record)
	renewed  time.Time // when the last successful write was sent (monotonic)
	leaderID string    // last known holder, for status

	// A contender's observation of the lease: the stream's last sequence
	// and when this process first saw it (monotonic).
	obsSeq     uint64
	obsAt      time.Time
	observed   bool
	looked     bool   // this process has looked at the lease at least once
	releasedAt uint64 // a release marker was seen at this sequence (0: none)

	// afterWrite, when set (tests), is called after every lease write
	// that the server accepted; a non-nil error replaces the write's
	// result, as if its reply had been lost.
	afterWrite func() error

	now func() time.Time
}

// newLease returns the lease of the lease bucket kv.
func newLease(nc *nats.Conn, js jetstream.JetStream, kv jetstream.KeyValue, id string, ttl time.Duration, log *slog.Logger, now func() time.Time, changed func(bool)) *lease {
	return &lease{nc: nc, js: js, kv: kv, stream: "KV_" + kv.Bucket(), subject: "$KV." + kv.Bucket() + "." + contract.LeaseKey,
		id: id, ttl: ttl, log: log, now: now, changed: changed, wakeReport: make(chan struct{}, 1)}
}

func (l *lease) trustFor() time.Duration { return l.ttl * 3 / 4 }

// Held reports whether this replica holds the lease now, by its own
// monotonic clock.
func (l *lease) Held() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.heldLocked()
}

// holder reports whether this replica believes it took the lease and has
// not seen it lost (its trust window may have run out).
func (l *lease) holder() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held
}

func (l *lease) heldLocked() bool {
	return l.held && time.Since(l.renewed) < l.trustFor()
}

// trustedUntil returns the end of the trust window on the monotonic clock
// and whether the lease is held now.
func (l *lease) trustedUntil() (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.renewed.Add(l.trustFor()), l.heldLocked()
}

// Leader returns the id of the last known leader ("" if none is known).
func (l *lease) Leader() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.heldLocked() {
		return l.id
	}
	return l.leaderID
}

// Confirm renews the lease now with a revision-checked write: it returns
// nil only if this replica held the lease at the moment of the write.
// Call it before every upstream fetch.
func (l *lease) Confirm(ctx context.Context) error {
	l.mu.Lock()
	held, fresh := l.heldLocked(), time.Since(l.renewed) < l.ttl/8
	l.mu.Unlock()
	switch {
	case !held:
		return ErrNotLeader
	case fresh:
		// Renewed a moment ago: a burst of fetches shares one CAS.
		return nil
	}
	return l.renew(ctx)
}

// Bound confirms the lease (as Confirm) and returns a ctx that ends when
// the trust window ends: its end moves forward with every renewal, and the
// ctx ends as soon as a renewal fails to keep the window open. Every
// upstream attempt runs under such a ctx, so that no request can reach
// the upstream after this replica may have been replaced.
func (l *lease) Bound(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if err := l.Confirm(ctx); err != nil {
		return nil, nil, err
	}
	until, held := l.trustedUntil()
	if !held {
		return nil, nil, ErrNotLeader
	}
	bctx, cancel := context.WithCancelCause(ctx)
	go func() {
		t := time.NewTimer(time.Until(until))
		defer t.Stop()
		for {
			select {
			case <-bctx.Done():
				return
			case <-t.C:
			}
			next, held := l.trustedUntil()
			if !held {
				cancel(ErrNotLeader)
				return
			}
			t.Reset(time.Until(next))
		}
	}()
	return bctx, func() { cancel(context.Canceled) }, nil
}

func (l *lease) value(acquired time.Time) []byte {
	b, _ := json.Marshal(contract.LeaseRecord{ID: l.id, AcquiredAt: acquired.UTC(), RenewedAt: l.now().UTC()})
	return b
}

// publish writes the lease record (or, with del, a release marker) over
// stream sequence expect and returns the new sequence.
func (l *lease) publish(ctx context.Context, acquired time.Time, expect uint64, del bool) (uint64, error) {
	m := nats.NewMsg(l.subject)
	if del {
		m.Header.Set(kvOperationHeader, "DEL")
	} else {
		m.Data = l.value(acquired)
	}
	ack, err := l.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequence(expect))
	if err != nil {
		return 0, err
	}
	if l.afterWrite != nil {
		if err := l.afterWrite(); err != nil {
			return 0, err
		}
	}
	return ack.Sequence, nil
}

// Headers of markers: KV-Operation (DEL, PURGE) on KV deletes and purges,
// Nats-Marker-Reason on the markers the server writes itself (MaxAge).
const (
	kvOperationHeader  = "KV-Operation"
	markerReasonHeader = "Nats-Marker-Reason"
)

// wrongLastSeq reports whether err is a refused expected-sequence write:
// someone wrote the lease since.
func wrongLastSeq(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists)
}

func (l *lease) renew(ctx context.Context) error {
	// One CAS at a time: two renewals of the same revision would make the
	// holder conflict with itself.
	l.renewMu.Lock()
	defer l.renewMu.Unlock()
	l.mu.Lock()
	if !l.held {
		l.mu.Unlock()
		return ErrNotLeader
	}
	rev, acquired, trusted := l.rev, l.acquired, l.heldLocked()
	l.mu.Unlock()
	if !trusted {
		// Our trust ran out (a slow or cut-off link). Renew only over a
		// last write that is still ours: a sequence number can come round
		// again in a lease bucket that was lost and re-created meanwhile.
		seq, w := l.lastWrite(ctx, acquired)
		switch {
		case w == writeOurs && seq == rev:
		case w == writeExpiry && seq == rev+1:
			rev = seq
		default:
			l.mu.Lock()
			l.loseLocked("lease not renewed in time, and no longer ours")
			l.mu.Unlock()
			return ErrNotLeader
		}
	}
	sent := time.Now()
	newRev, err := l.publish(ctx, acquired, rev, false)
	switch {
	case err == nil:
	case wrongLastSeq(err):
		// Someone wrote since our revision, or a write of ours landed and
		// its reply was lost, or the server aged our write out and left
		// its marker: look before stepping down.
		seq, w := l.lastWrite(ctx, acquired)
		if seq > rev && (w == writeOurs || (w == writeExpiry && seq == rev+1)) {
			l.mu.Lock()
			l.rev = seq
			l.mu.Unlock()
			sent = time.Now()
			newRev, err = l.publish(ctx, acquired, seq, false)
		}
	case ctx.Err() == nil:
		// A timeout or a lost connection: the write may have landed.
		if seq, w := l.lastWrite(ctx, acquired); w == writeOurs && seq > rev {
			newRev, err = seq, nil // this very write: renewals are serialised
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if wrongLastSeq(err) {
			// Someone else holds it: fenced.
			l.loseLocked("lease taken over")
			return ErrNotLeader
		}
		if !l.heldLocked() {
			l.loseLocked("lease not renewed in time: " + err.Error())
			return ErrNotLeader
		}
		return err
	}
	if !l.held {
		// Our trust ran out while the CAS was in flight, but the CAS
		// succeeded against our revision: we hold the lease again.
		l.held = true
		l.notify()
	}
	l.rev = newRev
	l.renewed = sent
	return nil
}

// Kinds of the lease's last write, as lastWrite reads it.
const (
	writeOther  = iota // another replica's, a release, or unknown
	writeOurs          // a record of this replica's current tenure
	writeExpiry        // the marker the server leaves when the key ages out
)

// lastWrite reads the lease's last write and returns its sequence and
// kind: a record of this replica's current tenure (same id, same
// acquisition time: a write of ours whose reply was lost), the server's
// expiry marker, or anything else.
func (l *lease) lastWrite(ctx context.Context, acquired time.Time) (uint64, int) {
	ctx, cancel := context.WithTimeout(ctx, max(l.ttl/4, 100*time.Millisecond))
	defer cancel()
	s, err := l.js.Stream(ctx, l.stream)
	if err != nil {
		return 0, writeOther
	}
	m, err := s.GetLastMsgForSubject(ctx, l.subject)
	if err != nil {
		return 0, writeOther
	}
	if m.Header.Get(markerReasonHeader) != "" {
		return m.Sequence, writeExpiry
	}
	var rec contract.LeaseRecord
	if m.Header.Get(kvOperationHeader) != "" || json.Unmarshal(m.Data, &rec) != nil ||
		rec.ID != l.id || !rec.AcquiredAt.Equal(acquired.UTC()) {
		return m.Sequence, writeOther
	}
	return m.Sequence, writeOurs
}

// loseLocked marks the lease lost and reports it once.
func (l *lease) loseLocked(why string) {
	if !l.held {
		return
	}
	l.held = false
	l.log.Warn("lost leadership", "replica", l.id, "reason", why)
	l.notify()
}

// observe reads the lease stream's last sequence and reports whether this
// replica may claim the lease now, and over which sequence: when it has
// seen no holder write for longer than ttl, when the last write is a
// release marker, or when the bucket was never written and this is the
// process's first look.
func (l *lease) observe(ctx context.Context) (seq uint64, claim bool) {
	ctx, cancel := context.WithTimeout(ctx, max(l.ttl/4, 100*time.Millisecond))
	defer cancel()
	s, err := l.js.Stream(ctx, l.stream)
	if err != nil {
		if ctx.Err() == nil {
			l.log.Debug("lease observation failed", "err", err)
		}
		return 0, false
	}
	last := s.CachedInfo().State.LastSeq
	l.mu.Lock()
	first := !l.looked
	l.looked = true
	prev, had := l.obsSeq, l.observed
	l.mu.Unlock()
	if first && last == 0 {
		return 0, true // a bucket never written: nobody can trust a lease in it
	}
	if had && last == prev {
		l.mu.Lock()
		defer l.mu.Unlock()
		return last, l.releasedAt == last || time.Since(l.obsAt) > l.ttl
	}
	// Something was written since we last looked. Only a holder's write
	// (a renewal or a claim) restarts the wait: a release lets us claim
	// at once, and the marker the server leaves when the key ages out
	// (MaxAge, on the server's wall clock) is no write of a holder, so it
	// neither restarts nor shortens the wait when it is all that changed.
	restart, released := true, false
	if m, err := s.GetLastMsgForSubject(ctx, l.subject); err == nil && m.Sequence == last {
		switch {
		case m.Header.Get(markerReasonHeader) != "":
			restart = !had || last != prev+1
			// The server aging out a release marker we saw: nothing was
			// written in between (the sequences are adjacent), so the
			// lease is still released.
			l.mu.Lock()
			released = had && last == prev+1 && l.releasedAt == prev && prev != 0
			l.mu.Unlock()
		case m.Header.Get(kvOperationHeader) == "DEL":
			released = true
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.obsSeq, l.observed = last, true
	if restart {
		l.obsAt = time.Now()
	}
	if released {
		l.releasedAt = last
	}
	return last, released || time.Since(l.obsAt) > l.ttl
}

// prime takes this process's first look at the lease before a long load
// (100 000 authorizers take seconds), so that the wait for a lease nobody
// renews — or the sight of a release — starts then, not after the load.
// It never claims; a bucket never written is left for the first real look
// (which claims it at once).
func (l *lease) prime(ctx context.Context) {
	if seq, claim := l.observe(ctx); claim && seq == 0 {
		l.mu.Lock()
		l.looked = false
		l.mu.Unlock()
	}
}

// tryAcquire takes the lease if this replica may claim it now (see
// observe), with a write over the observed sequence.
func (l *lease) tryAcquire(ctx context.Context) bool {
	seq, claim := l.observe(ctx)
	if !claim {
		return false
	}
	sent := time.Now()
	acquired := l.now()
	rev, err := l.publish(ctx, acquired, seq, false)
	if err != nil {
		if !wrongLastSeq(err) && ctx.Err() == nil {
			l.log.Debug("lease acquire failed", "err", err)
		}
		return false
	}
	l.mu.Lock()
	l.held, l.rev, l.renewed, l.acquired, l.leaderID = true, rev, sent, acquired, l.id
	l.mu.Unlock()
	l.log.Info("acquired leadership", "replica", l.id, "lease_ttl", l.ttl)
	l.notify()
	return true
}

// Release gives the lease up so a follower takes over at once: it stops
// trusting it, then writes a release marker over its own revision (a lease
// already lost is left alone).
func (l *lease) Release(ctx context.Context) {
	l.renewMu.Lock()
	defer l.renewMu.Unlock()
	l.mu.Lock()
	held, rev, acquired := l.held, l.rev, l.acquired
	l.held = false
	l.mu.Unlock()
	if !held {
		return
	}
	if l.changed != nil {
		l.changed(false)
	}
	if _, err := l.publish(ctx, acquired, rev, true); err != nil {
		l.log.Warn("lease release failed; followers take over after lease_ttl", "err", err, "lease_ttl", l.ttl)
		return
	}
	l.log.Info("released leadership", "replica", l.id)
}

// notify wakes report.
func (l *lease) notify() {
	select {
	case l.wakeReport <- struct{}{}:
	default:
	}
}

// report calls changed whenever the held state differs from what it last
// reported: in order, from one goroutine, quick flips coalesced into the
// final state. When ctx ends it reports nothing more (Release does).
func (l *lease) report(ctx context.Context) {
	last := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.wakeReport:
		}
		if cur := l.holder(); cur != last {
			last = cur
			if l.changed != nil {
				l.changed(cur)
			}
		}
	}
}

// run keeps the lease: a leader renews every ttl/4; a follower looks at
// the lease every poll interval, and at once when its watcher sees a
// release, and claims it when it may (see observe).
func (l *lease) run(ctx context.Context) {
	poll := min(l.ttl/4, 500*time.Millisecond)
	renewEvery := l.ttl / 4
	wake := make(chan struct{}, 1)
	go l.watch(ctx, wake)
	reported := make(chan struct{})
	go func() { defer close(reported); l.report(ctx) }()
	defer func() { <-reported }()

	l.tryAcquire(ctx)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		d := renewEvery
		if !l.holder() {
			d = l.nextLook(poll)
		}
		t.Reset(d)
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-t.C:
		}
		if l.holder() {
			// Renew even when our trust ran out (a slow NATS): the CAS
			// tells whether we still hold it, and a mismatch makes us
			// step down for good.
			if err := l.renew(ctx); err != nil && !errors.Is(err, ErrNotLeader) && ctx.Err() == nil {
				l.log.Warn("lease renewal failed; retrying", "err", err)
			}
			continue
		}
		l.tryAcquire(ctx)
	}
}

// nextLook is when a follower looks at the lease next: every poll, and
// just after the moment its wait for a claim ends.
func (l *lease) nextLook(poll time.Duration) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.observed {
		return poll
	}
	return max(min(poll, time.Until(l.obsAt.Add(l.ttl))+time.Millisecond), time.Millisecond)
}

// watch follows the lease key: a release (delete marker) wakes run at
// once, and every value updates the known leader id.
func (l *lease) watch(ctx context.Context, wake chan<- struct{}) {
	followKV(ctx, l.nc, l.kv, contract.LeaseKey, func(e jetstream.KeyValueEntry) {
		if e.Operation() != jetstream.KeyValuePut {
			l.mu.Lock()
			l.leaderID = ""
			l.mu.Unlock()
			select {
			case wake <- struct{}{}:
			default:
			}
			return
		}
		var rec contract.LeaseRecord
		l.mu.Lock()
		if json.Unmarshal(e.Value(), &rec) == nil {
			l.leaderID = rec.ID
		}
		// A holder's write seen now: the wait for a claim starts now
		// (the watcher is only quicker than the poll, never trusted more:
		// a claim still goes over the sequence the poll reads).
		if !l.observed || e.Revision() > l.obsSeq {
			l.obsSeq, l.obsAt, l.observed = e.Revision(), time.Now(), true
		}
		l.mu.Unlock()
	})
}
