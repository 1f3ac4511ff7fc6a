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
)

// leaseKey is the one key of the lease bucket.
const leaseKey = "leader"

// LeaseRecord is the value of the lease key.
type LeaseRecord struct {
	ID         string    `json:"id"`
	AcquiredAt time.Time `json:"acquired_at"`
	RenewedAt  time.Time `json:"renewed_at"`
}

// LeaseBucket names the lease bucket of a token bucket.
func LeaseBucket(bucket string) string { return bucket + "_lease" }

// lease is leader election through one key in a KV bucket whose
// bucket-wide TTL (MaxAge) is the lease TTL: Create takes the lease, a
// revision-checked Update renews it (and restarts its age), Delete with
// the last revision releases it, and a leader that stops renewing loses it
// when the server ages the key out. This is the approach of
// ripienaar/nats-kv-leader-elect; per-key TTLs are avoided because Update
// drops them (nats.go#1994).
//
// The holder trusts itself for at most ttl*3/4 after the moment it sent
// its last successful renewal, measured on the monotonic clock, so it
// stops acting as leader before the server can hand the lease to another
// replica, whatever the wall clocks say.
type lease struct {
	nc  *nats.Conn
	kv  jetstream.KeyValue
	id  string
	ttl time.Duration
	log *slog.Logger

	// changed is called, in order and from one goroutine (report), when
	// leadership is
	// gained or lost.
	changed func(leader bool)

	renewMu    sync.Mutex // serialises renewals
	wakeReport chan struct{}

	mu       sync.Mutex
	held     bool
	rev      uint64
	acquired time.Time
	renewed  time.Time // when the last successful CAS was sent (monotonic)
	leaderID string    // last known holder, for status

	now func() time.Time
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

func (l *lease) value(acquired time.Time) []byte {
	b, _ := json.Marshal(LeaseRecord{ID: l.id, AcquiredAt: acquired.UTC(), RenewedAt: l.now().UTC()})
	return b
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
	rev, acquired := l.rev, l.acquired
	l.mu.Unlock()
	sent := time.Now()
	newRev, err := l.kv.Update(ctx, leaseKey, l.value(acquired), rev)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyNotFound) {
			// Someone else holds it, or it expired: fenced.
			l.loseLocked("lease taken over or expired")
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

// loseLocked marks the lease lost and reports it once.
func (l *lease) loseLocked(why string) {
	if !l.held {
		return
	}
	l.held = false
	l.log.Warn("lost leadership", "replica", l.id, "reason", why)
	l.notify()
}

// tryAcquire takes the lease if nobody holds it.
func (l *lease) tryAcquire(ctx context.Context) bool {
	sent := time.Now()
	acquired := l.now()
	rev, err := l.kv.Create(ctx, leaseKey, l.value(acquired))
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) && ctx.Err() == nil {
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

// Release gives the lease up so a follower takes over at once. It is a
// revision-checked delete: a lease already lost is left alone.
func (l *lease) Release(ctx context.Context) {
	l.mu.Lock()
	held, rev := l.held, l.rev
	l.held = false
	l.mu.Unlock()
	if !held {
		return
	}
	if l.changed != nil {
		l.changed(false)
	}
	if err := l.kv.Delete(ctx, leaseKey, jetstream.LastRevision(rev)); err != nil {
		l.log.Warn("lease release failed; followers take over when it expires", "err", err, "lease_ttl", l.ttl)
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

// run keeps the lease: a leader renews every ttl/4; a follower tries to
// acquire whenever the key is deleted or expires (seen by a watcher) and,
// as a safety net against a stalled watcher, every poll interval.
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
		var d time.Duration
		if l.holder() {
			d = renewEvery
		} else {
			d = poll
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

// watch follows the lease key: a delete, purge or expiry wakes run at
// once, and every value updates the known leader id.
func (l *lease) watch(ctx context.Context, wake chan<- struct{}) {
	followKV(ctx, l.nc, l.kv, leaseKey, func(e jetstream.KeyValueEntry) {
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
		var rec LeaseRecord
		if json.Unmarshal(e.Value(), &rec) == nil {
			l.mu.Lock()
			l.leaderID = rec.ID
			l.mu.Unlock()
		}
	})
}
