package subscriber_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// The stored token has expired when NewSource starts: the Source asks for
// one (empty token.refresh request). Later its token expires with nothing
// newer written: Token reports ErrExpired (still returning the token),
// and the Source asks again. A stand-in refresher answers on the wire
// contract, writing what it answers into the bucket.
func TestExpiredTokensAreReportedAndReplaced(t *testing.T) {
	w := newWorld(t, wechatsim.Options{})
	kv := ensureBucket(t, w.JS)
	putRecord(t, kv, contract.Record{App: "mp-main", AccessToken: "EXPIRED-0", FetchedAt: time.Now().Add(-3 * time.Hour),
		ExpiresAt: time.Now().Add(-time.Hour), Source: "scheduled"})

	requests := make(chan []byte, 10)
	gate := make(chan struct{})
	var n atomic.Int32
	sub, err := w.NC.Subscribe(contract.RefreshSubject("mp-main"), func(m *nats.Msg) {
		requests <- m.Data
		i := n.Add(1)
		life := 1500 * time.Millisecond // the first answer expires soon
		if i > 1 {
			<-gate // hold the second answer until the test has seen the expiry
			life = time.Hour
		}
		rec := contract.Record{App: "mp-main", AccessToken: fmt.Sprintf("FRESH-%d", i), FetchedAt: time.Now(), ExpiresAt: time.Now().Add(life), Source: "passive"}
		val, _ := json.Marshal(rec)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rev, err := kv.Put(ctx, "mp-main", val)
		if err != nil {
			t.Errorf("stand-in refresher: put: %v", err)
			return
		}
		b, _ := json.Marshal(contract.RefreshReply{Record: rec, Revision: rev})
		_ = m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := w.NC.Flush(); err != nil {
		t.Fatal(err)
	}

	var clock atomic.Int64 // offset added to the real time
	now := func() time.Time { return time.Now().Add(time.Duration(clock.Load())) }
	log, _ := logBuffer(t)
	src := newSource(t, w.NC, "mp-main", subscriber.WithLogger(log), subscriber.WithClock(now),
		subscriber.WithBackoff(20*time.Millisecond, 200*time.Millisecond))
	tok, err := src.Token()
	if err != nil || tok.AccessToken != "FRESH-1" {
		t.Fatalf("NewSource over an expired record: Token = %v, %v", tok, err)
	}
	if body := <-requests; len(body) != 0 {
		t.Errorf("the Source asked with %q, want an empty request", body)
	}

	// The injected clock decides Fresh; Token's state flips by timer.
	clock.Store(int64(time.Hour))
	if src.Fresh() {
		t.Error("Fresh with the clock an hour ahead")
	}
	clock.Store(0)
	if !src.Fresh() {
		t.Error("not Fresh with the clock back")
	}

	testutil.WaitFor(t, 5*time.Second, func() bool {
		_, err := src.Token()
		return errors.Is(err, subscriber.ErrExpired)
	}, "Token did not report the expiry")
	tok, _ = src.Token()
	if tok == nil || tok.AccessToken != "FRESH-1" {
		t.Errorf("an expired Token returned %v, want the last token", tok)
	}
	// AccessToken agrees with Token: the expired token, and ErrExpired.
	if s, err := src.AccessToken(); s != "FRESH-1" || !errors.Is(err, subscriber.ErrExpired) {
		t.Errorf("AccessToken of an expired token = %q, %v; want the last token and ErrExpired", s, err)
	}
	if src.Fresh() {
		t.Error("Fresh with an expired token")
	}
	select {
	case body := <-requests:
		if len(body) != 0 {
			t.Errorf("the Source asked with %q, want an empty request", body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the Source did not ask for a token after its own expired")
	}
	close(gate)
	testutil.WaitFor(t, 5*time.Second, func() bool {
		tok, err := src.Token()
		return err == nil && tok.AccessToken == "FRESH-2"
	}, "the Source did not take the new token")
}
