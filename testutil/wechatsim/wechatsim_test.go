package wechatsim_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

const (
	appID  = "wx0123456789abcdef"
	secret = "s3cret-value-0123456789"
)

// fakeClock is a manually advanced clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// env is one emulator under test.
type env struct {
	t     *testing.T
	sim   *wechatsim.Sim
	srv   *httptest.Server
	clock *fakeClock
}

func newEnv(t *testing.T, opts wechatsim.Options) *env {
	t.Helper()
	clock := &fakeClock{t: time.Date(2024, 3, 1, 4, 0, 0, 0, time.UTC)} // 12:00 in Shanghai
	if opts.Now == nil {
		opts.Now = clock.Now
	}
	sim, srv := wechatsim.NewServer(opts)
	t.Cleanup(srv.Close)
	sim.AddApp(appID, secret)
	return &env{t: t, sim: sim, srv: srv, clock: clock}
}

// reply is the union of WeChat's answers.
type reply struct {
	AccessToken string   `json:"access_token"`
	ExpiresIn   int      `json:"expires_in"`
	Errcode     int      `json:"errcode"`
	Errmsg      string   `json:"errmsg"`
	IPList      []string `json:"ip_list"`
}

func (e *env) do(req *http.Request) reply {
	e.t.Helper()
	var r reply
	e.doJSON(req, &r)
	return r
}

// doJSON sends req and decodes WeChat's answer (HTTP 200, JSON) into v.
func (e *env) doJSON(req *http.Request, v any) {
	e.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("request: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("HTTP %d: %s", resp.StatusCode, body)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/json" {
		e.t.Fatalf("Content-Type %q, want application/json", resp.Header.Get("Content-Type"))
	}
	if err := json.Unmarshal(body, v); err != nil {
		e.t.Fatalf("decode %q: %v", body, err)
	}
}

func tokenURL(base, grant, appid, sec string) string {
	q := url.Values{}
	if grant != "" {
		q.Set("grant_type", grant)
	}
	if appid != "" {
		q.Set("appid", appid)
	}
	if sec != "" {
		q.Set("secret", sec)
	}
	return base + wechatsim.PathToken + "?" + q.Encode()
}

func (e *env) classicWith(grant, appid, sec string) reply {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, tokenURL(e.srv.URL, grant, appid, sec), nil)
	return e.do(req)
}

func (e *env) classic() reply {
	e.t.Helper()
	return e.classicWith("client_credential", appID, secret)
}

func (e *env) stableRaw(body string) reply {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+wechatsim.PathStableToken, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	return e.do(req)
}

func (e *env) stable(force bool) reply {
	e.t.Helper()
	b, _ := json.Marshal(map[string]any{"grant_type": "client_credential", "appid": appID, "secret": secret, "force_refresh": force})
	return e.stableRaw(string(b))
}

func (e *env) business(method, tok string) reply {
	e.t.Helper()
	u := e.srv.URL + wechatsim.PathCallbackIP
	if tok != "" {
		u += "?access_token=" + url.QueryEscape(tok)
	}
	req, _ := http.NewRequest(method, u, nil)
	return e.do(req)
}

func mustToken(t *testing.T, r reply) string {
	t.Helper()
	if r.Errcode != 0 || r.AccessToken == "" {
		t.Fatalf("want a token, got errcode %d %q", r.Errcode, r.Errmsg)
	}
	return r.AccessToken
}

func wantErrcode(t *testing.T, r reply, code int) {
	t.Helper()
	if r.Errcode != code {
		t.Fatalf("errcode %d (%q), want %d", r.Errcode, r.Errmsg, code)
	}
	if r.AccessToken != "" {
		t.Fatalf("error answer carries a token")
	}
}

func wantCheck(t *testing.T, sim *wechatsim.Sim, tok string, want error) {
	t.Helper()
	if err := sim.Check(tok); !errors.Is(err, want) {
		t.Fatalf("Check = %v, want %v", err, want)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitWithin(t, 10*time.Second, what, cond)
}

func waitWithin(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestClassicNewFetchInvalidatesOldAfterGrace(t *testing.T) {
	e := newEnv(t, wechatsim.Options{})
	r1 := e.classic()
	t1 := mustToken(t, r1)
	if r1.ExpiresIn != 7200 {
		t.Fatalf("expires_in %d, want 7200", r1.ExpiresIn)
	}
	e.clock.Advance(time.Minute)
	t2 := mustToken(t, e.classic())
	if t1 == t2 {
		t.Fatal("a classic fetch returned the previous token")
	}
	wantCheck(t, e.sim, t1, nil)
	wantCheck(t, e.sim, t2, nil)

	e.clock.Advance(300*time.Second - time.Nanosecond)
	wantCheck(t, e.sim, t1, nil)
	if r := e.business(http.MethodGet, t1); len(r.IPList) != 1 || r.Errcode != 0 {
		t.Fatalf("old token inside grace rejected: %+v", r)
	}
	e.clock.Advance(time.Nanosecond)
	wantCheck(t, e.sim, t1, wechatsim.ErrInvalidToken)
	wantErrcode(t, e.business(http.MethodGet, t1), 40001)
	wantCheck(t, e.sim, t2, nil)

	if got := e.sim.Issued(appID); got != 2 {
		t.Fatalf("Issued %d, want 2", got)
	}
	if got := e.sim.Fetches(appID); got != 2 {
		t.Fatalf("Fetches %d, want 2", got)
	}
	if c, _ := e.sim.LastToken(appID); c != t2 {
		t.Fatal("LastToken is not the latest classic token")
	}
}

func TestClassicOlderTokensKeepTheirFirstDeadline(t *testing.T) {
	e := newEnv(t, wechatsim.Options{Grace: 300 * time.Second})
	t1 := mustToken(t, e.classic())
	t2 := mustToken(t, e.classic()) // t1 valid until +300s
	e.clock.Advance(200 * time.Second)
	t3 := mustToken(t, e.classic()) // t2 valid until +500s; t1 must not be extended
	e.clock.Advance(100 * time.Second)
	wantCheck(t, e.sim, t1, wechatsim.ErrInvalidToken)
	wantCheck(t, e.sim, t2, nil)
	e.clock.Advance(200 * time.Second)
	wantCheck(t, e.sim, t2, wechatsim.ErrInvalidToken)
	wantCheck(t, e.sim, t3, nil)
}

func TestGraceNeverPastExpiry(t *testing.T) {
	e := newEnv(t, wechatsim.Options{ExpiresIn: 100 * time.Second, Grace: 300 * time.Second})
	t1 := mustToken(t, e.classic())
	e.clock.Advance(50 * time.Second)
	mustToken(t, e.classic())
	e.clock.Advance(50 * time.Second)
	wantCheck(t, e.sim, t1, wechatsim.ErrExpiredToken)
}

func TestExpiry(t *testing.T) {
	e := newEnv(t, wechatsim.Options{ExpiresIn: 10 * time.Minute})
	r := e.classic()
	tok := mustToken(t, r)
	if r.ExpiresIn != 600 {
		t.Fatalf("expires_in %d, want 600", r.ExpiresIn)
	}
	e.clock.Advance(10*time.Minute - time.Nanosecond)
	wantCheck(t, e.sim, tok, nil)
	e.clock.Advance(time.Nanosecond)
	wantCheck(t, e.sim, tok, wechatsim.ErrExpiredToken)
	wantErrcode(t, e.business(http.MethodGet, tok), 42001)
}

func TestExpiresInReportedWholeSecondsAtLeastOne(t *testing.T) {
	for _, tc := range []struct {
		in   time.Duration
		want int
	}{{1500 * time.Millisecond, 1}, {time.Millisecond, 1}, {90 * time.Second, 90}} {
		e := newEnv(t, wechatsim.Options{ExpiresIn: tc.in})
		if got := e.classic().ExpiresIn; got != tc.want {
			t.Errorf("ExpiresIn %v: expires_in %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestClassicErrors(t *testing.T) {
	for _, tc := range []struct {
		name               string
		opts               wechatsim.Options
		grant, appid, sec  string
		code               int
		countsCall, counts bool // Calls / QuotaUsed
	}{
		{"wrong secret", wechatsim.Options{}, "client_credential", appID, "nope", 40001, true, false},
		{"wrong secret 40125", wechatsim.Options{BadSecretErrcode: 40125}, "client_credential", appID, "nope", 40125, true, false},
		{"unknown appid", wechatsim.Options{}, "client_credential", "wxunknown", secret, 40013, false, false},
		{"missing grant_type", wechatsim.Options{}, "", appID, secret, 40002, false, false},
		{"wrong grant_type", wechatsim.Options{}, "authorization_code", appID, secret, 40002, false, false},
		{"missing appid", wechatsim.Options{}, "client_credential", "", secret, 41002, false, false},
		{"missing secret", wechatsim.Options{}, "client_credential", appID, "", 41004, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.opts)
			wantErrcode(t, e.classicWith(tc.grant, tc.appid, tc.sec), tc.code)
			if got, want := e.sim.Calls(appID), b2i(tc.countsCall); got != want {
				t.Errorf("Calls %d, want %d", got, want)
			}
			if got, want := e.sim.QuotaUsed(appID), b2i(tc.counts); got != want {
				t.Errorf("QuotaUsed %d, want %d", got, want)
			}
			if e.sim.Issued(appID) != 0 || e.sim.Fetches(appID) != 0 {
				t.Error("an error answer issued a token")
			}
		})
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestSecretRotation(t *testing.T) {
	e := newEnv(t, wechatsim.Options{})
	tok := mustToken(t, e.classic())
	e.sim.SetSecret(appID, "new-secret")
	wantErrcode(t, e.classic(), 40001)
	mustToken(t, e.classicWith("client_credential", appID, "new-secret"))
	wantCheck(t, e.sim, tok, nil) // issued tokens survive a rotation (within grace)
}

func TestWrongMethod(t *testing.T) {
	e := newEnv(t, wechatsim.Options{})
	for _, tc := range []struct{ method, path string }{
		{http.MethodPost, wechatsim.PathToken},
		{http.MethodGet, wechatsim.PathStableToken},
		{http.MethodDelete, wechatsim.PathCallbackIP},
	} {
		req, _ := http.NewRequest(tc.method, e.srv.URL+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s %s: HTTP %d, want 405", tc.method, tc.path, resp.StatusCode)
		}
	}
}

func TestDailyQuotaShanghaiDay(t *testing.T) {
	t.Run("resets at midnight UTC+8", func(t *testing.T) {
		e := newEnv(t, wechatsim.Options{DailyQuota: 3})
		e.clock.Set(time.Date(2024, 3, 1, 15, 59, 0, 0, time.UTC)) // 23:59 in Shanghai
		mustToken(t, e.classic())
		mustToken(t, e.stable(false))
		mustToken(t, e.classic())
		wantErrcode(t, e.classic(), 45009)
		wantErrcode(t, e.stable(false), 45009)
		if got := e.sim.Calls(appID); got != 5 {
			t.Fatalf("Calls %d, want 5 (quota-refused calls count)", got)
		}
		e.clock.Set(time.Date(2024, 3, 1, 15, 59, 59, 999999999, time.UTC))
		wantErrcode(t, e.classic(), 45009)
		e.clock.Set(time.Date(2024, 3, 1, 16, 0, 0, 0, time.UTC)) // 00:00 in Shanghai
		mustToken(t, e.classic())
		if got := e.sim.QuotaUsed(appID); got != 1 {
			t.Fatalf("QuotaUsed %d after the new day, want 1", got)
		}
	})
	t.Run("not at midnight UTC", func(t *testing.T) {
		e := newEnv(t, wechatsim.Options{DailyQuota: 2})
		e.clock.Set(time.Date(2024, 3, 1, 23, 59, 0, 0, time.UTC)) // 07:59 in Shanghai
		mustToken(t, e.classic())
		mustToken(t, e.classic())
		wantErrcode(t, e.classic(), 45009)
		e.clock.Set(time.Date(2024, 3, 2, 0, 0, 1, 0, time.UTC))
		wantErrcode(t, e.classic(), 45009)
		e.sim.ResetDay()
		mustToken(t, e.classic())
	})
	t.Run("default 2000 per app", func(t *testing.T) {
		e := newEnv(t, wechatsim.Options{})
		e.sim.AddApp("wxother", "other")
		for i := 0; i < 2000; i++ {
			mustToken(t, e.classic())
		}
		wantErrcode(t, e.classic(), 45009)
		mustToken(t, e.classicWith("client_credential", "wxother", "other"))
	})
	t.Run("unlimited", func(t *testing.T) {
		e := newEnv(t, wechatsim.Options{DailyQuota: -1})
		for i := 0; i < 2100; i++ {
			mustToken(t, e.classic())
		}
	})
}

func TestStableNormalModeReturnsSameToken(t *testing.T) {
	e := newEnv(t, wechatsim.Options{})
	r1 := e.stable(false)
	t1 := mustToken(t, r1)
	if r1.ExpiresIn != 7200 {
		t.Fatalf("expires_in %d, want 7200", r1.ExpiresIn)
	}
	e.clock.Advance(1000 * time.Second)
	r2 := e.stable(false)
	if r2.AccessToken != t1 {
		t.Fatal("normal mode issued a new token with plenty of time left")
	}
	if r2.ExpiresIn != 6200 {
		t.Fatalf("expires_in %d, want the remaining 6200", r2.ExpiresIn)
	}
	e.clock.Set(e.clock.Now().Add(6200*time.Second - 300*time.Second)) // exactly 5 minutes left
	t3 := mustToken(t, e.stable(false))
	if t3 == t1 {
		t.Fatal("normal mode returned a token in its last 5 minutes")
	}
	wantCheck(t, e.sim, t1, nil) // still valid until its own expiry
	e.clock.Advance(300 * time.Second)
	wantCheck(t, e.sim, t1, wechatsim.ErrExpiredToken)
	wantCheck(t, e.sim, t3, nil)
	if got := e.sim.Issued(appID); got != 2 {
		t.Fatalf("Issued %d, want 2", got)
	}
	if got := e.sim.Fetches(appID); got != 3 {
		t.Fatalf("Fetches %d, want 3", got)
	}
	if got := e.sim.QuotaUsed(appID); got != 3 {
		t.Fatalf("QuotaUsed %d, want 3 (every stable call counts)", got)
	}
}

func TestStableAndClassicAreIndependent(t *testing.T) {
	e := newEnv(t, wechatsim.Options{})
	st := mustToken(t, e.stable(false))
	mustToken(t, e.classic())
	mustToken(t, e.classic())
	e.clock.Advance(time.Hour)
	wantCheck(t, e.sim, st, nil)
	if again := mustToken(t, e.stable(false)); again != st {
		t.Fatal("classic fetches replaced the stable token")
	}
	c, s := e.sim.LastToken(appID)
	if s != st || c == st || c == "" {
		t.Fatal("LastToken mixes the chains")
	}
}

func TestStableForceRefresh(t *testing.T) {
	e := newEnv(t, wechatsim.Options{})
	t1 := mustToken(t, e.stable(false))
	t2 := mustToken(t, e.stable(true))
	if t2 == t1 {
		t.Fatal("force_refresh returned the same token")
	}
	if got := mustToken(t, e.stable(false)); got != t2 {
		t.Fatal("normal mode after a force refresh does not return the new token")
	}
	// The old token stays valid for the grace period only.
	e.clock.Advance(300*time.Second - time.Nanosecond)
	wantCheck(t, e.sim, t1, nil)
	e.clock.Advance(time.Nanosecond)
	wantCheck(t, e.sim, t1, wechatsim.ErrInvalidToken)

	// 30 s apart.
	e.clock.Advance(time.Hour)
	mustToken(t, e.stable(true))
	e.clock.Advance(30*time.Second - time.Nanosecond)
	wantErrcode(t, e.stable(true), 45011)
	e.clock.Advance(time.Nanosecond)
	mustToken(t, e.stable(true))
}

func TestStableForceDailyLimit(t *testing.T) {
	e := newEnv(t, wechatsim.Options{})
	e.clock.Set(time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC)) // 08:00 in Shanghai
	for i := 0; i < 20; i++ {
		mustToken(t, e.stable(true))
		e.clock.Advance(30 * time.Second)
	}
	wantErrcode(t, e.stable(true), 45009)
	mustToken(t, e.stable(false))                             // normal mode still works
	e.clock.Set(time.Date(2024, 3, 1, 16, 0, 0, 0, time.UTC)) // next Shanghai day
	mustToken(t, e.stable(true))
}

func TestStableErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		code       int
	}{
		{"not json", `grant_type=client_credential`, 47001},
		{"truncated json", `{"grant_type":"client_credential",`, 47001},
		{"force_refresh not bool", `{"grant_type":"client_credential","appid":"` + appID + `","secret":"` + secret + `","force_refresh":"yes"}`, 47001},
		{"wrong grant_type", `{"grant_type":"x","appid":"` + appID + `","secret":"` + secret + `"}`, 40002},
		{"unknown appid", `{"grant_type":"client_credential","appid":"wxnope","secret":"` + secret + `"}`, 40013},
		{"wrong secret", `{"grant_type":"client_credential","appid":"` + appID + `","secret":"bad"}`, 40001},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, wechatsim.Options{})
			wantErrcode(t, e.stableRaw(tc.body), tc.code)
			if e.sim.Issued(appID) != 0 {
				t.Fatal("an error answer issued a token")
			}
		})
	}
}

func TestBusinessCalls(t *testing.T) {
	e := newEnv(t, wechatsim.Options{})
	tok := mustToken(t, e.classic())
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		r := e.business(m, tok)
		if r.Errcode != 0 || len(r.IPList) != 1 || r.IPList[0] != "127.0.0.1" {
			t.Fatalf("%s valid token: %+v", m, r)
		}
	}
	wantErrcode(t, e.business(http.MethodGet, ""), 41001)
	wantErrcode(t, e.business(http.MethodGet, "not-a-token"), 40001)
	wantCheck(t, e.sim, "", wechatsim.ErrMissingToken)
	if !e.sim.Revoke(tok) || e.sim.Revoke("nope") {
		t.Fatal("Revoke result wrong")
	}
	wantErrcode(t, e.business(http.MethodPost, tok), 40001)
	if ok, rejected := e.sim.BusinessCalls(); ok != 2 || rejected != 3 {
		t.Fatalf("BusinessCalls = %d, %d; want 2, 3", ok, rejected)
	}
}

// rawClassic returns status, Content-Type and body without judging them.
func rawClassic(t *testing.T, ctx context.Context, base string) (int, string, []byte, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, tokenURL(base, "client_credential", appID, secret), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), body, nil
}

func TestFaults(t *testing.T) {
	type outcome int
	const (
		ok outcome = iota
		busy
		bad502
		garbage
		injected
	)
	classify := func(t *testing.T, status int, ctype string, body []byte) outcome {
		t.Helper()
		if status == http.StatusBadGateway {
			if !strings.HasPrefix(ctype, "text/html") || !strings.Contains(string(body), "<html>") {
				t.Fatalf("502 without HTML: %q %q", ctype, body)
			}
			return bad502
		}
		if status != http.StatusOK {
			t.Fatalf("HTTP %d", status)
		}
		var r reply
		if err := json.Unmarshal(body, &r); err != nil {
			return garbage
		}
		switch r.Errcode {
		case 0:
			if r.AccessToken == "" {
				t.Fatalf("no token and no errcode: %q", body)
			}
			return ok
		case -1:
			if r.Errmsg != "system error" {
				t.Fatalf("busy errmsg %q", r.Errmsg)
			}
			return busy
		case 40164:
			return injected
		}
		t.Fatalf("unexpected answer %q", body)
		return 0
	}
	for _, tc := range []struct {
		name  string
		fault wechatsim.Fault
		want  []outcome
	}{
		{"busy twice", wechatsim.Fault{Busy: 2}, []outcome{busy, busy, ok, ok}},
		{"busy forever", wechatsim.Fault{Busy: -1}, []outcome{busy, busy, busy, busy, busy}},
		{"502 once", wechatsim.Fault{HTTP5xx: 1}, []outcome{bad502, ok}},
		{"502 forever", wechatsim.Fault{HTTP5xx: -1}, []outcome{bad502, bad502, bad502}},
		{"garbage once", wechatsim.Fault{Garbage: 1}, []outcome{garbage, ok}},
		{"errcode until cleared", wechatsim.Fault{Errcode: 40164}, []outcome{injected, injected, injected}},
		{"counted before errcode", wechatsim.Fault{HTTP5xx: 1, Garbage: 1, Busy: 1, Errcode: 40164}, []outcome{bad502, garbage, busy, injected}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, wechatsim.Options{})
			e.sim.SetFault(tc.fault)
			oks := 0
			for i, want := range tc.want {
				status, ctype, body, err := rawClassic(t, context.Background(), e.srv.URL)
				if err != nil {
					t.Fatal(err)
				}
				if got := classify(t, status, ctype, body); got != want {
					t.Fatalf("call %d: outcome %d, want %d (body %q)", i, got, want, body)
				}
				if want == ok {
					oks++
				}
			}
			if got := e.sim.Calls(appID); got != oks {
				t.Fatalf("Calls %d, want %d (faulted calls do not reach the app)", got, oks)
			}
			if got := e.sim.Fetches(appID); got != oks {
				t.Fatalf("Fetches %d, want %d", got, oks)
			}
			e.sim.SetFault(wechatsim.Fault{})
			mustToken(t, e.classic())
		})
	}
	t.Run("stable endpoint too", func(t *testing.T) {
		e := newEnv(t, wechatsim.Options{})
		e.sim.SetFault(wechatsim.Fault{Errcode: 89503})
		r := e.stable(false)
		wantErrcode(t, r, 89503)
		if r.Errmsg == "" {
			t.Fatal("injected errcode without errmsg")
		}
		e.sim.SetFault(wechatsim.Fault{Errcode: 40164, Errmsg: "invalid ip 1.2.3.4, not in whitelist"})
		if r := e.stable(false); r.Errcode != 40164 || r.Errmsg != "invalid ip 1.2.3.4, not in whitelist" {
			t.Fatalf("custom errmsg not used: %+v", r)
		}
	})
	t.Run("business calls unaffected", func(t *testing.T) {
		e := newEnv(t, wechatsim.Options{})
		tok := mustToken(t, e.classic())
		e.sim.SetFault(wechatsim.Fault{Busy: -1, Errcode: 40164})
		if r := e.business(http.MethodGet, tok); r.Errcode != 0 {
			t.Fatalf("business call faulted: %+v", r)
		}
	})
}

func TestLatency(t *testing.T) {
	e := newEnv(t, wechatsim.Options{})
	const lat = 40 * time.Millisecond
	e.sim.SetFault(wechatsim.Fault{Latency: lat})
	start := time.Now()
	mustToken(t, e.classic())
	if d := time.Since(start); d < lat {
		t.Fatalf("answered after %v, want at least %v", d, lat)
	}
}

func TestLatencyHonoursCancellation(t *testing.T) {
	e := newEnv(t, wechatsim.Options{})
	// Long enough to tell "gave up" from "slept it out", short enough that
	// a broken handler does not hang the server's Close.
	const lat = 5 * time.Second
	e.sim.SetFault(wechatsim.Fault{Latency: lat})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, _, err := rawClassic(t, ctx, e.srv.URL)
		done <- err
	}()
	waitFor(t, "the call to be in flight", func() bool { return e.sim.InFlight(appID) == 1 })
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a cancelled call did not return")
	}
	// The handler itself must give up, not sleep the latency out.
	waitWithin(t, lat/2, "the handler to give up", func() bool { return e.sim.InFlight(appID) == 0 })
	if e.sim.Calls(appID) != 0 || e.sim.Issued(appID) != 0 {
		t.Fatal("an abandoned call reached the app")
	}
}

func TestTokens(t *testing.T) {
	valid := func(tok string) bool {
		for _, c := range tok {
			if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
		return true
	}
	for _, tc := range []struct {
		length, want, n int
	}{{0, 136, 300}, {157, 157, 10}, {2048, 2048, 10}, {4096, 4096, 3}, {1, 8, 50}} {
		t.Run(fmt.Sprint(tc.length), func(t *testing.T) {
			e := newEnv(t, wechatsim.Options{TokenLength: tc.length})
			seen := map[string]bool{}
			var last string
			for i := 0; i < tc.n; i++ {
				tok := mustToken(t, e.classic())
				if len(tok) != tc.want || !valid(tok) {
					t.Fatalf("token %q: length %d, want %d URL-safe chars", contract.Fingerprint(tok), len(tok), tc.want)
				}
				if seen[tok] {
					t.Fatal("duplicate token")
				}
				seen[tok] = true
				last = tok
			}
			if r := e.business(http.MethodGet, last); r.Errcode != 0 {
				t.Fatalf("business call with a %d-char token: %+v", len(last), r)
			}
			if got := e.sim.Issued(appID); got != tc.n {
				t.Fatalf("Issued %d, want %d", got, tc.n)
			}
		})
	}
}

func TestMaxConcurrentFetches(t *testing.T) {
	t.Run("parallel", func(t *testing.T) {
		e := newEnv(t, wechatsim.Options{})
		e.sim.SetFault(wechatsim.Fault{Latency: 30 * time.Second}) // bounded: Close waits for handlers
		ctx, cancel := context.WithCancel(context.Background())
		const n = 8
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _, _, _ = rawClassic(t, ctx, e.srv.URL)
			}()
		}
		waitFor(t, "all calls in flight", func() bool { return e.sim.InFlight(appID) == n })
		cancel()
		wg.Wait()
		if got := e.sim.MaxConcurrentFetches(appID); got != n {
			t.Fatalf("MaxConcurrentFetches %d, want %d", got, n)
		}
		if got := e.sim.MaxConcurrentFetches("wxother"); got != 0 {
			t.Fatalf("another app's MaxConcurrentFetches %d, want 0", got)
		}
	})
	t.Run("serial", func(t *testing.T) {
		e := newEnv(t, wechatsim.Options{})
		e.sim.SetFault(wechatsim.Fault{Latency: time.Millisecond})
		for i := 0; i < 5; i++ {
			mustToken(t, e.classic())
			mustToken(t, e.stable(false))
		}
		if got := e.sim.MaxConcurrentFetches(appID); got != 1 {
			t.Fatalf("MaxConcurrentFetches %d, want 1", got)
		}
	})
}

func TestConcurrentUse(t *testing.T) {
	e := newEnv(t, wechatsim.Options{DailyQuota: -1})
	const workers, each = 16, 25
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		seen = map[string]bool{}
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				status, _, body, err := rawClassic(t, context.Background(), e.srv.URL)
				if err != nil || status != http.StatusOK {
					t.Errorf("call: %v %d", err, status)
					return
				}
				var r reply
				if err := json.Unmarshal(body, &r); err != nil || r.AccessToken == "" {
					t.Errorf("bad answer %q", body)
					return
				}
				mu.Lock()
				seen[r.AccessToken] = true
				mu.Unlock()
				_ = e.sim.Check(r.AccessToken)
				e.sim.SetFault(wechatsim.Fault{})
			}
		}()
	}
	wg.Wait()
	if len(seen) != workers*each || e.sim.Issued(appID) != workers*each || e.sim.Calls(appID) != workers*each {
		t.Fatalf("distinct %d, Issued %d, Calls %d; want %d each", len(seen), e.sim.Issued(appID), e.sim.Calls(appID), workers*each)
	}
	if e.sim.MaxConcurrentFetches(appID) < 1 {
		t.Fatal("MaxConcurrentFetches not tracked")
	}
}

func TestOnCallNeverCarriesSecretsOrTokens(t *testing.T) {
	var (
		mu    sync.Mutex
		calls []wechatsim.Call
	)
	e := newEnv(t, wechatsim.Options{OnCall: func(c wechatsim.Call) {
		mu.Lock()
		calls = append(calls, c)
		mu.Unlock()
	}})
	tok := mustToken(t, e.classic())
	wantErrcode(t, e.classicWith("client_credential", appID, "wrong-"+secret), 40001)
	st := mustToken(t, e.stable(false))
	e.business(http.MethodGet, tok)
	e.sim.SetFault(wechatsim.Fault{Busy: 1})
	wantErrcode(t, e.classic(), -1)

	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 5 {
		t.Fatalf("%d calls reported, want 5", len(calls))
	}
	for _, c := range calls {
		s := fmt.Sprintf("%+v", c)
		if strings.Contains(s, secret) || strings.Contains(s, tok) || strings.Contains(s, st) {
			t.Fatalf("call record leaks a secret or token: %s", s)
		}
		if c.AppID != appID {
			t.Fatalf("call record without appid: %s", s)
		}
	}
	if calls[0].Token != contract.Fingerprint(tok) || calls[0].Errcode != 0 || calls[0].Path != wechatsim.PathToken {
		t.Fatalf("first call %+v", calls[0])
	}
	if calls[1].Errcode != 40001 || calls[4].Fault != "busy" || calls[3].Path != wechatsim.PathCallbackIP {
		t.Fatalf("calls %+v", calls)
	}
}
