package refresher

import (
	"encoding/json"
	"sync"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// flight is one refresh in progress; everyone who needs the app's token
// refreshed meanwhile waits for it and shares its result.
type flight struct {
	done chan struct{}
	res  flightResult

	// waiters are token.refresh requests parked on this flight without a
	// goroutine each; finish answers them from one goroutine.
	wmu      sync.Mutex
	finished bool
	waiters  []func(res flightResult, enc func() []byte)
}

// park adds a waiter unless the flight has finished.
func (f *flight) park(w func(res flightResult, enc func() []byte)) bool {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if f.finished {
		return false
	}
	f.waiters = append(f.waiters, w)
	return true
}

// inFlight returns the refresh in flight, if any.
func (a *app) inFlight() *flight {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.flight
}

type flightResult struct {
	rec contract.Record
	rev uint64
	err error
}

// join returns the refresh in flight, or starts one (started true): the
// caller must then finish it. It is joinOrStart for an unforced refresh:
// one place creates flights.
func (a *app) join() (f *flight, started bool) {
	f, started, _ = a.joinOrStart(time.Time{}, false, 0)
	return f, started
}

// finish ends f with res: the app takes new flights again, every waiter
// on f.done sees res, and the parked requests are answered from one
// goroutine.
func (a *app) finish(f *flight, res flightResult) {
	a.mu.Lock()
	if a.flight == f {
		a.flight = nil
	}
	a.mu.Unlock()
	f.res = res
	close(f.done)
	f.wmu.Lock()
	f.finished = true
	ws := f.waiters
	f.waiters = nil
	f.wmu.Unlock()
	if len(ws) > 0 {
		go func() {
			var b []byte
			enc := func() []byte {
				if b == nil {
					b, _ = json.Marshal(contract.RefreshReply{Record: res.rec, Revision: res.rev})
				}
				return b
			}
			for _, w := range ws {
				w(res, enc)
			}
		}()
	}
}

// joinOrStart joins the refresh in flight, or starts one (started true;
// the caller must finish it). A forced refresh is started only if the last
// one began at least minGap ago; otherwise limited is true and nothing is
// started.
func (a *app) joinOrStart(now time.Time, forced bool, minGap time.Duration) (f *flight, started, limited bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.flight != nil {
		return a.flight, false, false
	}
	if forced {
		if !a.lastForced.IsZero() && now.Sub(a.lastForced) < minGap {
			return nil, false, true
		}
		a.lastForced = now
	}
	a.flight = &flight{done: make(chan struct{})}
	return a.flight, true, false
}
