package refresher

import (
	"context"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// loop starts the refreshes that are due whenever the earliest refresh
// moment arrives, the cron tick fires (Tick), or something changes.
func (r *Refresher) loop(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		next := r.plan()
		d := time.Hour
		if !next.IsZero() {
			d = max(next.Sub(r.now()), 5*time.Millisecond)
		}
		d = min(d, time.Hour)
		r.timerAt.Store(r.now().Add(d).UnixNano())
		t.Reset(d)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.wake:
		}
	}
}

// Tick is the cron job: it wakes the planner, which starts every refresh
// that is due. It is safe to call at any time.
func (r *Refresher) Tick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// plan starts a background refresh of every app that is due and returns
// the earliest future refresh moment (zero if none). A follower plans
// nothing.
func (r *Refresher) plan() time.Time {
	if r.lease == nil || !r.lease.Held() {
		return time.Time{}
	}
	now := r.now()
	var next time.Time
	for _, a := range r.appList() {
		if tn := r.planTickets(a, now); !tn.IsZero() && (next.IsZero() || tn.Before(next)) {
			next = tn
		}
		due, busy := a.dueAt()
		if busy {
			continue
		}
		if !due.After(now) {
			source := contract.SourceScheduled
			if rec, _ := a.current(); rec == nil {
				source = contract.SourceStartup // first token of this app
			}
			r.startRefresh(a, source)
			continue
		}
		if next.IsZero() || due.Before(next) {
			next = due
		}
	}
	// Components' authorizers and pending codes (component.go).
	if cn := r.planComponents(now); !cn.IsZero() && (next.IsZero() || cn.Before(next)) {
		next = cn
	}
	return next
}

// queued is a scheduled refresh waiting for a free slot: an app's (a, f,
// source) or a component's job (component_sched.go).
type queued struct {
	a      *app
	f      *flight
	source string
	job    func()
}

// enqueue queues job to run in a refresh slot; pump starts it.
func (r *Refresher) enqueue(job func()) {
	r.qmu.Lock()
	r.queue = append(r.queue, queued{job: job})
	r.qmu.Unlock()
	r.pump()
}

// startRefresh queues one scheduled refresh of a; pump starts it when one
// of the WithConcurrency slots is free. No goroutine waits meanwhile.
func (r *Refresher) startRefresh(a *app, source string) {
	f, started := a.join()
	if !started {
		return
	}
	r.qmu.Lock()
	r.queue = append(r.queue, queued{a: a, f: f, source: source})
	r.qmu.Unlock()
	r.pump()
}

// pump starts queued refreshes while slots are free.
func (r *Refresher) pump() {
	for {
		select {
		case r.sem <- struct{}{}:
		default:
			return
		}
		r.qmu.Lock()
		if len(r.queue) == 0 {
			r.qmu.Unlock()
			<-r.sem
			return
		}
		q := r.queue[0]
		r.queue[0] = queued{}
		r.queue = r.queue[1:]
		r.qmu.Unlock()
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if q.job != nil {
				q.job()
				<-r.sem
				r.pump()
				return
			}
			var res flightResult
			if err := r.refreshCtx.Err(); err != nil {
				res = flightResult{err: err}
			} else {
				res = r.refresh(r.refreshCtx, q.a, q.source, refreshNeed{})
			}
			q.a.finish(q.f, res)
			<-r.sem
			r.pump()
			// Re-plan only if this app is now due before the loop's timer.
			if due, _ := q.a.dueAt(); due.UnixNano() < r.timerAt.Load() {
				r.Tick()
			}
		}()
	}
}
