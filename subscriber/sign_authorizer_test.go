package subscriber_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// TestSignAsAuthorizer: with a component keeping jsapi tickets for its
// authorizers (authorizer_tickets), Client.Sign and Source.Sign of
// <component>.<authorizer_appid> get signatures as that authorizer —
// appId the authorizer's, accepted by the emulator's JS-SDK check for
// it and not for the other authorizer —; what cannot sign is refused
// locally (a ticket key, three segments) or by the refresher (the
// component itself, an unknown authorizer, a ticket not kept).
func TestSignAsAuthorizer(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	comp, ring := e.Component("comp", "wxcomponent01")
	comp.AuthorizerTickets = []string{contract.TicketJSAPI}
	cfg := e.Config(comp)
	cfg.WithKeyring(ring)
	_, cb := e.StartComponent(cfg, "comp")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const a1, a2 = "wxauthorizer0001", "wxauthorizer0002"
	for _, a := range []string{a1, a2} {
		if _, err := e.Sim.Authorize(ctx, "wxcomponent01", a, cb); err != nil {
			t.Fatalf("authorize %s: %v", a, err)
		}
	}
	e.WaitTicket(10*time.Second, "comp."+a1+".jsapi", nil)

	c, err := subscriber.NewClient(e.NC, subscriber.WithBackoff(10*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const page = "https://shop.example/pay?order=9"
	rep, err := c.Sign(ctx, "comp."+a1, page+"#top")
	if err != nil {
		t.Fatalf("Sign as %s: %v", a1, err)
	}
	if rep.AppID != a1 {
		t.Errorf("reply appId %q, want the authorizer's %q", rep.AppID, a1)
	}
	if err := e.Sim.CheckSignature(a1, page, rep.NonceStr, rep.Timestamp, rep.Signature); err != nil {
		t.Fatalf("WeChat's check for %s refuses the signature: %v", a1, err)
	}
	if e.Sim.CheckSignature(a2, page, rep.NonceStr, rep.Timestamp, rep.Signature) == nil {
		t.Fatalf("a signature as %s is accepted for %s", a1, a2)
	}

	// A Source of the authorizer's token signs as the authorizer too (its
	// ticket was not stored before: the leader fetches it on demand).
	src, err := c.Source(ctx, "comp."+a2)
	if err != nil {
		t.Fatalf("Source of comp.%s: %v", a2, err)
	}
	rep, err = src.Sign(ctx, page)
	if err != nil {
		t.Fatalf("Source.Sign as %s: %v", a2, err)
	}
	if rep.AppID != a2 || e.Sim.CheckSignature(a2, page, rep.NonceStr, rep.Timestamp, rep.Signature) != nil {
		t.Fatalf("Source.Sign as %s: reply %+v refused", a2, rep)
	}

	for _, key := range []string{"comp." + a1 + ".jsapi", "comp." + a1 + ".x", "comp.jsapi", "comp.wx_card"} {
		if _, err := c.Sign(ctx, key, page); !errors.Is(err, subscriber.ErrInvalidArgument) {
			t.Errorf("Sign(%q) = %v, want ErrInvalidArgument", key, err)
		}
	}
	for _, tc := range []struct {
		key  string
		opts []subscriber.SignOption
		says string
	}{
		{"comp", nil, "signs for its authorizers"},
		{"comp.wxnobody", nil, "has no authorizer"},
		{"comp." + a1, []subscriber.SignOption{subscriber.SignWithTicket(contract.TicketAgentConfig)}, "keeps no agent_config"},
	} {
		_, err := c.Sign(ctx, tc.key, page, tc.opts...)
		var re *subscriber.RequestError
		if !errors.As(err, &re) || re.Code != contract.CodeNotFound || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("Sign(%q) = %v, want a 404 saying %q", tc.key, err, tc.says)
		}
	}
}

// TestSourcesOfAuthorizerKeys: a Source of <component>.<authorizer_appid>
// serves the authorizer's stored token and Refresh with its revision
// brings the new one the emulator issued; a Source of a ticket
// key — <component>.<authorizer_appid>.jsapi, and an app's <app>.jsapi —
// serves the ticket (Token.TicketType set, a ticket upstream accepts),
// Refresh brings a new ticket, and it neither signs nor goes into a
// Transport.
func TestSourcesOfAuthorizerKeys(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	comp, ring := e.Component("comp", "wxcomponent01")
	comp.AuthorizerTickets = []string{contract.TicketJSAPI}
	mp := e.App("mp")
	mp.Tickets = []string{contract.TicketJSAPI}
	cfg := e.Config(comp, mp)
	cfg.WithKeyring(ring)
	_, cb := e.StartComponent(cfg, "comp")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const a1 = "wxauthorizer0001"
	if _, err := e.Sim.Authorize(ctx, "wxcomponent01", a1, cb); err != nil {
		t.Fatal(err)
	}
	c, err := subscriber.NewClient(e.NC, subscriber.WithBackoff(10*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// The authorization settles (its code redeemed, the ticket fetched
	// with the authorizer's token) before the Source is compared.
	e.WaitTicket(10*time.Second, "comp."+a1+".jsapi", nil)
	src, err := c.Source(ctx, "comp."+a1)
	if err != nil {
		t.Fatalf("Source of the authorizer: %v", err)
	}
	tok, err := src.Token()
	if err != nil || tok.App != "comp."+a1 || tok.TicketType != "" || tok.Kind != contract.KindWeChatComponent {
		t.Fatalf("authorizer token %v (%+v), %v", tok, tok, err)
	}
	testutil.WaitFor(t, 10*time.Second, func() bool {
		tok, _ = src.Token()
		rec, rev, ok := e.Record(contract.DefaultBucket, "comp."+a1)
		return ok && tok.AccessToken == rec.AccessToken && tok.Revision == rev
	}, "the Source does not serve the stored token of the authorizer")
	ntok, err := src.Refresh(ctx, tok.Revision)
	if err != nil || ntok.Revision <= tok.Revision || ntok.AccessToken == tok.AccessToken ||
		ntok.AccessToken != e.Sim.LastAuthorizerToken("wxcomponent01", a1) {
		t.Fatalf("Refresh(%d) of the authorizer = %v, %v; want the new token the emulator issued", tok.Revision, ntok, err)
	}

	for _, key := range []string{"comp." + a1 + ".jsapi", "mp.jsapi"} {
		ts, err := c.Source(ctx, key)
		if err != nil {
			t.Fatalf("Source of %s: %v", key, err)
		}
		tk, err := ts.Token()
		if err != nil || tk.TicketType != contract.TicketJSAPI || tk.App != key {
			t.Fatalf("%s: token %v (type %q), %v", key, tk, tk.TicketType, err)
		}
		if rec, rev, _ := e.Ticket(key); rec.Ticket != tk.AccessToken || rev != tk.Revision {
			t.Fatalf("%s: the Source holds revision %d, the bucket %d (or another ticket)", key, tk.Revision, rev)
		}
		if err := e.Sim.CheckTicket(tk.AccessToken); err != nil {
			t.Fatalf("%s: the ticket served is not valid upstream: %v", key, err)
		}
		nt, err := ts.Refresh(ctx, tk.Revision)
		if err != nil || nt.Revision <= tk.Revision || nt.AccessToken == tk.AccessToken || nt.TicketType != contract.TicketJSAPI {
			t.Fatalf("Refresh(%d) of %s = %v, %v; want a new ticket", tk.Revision, key, nt, err)
		}
		if err := e.Sim.CheckTicket(nt.AccessToken); err != nil {
			t.Fatalf("%s: the refreshed ticket is not valid upstream: %v", key, err)
		}
		if _, err := ts.Sign(ctx, "https://shop.example/"); !errors.Is(err, subscriber.ErrInvalidArgument) {
			t.Errorf("Sign of a Source of %s = %v, want ErrInvalidArgument", key, err)
		}
		hc := &http.Client{Transport: ts.RoundTripper(nil)}
		if resp, err := hc.Get(e.SimURL + "/cgi-bin/get_api_domain_ip"); !errors.Is(err, subscriber.ErrInvalidArgument) {
			if resp != nil {
				resp.Body.Close()
			}
			t.Errorf("a Transport of %s sent a request (%v), want ErrInvalidArgument", key, err)
		}
	}
}
