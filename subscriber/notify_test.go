package subscriber_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// Three goroutines wait on Updated for each of N updates: every one of
// them is woken by every update (a broadcast, not one buffered slot).
func TestEveryUpdatedWaiterHearsEveryUpdate(t *testing.T) {
	const listeners, updates = 3, 10
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.start()
	log, _ := logBuffer(t)
	src := newSource(t, w.NC, "mp-main", subscriber.WithLogger(log))

	armed := make(chan struct{})
	heard := make(chan uint64)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for range listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range updates {
				ch := src.Updated()
				select {
				case armed <- struct{}{}:
				case <-ctx.Done():
					return
				}
				select {
				case <-ch:
				case <-ctx.Done():
					return
				}
				select {
				case heard <- src.Revision():
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	for i := range updates {
		for range listeners {
			select {
			case <-armed:
			case <-ctx.Done():
				t.Fatalf("update %d: listeners did not arm", i)
			}
		}
		rev, _ := bump(t, w, w.NC)
		for range listeners {
			select {
			case got := <-heard:
				if got < rev {
					t.Fatalf("update %d: woken at revision %d, before revision %d arrived", i, got, rev)
				}
			case <-ctx.Done():
				t.Fatalf("update %d (revision %d): not every listener was woken", i, rev)
			}
		}
	}
	wg.Wait()

	// WaitUntilUpdated returns after an update that follows the call. The
	// goroutine may call it after a bump: bump until it returns.
	done := make(chan error, 1)
	go func() { done <- src.WaitUntilUpdated(ctx) }()
	var err error
	testutil.WaitFor(t, 10*time.Second, func() bool {
		select {
		case err = <-done:
			return true
		default:
			bump(t, w, w.NC)
			return false
		}
	}, "WaitUntilUpdated did not return after updates")
	if err != nil {
		t.Fatalf("WaitUntilUpdated = %v", err)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancelShort()
	if err := src.WaitUntilUpdated(short); err != context.DeadlineExceeded {
		t.Fatalf("WaitUntilUpdated without an update = %v, want DeadlineExceeded", err)
	}
}

// Many updates, none read by the listeners until all are done: every
// Listener and the OnUpdate callback see every revision, in order. Each
// write waits until the Source has it: the bucket keeps one revision per
// key, so a revision replaced before the watch delivered it is gone for
// every watcher (the Source then skips to the newer one).
func TestListenersAndCallbackSeeEveryRevisionInOrder(t *testing.T) {
	const updates = 25
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.start()
	log, _ := logBuffer(t)
	var mu sync.Mutex
	var called []uint64
	var inCallback sync.Mutex // the callback must never run concurrently with itself
	src := newSource(t, w.NC, "mp-main", subscriber.WithLogger(log), subscriber.WithOnUpdate(func(tok *subscriber.Token) {
		if !inCallback.TryLock() {
			t.Error("OnUpdate called concurrently")
			return
		}
		defer inCallback.Unlock()
		mu.Lock()
		called = append(called, tok.Revision)
		mu.Unlock()
	}))
	first := src.Revision()
	ls := []*subscriber.Listener{src.Listen(), src.Listen(), src.Listen()}

	want := []uint64{}
	for range updates {
		rev, _ := bump(t, w, w.NC)
		testutil.WaitFor(t, 5*time.Second, func() bool { return src.Revision() >= rev }, "the Source did not get revision %d", rev)
		want = append(want, rev)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, l := range ls {
		var got []uint64
		for len(got) < updates {
			tok, err := l.Next(ctx)
			if err != nil {
				t.Fatalf("listener %d after %v: %v", i, got, err)
			}
			got = append(got, tok.Revision)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("listener %d saw %v, want %v", i, got, want)
		}
	}
	wantCalled := append([]uint64{first}, want...)
	testutil.WaitFor(t, 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(called) >= len(wantCalled)
	}, "OnUpdate was not called for every revision")
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(called, wantCalled) {
		t.Fatalf("OnUpdate saw %v, want %v", called, wantCalled)
	}
}
