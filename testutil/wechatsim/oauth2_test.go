package wechatsim_test

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

type oauthReply struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int    `json:"expires_in"`
	Scope       string `json:"scope"`
	Error       string `json:"error"`
	ClientID    string `json:"client_id"`
	Audience    string `json:"audience"`
}

func newOAuthEnv(t *testing.T, opts wechatsim.Options) *env {
	t.Helper()
	e := newEnv(t, opts)
	e.sim.AddOAuth2Client(oauthClient, oauthSecret, "read", "write")
	return e
}

// oauthToken posts form to the token endpoint; with header the client
// authenticates with HTTP Basic (RFC 6749 §2.3.1: id and secret
// form-urlencoded first, as golang.org/x/oauth2 does), else in the body.
func (e *env) oauthToken(form url.Values, header bool, id, sec string) (rawReply, oauthReply) {
	e.t.Helper()
	form = cloneValues(form)
	if !header {
		form.Set("client_id", id)
		form.Set("client_secret", sec)
	}
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+wechatsim.PathOAuth2Token, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if header {
		req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(sec))
	}
	r := e.raw(req)
	var o oauthReply
	r.decode(e.t, &o)
	return r, o
}

func cloneValues(v url.Values) url.Values {
	c := url.Values{}
	for k, vs := range v {
		c[k] = append([]string(nil), vs...)
	}
	return c
}

var grant = url.Values{"grant_type": {"client_credentials"}}

func (e *env) oauthOK(form url.Values, header bool) oauthReply {
	e.t.Helper()
	r, o := e.oauthToken(form, header, oauthClient, oauthSecret)
	if r.status != http.StatusOK || o.AccessToken == "" || o.TokenType != "Bearer" || o.ExpiresIn != 7200 {
		e.t.Fatalf("want a token, got HTTP %d %s", r.status, r.body)
	}
	if r.header.Get("Cache-Control") != "no-store" || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
		e.t.Fatalf("headers %v", r.header)
	}
	return o
}

func wantOAuthErr(t *testing.T, r rawReply, o oauthReply, status int, code string) {
	t.Helper()
	if r.status != status || o.Error != code || o.AccessToken != "" {
		t.Fatalf("HTTP %d %s, want HTTP %d error %q", r.status, r.body, status, code)
	}
}

func (e *env) resource(auth, scope string) (rawReply, oauthReply) {
	e.t.Helper()
	u := e.srv.URL + wechatsim.PathOAuth2Resource
	if scope != "" {
		u += "?scope=" + url.QueryEscape(scope)
	}
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	r := e.raw(req)
	var o oauthReply
	r.decode(e.t, &o)
	return r, o
}

func TestOAuth2BothAuthStyles(t *testing.T) {
	e := newOAuthEnv(t, wechatsim.Options{})
	h := e.oauthOK(grant, true)
	p := e.oauthOK(grant, false)
	if h.AccessToken == p.AccessToken {
		t.Fatal("two calls returned the same token: every call issues a new one")
	}
	if h.Scope != "read write" {
		t.Fatalf("scope %q, want the client's scopes", h.Scope)
	}
	// Earlier tokens stay valid until their expiry.
	for _, tok := range []string{h.AccessToken, p.AccessToken} {
		if r, o := e.resource("Bearer "+tok, ""); r.status != http.StatusOK || o.ClientID != oauthClient {
			t.Fatalf("resource: HTTP %d %s", r.status, r.body)
		}
	}
	if e.sim.OAuth2TokensIssued(oauthClient) != 2 || e.sim.OAuth2TokenCalls(oauthClient) != 2 ||
		e.sim.LastOAuth2Token(oauthClient) != p.AccessToken {
		t.Fatal("counters or getter disagree with the answers")
	}
	// Both methods in one request: RFC 6749 §2.3 forbids it.
	form := cloneValues(grant)
	form.Set("client_secret", oauthSecret)
	r, o := e.oauthToken(form, true, oauthClient, oauthSecret)
	wantOAuthErr(t, r, o, http.StatusBadRequest, "invalid_request")
	// Credentials in the query string are not client authentication.
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+wechatsim.PathOAuth2Token+"?"+url.Values{
		"client_id": {oauthClient}, "client_secret": {oauthSecret}}.Encode(), strings.NewReader(grant.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r = e.raw(req)
	r.decode(t, &o)
	wantOAuthErr(t, r, o, http.StatusUnauthorized, "invalid_client")
}

func TestOAuth2BadClient(t *testing.T) {
	e := newOAuthEnv(t, wechatsim.Options{})
	for _, c := range []struct {
		name    string
		header  bool
		id, sec string
		scheme  string
	}{
		{"wrong secret, header", true, oauthClient, wrongSecret, "Basic"},
		{"wrong secret, params", false, oauthClient, wrongSecret, "Basic"},
		{"unknown client", true, "nobody", oauthSecret, "Basic"},
		{"no secret", false, oauthClient, "", "Basic"},
	} {
		r, o := e.oauthToken(grant, c.header, c.id, c.sec)
		if r.status != http.StatusUnauthorized || o.Error != "invalid_client" || o.AccessToken != "" {
			t.Errorf("%s: HTTP %d %s", c.name, r.status, r.body)
		}
		if got := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(got, c.scheme+" realm=") {
			t.Errorf("%s: WWW-Authenticate %q", c.name, got)
		}
	}
	if n := e.sim.OAuth2TokensIssued(oauthClient); n != 0 {
		t.Fatalf("%d tokens issued to bad credentials", n)
	}
	if n := e.sim.OAuth2TokenCalls(oauthClient); n != 3 {
		t.Fatalf("calls %d, want 3", n)
	}
}

func TestOAuth2Scopes(t *testing.T) {
	e := newOAuthEnv(t, wechatsim.Options{})
	form := cloneValues(grant)
	form.Set("scope", "read")
	form.Set("audience", "https://api.example")
	ro := e.oauthOK(form, false)
	if ro.Scope != "read" {
		t.Fatalf("scope %q", ro.Scope)
	}
	if r, o := e.resource("Bearer "+ro.AccessToken, "read"); r.status != http.StatusOK || o.Scope != "read" || o.Audience != "https://api.example" {
		t.Fatalf("resource: HTTP %d %s", r.status, r.body)
	}
	r, _ := e.resource("Bearer "+ro.AccessToken, "write")
	if r.status != http.StatusForbidden || !strings.Contains(r.header.Get("WWW-Authenticate"), `error="insufficient_scope"`) {
		t.Fatalf("resource needing write: HTTP %d %v", r.status, r.header)
	}
	form.Set("scope", "read admin")
	rr, o := e.oauthToken(form, true, oauthClient, oauthSecret)
	wantOAuthErr(t, rr, o, http.StatusBadRequest, "invalid_scope")
	form.Set("scope", "write read")
	if o := e.oauthOK(form, true); o.Scope != "write read" {
		t.Fatalf("scope %q", o.Scope)
	}
}

func TestOAuth2RequestErrors(t *testing.T) {
	e := newOAuthEnv(t, wechatsim.Options{})
	r, o := e.oauthToken(url.Values{"grant_type": {"password"}}, true, oauthClient, oauthSecret)
	wantOAuthErr(t, r, o, http.StatusBadRequest, "unsupported_grant_type")
	r, o = e.oauthToken(url.Values{}, false, oauthClient, oauthSecret)
	wantOAuthErr(t, r, o, http.StatusBadRequest, "invalid_request")
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+wechatsim.PathOAuth2Token, strings.NewReader(`{"grant_type":"client_credentials"}`))
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(oauthClient, oauthSecret)
	r = e.raw(req)
	r.decode(t, &o)
	wantOAuthErr(t, r, o, http.StatusBadRequest, "invalid_request")
	req, _ = http.NewRequest(http.MethodGet, e.srv.URL+wechatsim.PathOAuth2Token, nil)
	if r := e.raw(req); r.status != http.StatusMethodNotAllowed {
		t.Fatalf("GET token: HTTP %d", r.status)
	}
	// Injected RFC errors and an unavailable server.
	e.sim.SetFault(wechatsim.Fault{Busy: 1, Errcode: 400, Errmsg: "invalid_grant", Paths: []string{wechatsim.PathOAuth2Token}})
	r, o = e.oauthToken(grant, true, oauthClient, oauthSecret)
	wantOAuthErr(t, r, o, http.StatusServiceUnavailable, "temporarily_unavailable")
	r, o = e.oauthToken(grant, true, oauthClient, oauthSecret)
	wantOAuthErr(t, r, o, http.StatusBadRequest, "invalid_grant")
	e.sim.SetFault(wechatsim.Fault{})
	e.oauthOK(grant, true)
}

func TestOAuth2ResourceRejects(t *testing.T) {
	e := newOAuthEnv(t, wechatsim.Options{})
	tok := e.oauthOK(grant, true).AccessToken
	r, _ := e.resource("", "")
	if r.status != http.StatusUnauthorized || r.header.Get("WWW-Authenticate") != `Bearer realm="wechatsim"` {
		t.Fatalf("no token: HTTP %d %v", r.status, r.header)
	}
	invalid := func(what, auth string) {
		t.Helper()
		r, _ := e.resource(auth, "")
		if r.status != http.StatusUnauthorized || !strings.Contains(r.header.Get("WWW-Authenticate"), `error="invalid_token"`) {
			t.Fatalf("%s: HTTP %d %v", what, r.status, r.header)
		}
	}
	invalid("unknown", "Bearer nope")
	invalid("a WeChat token", "Bearer "+mustToken(t, e.classic()))
	wantErrcode(t, e.business(http.MethodGet, tok), wechatsim.CodeInvalidCredential)

	other := e.oauthOK(grant, false).AccessToken
	e.sim.Revoke(other)
	invalid("revoked", "Bearer "+other)
	if err := e.sim.CheckOAuth2(other); !errors.Is(err, wechatsim.ErrOAuth2InvalidToken) {
		t.Fatalf("CheckOAuth2(revoked) = %v", err)
	}
	if r, _ := e.resource("Bearer "+tok, ""); r.status != http.StatusOK {
		t.Fatal("revoking one token touched another")
	}
	e.clock.Advance(7200 * time.Second)
	invalid("expired", "Bearer "+tok)
	if ok, rejected := e.sim.OAuth2BusinessCalls(); ok != 1 || rejected != 5 {
		t.Fatalf("business ok %d rejected %d, want 1 and 5", ok, rejected)
	}
}
