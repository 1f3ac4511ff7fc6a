package wechat_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// simClock is the emulator's clock, advanced by the test.
type simClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *simClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *simClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestFetchTicketAgainstEmulator: a ticket fetched with a valid token is
// one upstream honours; a rejected token gives an error matching
// ErrTokenRejected with upstream's code; no error or formatting shows the
// access token or the ticket.
func TestFetchTicketAgainstEmulator(t *testing.T) {
	clock := &simClock{t: time.Date(2024, 3, 1, 4, 0, 0, 0, time.UTC)}
	sim, srv := wechatsim.NewServer(wechatsim.Options{Now: clock.Now})
	defer srv.Close()
	sim.AddApp(testAppID, testSecret)
	c := wechat.New(wechat.WithBaseURL(srv.URL))
	ctx := context.Background()
	cred := wechat.Credentials{AppID: testAppID, Secret: testSecret}
	old, err := c.Fetch(ctx, wechat.KindClassic, "", cred, false)
	if err != nil {
		t.Fatal(err)
	}
	gated := 0
	gate := func(ctx context.Context, _ int) (context.Context, context.CancelFunc, error) {
		gated++
		return ctx, func() {}, nil
	}
	tk, err := c.FetchTicket(ctx, "", old.AccessToken, contract.TicketJSAPI, gate)
	if err != nil {
		t.Fatalf("FetchTicket: %v", err)
	}
	if tk.Type != contract.TicketJSAPI || tk.ExpiresIn != 7200*time.Second || tk.Value != sim.LastTicket(testAppID, contract.TicketJSAPI) {
		t.Fatalf("ticket %v is not the one upstream issued", tk)
	}
	if err := sim.CheckTicket(tk.Value); err != nil {
		t.Fatalf("upstream does not honour the ticket: %v", err)
	}
	if gated != 1 {
		t.Fatalf("gate called %d times, want 1", gated)
	}
	for _, s := range []string{fmt.Sprint(tk), fmt.Sprintf("%+v %#v %q", tk, tk, tk)} {
		if strings.Contains(s, tk.Value) {
			t.Fatalf("formatting shows the ticket: %s", s)
		}
	}

	// A newer token supersedes old; past the grace, old is rejected.
	if _, err := c.Fetch(ctx, wechat.KindClassic, "", cred, false); err != nil {
		t.Fatal(err)
	}
	clock.Advance(5 * time.Minute)
	_, err = c.FetchTicket(ctx, srv.URL, old.AccessToken, contract.TicketWXCard, nil)
	if !errors.Is(err, wechat.ErrTokenRejected) || !errors.Is(err, &wechat.Error{Code: 40001}) {
		t.Fatalf("superseded token: err = %v, want ErrTokenRejected (40001)", err)
	}
	if strings.Contains(err.Error(), old.AccessToken) || strings.Contains(fmt.Sprintf("%+v %#v", err, err), old.AccessToken) {
		t.Fatalf("error shows the access token: %v", err)
	}
	clock.Advance(2 * time.Hour)
	classic, _ := sim.LastToken(testAppID)
	_, err = c.FetchTicket(ctx, "", classic, contract.TicketJSAPI, nil)
	if !errors.Is(err, wechat.ErrTokenRejected) || !errors.Is(err, &wechat.Error{Code: 42001}) {
		t.Fatalf("expired token: err = %v, want ErrTokenRejected (42001)", err)
	}
	if n := sim.TicketsIssued(testAppID, contract.TicketWXCard); n != 0 {
		t.Fatalf("wx_card tickets issued = %d, want 0", n)
	}
}

// TestFetchTicketArguments: bad arguments make no request.
func TestFetchTicketArguments(t *testing.T) {
	sim, srv := wechatsim.NewServer(wechatsim.Options{})
	defer srv.Close()
	sim.AddApp(testAppID, testSecret)
	c := wechat.New(wechat.WithBaseURL(srv.URL))
	ctx := context.Background()
	tok, err := c.Fetch(ctx, wechat.KindClassic, "", wechat.Credentials{AppID: testAppID, Secret: testSecret}, false)
	if err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func() error{
		"agent_config": func() error {
			_, err := c.FetchTicket(ctx, "", tok.AccessToken, contract.TicketAgentConfig, nil)
			return err
		},
		"no type":  func() error { _, err := c.FetchTicket(ctx, "", tok.AccessToken, "", nil); return err },
		"no token": func() error { _, err := c.FetchTicket(ctx, "", "", contract.TicketJSAPI, nil); return err },
		"bad base": func() error {
			_, err := c.FetchTicket(ctx, "ftp://x", tok.AccessToken, contract.TicketJSAPI, nil)
			return err
		},
	} {
		if err := f(); !errors.Is(err, wechat.ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want ErrInvalidArgument", name, err)
		}
	}
	if n := sim.TicketCalls(testAppID); n != 0 {
		t.Fatalf("%d ticket calls reached upstream, want 0", n)
	}
}
