package refresher_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

const testCorp = "wwcorp0000000001"

// wecomApp registers a WeCom app (corp testCorp) with the emulator and
// returns its config.
func wecomApp(e *harness.Env, name string, agentid int, tickets ...string) refresher.AppConfig {
	secret := harness.Secret(name)
	e.Sim.AddWeComApp(testCorp, agentid, secret)
	return refresher.AppConfig{Name: name, Kind: refresher.KindWeCom, CorpID: testCorp, AgentID: agentid,
		APIBase: e.SimURL, Tickets: tickets}.WithSecret(secret)
}

// TestWeComTwoAgentsTwoKeysNoBusyLoop: two apps of one corp are two keys
// with two tokens (a WeCom token is per app, never per corp); WeCom hands
// back the same token until it expires, so the refresher asks again only
// at expiry: over several lifetimes it writes each token once (no
// revision bump, no event for a same-token refetch) and makes at most a
// couple of calls per token, never a loop.
func TestWeComTwoAgentsTwoKeysNoBusyLoop(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: 3 * time.Second}})
	a := wecomApp(e, "wa", 1000002)
	b := wecomApp(e, "wb", 1000003)
	var eventsA atomic.Int64
	evA := subscribeEvents(t, e.NC, "wa")
	go func() {
		for range evA {
			eventsA.Add(1)
		}
	}()
	e.Start(e.Config(a, b))

	recA, _ := e.WaitRecord(10*time.Second, "wa", func(contract.Record, uint64) bool { return true })
	recB, _ := e.WaitRecord(10*time.Second, "wb", func(contract.Record, uint64) bool { return true })
	if recA.AccessToken == recB.AccessToken {
		t.Fatal("two agents of one corp share a token: WeCom tokens are per app")
	}
	if recA.Kind != contract.KindWeCom || recA.AppID != testCorp {
		t.Errorf("record kind %q appid %q, want %q %q", recA.Kind, recA.AppID, contract.KindWeCom, testCorp)
	}
	if err := e.Sim.CheckWeCom(recA.AccessToken); err != nil {
		t.Errorf("stored token rejected by WeCom: %v", err)
	}
	// Three more lifetimes.
	testutil.WaitFor(t, 30*time.Second, func() bool { return e.Sim.WeComTokensIssued(testCorp, 1000002) >= 4 },
		"wa's token did not rotate 3 times")
	issued := e.Sim.WeComTokensIssued(testCorp, 1000002)
	calls := e.Sim.WeComTokenCalls(testCorp, 1000002)
	// Each token is fetched once when new, and at most about twice more
	// around its expiry (an attempt that comes a little early for
	// WeCom's clock gets the same token back with a second or so left).
	if calls > 3*issued+1 {
		t.Errorf("%d token calls for %d tokens: the refresher asks WeCom again before expiry", calls, issued)
	}
	// A write (and an event) only when the token changes.
	_, rev := e.WaitRecord(10*time.Second, "wa", func(r contract.Record, _ uint64) bool {
		return r.AccessToken == e.Sim.LastWeComToken(testCorp, 1000002)
	})
	testutil.WaitFor(t, 5*time.Second, func() bool { return eventsA.Load() >= int64(issued) }, "events")
	if n := eventsA.Load(); n > int64(e.Sim.WeComTokensIssued(testCorp, 1000002)) {
		t.Errorf("%d events for %d tokens: a same-token refetch was written", n, issued)
	}
	t.Logf("wa: %d tokens, %d calls, %d events, revision %d", issued, calls, eventsA.Load(), rev)
}

// TestWeComBusinessCallsAcrossExpiry: WeCom issues a new token only once
// the old one has expired, so a call at that moment gets 42001; the
// Transport answers it with a stale-revision refresh and one retry, so
// the caller sees no rejection across several token lifetimes.
func TestWeComBusinessCallsAcrossExpiry(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: 3 * time.Second}})
	e.Start(e.Config(wecomApp(e, "wa", 1000002)))
	e.WaitRecord(10*time.Second, "wa", func(contract.Record, uint64) bool { return true })
	first := e.Sim.WeComTokensIssued(testCorp, 1000002)
	ok, rejected := businessLoop(t, e, "wa", wechatsim.PathWeComAgentGet+"?agentid=1000002", func() bool {
		return e.Sim.WeComTokensIssued(testCorp, 1000002) >= first+3
	})
	bizOK, bizRejected := e.Sim.WeComBusinessCalls()
	t.Logf("business calls: caller ok %d rejected %d; WeCom saw ok %d rejected %d (absorbed by the retry)", ok, rejected, bizOK, bizRejected)
	if rejected != 0 || ok == 0 {
		t.Errorf("the caller saw %d rejected business calls (%d ok), want 0", rejected, ok)
	}
}

// TestWeComCorpTicketOncePerCorp: the corp's jsapi ticket is fetched once
// for the corp and written under each of its apps; agent_config is per
// app.
func TestWeComCorpTicketOncePerCorp(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	a := wecomApp(e, "wa", 1000002, contract.TicketJSAPI, contract.TicketAgentConfig)
	b := wecomApp(e, "wb", 1000003, contract.TicketJSAPI, contract.TicketAgentConfig)
	e.Start(e.Config(a, b))

	ja, _ := waitTicket(t, e, 10*time.Second, "wa.jsapi", func(contract.TicketRecord, uint64) bool { return true })
	jb, _ := waitTicket(t, e, 10*time.Second, "wb.jsapi", func(contract.TicketRecord, uint64) bool { return true })
	ca, _ := waitTicket(t, e, 10*time.Second, "wa.agent_config", func(contract.TicketRecord, uint64) bool { return true })
	cb, _ := waitTicket(t, e, 10*time.Second, "wb.agent_config", func(contract.TicketRecord, uint64) bool { return true })
	if ja.Ticket != jb.Ticket {
		t.Error("the corp's jsapi ticket differs between its apps")
	}
	if ca.Ticket == cb.Ticket {
		t.Error("agent_config tickets of two apps are equal: it is per app")
	}
	jsapiCalls := e.Sim.WeComTicketCalls(testCorp, 1000002, contract.TicketJSAPI) + e.Sim.WeComTicketCalls(testCorp, 1000003, contract.TicketJSAPI)
	if jsapiCalls != 1 {
		t.Errorf("%d jsapi ticket calls for one corp, want 1 (fetched once per corp)", jsapiCalls)
	}
	for _, agent := range []int{1000002, 1000003} {
		if n := e.Sim.WeComTicketCalls(testCorp, agent, contract.TicketAgentConfig); n != 1 {
			t.Errorf("agent %d: %d agent_config calls, want 1", agent, n)
		}
	}
	// Signatures made with the stored tickets are WeCom's.
	ts := time.Now().Unix()
	url := "https://shop.example.com/page?x=1"
	if err := e.Sim.CheckWeComSignature(testCorp, 1000003, contract.TicketJSAPI, url, "n0nce", ts,
		contract.JSSDKSignature(jb.Ticket, "n0nce", ts, url)); err != nil {
		t.Errorf("jsapi signature of wb rejected: %v", err)
	}
	if err := e.Sim.CheckWeComSignature(testCorp, 1000002, contract.TicketAgentConfig, url, "n0nce", ts,
		contract.JSSDKSignature(ca.Ticket, "n0nce", ts, url)); err != nil {
		t.Errorf("agent_config signature of wa rejected: %v", err)
	}
}

// businessLoop calls path on the emulator through a subscriber Transport
// for app until stop returns true, and returns the calls the caller saw
// rejected (status other than 200).
func businessLoop(t *testing.T, e *harness.Env, app, path string, stop func() bool) (ok, rejected int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	src, err := subscriber.NewSource(ctx, e.NC, app)
	if err != nil {
		t.Fatalf("source %s: %v", app, err)
	}
	defer src.Close()
	hc := &http.Client{Transport: src.RoundTripper(nil), Timeout: 5 * time.Second}
	for !stop() && ctx.Err() == nil {
		resp, err := hc.Get(e.SimURL + path)
		if err != nil {
			t.Fatalf("business call: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var v struct{ Errcode, Code int }
		_ = json.Unmarshal(body, &v)
		if resp.StatusCode == http.StatusOK && v.Errcode == 0 && v.Code == 0 {
			ok++
		} else {
			rejected++
			t.Logf("rejected: %d %s", resp.StatusCode, body)
		}
		time.Sleep(20 * time.Millisecond) // pacing of the business load, not synchronisation
	}
	return ok, rejected
}

// TestFeishuRotationAcrossWindow: Feishu hands back the same token while
// more than its window remains and a new one (the old still valid) under
// it; the refresher writes only new tokens, and business calls through
// the Transport (Bearer) are never rejected across three rotations.
func TestFeishuRotationAcrossWindow(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: 6 * time.Second, FeishuRenewWindow: 2 * time.Second}})
	const appid = "cli_a1b2c3d4e5f6"
	secret := harness.Secret(appid)
	e.Sim.AddFeishuApp(appid, secret)
	app := refresher.AppConfig{Name: "fs", Kind: refresher.KindFeishu, AppID: appid, APIBase: e.SimURL}.WithSecret(secret)
	e.Start(e.Config(app))
	rec, _ := e.WaitRecord(10*time.Second, "fs", func(contract.Record, uint64) bool { return true })
	if rec.Kind != contract.KindFeishu {
		t.Errorf("record kind %q, want feishu", rec.Kind)
	}
	first := e.Sim.FeishuTokensIssued(appid)
	ok, rejected := businessLoop(t, e, "fs", wechatsim.PathFeishuBotInfo, func() bool {
		return e.Sim.FeishuTokensIssued(appid) >= first+3
	})
	bizOK, bizRejected := e.Sim.FeishuBusinessCalls()
	t.Logf("%d tokens, %d token calls; business calls ok %d rejected %d (emulator: %d/%d)",
		e.Sim.FeishuTokensIssued(appid), e.Sim.FeishuTokenCalls(appid), ok, rejected, bizOK, bizRejected)
	if rejected != 0 || bizRejected != 0 {
		t.Errorf("%d business calls rejected (emulator saw %d), want 0", rejected, bizRejected)
	}
	if ok == 0 {
		t.Error("no business call succeeded")
	}
	if leaked := e.Logs.Contains(secret); leaked {
		t.Error("the Feishu app secret appears in the logs")
	}
}

// TestOAuth2ClientCredentials: both client authentication styles, scopes
// and audience; the token goes as Bearer; a revoked token (401) is
// refreshed and the call retried, so the caller sees no rejection; the
// client secret is in no log line, record or event.
func TestOAuth2ClientCredentials(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	var apps []refresher.AppConfig
	for _, style := range []string{refresher.AuthStyleHeader, refresher.AuthStyleParams} {
		id := "client-" + style
		secret := harness.Secret(id)
		e.Sim.AddOAuth2Client(id, secret, "read", "write")
		apps = append(apps, refresher.AppConfig{Name: "o-" + style, Kind: refresher.KindOAuth2, ClientID: id,
			TokenURL: e.SimURL + wechatsim.PathOAuth2Token, Scopes: []string{"read"}, Audience: "https://api.example.com",
			AuthStyle: style}.WithSecret(secret))
	}
	var raw strings.Builder
	events := subscribeEvents(t, e.NC, "o-header")
	e.Start(e.Config(apps...))
	for _, a := range apps {
		rec, _ := e.WaitRecord(10*time.Second, a.Name, func(contract.Record, uint64) bool { return true })
		if rec.Kind != contract.KindOAuth2 || rec.AppID != a.ClientID {
			t.Errorf("%s: record kind %q appid %q", a.Name, rec.Kind, rec.AppID)
		}
		if err := e.Sim.CheckOAuth2(rec.AccessToken); err != nil {
			t.Errorf("%s: stored token rejected: %v", a.Name, err)
		}
		b, _ := json.Marshal(rec)
		raw.Write(b)
	}
	select {
	case ev := <-events:
		b, _ := json.Marshal(ev.raw)
		raw.Write(b)
	case <-time.After(5 * time.Second):
		t.Error("no event for o-header")
	}

	// Revoke the stored token twice while calls run: the Transport sees
	// 401, refreshes with the revision as stale, and retries.
	revoked := 0
	ok, rejected := businessLoop(t, e, "o-header", wechatsim.PathOAuth2Resource, func() bool {
		if revoked < 2 {
			rec, _, _ := e.Record(contract.DefaultBucket, "o-header")
			if e.Sim.Revoke(rec.AccessToken) {
				revoked++
			}
			return false
		}
		rec, _, _ := e.Record(contract.DefaultBucket, "o-header")
		return e.Sim.CheckOAuth2(rec.AccessToken) == nil && e.Sim.OAuth2TokensIssued("client-header") >= 3
	})
	if rejected != 0 || ok == 0 {
		t.Errorf("business calls: %d ok, %d rejected seen by the caller; want 0 rejected", ok, rejected)
	}
	for _, a := range apps {
		if strings.Contains(raw.String(), a.Secret()) || e.Logs.Contains(a.Secret()) {
			t.Errorf("%s: the client secret appears in a record, an event or the logs", a.Name)
		}
	}
}

// TestNewKindsConfigErrors: every new config error names its app and key.
func TestNewKindsConfigErrors(t *testing.T) {
	yaml := `
apps:
  - name: w1
    kind: wecom
    secret_env: X
  - name: w2
    kind: wecom
    corpid: ww1
    agentid: -3
    appid: wx1
    secret_env: X
    tickets: [wx_card]
  - name: f1
    kind: feishu
    secret_env: X
    tickets: [jsapi]
  - name: o1
    kind: oauth2
    secret_env: X
    auth_style: basic
    scopes: ["a b"]
    api_base: https://x.example.com
  - name: o2
    kind: oauth2
    client_id: c
    token_url: "https://user:pw@idp.example.com/token"
    secret_env: X
  - name: k1
    kind: dingtalk
    secret_env: X
upstream:
  proxy: "socks5://p:1080"
`
	t.Setenv("X", "s")
	_, err := refresher.ParseConfig([]byte(yaml))
	if err == nil {
		t.Fatal("config accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		`apps[0] (w1).corpid: missing`,
		`apps[0] (w1).agentid: missing`,
		`apps[1] (w2).appid: not a key of kind wecom`,
		`apps[1] (w2).agentid: -3 is negative`,
		`apps[1] (w2).tickets[0]: "wx_card" is not a ticket of kind wecom`,
		`apps[2] (f1).appid: missing`,
		`apps[2] (f1).tickets[0]: kind "feishu" keeps no tickets`,
		`apps[3] (o1).client_id: missing`,
		`apps[3] (o1).token_url: missing`,
		`apps[3] (o1).auth_style: "basic" is not header or params`,
		`apps[3] (o1).scopes[0]: "a b" is not a scope`,
		`apps[3] (o1).api_base: not a key of kind oauth2`,
		`apps[4] (o2).token_url: "https://user:xxxxx@idp.example.com/token" carries credentials`,
		`apps[5] (k1).kind: unknown kind "dingtalk"`,
		`upstream.proxy: "socks5://p:1080" is not an http(s)://host:port proxy URL`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing problem %q", want)
		}
	}
	if strings.Contains(msg, ":pw@") {
		t.Error("a password in a URL is quoted in the error")
	}
	if t.Failed() {
		t.Log(msg)
	}
}
