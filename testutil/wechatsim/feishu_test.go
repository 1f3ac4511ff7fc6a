package wechatsim_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

type feishuReply struct {
	Code              int    `json:"code"`
	Msg               string `json:"msg"`
	TenantAccessToken string `json:"tenant_access_token"`
	Expire            int    `json:"expire"`
	Bot               *struct {
		AppName string `json:"app_name"`
	} `json:"bot"`
}

func newFeishuEnv(t *testing.T, opts wechatsim.Options) *env {
	t.Helper()
	e := newEnv(t, opts)
	e.sim.AddFeishuApp(feishuApp, feishuSecret)
	return e
}

func (e *env) feishuTokenRaw(body string) (int, feishuReply) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+wechatsim.PathFeishuToken, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	r := e.raw(req)
	var f feishuReply
	r.decode(e.t, &f)
	return r.status, f
}

func (e *env) feishuToken(appid, sec string) (int, feishuReply) {
	e.t.Helper()
	b, _ := json.Marshal(map[string]string{"app_id": appid, "app_secret": sec})
	return e.feishuTokenRaw(string(b))
}

func (e *env) feishuOK() feishuReply {
	e.t.Helper()
	status, r := e.feishuToken(feishuApp, feishuSecret)
	if status != http.StatusOK || r.Code != 0 || !strings.HasPrefix(r.TenantAccessToken, "t-") {
		e.t.Fatalf("want a token, got HTTP %d %+v", status, r)
	}
	return r
}

// feishuBot makes the business call; auth is the whole Authorization
// header ("" for none).
func (e *env) feishuBot(auth string) (int, feishuReply) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+wechatsim.PathFeishuBotInfo, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	r := e.raw(req)
	var f feishuReply
	r.decode(e.t, &f)
	return r.status, f
}

func wantFeishuBot(t *testing.T, e *env, tok string, status, code int) {
	t.Helper()
	got, r := e.feishuBot("Bearer " + tok)
	if got != status || r.Code != code {
		t.Fatalf("bot info: HTTP %d code %d (%q), want HTTP %d code %d", got, r.Code, r.Msg, status, code)
	}
}

func TestFeishuThirtyMinuteRule(t *testing.T) {
	e := newFeishuEnv(t, wechatsim.Options{})
	t1 := e.feishuOK()
	if t1.Expire != 7200 {
		t.Fatalf("expire %d", t1.Expire)
	}
	e.clock.Advance(90*time.Minute - time.Second) // 30 min 1 s left
	if r := e.feishuOK(); r.TenantAccessToken != t1.TenantAccessToken || r.Expire != 1801 {
		t.Fatalf("above 30 min: %+v, want the same token, expire 1801", r)
	}
	e.clock.Advance(time.Second) // exactly 30 min left: still the same
	if r := e.feishuOK(); r.TenantAccessToken != t1.TenantAccessToken || r.Expire != 1800 {
		t.Fatalf("at 30 min: %+v, want the same token, expire 1800", r)
	}
	e.clock.Advance(time.Second) // under 30 min: a new token
	t2 := e.feishuOK()
	if t2.TenantAccessToken == t1.TenantAccessToken || t2.Expire != 7200 {
		t.Fatalf("under 30 min: %+v, want a new token for 7200 s", t2)
	}
	// Both are valid until their own ends.
	wantFeishuBot(t, e, t1.TenantAccessToken, http.StatusOK, 0)
	wantFeishuBot(t, e, t2.TenantAccessToken, http.StatusOK, 0)
	if r := e.feishuOK(); r.TenantAccessToken != t2.TenantAccessToken {
		t.Fatal("the next call did not return the new token")
	}
	e.clock.Advance(30*time.Minute - 2*time.Second) // t1 has 1 s left
	wantFeishuBot(t, e, t1.TenantAccessToken, http.StatusOK, 0)
	e.clock.Advance(time.Second) // t1's end
	wantFeishuBot(t, e, t1.TenantAccessToken, http.StatusBadRequest, wechatsim.CodeFeishuInvalidToken)
	if err := e.sim.CheckFeishu(t1.TenantAccessToken); !errors.Is(err, wechatsim.ErrFeishuInvalidToken) {
		t.Fatalf("CheckFeishu(old) = %v", err)
	}
	if err := e.sim.CheckFeishu(t2.TenantAccessToken); err != nil {
		t.Fatalf("CheckFeishu(new) = %v", err)
	}
	if e.sim.FeishuTokensIssued(feishuApp) != 2 || e.sim.FeishuFetches(feishuApp) != 5 ||
		e.sim.LastFeishuToken(feishuApp) != t2.TenantAccessToken {
		t.Fatal("counters or getter disagree with the answers")
	}
	if ok, rejected := e.sim.FeishuBusinessCalls(); ok != 3 || rejected != 1 {
		t.Fatalf("business ok %d rejected %d", ok, rejected)
	}
}

func TestFeishuWindowOption(t *testing.T) {
	e := newFeishuEnv(t, wechatsim.Options{ExpiresIn: 2 * time.Minute, FeishuRenewWindow: 30 * time.Second})
	t1 := e.feishuOK()
	e.clock.Advance(90 * time.Second)
	if r := e.feishuOK(); r.TenantAccessToken != t1.TenantAccessToken || r.Expire != 30 {
		t.Fatalf("at the window: %+v", r)
	}
	e.clock.Advance(time.Second)
	if r := e.feishuOK(); r.TenantAccessToken == t1.TenantAccessToken || r.Expire != 120 {
		t.Fatalf("inside the window: %+v", r)
	}
	// A negative window: a new token only after expiry (or revocation).
	e = newFeishuEnv(t, wechatsim.Options{ExpiresIn: 2 * time.Minute, FeishuRenewWindow: -1})
	t1 = e.feishuOK()
	e.clock.Advance(2*time.Minute - time.Second)
	if r := e.feishuOK(); r.TenantAccessToken != t1.TenantAccessToken || r.Expire != 1 {
		t.Fatalf("no window, last second: %+v", r)
	}
	e.sim.Revoke(t1.TenantAccessToken)
	if r := e.feishuOK(); r.TenantAccessToken == t1.TenantAccessToken {
		t.Fatal("a revoked token was handed out again")
	}
}

func TestFeishuTokenErrors(t *testing.T) {
	e := newFeishuEnv(t, wechatsim.Options{})
	for _, c := range []struct {
		name         string
		status, code int
		msg          string
		do           func() (int, feishuReply)
	}{
		{"wrong secret", http.StatusBadRequest, wechatsim.CodeFeishuAppSecret, "app secret invalid",
			func() (int, feishuReply) { return e.feishuToken(feishuApp, wrongSecret) }},
		{"unknown app", http.StatusOK, wechatsim.CodeFeishuAppSecret, "app id not exists",
			func() (int, feishuReply) { return e.feishuToken("cli_unknown", feishuSecret) }},
		{"no secret", http.StatusOK, wechatsim.CodeFeishuInvalidParam, "invalid param",
			func() (int, feishuReply) { return e.feishuToken(feishuApp, "") }},
		{"not JSON", http.StatusOK, wechatsim.CodeFeishuInvalidParam, "invalid param",
			func() (int, feishuReply) { return e.feishuTokenRaw(`{"app_id":"` + feishuApp + `","app_secret":`) }},
	} {
		status, r := c.do()
		if status != c.status || r.Code != c.code || r.Msg != c.msg || r.TenantAccessToken != "" {
			t.Errorf("%s: HTTP %d %+v, want HTTP %d code %d %q", c.name, status, r, c.status, c.code, c.msg)
		}
	}
	if n := e.sim.FeishuTokenCalls(feishuApp); n != 2 {
		t.Errorf("calls %d, want 2 (wrong secret, no secret; the broken body names no app)", n)
	}
	if n := e.sim.FeishuTokensIssued(feishuApp); n != 0 {
		t.Errorf("%d tokens issued by failed calls", n)
	}
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+wechatsim.PathFeishuToken, nil)
	if r := e.raw(req); r.status != http.StatusMethodNotAllowed {
		t.Errorf("GET token: HTTP %d", r.status)
	}
}

func TestFeishuBusinessRejects(t *testing.T) {
	e := newFeishuEnv(t, wechatsim.Options{})
	tok := e.feishuOK().TenantAccessToken
	if status, r := e.feishuBot("Bearer " + tok); status != http.StatusOK || r.Bot == nil || r.Bot.AppName != feishuApp {
		t.Fatalf("bot info: HTTP %d %+v", status, r)
	}
	for _, auth := range []string{"", tok, "Basic " + tok} {
		if status, r := e.feishuBot(auth); status != http.StatusBadRequest || r.Code != wechatsim.CodeFeishuMissingToken {
			t.Errorf("Authorization %q: HTTP %d code %d, want 400 %d", auth, status, r.Code, wechatsim.CodeFeishuMissingToken)
		}
	}
	wantFeishuBot(t, e, "t-unknown", http.StatusBadRequest, wechatsim.CodeFeishuInvalidToken)
	wantFeishuBot(t, e, mustToken(t, e.classic()), http.StatusBadRequest, wechatsim.CodeFeishuInvalidToken)
	wantErrcode(t, e.business(http.MethodGet, tok), wechatsim.CodeInvalidCredential)
	e.clock.Advance(2 * time.Hour)
	wantFeishuBot(t, e, tok, http.StatusBadRequest, wechatsim.CodeFeishuInvalidToken)
	if ok, rejected := e.sim.FeishuBusinessCalls(); ok != 1 || rejected != 6 {
		t.Fatalf("business ok %d rejected %d, want 1 and 6", ok, rejected)
	}
}

func TestFeishuFaults(t *testing.T) {
	e := newFeishuEnv(t, wechatsim.Options{})
	e.sim.SetFault(wechatsim.Fault{Busy: 1, Errcode: 99991400, Paths: []string{wechatsim.PathFeishuToken}})
	if status, r := e.feishuToken(feishuApp, feishuSecret); status != http.StatusInternalServerError || r.Code != wechatsim.CodeFeishuInternal {
		t.Fatalf("busy: HTTP %d %+v", status, r)
	}
	if status, r := e.feishuToken(feishuApp, feishuSecret); status != http.StatusBadRequest || r.Code != 99991400 || r.TenantAccessToken != "" {
		t.Fatalf("errcode: HTTP %d %+v", status, r)
	}
	mustToken(t, e.classic())
	if n := e.sim.FeishuTokenCalls(feishuApp); n != 0 {
		t.Fatalf("faulted calls counted: %d", n)
	}
	e.sim.SetFault(wechatsim.Fault{})
	e.feishuOK()
}
