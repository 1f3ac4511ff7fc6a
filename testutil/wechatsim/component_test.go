package wechatsim_test

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// The Open Platform tests' component, its second component, and their
// secrets: none may appear in an answer of the emulator.
const (
	compID      = "wxcomp0123456789ab"
	compSecret  = "component-secret-0123456789"
	compToken   = "pushtoken0123"
	compAESKey  = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG" // 43 characters of base64
	compID2     = "wxcomp2223456789ab"
	compSecret2 = "component2-secret-0123456789"
	compToken2  = "pushtoken2222"
	compAESKey2 = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut"
	authzA      = "wxauthA0123456789"
	authzB      = "wxauthB0123456789"
)

// received is one push the test callback decrypted.
type received struct {
	path  string
	query url.Values
	push  *wxcrypt.ComponentPush
}

// compEnv is an emulator with two components and a callback serving
// /wechat/component/<appid> that opens pushes with wxcrypt and answers
// what answer says.
type compEnv struct {
	*env
	cb *httptest.Server

	mu     sync.Mutex
	pushes []received
	bad    int                                          // pushes that did not open
	answer func(w http.ResponseWriter, r *http.Request) // nil: "success"
}

func newCompEnv(t *testing.T, opts wechatsim.Options) *compEnv {
	t.Helper()
	e := &compEnv{env: newEnv(t, opts)}
	e.sim.AddComponent(compID, compSecret, compToken, compAESKey)
	e.sim.AddComponent(compID2, compSecret2, compToken2, compAESKey2)
	crypters := map[string]*wxcrypt.Crypter{}
	for _, c := range [][3]string{{compID, compToken, compAESKey}, {compID2, compToken2, compAESKey2}} {
		cr, err := wxcrypt.New(c[1], c[2], c[0])
		if err != nil {
			t.Fatal(err)
		}
		crypters[c[0]] = cr
	}
	e.cb = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cr := crypters[strings.TrimPrefix(r.URL.Path, "/wechat/component/")]
		body, _ := io.ReadAll(r.Body)
		q := r.URL.Query()
		var p *wxcrypt.ComponentPush
		err := errors.New("no such component")
		if cr != nil && r.Method == http.MethodPost {
			p, err = cr.OpenComponentPush(q.Get("msg_signature"), q.Get("timestamp"), q.Get("nonce"), body)
		}
		e.mu.Lock()
		answer := e.answer
		if err != nil {
			e.bad++
		} else {
			e.pushes = append(e.pushes, received{r.URL.Path, q, p})
		}
		e.mu.Unlock()
		if err != nil {
			http.Error(w, "bad push", http.StatusBadRequest)
			return
		}
		if answer != nil {
			answer(w, r)
			return
		}
		_, _ = io.WriteString(w, "success")
	}))
	t.Cleanup(e.cb.Close)
	return e
}

func (e *compEnv) callback(component string) string {
	return e.cb.URL + "/wechat/component/" + component
}

// received returns the pushes so far.
func (e *compEnv) received() []received {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.pushes)
}

func (e *compEnv) last() received {
	e.t.Helper()
	p := e.received()
	if len(p) == 0 {
		e.t.Fatal("no push received")
	}
	return p[len(p)-1]
}

func (e *compEnv) setAnswer(f func(w http.ResponseWriter, r *http.Request)) {
	e.mu.Lock()
	e.answer = f
	e.mu.Unlock()
}

// secrets is every value no answer of the emulator may contain: the
// components' secrets and callback keys, and every verify ticket,
// authorization code and pre-auth code pushed so far.
func (e *compEnv) secrets() []string {
	s := []string{compSecret, compSecret2, compToken, compToken2, compAESKey, compAESKey2, wrongSecret}
	for _, p := range e.received() {
		for _, v := range []string{p.push.ComponentVerifyTicket, p.push.AuthorizationCode, p.push.PreAuthCode} {
			if v != "" {
				s = append(s, v)
			}
		}
	}
	return s
}

// post sends a JSON body to a component endpoint with the component
// token tok ("" for none) and checks that the answer (HTTP 200, JSON)
// leaks no secret.
func (e *compEnv) post(path, tok string, body any) map[string]any {
	e.t.Helper()
	u := e.srv.URL + path
	if tok != "" {
		u += "?component_access_token=" + url.QueryEscape(tok)
	}
	var b []byte
	if s, ok := body.(string); ok {
		b = []byte(s)
	} else {
		b, _ = json.Marshal(body)
	}
	req, _ := http.NewRequest(http.MethodPost, u, bytes.NewReader(b))
	r := e.raw(req)
	if r.status != http.StatusOK {
		e.t.Fatalf("%s: HTTP %d %s", path, r.status, r.body)
	}
	for _, s := range e.secrets() {
		if strings.Contains(string(r.body), s) {
			e.t.Fatalf("answer of %s leaks a secret: %s", path, r.body)
		}
	}
	var m map[string]any
	r.decode(e.t, &m)
	return m
}

func errcode(m map[string]any) int {
	if v, ok := m["errcode"].(float64); ok {
		return int(v)
	}
	return 0
}

func wantCode(t *testing.T, m map[string]any, code int) {
	t.Helper()
	if errcode(m) != code {
		t.Fatalf("errcode %d, want %d: %v", errcode(m), code, m)
	}
	if code == 0 {
		return
	}
	for _, k := range []string{"component_access_token", "authorizer_access_token", "authorization_info", "list"} {
		if _, ok := m[k]; ok {
			t.Fatalf("error answer carries %s: %v", k, m)
		}
	}
}

func str(t *testing.T, m map[string]any, key string) string {
	t.Helper()
	s, _ := m[key].(string)
	if s == "" {
		t.Fatalf("no %s in %v", key, m)
	}
	return s
}

func (e *compEnv) pushTicket(component string) string {
	e.t.Helper()
	if err := e.sim.PushVerifyTicket(context.Background(), component, e.callback(component)); err != nil {
		e.t.Fatalf("push: %v", err)
	}
	return e.last().push.ComponentVerifyTicket
}

func (e *compEnv) componentTokenWith(appid, sec, ticket string) map[string]any {
	e.t.Helper()
	return e.post(wechatsim.PathComponentToken, "", map[string]string{
		"component_appid": appid, "component_appsecret": sec, "component_verify_ticket": ticket})
}

// componentToken pushes a ticket and gets a component token with it.
func (e *compEnv) componentToken() string {
	e.t.Helper()
	m := e.componentTokenWith(compID, compSecret, e.pushTicket(compID))
	wantCode(e.t, m, 0)
	if m["expires_in"] != float64(7200) {
		e.t.Fatalf("expires_in %v", m["expires_in"])
	}
	return str(e.t, m, "component_access_token")
}

func (e *compEnv) queryAuth(ctok, code string) map[string]any {
	e.t.Helper()
	return e.post(wechatsim.PathQueryAuth, ctok, map[string]string{"component_appid": compID, "authorization_code": code})
}

func (e *compEnv) authorizerToken(ctok, authorizer, refresh string) map[string]any {
	e.t.Helper()
	return e.post(wechatsim.PathAuthorizerToken, ctok, map[string]string{
		"component_appid": compID, "authorizer_appid": authorizer, "authorizer_refresh_token": refresh})
}

func (e *compEnv) list(ctok string, offset, count int) map[string]any {
	e.t.Helper()
	return e.post(wechatsim.PathAuthorizerList, ctok, map[string]any{"component_appid": compID, "offset": offset, "count": count})
}

// authorize authorizes an account by push and redeems the code.
func (e *compEnv) authorize(ctok, authorizer string) (access, refresh string) {
	e.t.Helper()
	code, err := e.sim.Authorize(context.Background(), compID, authorizer, e.callback(compID))
	if err != nil {
		e.t.Fatal(err)
	}
	m := e.queryAuth(ctok, code)
	wantCode(e.t, m, 0)
	info, _ := m["authorization_info"].(map[string]any)
	return str(e.t, info, "authorizer_access_token"), str(e.t, info, "authorizer_refresh_token")
}

// A component token needs a verify ticket the sim pushed to that
// component, valid for 12 hours: 61006 for an unknown, missing or other
// component's ticket, 61005 for an expired one. Every pushed ticket stays
// valid for its 12 hours, not only the latest.
func TestComponentTokenNeedsPushedValidTicket(t *testing.T) {
	e := newCompEnv(t, wechatsim.Options{})
	wantCode(t, e.componentTokenWith(compID, compSecret, "ticket@@@never-pushed"), wechatsim.CodeComponentTicketInvalid)
	wantCode(t, e.componentTokenWith(compID, compSecret, ""), wechatsim.CodeComponentTicketInvalid)

	first := e.pushTicket(compID)
	if first == "" || e.sim.LastVerifyTicket(compID) != first {
		t.Fatalf("LastVerifyTicket %q, pushed %q", e.sim.LastVerifyTicket(compID), first)
	}
	other := e.pushTicket(compID2)
	wantCode(t, e.componentTokenWith(compID, compSecret, other), wechatsim.CodeComponentTicketInvalid)
	wantCode(t, e.componentTokenWith(compID2, compSecret2, first), wechatsim.CodeComponentTicketInvalid)

	e.clock.Advance(10 * time.Minute)
	second := e.pushTicket(compID)
	if second == first {
		t.Fatal("a push repeated the ticket")
	}
	for _, tk := range []string{first, second} {
		m := e.componentTokenWith(compID, compSecret, tk)
		wantCode(t, m, 0)
		str(t, m, "component_access_token")
	}
	e.clock.Advance(12*time.Hour - 10*time.Minute) // first is 12 h old, second not yet
	wantCode(t, e.componentTokenWith(compID, compSecret, first), wechatsim.CodeComponentTicketExpired)
	wantCode(t, e.componentTokenWith(compID, compSecret, second), 0)
	e.clock.Advance(10 * time.Minute)
	wantCode(t, e.componentTokenWith(compID, compSecret, second), wechatsim.CodeComponentTicketExpired)
	if got := e.sim.ComponentTokenCalls(compID); got != 8 {
		t.Fatalf("ComponentTokenCalls = %d, want 8", got)
	}
	if got := e.sim.ComponentTokensIssued(compID); got != 3 {
		t.Fatalf("ComponentTokensIssued = %d, want 3", got)
	}

	short := newCompEnv(t, wechatsim.Options{VerifyTicketTTL: time.Hour})
	tk := short.pushTicket(compID)
	short.clock.Advance(time.Hour)
	wantCode(t, short.componentTokenWith(compID, compSecret, tk), wechatsim.CodeComponentTicketExpired)
}

func TestComponentTokenErrors(t *testing.T) {
	e := newCompEnv(t, wechatsim.Options{})
	tk := e.pushTicket(compID)
	for _, c := range []struct {
		name        string
		appid, sec  string
		code        int
		countsAsOne bool
	}{
		{"no appid", "", compSecret, wechatsim.CodeAppIDMissing, false},
		{"unknown appid", "wxnosuchcomponent", compSecret, wechatsim.CodeInvalidAppID, false},
		{"no secret", compID, "", wechatsim.CodeAppSecretMissing, true},
		{"wrong secret", compID, wrongSecret, wechatsim.CodeInvalidCredential, true},
		{"other component's secret", compID, compSecret2, wechatsim.CodeInvalidCredential, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := e.sim.ComponentTokenCalls(compID)
			wantCode(t, e.componentTokenWith(c.appid, c.sec, tk), c.code)
			if got := e.sim.ComponentTokenCalls(compID) - before; got != b2i(c.countsAsOne) {
				t.Fatalf("counted %d calls", got)
			}
		})
	}
	wantCode(t, e.post(wechatsim.PathComponentToken, "", "{not json"), wechatsim.CodeDataFormat)
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+wechatsim.PathComponentToken, nil)
	if r := e.raw(req); r.status != http.StatusMethodNotAllowed {
		t.Fatalf("GET: HTTP %d", r.status)
	}
	if e.sim.ComponentTokensIssued(compID) != 0 {
		t.Fatal("a token was issued")
	}

	e40125 := newCompEnv(t, wechatsim.Options{BadSecretErrcode: wechatsim.CodeInvalidAppSecret})
	wantCode(t, e40125.componentTokenWith(compID, wrongSecret, e40125.pushTicket(compID)), wechatsim.CodeInvalidAppSecret)

	quota := newCompEnv(t, wechatsim.Options{DailyQuota: 2})
	quota.componentToken()
	quota.componentToken()
	wantCode(t, quota.componentTokenWith(compID, compSecret, quota.pushTicket(compID)), wechatsim.CodeDailyQuota)
}

// Each call issues a new component token; the previous one keeps working
// for Grace. A component token is rejected by business calls, and the
// component endpoints reject app and authorizer tokens (61014), unknown
// or superseded ones (40001), expired ones (42001) and none (41001).
func TestComponentTokenGraceAndRejections(t *testing.T) {
	e := newCompEnv(t, wechatsim.Options{Grace: time.Minute})
	t1 := e.componentToken()
	wantCode(t, e.list(t1, 0, 10), 0)
	t2 := e.componentToken()
	if t1 == t2 || e.sim.LastComponentToken(compID) != t2 {
		t.Fatal("no new component token")
	}
	wantCode(t, e.list(t1, 0, 10), 0) // inside the grace
	e.clock.Advance(time.Minute)
	for _, path := range []string{wechatsim.PathAuthorizerList, wechatsim.PathQueryAuth, wechatsim.PathAuthorizerToken} {
		wantCode(t, e.post(path, t1, map[string]any{"component_appid": compID}), wechatsim.CodeInvalidCredential)
		wantCode(t, e.post(path, "", map[string]any{"component_appid": compID}), wechatsim.CodeTokenMissing)
		wantCode(t, e.post(path, "no-such-token", map[string]any{"component_appid": compID}), wechatsim.CodeInvalidCredential)
	}
	wantCode(t, e.list(t2, 0, 10), 0)
	appTok := mustToken(t, e.classic())
	wantCode(t, e.list(appTok, 0, 10), wechatsim.CodeMustUseComponentToken)
	access, _ := e.authorize(t2, authzA)
	wantCode(t, e.list(access, 0, 10), wechatsim.CodeMustUseComponentToken)
	wantErrcode(t, e.business(http.MethodGet, t2), wechatsim.CodeInvalidCredential)
	wantCheck(t, e.sim, t2, wechatsim.ErrInvalidToken)

	// the newer documentation's access_token= works too
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+wechatsim.PathAuthorizerList+"?access_token="+url.QueryEscape(t2),
		strings.NewReader(`{"component_appid":"`+compID+`","offset":0,"count":1}`))
	var m map[string]any
	e.raw(req).decode(t, &m)
	wantCode(t, m, 0)

	// another component's token is not this component's
	e.pushTicket(compID2)
	m2 := e.componentTokenWith(compID2, compSecret2, e.last().push.ComponentVerifyTicket)
	wantCode(t, e.list(str(t, m2, "component_access_token"), 0, 10), wechatsim.CodeInvalidAppID)

	e.clock.Advance(2 * time.Hour)
	wantCode(t, e.list(t2, 0, 10), wechatsim.CodeTokenExpired)
}

// Pushes open with wxcrypt (signature, AES, appid) and carry the fields
// their InfoType needs; the query has WeChat's parameters, the plain
// signature included.
func TestPushesDecryptAndCarryFields(t *testing.T) {
	e := newCompEnv(t, wechatsim.Options{})
	now := e.clock.Now().Unix()
	tk := e.pushTicket(compID)
	p := e.last()
	if p.push.AppID != compID || p.push.InfoType != wxcrypt.InfoVerifyTicket || p.push.CreateTime != now || tk == "" {
		t.Fatalf("ticket push %v", p.push)
	}
	q := p.query
	if q.Get("encrypt_type") != "aes" || q.Get("timestamp") != strconv.FormatInt(now, 10) || q.Get("nonce") == "" || q.Get("msg_signature") == "" {
		t.Fatalf("query %v", q)
	}
	parts := []string{compToken, q.Get("timestamp"), q.Get("nonce")}
	slices.Sort(parts)
	sum := sha1.Sum([]byte(strings.Join(parts, "")))
	if q.Get("signature") != hex.EncodeToString(sum[:]) {
		t.Fatal("plain signature is not SHA-1 of the sorted token, timestamp and nonce")
	}
	if e.pushTicket(compID) == tk {
		t.Fatal("same ticket pushed twice")
	}

	code, err := e.sim.Authorize(context.Background(), compID, authzA, e.callback(compID))
	if err != nil {
		t.Fatal(err)
	}
	p = e.last()
	want := wxcrypt.ComponentPush{AppID: compID, CreateTime: now, InfoType: wxcrypt.InfoAuthorized, AuthorizerAppID: authzA,
		AuthorizationCode: code, AuthorizationCodeExpiredTime: now + 600, PreAuthCode: p.push.PreAuthCode}
	if *p.push != want || code == "" || p.push.PreAuthCode == "" {
		t.Fatalf("authorized push %#v (code set %v, pre-auth code set %v)", p.push, code != "", p.push.PreAuthCode != "")
	}
	code2, err := e.sim.UpdateAuthorize(context.Background(), compID, authzA, e.callback(compID))
	if err != nil {
		t.Fatal(err)
	}
	p = e.last()
	if p.push.InfoType != wxcrypt.InfoUpdateAuthorized || p.push.AuthorizationCode != code2 || code2 == code || p.push.AuthorizerAppID != authzA {
		t.Fatalf("updateauthorized push %v", p.push)
	}
	if err := e.sim.Unauthorize(context.Background(), compID, authzA, e.callback(compID)); err != nil {
		t.Fatal(err)
	}
	p = e.last()
	if p.push.InfoType != wxcrypt.InfoUnauthorized || p.push.AuthorizerAppID != authzA || p.push.AuthorizationCode != "" {
		t.Fatalf("unauthorized push %v", p.push)
	}
	// the second component's pushes open only with its own key
	e.pushTicket(compID2)
	if p := e.last(); p.push.AppID != compID2 || p.path != "/wechat/component/"+compID2 {
		t.Fatalf("second component's push %v at %s", p.push, p.path)
	}
	if ok, failed := e.sim.Pushes(compID); ok != 5 || failed != 0 {
		t.Fatalf("Pushes = %d ok, %d failed", ok, failed)
	}
	e.mu.Lock()
	bad := e.bad
	e.mu.Unlock()
	if bad != 0 {
		t.Fatalf("%d pushes did not open", bad)
	}
}

// A push not answered HTTP 200 "success" in time is an error naming no
// ticket; the ticket is valid all the same.
func TestPushFailures(t *testing.T) {
	e := newCompEnv(t, wechatsim.Options{PushTimeout: 200 * time.Millisecond})
	for _, c := range []struct {
		name   string
		answer func(w http.ResponseWriter, r *http.Request)
	}{
		{"fail", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "fail") }},
		{"empty", func(http.ResponseWriter, *http.Request) {}},
		{"500 success", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, "success")
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e.setAnswer(c.answer)
			err := e.sim.PushVerifyTicket(context.Background(), compID, e.callback(compID))
			if !errors.Is(err, wechatsim.ErrPushRejected) {
				t.Fatalf("err = %v, want ErrPushRejected", err)
			}
			tk := e.sim.LastVerifyTicket(compID)
			if strings.Contains(err.Error(), tk) || strings.Contains(err.Error(), "msg_signature") {
				t.Fatalf("error leaks: %v", err)
			}
			wantCode(t, e.componentTokenWith(compID, compSecret, tk), 0)
		})
	}
	t.Run("timeout", func(t *testing.T) {
		e.setAnswer(func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
		start := time.Now()
		err := e.sim.PushVerifyTicket(context.Background(), compID, e.callback(compID))
		if err == nil || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
			t.Fatalf("err = %v after %v", err, time.Since(start))
		}
	})
	e.setAnswer(nil)
	if ok, failed := e.sim.Pushes(compID); ok != 0 || failed != 4 {
		t.Fatalf("Pushes = %d ok, %d failed", ok, failed)
	}
	if err := e.sim.PushVerifyTicket(context.Background(), "wxnosuch", e.callback(compID)); err == nil {
		t.Fatal("push for an unknown component")
	}
	if err := e.sim.PushVerifyTicket(context.Background(), compID, "not a url"); err == nil {
		t.Fatal("push to a non-URL")
	}
	if err := e.sim.PushVerifyTicket(context.Background(), compID, e.cb.URL+"/wechat/component/nosuch"); !errors.Is(err, wechatsim.ErrPushRejected) {
		t.Fatalf("push the callback cannot open: %v", err)
	}

	e.sim.AddComponent("wxbadkey", "s", compToken, "too-short")
	if err := e.sim.PushVerifyTicket(context.Background(), "wxbadkey", e.callback(compID)); !errors.Is(err, wxcrypt.ErrBadConfig) {
		t.Fatalf("bad EncodingAESKey: %v", err)
	}
}

// An authorization code works once and for 10 minutes; the authorizer
// token it yields is a WeChat access token of the authorizer (business
// calls and tickets accept it).
func TestQueryAuthCodeSingleUse(t *testing.T) {
	e := newCompEnv(t, wechatsim.Options{})
	ctok := e.componentToken()
	code, err := e.sim.Authorize(context.Background(), compID, authzA, e.callback(compID))
	if err != nil {
		t.Fatal(err)
	}
	m := e.queryAuth(ctok, code)
	wantCode(t, m, 0)
	info, _ := m["authorization_info"].(map[string]any)
	access := str(t, info, "authorizer_access_token")
	refresh := str(t, info, "authorizer_refresh_token")
	if info["authorizer_appid"] != authzA || info["expires_in"] != float64(7200) || refresh != e.sim.AuthorizerRefreshToken(compID, authzA) {
		t.Fatalf("authorization_info %v", info)
	}
	if fi, _ := info["func_info"].([]any); len(fi) == 0 {
		t.Fatalf("no func_info: %v", info)
	}
	if r := e.business(http.MethodGet, access); r.Errcode != 0 {
		t.Fatalf("business call with the authorizer token: %+v", r)
	}
	mustTicket(t, e.getTicket(access, "jsapi"))
	if e.sim.LastAuthorizerToken(compID, authzA) != access || e.sim.AuthorizerTokensIssued(compID, authzA) != 1 {
		t.Fatal("LastAuthorizerToken / AuthorizerTokensIssued")
	}

	wantCode(t, e.queryAuth(ctok, code), wechatsim.CodeAuthCodeInvalid) // used
	wantCode(t, e.queryAuth(ctok, "queryauthcode@@@made-up"), wechatsim.CodeAuthCodeInvalid)
	wantCode(t, e.queryAuth(ctok, ""), wechatsim.CodeDataFormat)

	code2, _ := e.sim.Authorize(context.Background(), compID, authzB, e.callback(compID))
	e.clock.Advance(10 * time.Minute)
	ctok = e.componentToken()
	wantCode(t, e.queryAuth(ctok, code2), wechatsim.CodeAuthCodeExpired)
	wantCode(t, e.queryAuth(ctok, code2), wechatsim.CodeAuthCodeInvalid)

	// a code is its component's
	code3, _ := e.sim.Authorize(context.Background(), compID2, authzA, e.callback(compID2))
	wantCode(t, e.queryAuth(ctok, code3), wechatsim.CodeAuthCodeInvalid)
	if got := e.sim.QueryAuthCalls(compID); got != 7 {
		t.Fatalf("QueryAuthCalls = %d, want 7", got)
	}

	long := newCompEnv(t, wechatsim.Options{AuthCodeTTL: time.Hour})
	lt := long.componentToken()
	lc, _ := long.sim.Authorize(context.Background(), compID, authzA, long.callback(compID))
	long.clock.Advance(30 * time.Minute)
	wantCode(t, long.queryAuth(lt, lc), 0)
}

// Without rotation api_authorizer_token returns a new access token (the
// old one valid for Grace) and the same refresh token; a wrong, unknown
// or missing refresh token answers 61023 and issues nothing.
func TestAuthorizerTokenRefresh(t *testing.T) {
	e := newCompEnv(t, wechatsim.Options{Grace: time.Minute})
	ctok := e.componentToken()
	access, refresh := e.authorize(ctok, authzA)

	m := e.authorizerToken(ctok, authzA, refresh)
	wantCode(t, m, 0)
	access2 := str(t, m, "authorizer_access_token")
	if access2 == access || m["authorizer_refresh_token"] != refresh || m["expires_in"] != float64(7200) {
		t.Fatalf("answer %v", m)
	}
	if r := e.business(http.MethodGet, access); r.Errcode != 0 {
		t.Fatalf("old token inside the grace: %+v", r)
	}
	e.clock.Advance(time.Minute)
	wantErrcode(t, e.business(http.MethodGet, access), wechatsim.CodeInvalidCredential)
	if r := e.business(http.MethodGet, access2); r.Errcode != 0 {
		t.Fatalf("new token: %+v", r)
	}

	issued := e.sim.AuthorizerTokensIssued(compID, authzA)
	wantCode(t, e.authorizerToken(ctok, authzA, "refreshtoken@@@wrong"), wechatsim.CodeRefreshTokenInvalid)
	wantCode(t, e.authorizerToken(ctok, authzB, refresh), wechatsim.CodeRefreshTokenInvalid) // never authorized
	wantCode(t, e.authorizerToken(ctok, authzA, ""), wechatsim.CodeDataFormat)
	if got := e.sim.AuthorizerTokensIssued(compID, authzA); got != issued {
		t.Fatalf("a rejected call issued a token (%d → %d)", issued, got)
	}
	if got := e.sim.AuthorizerTokenCalls(compID, authzA); got != 3 {
		t.Fatalf("AuthorizerTokenCalls = %d, want 3", got)
	}
	if e.sim.AuthorizerRefreshToken(compID, authzA) != refresh {
		t.Fatal("the refresh token changed without rotation")
	}
	// ticket fetched with a superseded authorizer token: 40001, like an app's
	e.authorizerToken(ctok, authzA, refresh)
	e.clock.Advance(time.Minute)
	wantTicketErr(t, e.getTicket(access2, "jsapi"), wechatsim.CodeInvalidCredential)
}

// With RotateRefreshTokens each call returns a new refresh token; the
// superseded one keeps working for RefreshTokenGrace (a caller that lost
// the answer recovers with it), older ones answer 61023.
func TestRefreshTokenRotation(t *testing.T) {
	e := newCompEnv(t, wechatsim.Options{RotateRefreshTokens: true, RefreshTokenGrace: 5 * time.Minute})
	ctok := e.componentToken()
	_, r0 := e.authorize(ctok, authzA)

	m := e.authorizerToken(ctok, authzA, r0)
	wantCode(t, m, 0)
	r1 := str(t, m, "authorizer_refresh_token")
	if r1 == r0 || e.sim.AuthorizerRefreshToken(compID, authzA) != r1 {
		t.Fatal("refresh token not rotated")
	}
	// the answer carrying r1 was "lost": r0 still works inside the grace
	m = e.authorizerToken(ctok, authzA, r0)
	wantCode(t, m, 0)
	r2 := str(t, m, "authorizer_refresh_token")
	if r2 == r1 || r2 == r0 {
		t.Fatal("no new refresh token")
	}
	// now r1 is the superseded one; r0 is older and dead
	wantCode(t, e.authorizerToken(ctok, authzA, r0), wechatsim.CodeRefreshTokenInvalid)
	wantCode(t, e.authorizerToken(ctok, authzA, r1), 0)
	r3 := e.sim.AuthorizerRefreshToken(compID, authzA)
	e.clock.Advance(5 * time.Minute)
	wantCode(t, e.authorizerToken(ctok, authzA, r2), wechatsim.CodeRefreshTokenInvalid) // superseded past the grace
	m = e.authorizerToken(ctok, authzA, r3)
	wantCode(t, m, 0)

	none := newCompEnv(t, wechatsim.Options{RotateRefreshTokens: true, RefreshTokenGrace: -1})
	nt := none.componentToken()
	_, n0 := none.authorize(nt, authzA)
	wantCode(t, none.authorizerToken(nt, authzA, n0), 0)
	wantCode(t, none.authorizerToken(nt, authzA, n0), wechatsim.CodeRefreshTokenInvalid)
}

// Unauthorize invalidates the refresh token, every access token and any
// pending code, and drops the authorizer from the list; re-authorizing
// gives a new refresh token, the old one staying dead.
func TestUnauthorizeInvalidates(t *testing.T) {
	e := newCompEnv(t, wechatsim.Options{})
	ctok := e.componentToken()
	access, refresh := e.authorize(ctok, authzA)
	e.authorize(ctok, authzB)
	m := e.authorizerToken(ctok, authzA, refresh)
	access2 := str(t, m, "authorizer_access_token")
	pending, _ := e.sim.UpdateAuthorize(context.Background(), compID, authzA, e.callback(compID))

	if err := e.sim.Unauthorize(context.Background(), compID, authzA, e.callback(compID)); err != nil {
		t.Fatal(err)
	}
	wantCode(t, e.authorizerToken(ctok, authzA, refresh), wechatsim.CodeRefreshTokenInvalid)
	for _, tok := range []string{access, access2} {
		wantErrcode(t, e.business(http.MethodGet, tok), wechatsim.CodeInvalidCredential)
	}
	wantCode(t, e.queryAuth(ctok, pending), wechatsim.CodeAuthCodeInvalid)
	if got := e.sim.Authorizers(compID); !slices.Equal(got, []string{authzB}) {
		t.Fatalf("Authorizers = %v", got)
	}
	if e.sim.AuthorizerRefreshToken(compID, authzA) != "" {
		t.Fatal("an unauthorized account has a refresh token")
	}
	if err := e.sim.Unauthorize(context.Background(), compID, authzA, e.callback(compID)); err == nil {
		t.Fatal("unauthorized twice")
	}
	if _, err := e.sim.UpdateAuthorize(context.Background(), compID, authzA, e.callback(compID)); err == nil {
		t.Fatal("updateauthorized for an unauthorized account")
	}
	l := e.list(ctok, 0, 10)
	if l["total_count"] != float64(1) {
		t.Fatalf("list %v", l)
	}

	_, again := e.authorize(ctok, authzA)
	if again == refresh {
		t.Fatal("re-authorization kept the refresh token")
	}
	wantCode(t, e.authorizerToken(ctok, authzA, refresh), wechatsim.CodeRefreshTokenInvalid)
	wantCode(t, e.authorizerToken(ctok, authzA, again), 0)
	if got := e.sim.Authorizers(compID); !slices.Equal(got, []string{authzB, authzA}) {
		t.Fatalf("Authorizers = %v", got)
	}
	// re-authorizing an authorized account replaces its refresh token at once
	_, newer := e.authorize(ctok, authzA)
	wantCode(t, e.authorizerToken(ctok, authzA, again), wechatsim.CodeRefreshTokenInvalid)
	wantCode(t, e.authorizerToken(ctok, authzA, newer), 0)
}

type listReply struct {
	Errcode int `json:"errcode"`
	Total   int `json:"total_count"`
	List    []struct {
		AppID    string `json:"authorizer_appid"`
		Refresh  string `json:"refresh_token"`
		AuthTime int64  `json:"auth_time"`
	} `json:"list"`
}

func (e *compEnv) listPage(ctok string, offset, count int) listReply {
	e.t.Helper()
	b, _ := json.Marshal(e.list(ctok, offset, count))
	var r listReply
	if err := json.Unmarshal(b, &r); err != nil {
		e.t.Fatal(err)
	}
	return r
}

// api_get_authorizer_list pages through the authorized accounts in
// authorization order, at most 500 a page, with their current refresh
// tokens; BulkAuthorize's tokens are real authorizer tokens.
func TestAuthorizerListPaging(t *testing.T) {
	e := newCompEnv(t, wechatsim.Options{})
	ctok := e.componentToken()
	const n = 1203
	bulk := e.sim.BulkAuthorize(compID, n, "wxbulk")
	if len(bulk) != n || bulk[0].AuthorizerAppID != "wxbulk0000" || bulk[n-1].AuthorizerAppID != "wxbulk1202" {
		t.Fatalf("BulkAuthorize gave %d, first %+v", len(bulk), bulk[0].AuthorizerAppID)
	}
	var seen []string
	for offset := 0; ; offset += 500 {
		p := e.listPage(ctok, offset, 500)
		if p.Errcode != 0 || p.Total != n {
			t.Fatalf("page at %d: %+v", offset, p)
		}
		if len(p.List) == 0 {
			break
		}
		for i, it := range p.List {
			b := bulk[offset+i]
			if it.AppID != b.AuthorizerAppID || it.Refresh != b.RefreshToken || it.AuthTime != e.clock.Now().Unix() {
				t.Fatalf("entry %d = %+v, want %s", offset+i, it, b.AuthorizerAppID)
			}
			seen = append(seen, it.AppID)
		}
	}
	if len(seen) != n || !slices.Equal(seen, e.sim.Authorizers(compID)) {
		t.Fatalf("paged %d of %d", len(seen), n)
	}
	for _, c := range [][2]int{{0, 501}, {0, 0}, {-1, 10}} {
		wantCode(t, e.list(ctok, c[0], c[1]), wechatsim.CodeInvalidArgs)
	}
	if got := e.sim.AuthorizerListCalls(compID); got != 7 {
		t.Fatalf("AuthorizerListCalls = %d, want 7", got)
	}
	for _, b := range []wechatsim.Authorization{bulk[0], bulk[n-1]} {
		if r := e.business(http.MethodPost, b.AccessToken); r.Errcode != 0 || !b.ExpiresAt.Equal(e.clock.Now().Add(2*time.Hour)) {
			t.Fatalf("bulk token: %+v, expires %v", r, b.ExpiresAt)
		}
		wantCode(t, e.authorizerToken(ctok, b.AuthorizerAppID, b.RefreshToken), 0)
	}
	rt := e.sim.AuthorizeDirect(compID, authzA)
	wantCode(t, e.authorizerToken(ctok, authzA, rt), 0)
	if e.sim.AuthorizeDirect("wxnosuch", authzA) != "" || e.sim.AuthorizeDirect(compID, "bad appid!") != "" ||
		e.sim.BulkAuthorize(compID, 0, "x") != nil || e.sim.BulkAuthorize(compID, 2, "bad prefix") != nil {
		t.Fatal("bad input accepted")
	}
	if p := e.listPage(ctok, n+1, 10); p.Total != n+1 || len(p.List) != 0 {
		t.Fatalf("past the end: %+v", p)
	}
}

// 100 000 authorizers of one component: set up in bulk, and every call
// still costs what one authorizer's does (no call walks the authorizers).
func TestComponentHundredThousandAuthorizers(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	e := newCompEnv(t, wechatsim.Options{TokenLength: 32})
	ctok := e.componentToken()
	const n = 100_000
	bulk := e.sim.BulkAuthorize(compID, n, "wxs")
	if len(bulk) != n {
		t.Fatalf("BulkAuthorize gave %d", len(bulk))
	}
	for _, i := range []int{0, n / 2, n - 1} {
		wantCode(t, e.authorizerToken(ctok, bulk[i].AuthorizerAppID, bulk[i].RefreshToken), 0)
	}
	p := e.listPage(ctok, n-100, 500)
	if p.Total != n || len(p.List) != 100 || p.List[99].AppID != bulk[n-1].AuthorizerAppID {
		t.Fatalf("last page: total %d, %d entries", p.Total, len(p.List))
	}
	code, err := e.sim.Authorize(context.Background(), compID, authzA, e.callback(compID))
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, e.queryAuth(ctok, code), 0)
	if len(e.sim.Authorizers(compID)) != n+1 {
		t.Fatal("Authorizers")
	}
}

// SetFault with Paths reaches each component endpoint alone; answered
// faults are not counted as calls.
func TestComponentFaults(t *testing.T) {
	e := newCompEnv(t, wechatsim.Options{})
	ctok := e.componentToken()
	_, refresh := e.authorize(ctok, authzA)
	e.sim.SetFault(wechatsim.Fault{Busy: 1, Paths: []string{wechatsim.PathAuthorizerToken}})
	wantCode(t, e.list(ctok, 0, 1), 0)
	wantCode(t, e.authorizerToken(ctok, authzA, refresh), wechatsim.CodeBusy)
	if got := e.sim.AuthorizerTokenCalls(compID, authzA); got != 0 {
		t.Fatalf("a faulted call was counted: %d", got)
	}
	wantCode(t, e.authorizerToken(ctok, authzA, refresh), 0)

	e.sim.SetFault(wechatsim.Fault{Errcode: wechatsim.CodeIPNotWhitelisted, Paths: []string{wechatsim.PathComponentToken}})
	wantCode(t, e.componentTokenWith(compID, compSecret, e.pushTicket(compID)), wechatsim.CodeIPNotWhitelisted)
	wantCode(t, e.list(ctok, 0, 1), 0)
	e.sim.SetFault(wechatsim.Fault{HTTP5xx: 1, Paths: []string{wechatsim.PathAuthorizerList, wechatsim.PathQueryAuth}})
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+wechatsim.PathAuthorizerList+"?component_access_token="+ctok,
		strings.NewReader(`{"component_appid":"`+compID+`","offset":0,"count":1}`))
	if r := e.raw(req); r.status != http.StatusBadGateway {
		t.Fatalf("HTTP %d", r.status)
	}
	e.sim.SetFault(wechatsim.Fault{})
	wantCode(t, e.list(ctok, 0, 1), 0)
}

// StartPushing pushes to every component at once and then every interval,
// each at its own URL ({appid} replaced); stop waits for the pusher.
func TestStartPushing(t *testing.T) {
	var calls []wechatsim.Call
	var mu sync.Mutex
	e := newCompEnv(t, wechatsim.Options{OnCall: func(c wechatsim.Call) {
		if c.Push != "" {
			mu.Lock()
			calls = append(calls, c)
			mu.Unlock()
		}
	}})
	stop := e.sim.StartPushing(e.cb.URL+"/wechat/component/"+wechatsim.PlaceholderAppID, 20*time.Millisecond)
	waitFor(t, "three pushes to each component", func() bool {
		ok1, _ := e.sim.Pushes(compID)
		ok2, _ := e.sim.Pushes(compID2)
		return ok1 >= 3 && ok2 >= 3
	})
	stop()
	stop()
	ok1, _ := e.sim.Pushes(compID)
	ok2, _ := e.sim.Pushes(compID2)
	if got := len(e.received()); got != ok1+ok2 {
		t.Fatalf("callback got %d pushes, sim counted %d", got, ok1+ok2)
	}
	for _, p := range e.received() {
		if p.path != "/wechat/component/"+p.push.AppID || p.push.InfoType != wxcrypt.InfoVerifyTicket {
			t.Fatalf("push %v at %s", p.push, p.path)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != ok1+ok2 {
		t.Fatalf("OnCall saw %d pushes", len(calls))
	}
	for _, c := range calls {
		if c.Push != "component_verify_ticket" || c.Status != http.StatusOK || c.Err != "" || !strings.HasPrefix(c.Path, "/wechat/component/") {
			t.Fatalf("call %+v", c)
		}
	}
	// a last ticket of each works
	wantCode(t, e.componentTokenWith(compID, compSecret, e.sim.LastVerifyTicket(compID)), 0)
	wantCode(t, e.componentTokenWith(compID2, compSecret2, e.sim.LastVerifyTicket(compID2)), 0)
}

// Nothing the emulator reports (Call) carries a ticket, code, token or
// secret of a component.
func TestComponentCallsCarryNoSecret(t *testing.T) {
	var mu sync.Mutex
	var logged []string
	e := newCompEnv(t, wechatsim.Options{OnCall: func(c wechatsim.Call) {
		mu.Lock()
		logged = append(logged, fmt.Sprintf("%+v", c))
		mu.Unlock()
	}})
	ctok := e.componentToken()
	access, refresh := e.authorize(ctok, authzA)
	m := e.authorizerToken(ctok, authzA, refresh)
	e.setAnswer(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "nope") })
	_ = e.sim.PushVerifyTicket(context.Background(), compID, e.callback(compID))
	mu.Lock()
	defer mu.Unlock()
	all := strings.Join(logged, "\n")
	for _, s := range append(e.secrets(), ctok, access, refresh, str(t, m, "authorizer_access_token"), e.sim.LastVerifyTicket(compID)) {
		if strings.Contains(all, s) {
			t.Fatalf("a Call carries a secret or token:\n%s", all)
		}
	}
}
