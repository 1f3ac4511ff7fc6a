package main

import (
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
)

// TestAuthorizerKeys: with a component keeping jsapi tickets for its
// authorizers, tokenctl gets the authorizer's token and ticket records,
// refreshes the ticket, signs as the authorizer (a signature WeChat's
// check accepts for that authorizer, appId the authorizer's), refuses
// what cannot sign, lists both keys in status under the component, and
// authorizers show prints the ticket (fingerprint only).
func TestAuthorizerKeys(t *testing.T) {
	e := harness.New(t, harness.Options{})
	comp, ring := e.Component(azComp, azAppID)
	comp.AuthorizerTickets = []string{contract.TicketJSAPI}
	cfg := e.Config(comp)
	cfg.WithKeyring(ring)
	rep, cb := e.StartComponent(cfg, azComp)
	const a1 = "wxauthorizer0001"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.Sim.Authorize(ctx, azAppID, a1, cb); err != nil {
		t.Fatal(err)
	}
	tkey, akey := azComp+"."+a1+".jsapi", azComp+"."+a1
	rec, rev := e.WaitTicket(10*time.Second, tkey, nil)
	testutil.WaitFor(t, 10*time.Second, rep.R.Leader, "the refresher does not lead")
	nats := []string{"--nats", e.URL}
	run := func(args ...string) result {
		t.Helper()
		return tokenctl(t, append(append([]string(nil), nats...), args...)...)
	}

	r := run("get", tkey)
	for _, want := range []string{"app:          " + azComp + "\n", "key:          " + tkey + "\n", "ticket_type:  jsapi\n",
		"fingerprint:  " + contract.Fingerprint(rec.Ticket) + "\n"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("get %s lacks %q:\n%s", tkey, want, r)
		}
	}
	if r := run("get", akey); r.code != 0 || !strings.Contains(r.stdout, "authorizer_appid:  "+a1+"\n") || !strings.Contains(r.stdout, "appid:             "+azAppID+"\n") {
		t.Errorf("get %s: want its authorizer_appid and the component's appid:\n%s", akey, r)
	}

	r = run("--json", "refresh", tkey, "--stale", strconv.FormatUint(rev, 10))
	var rr struct {
		contract.TicketRecord
		Revision uint64 `json:"revision"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &rr) != nil || rr.Revision <= rev || rr.Ticket == rec.Ticket || rr.Key != tkey {
		t.Fatalf("refresh %s --stale %d: %s", tkey, rev, r)
	}
	if err := e.Sim.CheckTicket(rr.Ticket); err != nil {
		t.Fatalf("the refreshed ticket is not valid upstream: %v", err)
	}

	const url = "https://shop.example/pay?order=3"
	r = run("sign", akey, url)
	var sr contract.SignReply
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &sr) != nil || sr.AppID != a1 {
		t.Fatalf("sign %s: %s", akey, r)
	}
	if err := e.Sim.CheckSignature(a1, url, sr.NonceStr, sr.Timestamp, sr.Signature); err != nil {
		t.Fatalf("WeChat's check for %s refuses what sign printed: %v", a1, err)
	}
	for _, c := range []struct {
		key  string
		code int
		says string
	}{
		{azComp, 1, "signs for its authorizers"},
		{azComp + ".wxnobody", 1, "has no authorizer"},
		{tkey, exitUsage, "three segments"},
		{azComp + ".jsapi", exitUsage, "is a ticket key"},
		{azComp + "..x", exitUsage, "is not a key"},
	} {
		if r := run("sign", c.key, url); r.code != c.code || !strings.Contains(r.stderr, c.says) {
			t.Errorf("sign %s: want exit %d saying %q: %s", c.key, c.code, c.says, r)
		}
	}

	// status: the authorizer's token and ticket under the component.
	r = run("status")
	lines := strings.Split(r.stdout, "\n")
	at := func(prefix string) int {
		for i, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return i
			}
		}
		return -1
	}
	if c, a, tk := at(azComp+" "), at("  "+akey+" "), at("  "+tkey+" "); r.code != 0 || c < 0 || a != c+1 || tk != a+1 {
		t.Errorf("status: want %s, then %s and %s indented:\n%s", azComp, akey, tkey, r)
	}

	// authorizers show: the ticket, by fingerprint; --json: "tickets".
	testutil.WaitFor(t, 10*time.Second, func() bool {
		_, err := e.NC.Request("$SRV.PING."+contract.AdminServiceName, nil, time.Second)
		return err == nil
	}, "the leader does not serve %s", contract.AdminServiceName)
	cur, crev, _ := e.Ticket(tkey)
	r = run("authorizers", "show", azComp, a1)
	if r.code != 0 || !strings.Contains(r.stdout, "\ntickets:\n") ||
		!regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(tkey)+` +`+strconv.FormatUint(crev, 10)+` +\S+ .* `+contract.Fingerprint(cur.Ticket)+` \(fingerprint\)$`).MatchString(r.stdout) {
		t.Errorf("authorizers show: want the ticket %s at revision %d:\n%s", tkey, crev, r)
	}
	if strings.Contains(r.stdout, cur.Ticket) || strings.Contains(r.stdout, rec.Ticket) {
		t.Fatalf("authorizers show printed a ticket:\n%s", r)
	}
	r = run("--json", "authorizers", "show", azComp, a1)
	var shown struct {
		contract.ShowReply
		Tickets []authorizerTicket `json:"tickets"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &shown) != nil || shown.Info.AuthorizerAppID != a1 ||
		len(shown.Tickets) != 1 || shown.Tickets[0].Key != tkey || shown.Tickets[0].TicketType != contract.TicketJSAPI ||
		shown.Tickets[0].Revision != crev || shown.Tickets[0].Fingerprint != contract.Fingerprint(cur.Ticket) {
		t.Errorf("authorizers show --json: %s", r)
	}
}
