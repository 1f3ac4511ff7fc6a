package main

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
)

// ticketWorld is a refresher serving app "mp" with a jsapi ticket and
// app "oa" without tickets; it returns the stored ticket record.
func ticketWorld(t *testing.T) (*harness.Env, contract.TicketRecord, uint64) {
	t.Helper()
	e := harness.New(t, harness.Options{})
	mp := e.App("mp")
	mp.Tickets = []string{contract.TicketJSAPI}
	e.Start(e.Config(mp, e.App("oa")))
	var rec contract.TicketRecord
	var rev uint64
	testutil.WaitFor(t, 10*time.Second, func() bool {
		r := tokenctl(t, "--nats", e.URL, "get", "mp.jsapi", "--json")
		if r.code != 0 {
			return false
		}
		var got struct {
			contract.TicketRecord
			Revision uint64 `json:"revision"`
		}
		if json.Unmarshal([]byte(r.stdout), &got) != nil || got.Ticket == "" {
			return false
		}
		rec, rev = got.TicketRecord, got.Revision
		return true
	}, "no mp.jsapi ticket stored")
	return e, rec, rev
}

// TestTicketKeys: get, watch and refresh take a ticket key (mp.jsapi);
// invalid keys are usage errors; status lists the ticket under its app.
func TestTicketKeys(t *testing.T) {
	e, rec, rev := ticketWorld(t)
	if err := e.Sim.CheckTicket(rec.Ticket); err != nil {
		t.Fatalf("the ticket get printed is not valid upstream: %v", err)
	}

	r := tokenctl(t, "--nats", e.URL, "get", "mp.jsapi")
	for _, want := range []string{"app:          mp\n", "key:          mp.jsapi\n", "ticket_type:  jsapi\n",
		"ticket:       " + rec.Ticket + "\n", "fingerprint:  " + contract.Fingerprint(rec.Ticket) + "\n",
		"revision:     " + strconv.FormatUint(rev, 10) + "\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("get mp.jsapi lacks %q:\n%s", want, r)
		}
	}
	if strings.Contains(r.stdout, "access_token") {
		t.Errorf("get mp.jsapi prints an access_token line:\n%s", r)
	}

	// refresh --stale REV of the ticket: a new ticket, at a newer revision.
	r = tokenctl(t, "--nats", e.URL, "--json", "refresh", "mp.jsapi", "--stale", strconv.FormatUint(rev, 10))
	var rep struct {
		contract.TicketRecord
		Revision uint64 `json:"revision"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &rep) != nil || rep.Revision <= rev || rep.Ticket == rec.Ticket || rep.Key != "mp.jsapi" {
		t.Fatalf("refresh mp.jsapi --stale %d: %s", rev, r)
	}
	if r := tokenctl(t, "--nats", e.URL, "refresh", "mp.jsapi"); r.code != 0 || !strings.Contains(r.stdout, "ticket:       "+rep.Ticket) {
		t.Fatalf("refresh mp.jsapi: %s", r)
	}

	stdout, stderr, stop := startWatch(t, "--nats", e.URL, "watch", "mp.jsapi")
	testutil.WaitFor(t, 5*time.Second, func() bool {
		return strings.Contains(stdout.String(), "mp.jsapi  revision="+strconv.FormatUint(rep.Revision, 10)+" ") &&
			strings.Contains(stdout.String(), "token="+contract.Fingerprint(rep.Ticket))
	}, "watch mp.jsapi:\n%s\n%s", stdout, stderr)
	if code := stop(); code != 0 {
		t.Fatalf("watch exited %d:\n%s", code, stderr)
	}
	if strings.Contains(stdout.String(), rep.Ticket) {
		t.Fatal("watch printed the ticket itself")
	}

	for _, bad := range []string{"mp.", ".jsapi", "a.b.c.d", "mp jsapi", "mp.js\xff"} {
		if r := tokenctl(t, "--nats", e.URL, "get", bad); r.code != exitUsage || !strings.Contains(r.stderr, "is not a key") {
			t.Errorf("get %q: want a usage error: %s", bad, r)
		}
	}
	if r := tokenctl(t, "--nats", e.URL, "get", "mp.wx_card"); r.code != 1 || !strings.Contains(r.stderr, "nothing stored under mp.wx_card") {
		t.Errorf("get mp.wx_card: %s", r)
	}

	// status: the ticket is a row under mp, before oa; in --json inside mp.
	r = tokenctl(t, "--nats", e.URL, "status")
	lines := strings.Split(r.stdout, "\n")
	idx := func(prefix string) int {
		for i, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return i
			}
		}
		return -1
	}
	mpRow, ticketRow, oaRow := idx("mp "), idx("  mp.jsapi "), idx("oa ")
	if r.code != 0 || mpRow < 0 || ticketRow != mpRow+1 || oaRow != ticketRow+1 {
		t.Fatalf("status: want mp, then mp.jsapi indented, then oa:\n%s", r)
	}
	r = tokenctl(t, "--nats", e.URL, "--json", "status")
	var st statusReport
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil || len(st.Apps) != 2 || st.Apps[0].App != "mp" ||
		len(st.Apps[0].Tickets) != 1 || st.Apps[0].Tickets[0].Key != "mp.jsapi" || st.Apps[0].Tickets[0].Revision != rep.Revision ||
		st.Apps[0].Tickets[0].Expired || len(st.Apps[1].Tickets) != 0 {
		t.Fatalf("status --json: %s", r)
	}
}

// TestSignCommand: tokenctl sign prints the reply JSON, which the
// emulator's JS-SDK check accepts; error replies and bad arguments fail.
func TestSignCommand(t *testing.T) {
	e, _, _ := ticketWorld(t)
	const url = "https://shop.example/item?id=7"
	r := tokenctl(t, "--nats", e.URL, "sign", "mp", url)
	var rep contract.SignReply
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &rep) != nil {
		t.Fatalf("sign: %s", r)
	}
	if err := e.Sim.CheckSignature("wxmp", url, rep.NonceStr, rep.Timestamp, rep.Signature); err != nil || rep.AppID != "wxmp" {
		t.Fatalf("sign printed %s: %v", r.stdout, err)
	}
	if !strings.HasPrefix(r.stdout, `{"appId":"wxmp","timestamp":`) {
		t.Errorf("sign output %q is not the reply JSON", r.stdout)
	}

	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"sign", "oa", url}, 1, "404 app oa keeps no jsapi ticket"},
		{[]string{"sign", "mp", url, "--ticket", "agent_config"}, 1, "404 app mp keeps no agent_config ticket"},
		{[]string{"sign", "nope", url}, 1, "404"},
		{[]string{"sign", "mp", "/relative"}, exitUsage, "absolute"},
		{[]string{"sign", "mp", url, "--ticket", "wx_card"}, exitUsage, "--ticket"},
		{[]string{"sign", "mp.jsapi", url}, exitUsage, "not an app name"},
		{[]string{"sign", "mp"}, exitUsage, "usage: tokenctl sign"},
	} {
		r := tokenctl(t, append([]string{"--nats", e.URL}, c.args...)...)
		if r.code != c.code || !strings.Contains(r.stderr, c.says) {
			t.Errorf("%v: want exit %d saying %q: %s", c.args, c.code, c.says, r)
		}
	}
	r = tokenctl(t, "--nats", e.URL, "--json", "sign", "oa", url)
	var er contract.ErrorReply
	if r.code != 1 || json.Unmarshal([]byte(r.stdout), &er) != nil || er.Error.Code != contract.CodeNotFound {
		t.Errorf("sign --json of an error: %s", r)
	}
}
