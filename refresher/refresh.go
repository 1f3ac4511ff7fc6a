package refresher

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// refreshNeed says when a stored record makes a fetch unnecessary.
type refreshNeed struct {
	// stale: a record with a revision greater than this makes the
	// fetch unnecessary (passive requests).
	stale *uint64
	// force asks the upstream for a new token (stable_token force mode).
	force bool
}

// satisfiedBy reports whether the stored record (rec, rev) already
// satisfies the need, so that no fetch is made.
func (r *Refresher) satisfiedBy(a *app, rec *contract.Record, rev uint64, need refreshNeed, now time.Time) bool {
	if rec == nil || !rec.ExpiresAt.After(now) || !a.owns(rec) {
		return false
	}
	// A stale revision newer than the stored one names no token anyone
	// holds: it asks for a valid token, like an empty request.
	if need.stale != nil && *need.stale <= rev {
		return rev > *need.stale
	}
	return a.dueOf(rec).After(now)
}

// refresh makes sure a holds a token that satisfies need: it re-reads the
// key, fetches from upstream only if the stored record does not satisfy
// need, writes the result revision-checked, and publishes the event. It is
// called inside a flight (one at a time per app).
func (r *Refresher) refresh(ctx context.Context, a *app, source string, need refreshNeed) flightResult {
	start := time.Now()
	name := a.name
	// Read what is stored now: another replica may have written.
	rec, rev, err := r.read(ctx, name)
	if err != nil {
		return r.failed(a, source, fmt.Errorf("read %s: %w", name, err), start)
	}
	a.adopt(rec, rev)
	now := r.now()
	// A token fetched earlier whose write failed is the newest one
	// upstream issued: store it, never fetch over it (the fetch would
	// invalidate it, and the fleet's token with it).
	if p := a.unstored(now); p != nil {
		return r.store(ctx, a, *p, rev, source, start)
	}
	if r.satisfiedBy(a, rec, rev, need, now) {
		return flightResult{rec: *rec, rev: rev}
	}
	if err := r.lease.Confirm(ctx); err != nil {
		return flightResult{rec: derefRec(rec), rev: rev, err: err}
	}
	if err := r.checkQuota(a, source); err != nil {
		return r.failed(a, source, err, start)
	}

	// Every attempt, retries included, is sent only inside the lease's
	// trust window and ends with it (Bound). fetched_at is when the
	// attempt that succeeded was sent: the token was issued after it, so
	// expires_at computed from it is never late, and when two fetches
	// race, the one sent later (the newest upstream) wins.
	var fetched time.Time
	gate := r.leaseGate(&fetched)
	fetchStart := time.Now()
	cfg := a.config()
	var at attempts
	tok, err := r.fetchToken(at.observe(ctx), cfg, need.force, gate)
	r.obs.UpstreamCall(name, time.Since(fetchStart), err)
	r.auditCall(ctx, name, name, cfg.Kind, source, at, contract.Fingerprint(tok.AccessToken))
	if !fetched.IsZero() {
		a.countCall(r.now())
	}
	if err != nil {
		res := r.failed(a, source, err, start)
		r.saveLater(a)
		return res
	}
	// The state write is not on the reply's path: one saver per app
	// writes it, in order, after the flight's waiters have their answer.
	defer r.saveLater(a)
	if rec != nil && rec.AccessToken == tok.AccessToken && a.owns(rec) &&
		(rec.ExpiresAt.After(now) || cfg.spec().rotation == sameUntilExpiry) {
		// The upstream hands back the token we already store
		// (stable_token in normal mode, Feishu above its window, WeCom
		// inside the validity): no write, no event, the first known
		// expires_at kept; check again later.
		a.unchanged(fetched, tok.ExpiresIn)
		return flightResult{rec: *rec, rev: rev}
	}
	nrec := contract.Record{
		App: name, AppID: cfg.UpstreamID(), Kind: cfg.Kind, AccessToken: tok.AccessToken,
		FetchedAt: fetched, ExpiresAt: fetched.Add(capLifetime(tok.ExpiresIn)),
		Source: source,
	}
	return r.store(ctx, a, nrec, rev, source, start)
}

// leaseGate is the wechat.Gate of every upstream call: each attempt,
// retries included, is sent only inside the lease's trust window and ends
// with it (lease.Bound); *sent becomes the (wall-clock) send time of the
// attempt, so after a success it is that of the attempt that succeeded.
func (r *Refresher) leaseGate(sent *time.Time) wechat.Gate {
	return func(ctx context.Context, _ int) (context.Context, context.CancelFunc, error) {
		bctx, cancel, err := r.lease.Bound(ctx)
		if err != nil {
			return nil, nil, err
		}
		*sent = r.now().UTC()
		return bctx, cancel, nil
	}
}

// store writes a fetched record over revision rev and publishes its event.
// A write that fails for any reason but a newer stored token or a lost
// lease keeps the record in memory (app.pending): the next attempt, paced
// like a transient failure, writes it instead of fetching again.
func (r *Refresher) store(ctx context.Context, a *app, nrec contract.Record, rev uint64, source string, start time.Time) flightResult {
	name := a.name
	nrev, err := r.write(ctx, a, nrec, rev)
	if err != nil {
		if errors.Is(err, ErrSuperseded) {
			a.dropPending()
			cur, crev := a.current()
			return flightResult{rec: derefRec(cur), rev: crev}
		}
		if errors.Is(err, ErrNotLeader) {
			// Fenced: the next leader fetches its own; ours is dropped.
			a.dropPending()
			return r.failed(a, source, err, start)
		}
		if nrec.ExpiresAt.After(r.now()) {
			first := a.keepPending(nrec)
			if first {
				r.obs.Alert(name, AlertTokenNotStored)
				r.log.Error("ALERT token_not_stored: a token fetched from upstream could not be written to the bucket; "+
					"it is kept in memory and only the write is retried (no new fetch while it is valid)",
					"app", name, "alert", AlertTokenNotStored, "token", contract.Fingerprint(nrec.AccessToken),
					"expires_at", nrec.ExpiresAt.Format(time.RFC3339), "err", err)
			}
			err = fmt.Errorf("%w: %w", ErrNotStored, err)
		} else {
			a.dropPending()
		}
		return r.failed(a, source, err, start)
	}
	a.stored(nrec, nrev)
	r.publish(nrec, nrev)
	if len(a.ticketList()) > 0 || a.config().Kind == KindWeChatComponent {
		// The app's tickets (a component's authorizers) wait for a valid
		// token: plan them now.
		r.Tick()
	}
	r.obs.Refreshed(name, source, nrec.ExpiresAt)
	r.log.Info("token refreshed", "app", name, "source", source, "revision", nrev,
		"token", contract.Fingerprint(nrec.AccessToken), "expires_at", nrec.ExpiresAt.Format(time.RFC3339),
		"duration", time.Since(start).Round(time.Millisecond))
	return flightResult{rec: nrec, rev: nrev}
}

func derefRec(rec *contract.Record) contract.Record {
	if rec == nil {
		return contract.Record{}
	}
	return *rec
}

// failed records a failed refresh and schedules the next attempt.
func (r *Refresher) failed(a *app, source string, err error, start time.Time) flightResult {
	if errors.Is(err, ErrNotLeader) || errors.Is(err, context.Canceled) {
		if errors.Is(err, ErrNotLeader) {
			r.log.Info("refresh stopped: this replica no longer holds the lease; the next leader refreshes",
				"app", a.name, "source", source, "duration", time.Since(start).Round(time.Millisecond))
		}
		cur, rev := a.current()
		return flightResult{rec: derefRec(cur), rev: rev, err: err}
	}
	now := r.now()
	retry := a.failure(err, now)
	r.obs.RefreshFailed(a.name, source, err)
	attrs := []any{"app", a.name, "source", source, "err", err, "retry_in", retry.Sub(now).Round(time.Millisecond),
		"duration", time.Since(start).Round(time.Millisecond)}
	var we *wechat.Error
	if errors.As(err, &we) {
		attrs = append(attrs, "errcode", we.Code, "errmsg", we.Msg)
		if alert := alertFor(we.Code); alert != "" {
			attrs = append(attrs, "alert", alert)
		}
	}
	r.log.Error("token refresh failed; the stored token is kept", attrs...)
	if we != nil {
		ip := whitelistIP(we.Code, we.Msg)
		if msg := alertMessage(we.Code, ip); msg != "" {
			alertAttrs := []any{"app", a.name, "alert", alertFor(we.Code), "errcode", we.Code, "retry_in", retry.Sub(now).Round(time.Second)}
			if ip != "" {
				alertAttrs = append(alertAttrs, "ip", ip)
			}
			r.log.Error(msg, alertAttrs...)
		}
	}
	cur, rev := a.current()
	return flightResult{rec: derefRec(cur), rev: rev, err: err}
}
