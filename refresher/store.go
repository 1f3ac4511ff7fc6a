package refresher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// read returns the stored record of name and its revision (nil, 0 if none;
// nil and the revision if the stored record is invalid).
func (r *Refresher) read(ctx context.Context, name string) (*contract.Record, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, kvReadTimeout)
	defer cancel()
	e, err := r.kv.Get(ctx, name)
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, err
	}
	r.checkRevision(ctx, name, e)
	if err != nil {
		return nil, 0, nil
	}
	// An invalid record is treated as missing; its revision is kept so
	// that the replacement is written over it.
	return r.parseRecord(name, e.Revision(), e.Value()), e.Revision(), nil
}

// kvReadTimeout bounds a read of one key before a refresh. A read takes
// milliseconds; one that hangs is a stream without a leader (a node of
// the cluster was lost and the stream elects a new one): it fails after
// this and the refresh is retried at the transient pace, instead of
// waiting out JetStream's 5 s default while the stored token runs out.
const kvReadTimeout = 2 * time.Second

// write stores rec over revision rev (0: create). On a revision conflict
// it re-reads: if the stored token was fetched later than rec, rec is
// dropped (ErrSuperseded: the upstream honours only the newest token);
// otherwise the write is retried over the revision just read. A replica
// that no longer holds the lease writes nothing (ErrNotLeader).
func (r *Refresher) write(ctx context.Context, a *app, rec contract.Record, rev uint64) (uint64, error) {
	if err := rec.Validate(rec.App, maxRecordLifetime); err != nil {
		return 0, fmt.Errorf("write %s: not storing a record that readers reject: %w", rec.App, err)
	}
	val, err := json.Marshal(rec)
	if err != nil {
		return 0, err
	}
	return r.casWrite(ctx, rec.App, val, rev, contract.Fingerprint(rec.AccessToken), func(ctx context.Context) (uint64, bool, error) {
		cur, crev, err := r.read(ctx, rec.App)
		if err != nil {
			return 0, false, err
		}
		a.adopt(cur, crev)
		return crev, cur != nil && !cur.FetchedAt.Before(rec.FetchedAt), nil
	})
}

// casWrite stores val under key over revision rev (0: create). On a
// revision conflict it calls reread, which reads the stored record and
// returns its revision and whether it was fetched no earlier than ours:
// then ours is dropped (ErrSuperseded: the upstream honours only the
// newest credential); otherwise the write is retried over that revision.
// A replica that no longer holds the lease writes nothing (ErrNotLeader).
// fp is the fingerprint of the credential, for the logs.
func (r *Refresher) casWrite(ctx context.Context, key string, val []byte, rev uint64, fp string,
	reread func(context.Context) (uint64, bool, error)) (uint64, error) {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if !r.lease.Held() {
			// Fenced: the lease may be someone else's by now.
			r.log.Warn("lease lost during the fetch; the fetched token is discarded", "app", key, "token", fp)
			return 0, ErrNotLeader
		}
		var nrev uint64
		if rev == 0 {
			nrev, err = r.kv.Create(ctx, key, val)
		} else {
			nrev, err = r.kv.Update(ctx, key, val, rev)
		}
		if err == nil {
			return nrev, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return 0, fmt.Errorf("write %s: %w", key, err)
		}
		r.obs.WriteConflict(r.metricLabel(key))
		crev, newer, rerr := reread(ctx)
		if rerr != nil {
			return 0, fmt.Errorf("write %s: re-read after conflict: %w", key, rerr)
		}
		if newer {
			r.log.Info("a newer token was stored first; dropping ours", "app", key, "revision", crev)
			return 0, ErrSuperseded
		}
		rev = crev
	}
	return 0, fmt.Errorf("write %s: too many revision conflicts", key)
}

// publish sends the token.updated event. It carries no token.
func (r *Refresher) publish(rec contract.Record, rev uint64) {
	r.publishEvent(rec.App, contract.Event{App: rec.App, Revision: rev, ExpiresAt: rec.ExpiresAt, FetchedAt: rec.FetchedAt, Source: rec.Source})
}

// publishEvent sends ev on token.updated.<key>.
func (r *Refresher) publishEvent(key string, ev contract.Event) {
	b, _ := json.Marshal(ev)
	if err := r.nc.Publish(contract.UpdatedSubject(key), b); err != nil {
		r.log.Warn("publish event failed", "key", key, "err", err)
	}
}

// eachEntry calls fn with the last value of every key of kv matching
// filter (">" for all), deleted keys skipped, until it has seen them all;
// d bounds the whole walk.
func eachEntry(ctx context.Context, kv jetstream.KeyValue, filter string, d time.Duration, fn func(jetstream.KeyValueEntry)) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	w, err := kv.Watch(ctx, filter, jetstream.IgnoreDeletes())
	if err != nil {
		return err
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watcher of " + kv.Bucket() + " closed")
			}
			if e == nil {
				return nil
			}
			fn(e)
		}
	}
}
