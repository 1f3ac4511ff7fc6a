package subscriber_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// TestSignWithRealRefresher: Client.Sign and Source.Sign get signatures
// from the refresher that the emulator's JS-SDK check accepts; a request
// sent while no refresher runs yet (no responders, retried) is answered
// once one has started and fetched the ticket.
func TestSignWithRealRefresher(t *testing.T) {
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.app.Tickets = []string{contract.TicketJSAPI}
	c, err := subscriber.NewClient(w.NC, subscriber.WithBackoff(10*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type result struct {
		rep contract.SignReply
		err error
	}
	early := make(chan result, 1)
	go func() {
		rep, err := c.Sign(ctx, "mp-main", "https://shop.example/early")
		early <- result{rep, err}
	}()
	w.start()

	r := <-early
	if r.err != nil {
		t.Fatalf("Sign before the refresher started: %v", r.err)
	}
	if err := w.Sim.CheckSignature(w.app.AppID, "https://shop.example/early", r.rep.NonceStr, r.rep.Timestamp, r.rep.Signature); err != nil {
		t.Fatalf("early signature refused: %v", err)
	}
	if r.rep.AppID != w.app.AppID || r.rep.AgentID != 0 {
		t.Errorf("reply %+v: want appId %s and no agentId", r.rep, w.app.AppID)
	}

	src, err := c.Source(ctx, "mp-main")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := src.Sign(ctx, "https://shop.example/p?id=7#section")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Sim.CheckSignature(w.app.AppID, "https://shop.example/p?id=7", rep.NonceStr, rep.Timestamp, rep.Signature); err != nil {
		t.Fatalf("Source.Sign signature refused: %v", err)
	}
}

// TestSignErrors: bad arguments are refused before anything is sent;
// the refresher's 4xx replies come back as *RequestError at once (not
// retried), naming token.sign.
func TestSignErrors(t *testing.T) {
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.app.Tickets = []string{contract.TicketJSAPI}
	w.start()
	c, err := subscriber.NewClient(w.NC)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, bad := range []struct{ app, url string }{
		{"mp-main", ""}, {"mp-main", "/relative"}, {"mp-main", "https://x/" + strings.Repeat("a", contract.MaxSignURL)},
		{"", "https://x/"}, {"mp main", "https://x/"}, {"mp-main.jsapi", "https://x/"},
	} {
		if _, err := c.Sign(ctx, bad.app, bad.url); !errors.Is(err, subscriber.ErrInvalidArgument) {
			t.Errorf("Sign(%q, %.30q) = %v, want ErrInvalidArgument", bad.app, bad.url, err)
		}
	}
	for _, c2 := range []struct {
		app  string
		opts []subscriber.SignOption
		code int
	}{
		{"nope", nil, contract.CodeNotFound},
		{"mp-main", []subscriber.SignOption{subscriber.SignWithTicket(contract.TicketAgentConfig)}, contract.CodeNotFound},
		{"mp-main", []subscriber.SignOption{subscriber.SignWithTicket("wx_card")}, contract.CodeBadRequest},
	} {
		start := time.Now()
		_, err := c.Sign(ctx, c2.app, "https://shop.example/", c2.opts...)
		var re *subscriber.RequestError
		if !errors.As(err, &re) || re.Code != c2.code || !strings.Contains(err.Error(), "token.sign failed") {
			t.Errorf("Sign(%q) = %v, want a token.sign RequestError %d", c2.app, err, c2.code)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("a %d took %v: retried?", c2.code, d)
		}
	}
	_ = c.Close()
	if _, err := c.Sign(ctx, "mp-main", "https://shop.example/"); !errors.Is(err, subscriber.ErrClosed) {
		t.Errorf("Sign after Close = %v, want ErrClosed", err)
	}
}

// TestSignGivesUpWithCtx: with no refresher, Sign retries until its ctx
// ends and then says that nobody answered.
func TestSignGivesUpWithCtx(t *testing.T) {
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	c, err := subscriber.NewClient(w.NC, subscriber.WithBackoff(10*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err = c.Sign(ctx, "mp-main", "https://shop.example/")
	if !errors.Is(err, subscriber.ErrNoResponders) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sign without a refresher = %v, want ErrNoResponders and DeadlineExceeded", err)
	}
	testutil.WaitFor(t, time.Second, func() bool { return ctx.Err() != nil }, "returned before ctx ended")
}
