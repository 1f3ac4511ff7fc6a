// Package wechatsim emulates the WeChat access_token API with WeChat's real
// semantics, for tests, demos and load tests; the same Sim and server also
// emulate WeCom, Feishu and an OAuth2 client_credentials server, each with
// its own real semantics.
//
// WeChat (apps added with AddApp):
//
//   - GET  /cgi-bin/token?grant_type=client_credential&appid=…&secret=…
//     (the classic endpoint): every successful call issues a new token; the
//     previously issued token of the app stays valid for Options.Grace (and
//     never past its own expiry), then answers 40001.
//   - POST /cgi-bin/stable_token with JSON
//     {"grant_type","appid","secret","force_refresh"}: normal mode returns the
//     current stable token until its last Options.Grace, force mode issues a
//     new one, at most Options.StableForceDaily a day and
//     Options.StableForceInterval apart. Classic and stable tokens are two
//     independent chains per app, as in WeChat.
//   - GET or POST /cgi-bin/getcallbackip?access_token=… : a business call
//     that accepts only currently valid tokens (41001 missing, 42001
//     expired, 40001 unknown or superseded).
//   - GET /cgi-bin/ticket/getticket?access_token=…&type=jsapi|wx_card: the
//     JS-SDK and card tickets (see ticket.go): each fetch issues a new
//     ticket, the previous one of its type stays valid for Options.Grace;
//     they have their own daily limit (Options.TicketDailyQuota). JS-SDK
//     signatures are checked against the valid jsapi tickets with
//     CheckSignature.
//
// Both WeChat token endpoints count against one daily quota per app
// (Options.DailyQuota, errcode 45009), and the day is WeChat's day: it starts
// at midnight Asia/Shanghai (UTC+8). All WeChat and WeCom JSON answers are
// HTTP 200 with Content-Type "application/json; encoding=utf-8", as they
// send them.
//
// WeCom, 企业微信 (apps added with AddWeComApp; see wecom.go):
//
//   - GET /cgi-bin/gettoken?corpid=…&corpsecret=…: tokens are per app
//     (corpid plus that app's secret), never per corp; a call inside the
//     validity returns the same token with the remaining expires_in, after
//     expiry a new one (41002, 40013, 41004, 40001 for bad arguments).
//   - GET /cgi-bin/get_jsapi_ticket?access_token=…: the corp's jsapi
//     ticket (any app's token gets the same one), and
//     GET /cgi-bin/ticket/get?access_token=…&type=agent_config: the app's
//     ticket; both same until expiry, both limited per clock hour to
//     Options.WeComTicketCorpHourly (400) per corp and
//     Options.WeComTicketAppHourly (100) per app (45009); signatures are
//     checked with CheckWeComSignature.
//   - GET /cgi-bin/agent/get?access_token=…&agentid=…: the business call
//     (41001 missing, 40014 invalid, 42001 expired).
//
// Feishu, 飞书 (apps added with AddFeishuApp; see feishu.go):
//
//   - POST /open-apis/auth/v3/tenant_access_token/internal with JSON
//     {"app_id","app_secret"}: the same token while at least
//     Options.FeishuRenewWindow (30 min) of it remains, with expire = the
//     remaining seconds; under it a new token, the old one valid until its
//     own end (10003 invalid param, 10014 unknown app or wrong secret).
//   - GET /open-apis/bot/v3/info with "Authorization: Bearer …": the
//     business call (HTTP 400 with 99991661 missing, 99991663 invalid or
//     expired).
//
// OAuth2 client_credentials, RFC 6749 §4.4 and RFC 6750 (clients added
// with AddOAuth2Client; see oauth2.go):
//
//   - POST /oauth2/token, form-encoded, client authentication with HTTP
//     Basic or client_id/client_secret in the body, optional scope (a
//     subset of the client's) and audience: every call issues a new token,
//     earlier ones stay valid until their expiry or Revoke; errors as RFC
//     6749 §5.2 (invalid_client 401, invalid_request, invalid_scope,
//     unsupported_grant_type 400).
//   - GET /oauth2/resource with "Authorization: Bearer …": the business
//     call (401 with a Bearer challenge, error="invalid_token" for a bad
//     token; 403 insufficient_scope for ?scope= not granted).
//
// WeChat Open Platform third-party platforms, "components" (added with
// AddComponent; see component.go and component_push.go), all POST with
// JSON bodies, the last three with ?component_access_token=… (or
// ?access_token=…):
//
//   - /cgi-bin/component/api_component_token
//     {"component_appid","component_appsecret","component_verify_ticket"}:
//     a new component_access_token each call (the previous one valid for
//     Options.Grace); the ticket must be one the emulator pushed to this
//     component within Options.VerifyTicketTTL (12 h): 61006 unknown,
//     missing or another component's, 61005 expired; secrets and quota as
//     /cgi-bin/token.
//   - /cgi-bin/component/api_query_auth
//     {"component_appid","authorization_code"}: the authorization_info
//     (a new authorizer_access_token, the refresh token, func_info); a
//     code works once and for Options.AuthCodeTTL (10 min): 61009
//     invalid or used, 61010 expired.
//   - /cgi-bin/component/api_authorizer_token
//     {"component_appid","authorizer_appid","authorizer_refresh_token"}:
//     a new authorizer_access_token (the previous one valid for Grace)
//     and the refresh token: the same one, or with
//     Options.RotateRefreshTokens a new one, the superseded one working
//     for Options.RefreshTokenGrace; 61023 for a wrong, superseded,
//     unknown or unauthorized one.
//   - /cgi-bin/component/api_get_authorizer_list
//     {"component_appid","offset","count"} (count 1 to 500, else 40097):
//     {"total_count","list":[{"authorizer_appid","refresh_token","auth_time"}]}
//     in authorization order.
//
// Those with a component_access_token answer 41001 (none), 40001
// (unknown or superseded past its grace), 42001 (expired), 61014 (an app's
// or authorizer's access token) and 40013 (another component's token).
// Authorizer access tokens are WeChat access tokens of the authorizer's
// appid: getcallbackip and getticket accept them, with the same grace. The
// push driver (PushVerifyTicket, StartPushing, Authorize, UpdateAuthorize,
// Unauthorize) POSTs what WeChat sends to a component's callback, sealed
// with internal/wxcrypt, and wants "success". AuthorizeDirect and
// BulkAuthorize set up authorizers without pushes; no call costs time in
// proportion to the number of authorizers (Unauthorize does).
//
// Every token lives Options.ExpiresIn and is accepted only by the
// endpoints of its own upstream. The clock is injectable (Options.Now),
// faults can be injected at run time for the token endpoints of every
// upstream (SetFault; Fault.Paths picks endpoints), and every interesting
// count can be observed (Calls, Fetches, Issued, MaxConcurrentFetches,
// BusinessCalls, Check, and their WeCom, Feishu, OAuth2 and component
// counterparts).
package wechatsim

import (
	"cmp"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// Endpoint paths served by the emulator.
const (
	PathToken       = "/cgi-bin/token"
	PathStableToken = "/cgi-bin/stable_token"
	PathCallbackIP  = "/cgi-bin/getcallbackip"
)

// WeChat errcodes produced by the emulator.
const (
	CodeBusy              = -1    // system error, retry
	CodeInvalidCredential = 40001 // wrong secret, or token invalid / not latest
	CodeInvalidGrantType  = 40002
	CodeInvalidAppID      = 40013
	CodeInvalidAppSecret  = 40125 // only if Options.BadSecretErrcode is 40125
	CodeTokenMissing      = 41001
	CodeAppIDMissing      = 41002
	CodeAppSecretMissing  = 41004
	CodeTokenExpired      = 42001
	CodeDailyQuota        = 45009
	CodeMinuteQuota       = 45011
	CodeDataFormat        = 47001
	CodeIPNotWhitelisted  = 40164 // for fault injection
	CodeRiskControl       = 89503 // for fault injection
)

const (
	defaultExpiresIn        = 7200 * time.Second
	defaultGrace            = 300 * time.Second
	defaultDailyQuota       = 2000
	defaultStableForce      = 20
	defaultStableForceGap   = 30 * time.Second
	defaultTokenLength      = 136
	defaultTicketDailyQuota = 100000
	defaultWeComCorpHourly  = 400
	defaultWeComAppHourly   = 100
	defaultFeishuWindow     = 30 * time.Minute
	minTokenLength          = 8
	maxStableTokenBodySize  = 64 << 10
)

// Error is a WeChat {"errcode","errmsg"} answer.
type Error struct {
	Code int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("wechat errcode %d: %s", e.Code, e.Msg) }

// Errors returned by Check; compare with errors.Is.
var (
	// ErrInvalidToken: unknown, superseded (past its grace) or revoked token (40001).
	ErrInvalidToken = &Error{CodeInvalidCredential, "invalid credential, access_token is invalid or not latest"}
	// ErrExpiredToken: the token is past its expires_in (42001).
	ErrExpiredToken = &Error{CodeTokenExpired, "access_token expired"}
	// ErrMissingToken: no access_token given (41001).
	ErrMissingToken = &Error{CodeTokenMissing, "access_token missing"}
)

// Options configure a Sim. Zero values mean the defaults; for Grace,
// DailyQuota, StableForceDaily and StableForceInterval a negative value
// means "none" (no overlap, unlimited, unlimited, no minimum gap).
type Options struct {
	// ExpiresIn is the token lifetime, default 7200s; reported as
	// expires_in in whole seconds, at least 1.
	ExpiresIn time.Duration
	// Grace is how long a token stays valid after the next token of its
	// chain was issued (and the "last minutes" of a stable token in which
	// normal mode issues a new one), default 300s.
	Grace time.Duration
	// DailyQuota is the per-app, per-day number of authenticated calls
	// (right appid and secret) to /cgi-bin/token and /cgi-bin/stable_token
	// together, default 2000; a stable force refresh refused by its own
	// limits still counts. The call after it answers 45009.
	DailyQuota int
	// StableForceDaily limits stable_token force_refresh=true per app and
	// day, default 20 (45009 when exceeded).
	StableForceDaily int
	// StableForceInterval is the minimum gap between two force refreshes of
	// one app, default 30s (45011 when violated).
	StableForceInterval time.Duration
	// TokenLength is the length of issued tokens, default 136, at least 8.
	TokenLength int
	// BadSecretErrcode is the errcode for a wrong secret: 40001 (default)
	// or 40125 ("invalid appsecret"), which WeChat also sends.
	BadSecretErrcode int
	// TicketDailyQuota is the per-app, per-day number of successful
	// getticket calls (both types together), default 100000; a negative
	// value means unlimited. It is separate from DailyQuota. The call after
	// it answers 45009.
	TicketDailyQuota int
	// WeComTicketCorpHourly is how many WeCom jsapi_ticket fetches a corp
	// may make per clock hour, default 400; negative: unlimited. Both
	// ticket endpoints (get_jsapi_ticket and ticket/get?type=agent_config)
	// and every app of the corp count together, as in WeCom's documented
	// limit; the call after it answers 45009.
	WeComTicketCorpHourly int
	// WeComTicketAppHourly is the same limit per app (the app whose token
	// is presented), default 100; negative: unlimited.
	WeComTicketAppHourly int
	// FeishuRenewWindow is Feishu's 30-minute rule: a tenant_access_token
	// call while at least this much validity remains returns the current
	// token, under it a new one (the old one stays valid until its own
	// end). Default 30 min; negative: a new token only after expiry.
	FeishuRenewWindow time.Duration
	// VerifyTicketTTL is how long a pushed component_verify_ticket is
	// accepted by api_component_token, default 12 h (61005 after it).
	VerifyTicketTTL time.Duration
	// AuthCodeTTL is how long an authorization_code can be redeemed with
	// api_query_auth, default 10 min (61010 after it).
	AuthCodeTTL time.Duration
	// RotateRefreshTokens makes every successful api_authorizer_token call
	// return a new authorizer_refresh_token; the one it supersedes keeps
	// working for RefreshTokenGrace, older ones answer 61023. Without it
	// the refresh token stays the same until re-authorization.
	RotateRefreshTokens bool
	// RefreshTokenGrace is how long a rotated refresh token keeps working,
	// default Grace; negative: not at all.
	RefreshTokenGrace time.Duration
	// PushTimeout bounds each push to a component's callback (WeChat
	// waits 5 s), default 5 s.
	PushTimeout time.Duration
	// Now is the clock, default time.Now. It decides token validity and
	// quota days; Fault.Latency always uses real time.
	Now func() time.Time
	// OnCall, if set, is called after every answered or abandoned request,
	// outside the Sim's lock. Call carries no secret and no full token.
	OnCall func(Call)
}

// Call describes one request, for logging. It never holds a secret or a
// full token.
type Call struct {
	Path     string
	AppID    string        // as given by the caller, or the owner of the token for business calls
	Status   int           // HTTP status; 0 if the request was abandoned
	Errcode  int           // 0 on success
	Fault    string        // "", "busy", "5xx", "garbage", "errcode" if a fault answered
	Canceled bool          // the caller went away during Fault.Latency
	Token    string        // contract.Fingerprint of the issued, returned or presented token
	Duration time.Duration // real time spent
	// Push is set for a push to a component's callback (see
	// PushVerifyTicket): its InfoType; Path is then the callback's path,
	// AppID the component and Status the callback's HTTP status.
	Push string
	// Err is why a push failed ("" if it was answered "success"); it
	// names no ticket, code or signature.
	Err string
}

// Fault is injected by SetFault. Counters are consumed in the order
// HTTP5xx, Garbage, Busy, then Errcode applies; -1 means "every call until
// cleared". Faults apply to the token endpoints only (WeChat's two, WeCom's
// gettoken, Feishu's tenant_access_token, OAuth2's token endpoint and the
// four component endpoints, or those listed in Paths), after Latency, and
// answered faults do not count as calls.
//
// Busy and Errcode answer in the shape of the upstream called: WeChat and
// WeCom {"errcode","errmsg"} with HTTP 200; Feishu {"code","msg"} (Busy:
// HTTP 500 and code 2200 "Internal Error"; Errcode: HTTP 400); OAuth2 an
// RFC 6749 error (Busy: HTTP 503 "temporarily_unavailable"; Errcode: the
// HTTP status Errcode if it is 400-599, else 400, with "error" = Errmsg,
// default "invalid_request", so Errcode 400 with Errmsg "invalid_grant"
// injects that RFC error).
type Fault struct {
	Busy    int           // next N token calls answer {"errcode":-1,"errmsg":"system error"}
	HTTP5xx int           // next N token calls answer HTTP 502 with an HTML body
	Garbage int           // next N token calls answer HTTP 200 with a truncated, non-JSON body
	Latency time.Duration // added to every token call; abandoned when the request context ends
	Errcode int           // if != 0, every token call answers this errcode until cleared
	Errmsg  string        // errmsg for Errcode (a default is used if empty)
	// Paths, if not empty, limits the fault to the token endpoints with
	// these paths (e.g. []string{PathWeComToken}); other endpoints then
	// answer normally and keep the counters untouched.
	Paths []string
}

// applies reports whether the fault concerns a token call to path.
func (f *Fault) applies(path string) bool {
	if len(f.Paths) == 0 {
		return true
	}
	for _, p := range f.Paths {
		if p == path {
			return true
		}
	}
	return false
}

type token struct {
	value      string
	kind       string // kindWeChat, kindWeCom, kindFeishu or kindOAuth2
	app        string // appid; "corpid/agentid" for WeCom; client_id for OAuth2
	issuedAt   time.Time
	expiresAt  time.Time
	validUntil time.Time // zero: until expiresAt
	revoked    bool
	ticketType string // "" for an access token
	scope      string // OAuth2: the granted scopes, space-separated
	audience   string // OAuth2: the requested audience
}

// Token kinds: every token and ticket belongs to one upstream, and is
// accepted only by that upstream's endpoints.
const (
	kindWeChat = ""
	kindWeCom  = "wecom"
	kindFeishu = "feishu"
	kindOAuth2 = "oauth2"
)

type app struct {
	secret    string
	classic   *token
	stable    *token
	day       int64
	quotaUsed int
	forceUsed int
	lastForce time.Time
	calls     int
	fetches   int
	issued    int

	tickets         map[string]*token // current ticket by type
	ticketQuotaUsed int
	ticketCalls     int
	ticketsIssued   map[string]int
}

// Sim is the emulator. All methods are safe for concurrent use.
type Sim struct {
	opts Options

	mu          sync.Mutex
	apps        map[string]*app
	tokens      map[string]*token
	order       []*token // issuance order, for pruning long-expired tokens
	fault       Fault
	inflight    map[string]int
	maxInflight map[string]int
	bizOK       int
	bizRejected int

	tickets     map[string]*token // by value; never accepted as access tokens
	ticketOrder []*token
	sigOK       int
	sigRejected int

	wecom      map[string]*wecomCorp    // by corpid
	feishu     map[string]*feishuApp    // by app_id
	oauth2     map[string]*oauth2Client // by client_id
	components map[string]*componentApp // Open Platform components, by appid
	biz        map[string]*bizCount     // business calls of the new kinds, by kind
}

// bizCount counts business calls of one kind: accepted and rejected tokens.
type bizCount struct{ ok, rejected int }

// countBiz counts one business call of kind. Caller holds s.mu.
func (s *Sim) countBiz(kind string, ok bool) {
	c := s.biz[kind]
	if c == nil {
		c = &bizCount{}
		s.biz[kind] = c
	}
	if ok {
		c.ok++
	} else {
		c.rejected++
	}
}

// bizCalls reads the business counters of kind.
func (s *Sim) bizCalls(kind string) (ok, rejected int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.biz[kind]; c != nil {
		return c.ok, c.rejected
	}
	return 0, 0
}

// New returns a Sim without apps; add them with AddApp.
func New(opts Options) *Sim {
	if opts.ExpiresIn <= 0 {
		opts.ExpiresIn = defaultExpiresIn
	}
	switch {
	case opts.Grace == 0:
		opts.Grace = defaultGrace
	case opts.Grace < 0:
		opts.Grace = 0
	}
	if opts.DailyQuota == 0 {
		opts.DailyQuota = defaultDailyQuota
	}
	if opts.StableForceDaily == 0 {
		opts.StableForceDaily = defaultStableForce
	}
	switch {
	case opts.StableForceInterval == 0:
		opts.StableForceInterval = defaultStableForceGap
	case opts.StableForceInterval < 0:
		opts.StableForceInterval = 0
	}
	if opts.TokenLength <= 0 {
		opts.TokenLength = defaultTokenLength
	}
	if opts.TokenLength < minTokenLength {
		opts.TokenLength = minTokenLength
	}
	if opts.BadSecretErrcode != CodeInvalidAppSecret {
		opts.BadSecretErrcode = CodeInvalidCredential
	}
	switch {
	case opts.TicketDailyQuota == 0:
		opts.TicketDailyQuota = defaultTicketDailyQuota
	case opts.TicketDailyQuota < 0:
		opts.TicketDailyQuota = 0
	}
	if opts.WeComTicketCorpHourly == 0 {
		opts.WeComTicketCorpHourly = defaultWeComCorpHourly
	}
	if opts.WeComTicketAppHourly == 0 {
		opts.WeComTicketAppHourly = defaultWeComAppHourly
	}
	switch {
	case opts.FeishuRenewWindow == 0:
		opts.FeishuRenewWindow = defaultFeishuWindow
	case opts.FeishuRenewWindow < 0:
		opts.FeishuRenewWindow = 0
	}
	if opts.VerifyTicketTTL <= 0 {
		opts.VerifyTicketTTL = defaultVerifyTicketTTL
	}
	if opts.AuthCodeTTL <= 0 {
		opts.AuthCodeTTL = defaultAuthCodeTTL
	}
	switch {
	case opts.RefreshTokenGrace == 0:
		opts.RefreshTokenGrace = opts.Grace
	case opts.RefreshTokenGrace < 0:
		opts.RefreshTokenGrace = 0
	}
	if opts.PushTimeout <= 0 {
		opts.PushTimeout = defaultPushTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Sim{
		components:  map[string]*componentApp{},
		wecom:       map[string]*wecomCorp{},
		feishu:      map[string]*feishuApp{},
		oauth2:      map[string]*oauth2Client{},
		biz:         map[string]*bizCount{},
		tickets:     map[string]*token{},
		opts:        opts,
		apps:        map[string]*app{},
		tokens:      map[string]*token{},
		inflight:    map[string]int{},
		maxInflight: map[string]int{},
	}
}

// NewServer returns a Sim and an httptest.Server serving it; the caller
// closes the server.
func NewServer(opts Options) (*Sim, *httptest.Server) {
	s := New(opts)
	return s, httptest.NewServer(s.Handler())
}

// AddApp registers an app; for an existing app it only sets the secret.
func (s *Sim) AddApp(appid, secret string) { s.SetSecret(appid, secret) }

// SetSecret rotates the secret of an app (registering it if unknown).
// Tokens already issued stay valid.
func (s *Sim) SetSecret(appid, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.apps[appid]; ok {
		a.secret = secret
		return
	}
	s.apps[appid] = s.newApp(secret)
}

// newApp returns an app with secret (none: "" never authenticates). Caller
// holds s.mu.
func (s *Sim) newApp(secret string) *app {
	return &app{secret: secret, day: shanghaiDay(s.opts.Now()),
		tickets: map[string]*token{}, ticketsIssued: map[string]int{}}
}

// SetFault replaces the current fault; SetFault(Fault{}) clears it.
func (s *Sim) SetFault(f Fault) {
	s.mu.Lock()
	s.fault = f
	s.mu.Unlock()
}

// CurrentFault returns the fault with its remaining counters.
func (s *Sim) CurrentFault() Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fault
}

// Calls is the number of token-endpoint calls that reached the app (known
// appid, no fault answered), whatever their outcome.
func (s *Sim) Calls(appid string) int {
	return s.count(appid, false, func(a *app) int { return a.calls })
}

// Fetches is the number of successful token answers, classic and stable,
// including stable normal-mode answers that returned the existing token.
func (s *Sim) Fetches(appid string) int {
	return s.count(appid, false, func(a *app) int { return a.fetches })
}

// Issued is the number of distinct tokens issued for the app.
func (s *Sim) Issued(appid string) int {
	return s.count(appid, false, func(a *app) int { return a.issued })
}

// QuotaUsed is the number of calls counted against today's quota.
func (s *Sim) QuotaUsed(appid string) int {
	return s.count(appid, true, func(a *app) int { return a.quotaUsed })
}

// count reads one counter of appid's app under the lock (0 for an unknown
// appid); with today, after moving the app's daily counters to today.
func (s *Sim) count(appid string, today bool, f func(*app) int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.apps[appid]
	if a == nil {
		return 0
	}
	if today {
		s.rollDay(a, s.opts.Now())
	}
	return f(a)
}

// LastToken returns the latest classic and stable tokens issued for the
// app ("" if none), for tests.
func (s *Sim) LastToken(appid string) (classic, stable string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.apps[appid]; a != nil {
		if a.classic != nil {
			classic = a.classic.value
		}
		if a.stable != nil {
			stable = a.stable.value
		}
	}
	return classic, stable
}

// Check returns nil if token is currently valid, ErrExpiredToken if it is
// past its expiry, and ErrInvalidToken if it is unknown, superseded past its
// grace, or revoked.
func (s *Sim) Check(tok string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := s.check(tok, s.opts.Now())
	return err
}

// Revoke invalidates a token at once (as if WeChat dropped it); it reports
// whether the token was known.
func (s *Sim) Revoke(tok string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tokens[tok]
	if t == nil {
		return false
	}
	t.revoked = true
	return true
}

// MaxConcurrentFetches is the highest number of token calls naming appid
// that were in flight at the same time (faulted and abandoned calls
// included). appid is a WeChat appid, a WeComKey, a Feishu app_id or an
// OAuth2 client_id (one namespace for all upstreams).
func (s *Sim) MaxConcurrentFetches(appid string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxInflight[appid]
}

// InFlight is the number of token calls naming appid in flight now.
func (s *Sim) InFlight(appid string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inflight[appid]
}

// BusinessCalls counts /cgi-bin/getcallbackip answers: accepted tokens and
// rejected ones.
func (s *Sim) BusinessCalls() (ok, rejected int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bizOK, s.bizRejected
}

// ResetDay resets the daily counters (quota and force refreshes) of every
// app, as WeChat does at midnight Asia/Shanghai. The minimum gap between
// force refreshes is not reset.
func (s *Sim) ResetDay() {
	s.mu.Lock()
	defer s.mu.Unlock()
	day := shanghaiDay(s.opts.Now())
	for _, a := range s.apps {
		a.day, a.quotaUsed, a.forceUsed, a.ticketQuotaUsed = day, 0, 0, 0
	}
}

// Handler returns the HTTP handler of the emulator.
func (s *Sim) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(PathToken, s.serveToken)
	mux.HandleFunc(PathStableToken, s.serveStableToken)
	mux.HandleFunc(PathCallbackIP, s.serveCallbackIP)
	mux.HandleFunc(PathGetTicket, s.serveGetTicket)
	mux.HandleFunc(PathWeComToken, s.serveWeComToken)
	mux.HandleFunc(PathWeComJSAPITicket, s.serveWeComJSAPITicket)
	mux.HandleFunc(PathWeComAgentTicket, s.serveWeComAgentTicket)
	mux.HandleFunc(PathWeComAgentGet, s.serveWeComAgentGet)
	mux.HandleFunc(PathFeishuToken, s.serveFeishuToken)
	mux.HandleFunc(PathFeishuBotInfo, s.serveFeishuBotInfo)
	mux.HandleFunc(PathOAuth2Token, s.serveOAuth2Token)
	mux.HandleFunc(PathOAuth2Resource, s.serveOAuth2Resource)
	mux.HandleFunc(PathComponentToken, s.serveComponentToken)
	mux.HandleFunc(PathQueryAuth, s.serveQueryAuth)
	mux.HandleFunc(PathAuthorizerToken, s.serveAuthorizerToken)
	mux.HandleFunc(PathAuthorizerList, s.serveAuthorizerList)
	return mux
}

// ---- internals ----

const shanghaiOffset = 8 * 3600

// shanghaiDay numbers WeChat's days: they start at 00:00 UTC+8.
func shanghaiDay(t time.Time) int64 {
	sec := t.Unix() + shanghaiOffset
	day := sec / 86400
	if sec%86400 < 0 {
		day--
	}
	return day
}

func (s *Sim) rollDay(a *app, now time.Time) {
	if d := shanghaiDay(now); d != a.day {
		a.day, a.quotaUsed, a.forceUsed, a.ticketQuotaUsed = d, 0, 0, 0
	}
}

// check validates a WeChat access token.
func (s *Sim) check(tok string, now time.Time) (*token, error) {
	t, st := s.lookup(tok, kindWeChat, now)
	switch st {
	case tokMissing:
		return nil, ErrMissingToken
	case tokUnknown:
		return nil, ErrInvalidToken
	case tokExpired:
		return t, ErrExpiredToken
	case tokInvalid:
		return t, ErrInvalidToken
	}
	return t, nil
}

// tokenState is what lookup found; each upstream maps it to its own codes.
type tokenState int

const (
	tokValid   tokenState = iota
	tokMissing            // no token presented
	tokUnknown            // never issued (or pruned), or a token of another kind
	tokExpired            // past its expiry
	tokInvalid            // revoked, or superseded past its grace
)

// lookup finds access token tok of kind and says whether it is valid now.
// Caller holds s.mu.
func (s *Sim) lookup(tok, kind string, now time.Time) (*token, tokenState) {
	if tok == "" {
		return nil, tokMissing
	}
	t := s.tokens[tok]
	if t == nil || t.kind != kind {
		return nil, tokUnknown
	}
	if !now.Before(t.expiresAt) {
		return t, tokExpired
	}
	if t.revoked || (!t.validUntil.IsZero() && !now.Before(t.validUntil)) {
		return t, tokInvalid
	}
	return t, tokValid
}

const tokenAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

func (s *Sim) newTokenValue() string {
	buf := make([]byte, s.opts.TokenLength)
	for {
		_, _ = rand.Read(buf) // never fails (crypto/rand, Go >= 1.24)
		for i, b := range buf {
			buf[i] = tokenAlphabet[b&63]
		}
		v := string(buf)
		if _, dup := s.tokens[v]; !dup {
			return v
		}
	}
}

// issue makes a new token for a, superseding prev (which then stays valid
// for Grace, never past its own expiry). Caller holds s.mu.
func (s *Sim) issue(appid string, a *app, prev *token, now time.Time) *token {
	t := s.issueChain(kindWeChat, appid, prev, now)
	a.issued++
	return t
}

// issueChain makes a new access token of kind for app, superseding prev
// (which then stays valid for Grace, never past its own expiry), and
// registers it. Caller holds s.mu.
func (s *Sim) issueChain(kind, appid string, prev *token, now time.Time) *token {
	if prev != nil {
		until := now.Add(s.opts.Grace)
		if until.After(prev.expiresAt) {
			until = prev.expiresAt
		}
		if prev.validUntil.IsZero() || until.Before(prev.validUntil) {
			prev.validUntil = until
		}
	}
	t := &token{
		value:     s.newTokenValue(),
		kind:      kind,
		app:       appid,
		issuedAt:  now,
		expiresAt: now.Add(s.opts.ExpiresIn),
	}
	s.tokens[t.value] = t
	s.order = append(s.order, t)
	s.prune(now)
	return t
}

// prune forgets tokens expired for more than a day (they then answer 40001
// instead of 42001), so that long load tests do not grow without bound.
func (s *Sim) prune(now time.Time) {
	cut := now.Add(-24 * time.Hour)
	s.order = pruneOrder(s.order, s.tokens, cut)
	s.ticketOrder = pruneOrder(s.ticketOrder, s.tickets, cut)
}

// pruneOrder drops the tokens expired before cut from the front of order
// and from byValue. It reslices rather than copies, so that a call costs
// only what it prunes (append reallocates, keeping only live tokens, when
// the backing array fills up).
func pruneOrder(order []*token, byValue map[string]*token, cut time.Time) []*token {
	n := 0
	for n < len(order) && order[n].expiresAt.Before(cut) {
		delete(byValue, order[n].value)
		order[n] = nil
		n++
	}
	return order[n:]
}

func secondsAtLeast1(d time.Duration) int {
	if sec := int(d / time.Second); sec >= 1 {
		return sec
	}
	return 1
}

// answer is what a token call replies.
type answer struct {
	status  int
	ctype   string
	body    []byte
	errcode int
	fault   string
	token   string
	header  http.Header // extra response headers, if any
}

const jsonType = "application/json; encoding=utf-8"

func errAnswer(code int, msg string) answer {
	b, _ := json.Marshal(struct {
		Errcode int    `json:"errcode"`
		Errmsg  string `json:"errmsg"`
	}{code, msg})
	return answer{status: http.StatusOK, ctype: jsonType, body: b, errcode: code}
}

func tokenAnswer(tok string, expiresIn int) answer {
	b, _ := json.Marshal(struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}{tok, expiresIn})
	return answer{status: http.StatusOK, ctype: jsonType, body: b, token: tok}
}

func (a answer) write(w http.ResponseWriter) {
	for k, v := range a.header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", a.ctype)
	w.WriteHeader(a.status)
	_, _ = w.Write(a.body)
}

const html502 = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"

// takeFault consumes one fault occurrence for a token call of kind to
// path, if any, and renders it in that upstream's shape. Caller holds s.mu.
func (s *Sim) takeFault(path, kind string) (answer, bool) {
	f := &s.fault
	if !f.applies(path) {
		return answer{}, false
	}
	take := func(n *int) bool {
		if *n == 0 {
			return false
		}
		if *n > 0 {
			*n--
		}
		return true
	}
	switch {
	case take(&f.HTTP5xx):
		return answer{status: http.StatusBadGateway, ctype: "text/html", body: []byte(html502), fault: "5xx"}, true
	case take(&f.Garbage):
		return answer{status: http.StatusOK, ctype: jsonType, body: []byte(`{"access_token":"ACCESS_TOK`), fault: "garbage"}, true
	case take(&f.Busy):
		var a answer
		switch kind {
		case kindFeishu:
			a = feishuAnswer(http.StatusInternalServerError, CodeFeishuInternal, "Internal Error")
		case kindOAuth2:
			a = oauth2Error(http.StatusServiceUnavailable, "temporarily_unavailable", "injected fault")
		default:
			a = errAnswer(CodeBusy, "system error")
		}
		a.fault = "busy"
		return a, true
	case f.Errcode != 0:
		var a answer
		switch kind {
		case kindFeishu:
			a = feishuAnswer(http.StatusBadRequest, f.Errcode, cmp.Or(f.Errmsg, "injected error"))
		case kindOAuth2:
			status := http.StatusBadRequest
			if f.Errcode >= 400 && f.Errcode <= 599 {
				status = f.Errcode
			}
			a = oauth2Error(status, cmp.Or(f.Errmsg, "invalid_request"), "injected fault")
		default:
			a = errAnswer(f.Errcode, cmp.Or(f.Errmsg, defaultErrmsg(f.Errcode)))
		}
		a.fault = "errcode"
		return a, true
	}
	return answer{}, false
}

func defaultErrmsg(code int) string {
	switch code {
	case CodeIPNotWhitelisted:
		return "invalid ip, not in whitelist"
	case CodeRiskControl:
		return "user limited"
	case CodeBusy:
		return "system error"
	case CodeInvalidAppSecret:
		return "invalid appsecret"
	case CodeWeComIPNotTrusted:
		return "not allow to access from your ip"
	}
	return "injected error"
}

// tokenCall runs the common part of every token endpoint: in-flight
// accounting, latency, faults (rendered for kind), then logic under the
// lock. appid names the caller for in-flight accounting and Call.AppID.
func (s *Sim) tokenCall(w http.ResponseWriter, r *http.Request, path, kind, appid string, logic func(now time.Time) answer) {
	start := time.Now()
	s.mu.Lock()
	s.inflight[appid]++
	if n := s.inflight[appid]; n > s.maxInflight[appid] {
		s.maxInflight[appid] = n
	}
	var lat time.Duration
	if s.fault.applies(path) {
		lat = s.fault.Latency
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inflight[appid]--
		s.mu.Unlock()
	}()

	if lat > 0 {
		t := time.NewTimer(lat)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			s.report(Call{Path: path, AppID: appid, Canceled: true, Duration: time.Since(start)})
			return
		}
	}

	s.mu.Lock()
	ans, faulted := s.takeFault(path, kind)
	if !faulted {
		ans = logic(s.opts.Now())
	}
	s.mu.Unlock()
	ans.write(w)
	s.report(Call{Path: path, AppID: appid, Status: ans.status, Errcode: ans.errcode, Fault: ans.fault,
		Token: contract.Fingerprint(ans.token), Duration: time.Since(start)})
}

func (s *Sim) report(c Call) {
	if s.opts.OnCall != nil {
		s.opts.OnCall(c)
	}
}

// authenticate validates appid and secret and applies the daily quota.
// Caller holds s.mu.
func (s *Sim) authenticate(appid, secret string, now time.Time) (*app, *answer) {
	if appid == "" {
		a := errAnswer(CodeAppIDMissing, "appid missing")
		return nil, &a
	}
	a := s.apps[appid]
	if a == nil {
		e := errAnswer(CodeInvalidAppID, "invalid appid")
		return nil, &e
	}
	a.calls++
	if secret == "" {
		e := errAnswer(CodeAppSecretMissing, "appsecret missing")
		return nil, &e
	}
	if secret != a.secret {
		var e answer
		if s.opts.BadSecretErrcode == CodeInvalidAppSecret {
			e = errAnswer(CodeInvalidAppSecret, "invalid appsecret")
		} else {
			e = errAnswer(CodeInvalidCredential, "invalid credential, AppSecret error or access_token is invalid")
		}
		return nil, &e
	}
	s.rollDay(a, now)
	if s.opts.DailyQuota > 0 && a.quotaUsed >= s.opts.DailyQuota {
		e := errAnswer(CodeDailyQuota, "reach max api daily quota limit")
		return nil, &e
	}
	a.quotaUsed++
	return a, nil
}

func (s *Sim) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	appid := q.Get("appid")
	s.tokenCall(w, r, PathToken, kindWeChat, appid, func(now time.Time) answer {
		if q.Get("grant_type") != "client_credential" {
			return errAnswer(CodeInvalidGrantType, "invalid grant_type")
		}
		a, bad := s.authenticate(appid, q.Get("secret"), now)
		if bad != nil {
			return *bad
		}
		t := s.issue(appid, a, a.classic, now)
		a.classic = t
		a.fetches++
		return tokenAnswer(t.value, secondsAtLeast1(s.opts.ExpiresIn))
	})
}

type stableRequest struct {
	GrantType    string `json:"grant_type"`
	AppID        string `json:"appid"`
	Secret       string `json:"secret"`
	ForceRefresh bool   `json:"force_refresh"`
}

func (s *Sim) serveStableToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	var req stableRequest
	body, err := io.ReadAll(io.LimitReader(r.Body, maxStableTokenBodySize))
	if err == nil {
		err = json.Unmarshal(body, &req)
	}
	if err != nil {
		req = stableRequest{}
	}
	s.tokenCall(w, r, PathStableToken, kindWeChat, req.AppID, func(now time.Time) answer {
		if err != nil {
			return errAnswer(CodeDataFormat, "data format error")
		}
		if req.GrantType != "client_credential" {
			return errAnswer(CodeInvalidGrantType, "invalid grant_type")
		}
		a, bad := s.authenticate(req.AppID, req.Secret, now)
		if bad != nil {
			return *bad
		}
		cur := a.stable
		if !req.ForceRefresh {
			if cur != nil && !cur.revoked && cur.validUntil.IsZero() && cur.expiresAt.Sub(now) > s.opts.Grace {
				a.fetches++
				return tokenAnswer(cur.value, secondsAtLeast1(cur.expiresAt.Sub(now)))
			}
		} else {
			if s.opts.StableForceDaily > 0 && a.forceUsed >= s.opts.StableForceDaily {
				return errAnswer(CodeDailyQuota, "reach max api daily quota limit")
			}
			if !a.lastForce.IsZero() && now.Sub(a.lastForce) < s.opts.StableForceInterval {
				return errAnswer(CodeMinuteQuota, "api minute-quota reach limit")
			}
			a.forceUsed++
			a.lastForce = now
		}
		t := s.issue(req.AppID, a, cur, now)
		a.stable = t
		a.fetches++
		return tokenAnswer(t.value, secondsAtLeast1(s.opts.ExpiresIn))
	})
}

func (s *Sim) serveCallbackIP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	start := time.Now()
	tok := r.URL.Query().Get("access_token")
	s.mu.Lock()
	t, err := s.check(tok, s.opts.Now())
	if err == nil {
		s.bizOK++
	} else {
		s.bizRejected++
	}
	s.mu.Unlock()
	var ans answer
	if err != nil {
		var e *Error
		errors.As(err, &e)
		ans = errAnswer(e.Code, e.Msg)
	} else {
		b, _ := json.Marshal(map[string][]string{"ip_list": {"127.0.0.1"}})
		ans = answer{status: http.StatusOK, ctype: jsonType, body: b}
	}
	ans.write(w)
	appid := ""
	if t != nil {
		appid = t.app
	}
	s.report(Call{Path: PathCallbackIP, AppID: appid, Status: ans.status, Errcode: ans.errcode,
		Token: contract.Fingerprint(tok), Duration: time.Since(start)})
}
