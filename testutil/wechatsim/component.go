package wechatsim

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt"
)

// WeChat Open Platform third-party platform ("component") endpoints served
// by the emulator. Every one is a POST with a JSON body; all but the first
// take the component_access_token in the query (component_access_token=…,
// or access_token=… as WeChat's newer documentation writes it).
const (
	// PathComponentToken: {"component_appid","component_appsecret",
	// "component_verify_ticket"} → {"component_access_token","expires_in"}.
	PathComponentToken = "/cgi-bin/component/api_component_token"
	// PathQueryAuth: {"component_appid","authorization_code"} →
	// {"authorization_info":{"authorizer_appid","authorizer_access_token",
	// "expires_in","authorizer_refresh_token","func_info"}}.
	PathQueryAuth = "/cgi-bin/component/api_query_auth"
	// PathAuthorizerToken: {"component_appid","authorizer_appid",
	// "authorizer_refresh_token"} → {"authorizer_access_token",
	// "expires_in","authorizer_refresh_token"}.
	PathAuthorizerToken = "/cgi-bin/component/api_authorizer_token"
	// PathAuthorizerList: {"component_appid","offset","count"} →
	// {"total_count","list":[{"authorizer_appid","refresh_token","auth_time"}]}.
	PathAuthorizerList = "/cgi-bin/component/api_get_authorizer_list"
)

// Open Platform errcodes produced by the emulator (WeChat's global error
// codes). The component token endpoint also answers CodeAppIDMissing,
// CodeInvalidAppID, CodeAppSecretMissing, the wrong-secret code of
// Options.BadSecretErrcode, CodeDailyQuota and CodeDataFormat; the
// endpoints taking a component_access_token answer CodeTokenMissing,
// CodeInvalidCredential (unknown or superseded past its grace) and
// CodeTokenExpired for it.
const (
	CodeComponentTicketExpired = 61005 // "component ticket is expired": a pushed ticket older than Options.VerifyTicketTTL
	CodeComponentTicketInvalid = 61006 // "component ticket is invalid": missing, never pushed, or another component's
	CodeAuthCodeInvalid        = 61009 // "code is invalid": unknown, already redeemed, another component's, or revoked
	CodeAuthCodeExpired        = 61010 // "code is expired": older than Options.AuthCodeTTL
	CodeMustUseComponentToken  = 61014 // an app's or authorizer's access token where a component_access_token belongs
	CodeRefreshTokenInvalid    = 61023 // "refresh_token is invalid": unknown, superseded past its grace, or unauthorized
	maxAuthorizerListCount     = 500
	maxComponentBodySize       = 64 << 10
	defaultVerifyTicketTTL     = 12 * time.Hour
	defaultAuthCodeTTL         = 10 * time.Minute
	defaultPushTimeout         = 5 * time.Second
	refreshTokenLength         = 43 // WeChat's are 43 characters, like the sample's
)

// kindComponent is a component_access_token: accepted only by the
// component endpoints, never by business calls.
const kindComponent = "component"

// componentApp is one registered Open Platform third-party platform.
type componentApp struct {
	appid    string
	secret   string
	msgToken string           // the callback's message token
	crypter  *wxcrypt.Crypter // nil if the token or EncodingAESKey is unusable
	cryptErr error            // why crypter is nil

	token        *token // the latest component_access_token
	day          int64
	quotaUsed    int
	tokenCalls   int
	tokensIssued int
	queryCalls   int
	listCalls    int
	pushesOK     int
	pushesFailed int
	tickets      map[string]time.Time // pushed verify ticket → its CreateTime
	lastTicket   string
	codes        map[string]*authCode
	authorizers  map[string]*authorizer // every authorizer the component has or had
	active       []*authorizer          // the authorized ones, in authorization order (api_get_authorizer_list)
}

// authCode is an authorization_code waiting for api_query_auth.
type authCode struct {
	authorizer *authorizer
	expiresAt  time.Time
}

// authorizer is one account's authorization of a component.
type authorizer struct {
	appid       string
	authorized  bool // false after Unauthorize
	authTime    time.Time
	refresh     string    // the current authorizer_refresh_token
	prevRefresh string    // the one before it, valid until prevUntil
	prevUntil   time.Time // zero: prevRefresh is invalid
	token       *token    // the latest authorizer_access_token
	live        []*token  // tokens issued and perhaps still valid (revoked by Unauthorize)
	funcInfo    []int
	tokenCalls  int // api_authorizer_token calls naming it
	issued      int // authorizer access tokens issued (api_query_auth and api_authorizer_token)
	index       int // position in component.active when authorized
}

// defaultFuncInfo is the permission sets an authorization grants unless
// changed: WeChat's sample answer's.
var defaultFuncInfo = []int{1, 2, 3}

// Authorization is one authorizer set up by BulkAuthorize: its appid, its
// refresh token, and an authorizer_access_token issued for it (as
// api_query_auth would, without a call) with the token's expiry.
type Authorization struct {
	AuthorizerAppID string
	RefreshToken    string
	AccessToken     string
	ExpiresAt       time.Time
}

// AuthorizerKey names an authorizer of a component in Call.AppID,
// MaxConcurrentFetches and InFlight for api_authorizer_token calls:
// "component/authorizer". api_component_token calls are named by the
// component appid alone, api_query_auth and api_get_authorizer_list calls
// by AuthorizerKey(component, "api_query_auth") and
// AuthorizerKey(component, "api_get_authorizer_list"), so that
// MaxConcurrentFetches(component) counts component token fetches only.
func AuthorizerKey(component, authorizer string) string { return component + "/" + authorizer }

// AddComponent registers an Open Platform component with its AppSecret
// and the message token and EncodingAESKey configured for its callback
// (授权事件接收 URL). For an existing component it only replaces the
// secret, token and key (tickets, tokens and authorizations stay). If the
// token or key cannot be used (see wxcrypt.New), the token endpoints
// still work and every push returns that error.
func (s *Sim) AddComponent(appid, secret, token, encodingAESKey string) {
	cr, err := wxcrypt.New(token, encodingAESKey, appid)
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.components[appid]; c != nil {
		c.secret, c.msgToken, c.crypter, c.cryptErr = secret, token, cr, err
		return
	}
	s.components[appid] = &componentApp{
		appid: appid, secret: secret, msgToken: token, crypter: cr, cryptErr: err,
		day:         shanghaiDay(s.opts.Now()),
		tickets:     map[string]time.Time{},
		codes:       map[string]*authCode{},
		authorizers: map[string]*authorizer{},
	}
}

// componentCount reads one counter of a component under the lock (0 for
// an unknown one).
func (s *Sim) componentCount(appid string, f func(*componentApp) int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.components[appid]; c != nil {
		return f(c)
	}
	return 0
}

// ComponentTokenCalls is the number of api_component_token calls that
// named the component (no fault answered), whatever their outcome.
func (s *Sim) ComponentTokenCalls(component string) int {
	return s.componentCount(component, func(c *componentApp) int { return c.tokenCalls })
}

// ComponentTokensIssued is the number of component_access_tokens issued.
func (s *Sim) ComponentTokensIssued(component string) int {
	return s.componentCount(component, func(c *componentApp) int { return c.tokensIssued })
}

// QueryAuthCalls is the number of api_query_auth calls with a valid
// component_access_token of the component, whatever their outcome.
func (s *Sim) QueryAuthCalls(component string) int {
	return s.componentCount(component, func(c *componentApp) int { return c.queryCalls })
}

// AuthorizerListCalls is the number of api_get_authorizer_list calls with
// a valid component_access_token of the component, whatever their outcome.
func (s *Sim) AuthorizerListCalls(component string) int {
	return s.componentCount(component, func(c *componentApp) int { return c.listCalls })
}

// Pushes counts the component's pushes (tickets and authorization
// events): answered "success", and failed (transport error, timeout,
// another status or body).
func (s *Sim) Pushes(component string) (ok, failed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.components[component]; c != nil {
		return c.pushesOK, c.pushesFailed
	}
	return 0, 0
}

// authorizerOf returns an authorizer the component has or had (nil if
// none). Caller holds s.mu.
func (s *Sim) authorizerOf(component, appid string) *authorizer {
	if c := s.components[component]; c != nil {
		return c.authorizers[appid]
	}
	return nil
}

// AuthorizerTokenCalls is the number of api_authorizer_token calls with a
// valid component_access_token of the component naming the authorizer (one
// it has or had), whatever their outcome (61023 included).
func (s *Sim) AuthorizerTokenCalls(component, authorizerAppID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.authorizerOf(component, authorizerAppID); a != nil {
		return a.tokenCalls
	}
	return 0
}

// AuthorizerTokensIssued is the number of authorizer_access_tokens issued
// for the authorizer (by api_query_auth, api_authorizer_token and
// BulkAuthorize).
func (s *Sim) AuthorizerTokensIssued(component, authorizerAppID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.authorizerOf(component, authorizerAppID); a != nil {
		return a.issued
	}
	return 0
}

// AuthorizerRefreshToken is the authorizer's current refresh token: the
// one api_authorizer_token last returned ("" if the authorizer is not
// authorized now).
func (s *Sim) AuthorizerRefreshToken(component, authorizerAppID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.authorizerOf(component, authorizerAppID); a != nil && a.authorized {
		return a.refresh
	}
	return ""
}

// LastAuthorizerToken is the latest authorizer_access_token issued for
// the authorizer ("" if none).
func (s *Sim) LastAuthorizerToken(component, authorizerAppID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.authorizerOf(component, authorizerAppID); a != nil && a.token != nil {
		return a.token.value
	}
	return ""
}

// LastComponentToken is the latest component_access_token issued ("" if
// none).
func (s *Sim) LastComponentToken(component string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.components[component]; c != nil && c.token != nil {
		return c.token.value
	}
	return ""
}

// LastVerifyTicket is the component_verify_ticket the sim pushed last
// ("" if none), whether or not the push was answered "success".
func (s *Sim) LastVerifyTicket(component string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.components[component]; c != nil {
		return c.lastTicket
	}
	return ""
}

// Authorizers lists the component's authorized accounts in authorization
// order (what api_get_authorizer_list pages through).
func (s *Sim) Authorizers(component string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.components[component]
	if c == nil {
		return nil
	}
	out := make([]string, len(c.active))
	for i, a := range c.active {
		out[i] = a.appid
	}
	return out
}

// AuthorizeDirect authorizes (or re-authorizes) the account for the
// component without a push, for bulk setup: it returns the new refresh
// token, which replaces any earlier one at once (as WeChat invalidates
// the old refresh token on re-authorization). It issues no access token.
// It returns "" for an unknown component or an appid that is not 1 to 64
// of [A-Za-z0-9_-].
func (s *Sim) AuthorizeDirect(component, authorizerAppID string) (refreshToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.components[component]
	if c == nil || !validAppID(authorizerAppID) {
		return ""
	}
	return s.authorize(c, authorizerAppID, s.opts.Now()).refresh
}

// BulkAuthorize authorizes n accounts named prefix followed by a
// zero-padded index (prefix000 … prefix999 for n = 1000) without pushes,
// and issues each an authorizer_access_token; it returns them in that
// order. Accounts already authorized are re-authorized (new refresh
// tokens). It returns nil for an unknown component, n ≤ 0, or names that
// would not be valid appids. The cost is O(n); nothing else grows with
// the number of authorizers but Unauthorize and the Authorizers list.
func (s *Sim) BulkAuthorize(component string, n int, prefix string) []Authorization {
	if n <= 0 {
		return nil
	}
	width := len(strconv.Itoa(n - 1))
	if !validAppID(prefix+strconv.Itoa(n-1)) || len(prefix)+width > 64 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.components[component]
	if c == nil {
		return nil
	}
	now := s.opts.Now()
	out := make([]Authorization, n)
	for i := range out {
		a := s.authorize(c, fmt.Sprintf("%s%0*d", prefix, width, i), now)
		t := s.issueAuthorizerToken(a, now)
		out[i] = Authorization{AuthorizerAppID: a.appid, RefreshToken: a.refresh, AccessToken: t.value, ExpiresAt: t.expiresAt}
	}
	return out
}

// validAppID reports whether s is 1 to 64 of [A-Za-z0-9_-], what a push
// may carry as AuthorizerAppid.
func validAppID(s string) bool {
	if len(s) < 1 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !('a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '_' || b == '-') {
			return false
		}
	}
	return true
}

// authorize creates or renews the authorization of appid: a new refresh
// token (the previous one invalid at once), auth_time now, and the
// authorizer appended to the list if it was not authorized. Caller holds
// s.mu.
func (s *Sim) authorize(c *componentApp, appid string, now time.Time) *authorizer {
	a := c.authorizers[appid]
	if a == nil {
		a = &authorizer{appid: appid, funcInfo: defaultFuncInfo}
		c.authorizers[appid] = a
	}
	if !a.authorized {
		a.authorized = true
		a.index = len(c.active)
		c.active = append(c.active, a)
	}
	a.authTime = now
	a.refresh = s.newRefreshToken()
	a.prevRefresh, a.prevUntil = "", time.Time{}
	return a
}

// unauthorize ends the authorization: the refresh tokens, the pending
// codes and every access token of it stop working. O(number of
// authorizers). Caller holds s.mu.
func (s *Sim) unauthorize(c *componentApp, a *authorizer) {
	if a.authorized {
		c.active = slices.Delete(c.active, a.index, a.index+1)
		for i := a.index; i < len(c.active); i++ {
			c.active[i].index = i
		}
	}
	a.authorized = false
	a.refresh, a.prevRefresh, a.prevUntil = "", "", time.Time{}
	for _, t := range a.live {
		t.revoked = true
	}
	a.live = nil
	for code, ac := range c.codes {
		if ac.authorizer == a {
			delete(c.codes, code)
		}
	}
}

// issueAuthorizerToken issues a new authorizer_access_token (the previous
// one valid for Grace); it is a WeChat access token of the authorizer's
// appid, accepted by getcallbackip and getticket. Caller holds s.mu.
func (s *Sim) issueAuthorizerToken(a *authorizer, now time.Time) *token {
	t := s.issueChain(kindWeChat, a.appid, a.token, now)
	a.token = t
	a.issued++
	live := a.live[:0]
	for _, old := range a.live {
		if _, st := s.lookup(old.value, kindWeChat, now); st == tokValid {
			live = append(live, old)
		}
	}
	a.live = append(live, t)
	return t
}

// refreshOK reports whether rt is a refresh token of a that works now.
// Caller holds s.mu.
func (a *authorizer) refreshOK(rt string, now time.Time) bool {
	if !a.authorized || rt == "" {
		return false
	}
	return rt == a.refresh || (rt == a.prevRefresh && now.Before(a.prevUntil))
}

// newSecretValue returns prefix and n random characters of the token
// alphabet (never the same twice in practice: n ≥ 32 gives 192 bits).
func newSecretValue(prefix string, n int) string {
	buf := make([]byte, n)
	_, _ = rand.Read(buf) // never fails (crypto/rand, Go >= 1.24)
	for i, b := range buf {
		buf[i] = tokenAlphabet[b&63]
	}
	return prefix + string(buf)
}

func (s *Sim) newRefreshToken() string { return newSecretValue("refreshtoken@@@", refreshTokenLength) }

// ---- endpoints ----

// readComponentBody reads a JSON body into v; ok is false for a body that
// is too large or not JSON (47001).
func readComponentBody(r *http.Request, v any) bool {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxComponentBodySize+1))
	if err != nil || len(body) > maxComponentBodySize {
		return false
	}
	return json.Unmarshal(body, v) == nil
}

func postOnly(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return false
	}
	return true
}

func jsonAnswer(v any, tok string) answer {
	b, _ := json.Marshal(v)
	return answer{status: http.StatusOK, ctype: jsonType, body: b, token: tok}
}

type componentTokenRequest struct {
	AppID  string `json:"component_appid"`
	Secret string `json:"component_appsecret"`
	Ticket string `json:"component_verify_ticket"`
}

func (s *Sim) serveComponentToken(w http.ResponseWriter, r *http.Request) {
	if !postOnly(w, r) {
		return
	}
	var req componentTokenRequest
	ok := readComponentBody(r, &req)
	if !ok {
		req = componentTokenRequest{}
	}
	s.tokenCall(w, r, PathComponentToken, kindWeChat, req.AppID, func(now time.Time) answer {
		if !ok {
			return errAnswer(CodeDataFormat, "data format error")
		}
		if req.AppID == "" {
			return errAnswer(CodeAppIDMissing, "appid missing")
		}
		c := s.components[req.AppID]
		if c == nil {
			return errAnswer(CodeInvalidAppID, "invalid appid")
		}
		c.tokenCalls++
		switch {
		case req.Secret == "":
			return errAnswer(CodeAppSecretMissing, "appsecret missing")
		case req.Secret != c.secret:
			if s.opts.BadSecretErrcode == CodeInvalidAppSecret {
				return errAnswer(CodeInvalidAppSecret, "invalid appsecret")
			}
			return errAnswer(CodeInvalidCredential, "invalid credential, AppSecret error or access_token is invalid")
		}
		created, known := c.tickets[req.Ticket]
		switch {
		case !known:
			return errAnswer(CodeComponentTicketInvalid, "component ticket is invalid")
		case !now.Before(created.Add(s.opts.VerifyTicketTTL)):
			return errAnswer(CodeComponentTicketExpired, "component ticket is expired")
		}
		if d := shanghaiDay(now); d != c.day {
			c.day, c.quotaUsed = d, 0
		}
		if s.opts.DailyQuota > 0 && c.quotaUsed >= s.opts.DailyQuota {
			return errAnswer(CodeDailyQuota, "reach max api daily quota limit")
		}
		c.quotaUsed++
		t := s.issueChain(kindComponent, c.appid, c.token, now)
		c.token = t
		c.tokensIssued++
		return jsonAnswer(struct {
			Token     string `json:"component_access_token"`
			ExpiresIn int    `json:"expires_in"`
		}{t.value, secondsAtLeast1(s.opts.ExpiresIn)}, t.value)
	})
}

// componentByToken checks the component_access_token of a request and the
// body's component_appid; it returns the component, or the answer
// rejecting the call. Caller holds s.mu.
func (s *Sim) componentByToken(r *http.Request, appid string, now time.Time) (*componentApp, *answer) {
	q := r.URL.Query()
	tok := q.Get("component_access_token")
	if tok == "" {
		tok = q.Get("access_token")
	}
	reject := func(code int, msg string) (*componentApp, *answer) {
		a := errAnswer(code, msg)
		return nil, &a
	}
	t, st := s.lookup(tok, kindComponent, now)
	switch st {
	case tokMissing:
		return reject(CodeTokenMissing, "access_token missing")
	case tokUnknown:
		if other := s.tokens[tok]; other != nil {
			return reject(CodeMustUseComponentToken, "must use component token for component api")
		}
		return reject(CodeInvalidCredential, "invalid credential, access_token is invalid or not latest")
	case tokExpired:
		return reject(CodeTokenExpired, "access_token expired")
	case tokInvalid:
		return reject(CodeInvalidCredential, "invalid credential, access_token is invalid or not latest")
	}
	if appid != t.app {
		return reject(CodeInvalidAppID, "invalid appid")
	}
	return s.components[t.app], nil
}

type queryAuthRequest struct {
	AppID string `json:"component_appid"`
	Code  string `json:"authorization_code"`
}

type funcInfo struct {
	Category struct {
		ID int `json:"id"`
	} `json:"funcscope_category"`
}

// componentTokenCall serves an endpoint that takes the
// component_access_token (api_query_auth, api_authorizer_token,
// api_get_authorizer_list): POST only, the JSON body read into a T
// (errcode 47001 if it does not parse), the token checked against the
// component the body names; then respond answers. ids returns the
// component appid and the name the call is counted under.
func componentTokenCall[T any](s *Sim, w http.ResponseWriter, r *http.Request, path string,
	ids func(T) (appid, key string), respond func(c *componentApp, req T, now time.Time) answer) {
	if !postOnly(w, r) {
		return
	}
	var req T
	ok := readComponentBody(r, &req)
	if !ok {
		var zero T
		req = zero
	}
	appid, key := ids(req)
	s.tokenCall(w, r, path, kindWeChat, key, func(now time.Time) answer {
		if !ok {
			return errAnswer(CodeDataFormat, "data format error")
		}
		c, bad := s.componentByToken(r, appid, now)
		if bad != nil {
			return *bad
		}
		return respond(c, req, now)
	})
}

func (s *Sim) serveQueryAuth(w http.ResponseWriter, r *http.Request) {
	componentTokenCall(s, w, r, PathQueryAuth, func(q queryAuthRequest) (string, string) { return q.AppID, AuthorizerKey(q.AppID, "api_query_auth") },
		func(c *componentApp, req queryAuthRequest, now time.Time) answer {
			c.queryCalls++
			if req.Code == "" {
				return errAnswer(CodeDataFormat, "data format error")
			}
			ac := c.codes[req.Code]
			if ac == nil {
				return errAnswer(CodeAuthCodeInvalid, "code is invalid")
			}
			delete(c.codes, req.Code) // a code works once, even if expired
			if !now.Before(ac.expiresAt) {
				return errAnswer(CodeAuthCodeExpired, "code is expired")
			}
			a := ac.authorizer
			t := s.issueAuthorizerToken(a, now)
			fi := make([]funcInfo, len(a.funcInfo))
			for i, id := range a.funcInfo {
				fi[i].Category.ID = id
			}
			type info struct {
				AppID       string     `json:"authorizer_appid"`
				AccessToken string     `json:"authorizer_access_token"`
				ExpiresIn   int        `json:"expires_in"`
				Refresh     string     `json:"authorizer_refresh_token"`
				FuncInfo    []funcInfo `json:"func_info"`
			}
			return jsonAnswer(struct {
				Info info `json:"authorization_info"`
			}{info{a.appid, t.value, secondsAtLeast1(s.opts.ExpiresIn), a.refresh, fi}}, t.value)
		})
}

type authorizerTokenRequest struct {
	AppID      string `json:"component_appid"`
	Authorizer string `json:"authorizer_appid"`
	Refresh    string `json:"authorizer_refresh_token"`
}

func (s *Sim) serveAuthorizerToken(w http.ResponseWriter, r *http.Request) {
	componentTokenCall(s, w, r, PathAuthorizerToken, func(q authorizerTokenRequest) (string, string) { return q.AppID, AuthorizerKey(q.AppID, q.Authorizer) },
		func(c *componentApp, req authorizerTokenRequest, now time.Time) answer {
			a := c.authorizers[req.Authorizer]
			if a != nil {
				a.tokenCalls++
			}
			switch {
			case req.Authorizer == "" || req.Refresh == "":
				return errAnswer(CodeDataFormat, "data format error")
			case a == nil || !a.refreshOK(req.Refresh, now):
				return errAnswer(CodeRefreshTokenInvalid, "refresh_token is invalid")
			}
			t := s.issueAuthorizerToken(a, now)
			if s.opts.RotateRefreshTokens {
				// The superseded one keeps working for the grace (so a caller
				// that lost the answer can still recover); an older one stops.
				a.prevRefresh, a.prevUntil = a.refresh, now.Add(s.opts.RefreshTokenGrace)
				a.refresh = s.newRefreshToken()
			}
			return jsonAnswer(struct {
				AccessToken string `json:"authorizer_access_token"`
				ExpiresIn   int    `json:"expires_in"`
				Refresh     string `json:"authorizer_refresh_token"`
			}{t.value, secondsAtLeast1(s.opts.ExpiresIn), a.refresh}, t.value)
		})
}

type authorizerListRequest struct {
	AppID  string `json:"component_appid"`
	Offset int    `json:"offset"`
	Count  int    `json:"count"`
}

func (s *Sim) serveAuthorizerList(w http.ResponseWriter, r *http.Request) {
	componentTokenCall(s, w, r, PathAuthorizerList, func(q authorizerListRequest) (string, string) {
		return q.AppID, AuthorizerKey(q.AppID, "api_get_authorizer_list")
	},
		func(c *componentApp, req authorizerListRequest, now time.Time) answer {
			c.listCalls++
			if req.Offset < 0 || req.Count < 1 || req.Count > maxAuthorizerListCount {
				return errAnswer(CodeInvalidArgs, "invalid args")
			}
			type entry struct {
				AppID    string `json:"authorizer_appid"`
				Refresh  string `json:"refresh_token"`
				AuthTime int64  `json:"auth_time"`
			}
			list := []entry{}
			for i := req.Offset; i < len(c.active) && i < req.Offset+req.Count; i++ {
				a := c.active[i]
				list = append(list, entry{a.appid, a.refresh, a.authTime.Unix()})
			}
			return jsonAnswer(struct {
				Total int     `json:"total_count"`
				List  []entry `json:"list"`
			}{len(c.active), list}, "")
		})
}

// errUnknownComponent is returned by the push driver for a component that
// was never added.
var errUnknownComponent = errors.New("wechatsim: unknown component")
