package wechatsim

import (
	"encoding/json"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// OAuth2 (RFC 6749 client_credentials, RFC 6750 bearer) endpoints served
// by the emulator.
const (
	// PathOAuth2Token: POST application/x-www-form-urlencoded
	// grant_type=client_credentials[&scope=…][&audience=…], the client
	// authenticated with HTTP Basic or client_id/client_secret in the body.
	PathOAuth2Token = "/oauth2/token"
	// PathOAuth2Resource: GET with "Authorization: Bearer <token>"
	// [?scope=<required scope>]; the OAuth2 business call.
	PathOAuth2Resource = "/oauth2/resource"
)

const (
	oauth2JSONType       = "application/json;charset=UTF-8"
	oauth2Realm          = "wechatsim"
	maxOAuth2RequestSize = 64 << 10
)

// Errors returned by CheckOAuth2; compare with errors.Is. Code is the
// HTTP status the resource endpoint answers, Msg the RFC 6750 error.
var (
	// ErrOAuth2MissingToken: no bearer token (401 without an error code).
	ErrOAuth2MissingToken = &Error{http.StatusUnauthorized, ""}
	// ErrOAuth2InvalidToken: unknown, expired or revoked token (401
	// invalid_token).
	ErrOAuth2InvalidToken = &Error{http.StatusUnauthorized, "invalid_token"}
)

type oauth2Client struct {
	secret  string
	scopes  []string
	last    *token
	calls   int // token calls naming the client, whatever their outcome
	fetches int // tokens issued (every success issues one)
}

// AddOAuth2Client registers a client_credentials client allowed the given
// scopes; for an existing client it replaces the secret and the scopes
// (tokens already issued stay valid).
func (s *Sim) AddOAuth2Client(clientID, secret string, scopes ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.oauth2[clientID]; c != nil {
		c.secret, c.scopes = secret, slices.Clone(scopes)
		return
	}
	s.oauth2[clientID] = &oauth2Client{secret: secret, scopes: slices.Clone(scopes)}
}

func (s *Sim) oauth2Count(clientID string, f func(*oauth2Client) int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.oauth2[clientID]; c != nil {
		return f(c)
	}
	return 0
}

// OAuth2TokenCalls is the number of token calls that named the client
// (no fault answered), whatever their outcome.
func (s *Sim) OAuth2TokenCalls(clientID string) int {
	return s.oauth2Count(clientID, func(c *oauth2Client) int { return c.calls })
}

// OAuth2TokensIssued is the number of tokens issued to the client: every
// successful call issues a new one.
func (s *Sim) OAuth2TokensIssued(clientID string) int {
	return s.oauth2Count(clientID, func(c *oauth2Client) int { return c.fetches })
}

// LastOAuth2Token is the latest token issued to the client ("" if none).
func (s *Sim) LastOAuth2Token(clientID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.oauth2[clientID]; c != nil && c.last != nil {
		return c.last.value
	}
	return ""
}

// CheckOAuth2 returns nil if tok is a currently valid OAuth2 access token,
// ErrOAuth2MissingToken for "" and ErrOAuth2InvalidToken otherwise
// (unknown, of another upstream, expired or revoked; see Revoke).
func (s *Sim) CheckOAuth2(tok string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, st := s.lookup(tok, kindOAuth2, s.opts.Now())
	if e := oauth2TokenErr(st); e != nil {
		return e
	}
	return nil // not a typed nil
}

func oauth2TokenErr(st tokenState) *Error {
	switch st {
	case tokValid:
		return nil
	case tokMissing:
		return ErrOAuth2MissingToken
	}
	return ErrOAuth2InvalidToken
}

// OAuth2BusinessCalls counts resource answers: accepted tokens (the
// insufficient_scope ones included) and rejected ones.
func (s *Sim) OAuth2BusinessCalls() (ok, rejected int) { return s.bizCalls(kindOAuth2) }

// oauth2Error is an RFC 6749 §5.2 error answer; a 401 carries a
// WWW-Authenticate challenge for HTTP Basic, the client authentication
// scheme the endpoint supports besides the body parameters.
func oauth2Error(status int, code, description string) answer {
	b, _ := json.Marshal(struct {
		Error       string `json:"error"`
		Description string `json:"error_description,omitempty"`
	}{code, description})
	a := answer{status: status, ctype: oauth2JSONType, body: b,
		header: http.Header{"Cache-Control": {"no-store"}, "Pragma": {"no-cache"}}}
	if status == http.StatusUnauthorized {
		a.header.Set("WWW-Authenticate", `Basic realm="`+oauth2Realm+`"`)
	}
	return a
}

// oauth2Request is a parsed token request; perr is set if it could not be
// read as a form.
type oauth2Request struct {
	form     url.Values
	clientID string
	secret   string
	perr     string // invalid_request description, if any
}

func parseOAuth2Request(r *http.Request) oauth2Request {
	var q oauth2Request
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/x-www-form-urlencoded" {
		q.perr = "content type must be application/x-www-form-urlencoded"
		return q
	}
	r.Body = http.MaxBytesReader(nil, r.Body, maxOAuth2RequestSize)
	if err := r.ParseForm(); err != nil {
		q.perr = "malformed request body"
		return q
	}
	q.form = r.PostForm
	bodyID, bodySecret := q.form.Get("client_id"), q.form.Get("client_secret")
	if user, pass, ok := r.BasicAuth(); ok {
		// RFC 6749 §2.3.1: both are form-urlencoded before Basic encoding.
		id, err1 := url.QueryUnescape(user)
		sec, err2 := url.QueryUnescape(pass)
		switch {
		case err1 != nil || err2 != nil:
			q.perr = "malformed client credentials in the Authorization header"
		case bodySecret != "":
			q.perr = "more than one client authentication method"
		case bodyID != "" && bodyID != id:
			q.perr = "client_id differs from the authenticated client"
		}
		q.clientID, q.secret = id, sec
		return q
	}
	q.clientID, q.secret = bodyID, bodySecret
	return q
}

func oauth2TokenAnswer(t *token, expiresIn int) answer {
	b, _ := json.Marshal(struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int    `json:"expires_in"`
		Scope       string `json:"scope,omitempty"`
	}{t.value, "Bearer", expiresIn, t.scope})
	return answer{status: http.StatusOK, ctype: oauth2JSONType, body: b, token: t.value,
		header: http.Header{"Cache-Control": {"no-store"}, "Pragma": {"no-cache"}}}
}

// serveOAuth2Token answers POST /oauth2/token for the client_credentials
// grant. Every success issues a new token; earlier ones stay valid until
// their expiry (or Revoke). Errors are RFC 6749 §5.2: invalid_request
// (400), invalid_client (401 with WWW-Authenticate; an unknown client and
// a wrong secret answer alike), unsupported_grant_type (400),
// invalid_scope (400) for a scope outside the client's.
func (s *Sim) serveOAuth2Token(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	req := parseOAuth2Request(r)
	s.tokenCall(w, r, PathOAuth2Token, kindOAuth2, req.clientID, func(now time.Time) answer {
		c := s.oauth2[req.clientID]
		if c != nil {
			c.calls++
		}
		switch {
		case req.perr != "":
			return oauth2Error(http.StatusBadRequest, "invalid_request", req.perr)
		case req.form.Get("grant_type") == "":
			return oauth2Error(http.StatusBadRequest, "invalid_request", "grant_type missing")
		case req.clientID == "" || c == nil || req.secret != c.secret:
			return oauth2Error(http.StatusUnauthorized, "invalid_client", "client authentication failed")
		case req.form.Get("grant_type") != "client_credentials":
			return oauth2Error(http.StatusBadRequest, "unsupported_grant_type", "only client_credentials is supported")
		}
		scopes := strings.Fields(req.form.Get("scope"))
		if len(scopes) == 0 {
			scopes = c.scopes
		}
		for _, sc := range scopes {
			if !slices.Contains(c.scopes, sc) {
				return oauth2Error(http.StatusBadRequest, "invalid_scope", "the requested scope exceeds the client's")
			}
		}
		t := &token{value: s.newTokenValue(), kind: kindOAuth2, app: req.clientID, issuedAt: now,
			expiresAt: now.Add(s.opts.ExpiresIn), scope: strings.Join(scopes, " "), audience: req.form.Get("audience")}
		s.addToken(t, now)
		c.last = t
		c.fetches++
		return oauth2TokenAnswer(t, secondsAtLeast1(s.opts.ExpiresIn))
	})
}

// serveOAuth2Resource answers GET /oauth2/resource, the business call (RFC
// 6750 §3): 200 with the token's client_id, scope and audience; 401 with
// a bare Bearer challenge without a token, with error="invalid_token" for
// an unknown, expired or revoked one; 403 insufficient_scope if the
// ?scope= the request names was not granted.
func (s *Sim) serveOAuth2Resource(w http.ResponseWriter, r *http.Request) {
	if !getOnly(w, r) {
		return
	}
	start := time.Now()
	tok := bearer(r)
	need := strings.Map(func(r rune) rune { // RFC 6749 §3.3 scope-token: no quote, no backslash
		if r == '"' || r == '\\' || r < 0x21 || r > 0x7e {
			return -1
		}
		return r
	}, r.URL.Query().Get("scope"))
	s.mu.Lock()
	t, st := s.lookup(tok, kindOAuth2, s.opts.Now())
	s.countBiz(kindOAuth2, st == tokValid)
	s.mu.Unlock()
	challenge := `Bearer realm="` + oauth2Realm + `"`
	var ans answer
	caller := ""
	switch {
	case st == tokMissing:
		ans = answer{status: http.StatusUnauthorized, ctype: oauth2JSONType, body: []byte(`{"error":"unauthorized"}`),
			header: http.Header{"Www-Authenticate": {challenge}}}
	case st != tokValid:
		ans = answer{status: http.StatusUnauthorized, ctype: oauth2JSONType, body: []byte(`{"error":"invalid_token"}`),
			header: http.Header{"Www-Authenticate": {challenge + `, error="invalid_token", error_description="the access token is invalid or expired"`}}}
	case need != "" && !slices.Contains(strings.Fields(t.scope), need):
		caller = t.app
		ans = answer{status: http.StatusForbidden, ctype: oauth2JSONType, body: []byte(`{"error":"insufficient_scope"}`),
			header: http.Header{"Www-Authenticate": {challenge + `, error="insufficient_scope", scope="` + need + `"`}}}
	default:
		caller = t.app
		b, _ := json.Marshal(struct {
			ClientID string `json:"client_id"`
			Scope    string `json:"scope"`
			Audience string `json:"audience,omitempty"`
		}{t.app, t.scope, t.audience})
		ans = answer{status: http.StatusOK, ctype: oauth2JSONType, body: b}
	}
	ans.write(w)
	s.report(Call{Path: PathOAuth2Resource, AppID: caller, Status: ans.status, Errcode: ans.errcode,
		Token: contract.Fingerprint(tok), Duration: time.Since(start)})
}
