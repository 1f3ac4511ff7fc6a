package refresher

import (
	"container/heap"
	"context"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// Scheduling of a component's work at 100 000 authorizers.
//
// Each component keeps its authorizers and pending authorization codes in
// a heap ordered by when each is due, so that a wake-up of the planner
// costs O(k log n) for the k items due, never a walk over every
// authorizer. An item's place in the heap is updated under its own mu
// (lock order: the item's mu, then the component's hmu, a leaf lock), so
// that the heap never holds a moment later than the item's real one; the
// planner checks each popped item against its real state, so a stale
// earlier moment only costs a check.
//
// Due items become jobs on the refresher's queue (planner.go), at most
// componentJobs of one component queued or running at once, so that a
// backlog of authorizers neither parks a goroutine per authorizer nor
// takes every refresh slot from the other apps. Every upstream call of a
// component — api_component_token, api_query_auth, api_authorizer_token,
// api_get_authorizer_list, retries included — first waits on the
// component's rate limiter (max_calls_per_second), then on the lease.

// DefaultMaxCallsPerSecond is a wechat-component's default limit of
// upstream calls per second (max_calls_per_second). 100 000 authorizers
// with WeChat's 7200 s tokens need about 21 calls a second in the steady
// state (one each per 4800 s), and about 55 a second after a mass
// authorization (spread over the authorizer window, authorizerJitter).
const DefaultMaxCallsPerSecond = 100

// authorizerJitter is the least width of the refresh window of an
// authorizer token, as a fraction of its lifetime: with the default
// policy (2/3) a 7200 s token is refreshed between 65 and 95 minutes
// after it was fetched, so that authorizers authorized together (a
// migration, a mass authorization) do not fall due together. The mean
// stays the policy's At: the calls per day do not change.
const authorizerJitter = 0.25

// slot is an item's place in its component's due heap.
type slot struct {
	at  time.Time
	idx int // in the heap; -1 when not in it
	au  *authorizer
	pc  *pendingCode
}

// dueHeap is a min-heap of slots by at.
type dueHeap []*slot

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *dueHeap) Push(x any) {
	s := x.(*slot)
	s.idx = len(*h)
	*h = append(*h, s)
}
func (h *dueHeap) Pop() any {
	old := *h
	s := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	s.idx = -1
	return s
}

// schedule puts s into c's heap at at (or moves it there) and wakes the
// planner if that is before its timer. The caller holds the item's mu.
func (c *component) schedule(s *slot, at time.Time) {
	c.hmu.Lock()
	s.at = at
	if s.idx >= 0 {
		heap.Fix(&c.due, s.idx)
	} else {
		heap.Push(&c.due, s)
	}
	c.hmu.Unlock()
	if c.wake != nil {
		c.wake(at)
	}
}

// unschedule takes s out of c's heap. The caller holds the item's mu.
func (c *component) unschedule(s *slot) {
	c.hmu.Lock()
	if s.idx >= 0 {
		heap.Remove(&c.due, s.idx)
	}
	c.hmu.Unlock()
}

// popDue takes from c's heap the slots due at now, at most max of them.
func (c *component) popDue(now time.Time, max int) []*slot {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	var out []*slot
	for len(out) < max && len(c.due) > 0 && !c.due[0].at.After(now) {
		out = append(out, heap.Pop(&c.due).(*slot))
	}
	return out
}

// nextDue is the earliest moment in c's heap (zero if empty).
func (c *component) nextDue() time.Time {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	if len(c.due) == 0 {
		return time.Time{}
	}
	return c.due[0].at
}

// componentJobs is how many jobs of one component may be queued or
// running at once: half the refresh slots (at least one), so that the
// other apps keep theirs.
func (r *Refresher) componentJobs() int { return max(1, cap(r.sem)/2) }

// takeJob reserves one of c's job places; false if all are taken.
func (c *component) takeJob(limit int) bool {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	if c.jobs >= limit {
		return false
	}
	c.jobs++
	return true
}

// jobDone gives back a job place of c, and wakes the planner if more of
// c's items are due.
func (r *Refresher) jobDone(c *component) {
	c.hmu.Lock()
	c.jobs--
	more := len(c.due) > 0 && c.due[0].at.UnixNano() <= r.timerAt.Load()
	c.hmu.Unlock()
	if more {
		r.Tick()
	}
}

// limiterFor returns the rate limiter of max_calls_per_second (0: the
// default); burst 1, so that no second holds more than the limit (+1).
func limiterFor(perSecond float64) *rate.Limiter {
	if perSecond <= 0 {
		perSecond = DefaultMaxCallsPerSecond
	}
	return rate.NewLimiter(rate.Limit(perSecond), 1)
}

// setLimit applies a (reloaded) max_calls_per_second.
func (c *component) setLimit(perSecond float64) {
	if perSecond <= 0 {
		perSecond = DefaultMaxCallsPerSecond
	}
	c.lim.SetLimit(rate.Limit(perSecond))
}

// withLimit makes gate wait for c's rate limiter first: every upstream
// call of a component, each attempt, passes the limiter, then the lease's
// gate (leaseGate), whose trust window is measured after the wait.
func withLimit(c *component, gate wechat.Gate) wechat.Gate {
	return func(ctx context.Context, attempt int) (context.Context, context.CancelFunc, error) {
		if err := c.lim.Wait(ctx); err != nil {
			return nil, nil, err
		}
		if gate == nil {
			return ctx, func() {}, nil
		}
		return gate(ctx, attempt)
	}
}

// metricLabel is the app label of key in metrics: an authorizer's keys
// (<component>.<authorizer_appid>…) count under their component, never
// one series per authorizer; other keys are their own label. r.comps is
// read without r.mu: it is built by New and never changed after (Reload
// refuses to add or remove a component).
func (r *Refresher) metricLabel(key string) string {
	if comp, _, ok := strings.Cut(key, "."); ok && r.comps[comp] != nil {
		return comp
	}
	return key
}
