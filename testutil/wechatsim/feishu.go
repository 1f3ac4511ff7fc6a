package wechatsim

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// Feishu (飞书, open.feishu.cn) endpoints served by the emulator.
const (
	// PathFeishuToken: POST {"app_id","app_secret"} → tenant_access_token
	// (the self-built app's endpoint).
	PathFeishuToken = "/open-apis/auth/v3/tenant_access_token/internal"
	// PathFeishuBotInfo: GET with "Authorization: Bearer <token>" → the
	// bot's info; the Feishu business call.
	PathFeishuBotInfo = "/open-apis/bot/v3/info"
)

// Feishu codes produced by the emulator. The token endpoint's HTTP
// statuses follow what clients have recorded of Feishu (200 for 10003 and
// an unknown app_id, 400 for a wrong secret), and business calls with a
// bad token answer HTTP 400: a client must branch on "code", not on the
// status.
const (
	CodeFeishuInvalidParam  = 10003    // body not JSON, app_id or app_secret missing (HTTP 200)
	CodeFeishuAppSecret     = 10014    // "app secret invalid" (HTTP 400), "app id not exists" (HTTP 200)
	CodeFeishuInternal      = 2200     // the Busy fault (HTTP 500)
	CodeFeishuMissingToken  = 99991661 // no Bearer token (HTTP 400)
	CodeFeishuInvalidToken  = 99991663 // unknown, expired or revoked tenant_access_token (HTTP 400)
	maxFeishuTokenBodySize  = 64 << 10
	feishuTokenRandomLength = 20 // bytes, hex-encoded after "t-"
)

const feishuJSONType = "application/json; charset=utf-8"

// Errors returned by CheckFeishu; compare with errors.Is. Feishu reports
// an expired tenant_access_token with the same code as an unknown one.
var (
	// ErrFeishuMissingToken: no token presented (99991661).
	ErrFeishuMissingToken = &Error{CodeFeishuMissingToken, "Missing access token for authorization. Please make a request with token attached."}
	// ErrFeishuInvalidToken: unknown, expired or revoked token (99991663).
	ErrFeishuInvalidToken = &Error{CodeFeishuInvalidToken, "Invalid access token for authorization. Please make a request with token attached."}
)

type feishuApp struct {
	secret  string
	token   *token // the latest tenant_access_token
	calls   int    // calls naming the app_id, whatever their outcome
	fetches int    // successful answers (the same token or a new one)
	issued  int
}

// AddFeishuApp registers a Feishu self-built app; for an existing app it
// only sets the secret (tokens already issued stay valid).
func (s *Sim) AddFeishuApp(appid, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.feishu[appid]; a != nil {
		a.secret = secret
		return
	}
	s.feishu[appid] = &feishuApp{secret: secret}
}

func (s *Sim) feishuCount(appid string, f func(*feishuApp) int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.feishu[appid]; a != nil {
		return f(a)
	}
	return 0
}

// FeishuTokenCalls is the number of token calls that named the app
// (no fault answered), whatever their outcome.
func (s *Sim) FeishuTokenCalls(appid string) int {
	return s.feishuCount(appid, func(a *feishuApp) int { return a.calls })
}

// FeishuFetches is the number of successful token answers (the same
// token or a new one).
func (s *Sim) FeishuFetches(appid string) int {
	return s.feishuCount(appid, func(a *feishuApp) int { return a.fetches })
}

// FeishuTokensIssued is the number of distinct tokens issued for the app.
func (s *Sim) FeishuTokensIssued(appid string) int {
	return s.feishuCount(appid, func(a *feishuApp) int { return a.issued })
}

// LastFeishuToken is the latest tenant_access_token issued ("" if none).
func (s *Sim) LastFeishuToken(appid string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.feishu[appid]; a != nil && a.token != nil {
		return a.token.value
	}
	return ""
}

// CheckFeishu returns nil if tok is a currently valid tenant_access_token,
// ErrFeishuMissingToken for "" and ErrFeishuInvalidToken otherwise
// (unknown, of another upstream, expired or revoked).
func (s *Sim) CheckFeishu(tok string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, st := s.lookup(tok, kindFeishu, s.opts.Now())
	if e := feishuTokenErr(st); e != nil {
		return e
	}
	return nil // not a typed nil
}

func feishuTokenErr(st tokenState) *Error {
	switch st {
	case tokValid:
		return nil
	case tokMissing:
		return ErrFeishuMissingToken
	}
	return ErrFeishuInvalidToken
}

// FeishuBusinessCalls counts bot/v3/info answers: accepted tokens and
// rejected ones.
func (s *Sim) FeishuBusinessCalls() (ok, rejected int) { return s.bizCalls(kindFeishu) }

func feishuAnswer(status, code int, msg string) answer {
	b, _ := json.Marshal(struct {
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	}{code, msg})
	return answer{status: status, ctype: feishuJSONType, body: b, errcode: code}
}

func feishuTokenAnswer(tok string, expire int) answer {
	b, _ := json.Marshal(struct {
		Code              int    `json:"code"`
		Msg               string `json:"msg"`
		TenantAccessToken string `json:"tenant_access_token"`
		Expire            int    `json:"expire"`
	}{0, "ok", tok, expire})
	return answer{status: http.StatusOK, ctype: feishuJSONType, body: b, token: tok}
}

// newFeishuTokenValue returns "t-" and 40 hex digits, not issued yet.
// Caller holds s.mu.
func (s *Sim) newFeishuTokenValue() string {
	buf := make([]byte, feishuTokenRandomLength)
	for {
		_, _ = rand.Read(buf) // never fails (crypto/rand, Go >= 1.24)
		if v := "t-" + hex.EncodeToString(buf); s.tokens[v] == nil {
			return v
		}
	}
}

type feishuTokenRequest struct {
	AppID     string `json:"app_id"`
	AppSecret string `json:"app_secret"`
}

// serveFeishuToken answers POST tenant_access_token/internal with the
// 30-minute rule: while at least Options.FeishuRenewWindow of the current
// token's validity remains, that token with expire = the remaining
// seconds; under it (or once expired or revoked) a new token, the old one
// staying valid until its own end.
func (s *Sim) serveFeishuToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	var req feishuTokenRequest
	body, err := io.ReadAll(io.LimitReader(r.Body, maxFeishuTokenBodySize))
	if err == nil {
		err = json.Unmarshal(body, &req)
	}
	if err != nil {
		req = feishuTokenRequest{}
	}
	s.tokenCall(w, r, PathFeishuToken, kindFeishu, req.AppID, func(now time.Time) answer {
		if err != nil || req.AppID == "" || req.AppSecret == "" {
			if a := s.feishu[req.AppID]; a != nil {
				a.calls++
			}
			return feishuAnswer(http.StatusOK, CodeFeishuInvalidParam, "invalid param")
		}
		a := s.feishu[req.AppID]
		if a == nil {
			return feishuAnswer(http.StatusOK, CodeFeishuAppSecret, "app id not exists")
		}
		a.calls++
		if req.AppSecret != a.secret {
			return feishuAnswer(http.StatusBadRequest, CodeFeishuAppSecret, "app secret invalid")
		}
		a.fetches++
		if t := a.token; t != nil && !t.revoked && t.expiresAt.Sub(now) >= s.opts.FeishuRenewWindow && now.Before(t.expiresAt) {
			return feishuTokenAnswer(t.value, secondsAtLeast1(t.expiresAt.Sub(now)))
		}
		t := &token{value: s.newFeishuTokenValue(), kind: kindFeishu, app: req.AppID, issuedAt: now,
			expiresAt: now.Add(s.opts.ExpiresIn)}
		s.addToken(t, now)
		a.token = t
		a.issued++
		return feishuTokenAnswer(t.value, secondsAtLeast1(s.opts.ExpiresIn))
	})
}

// bearer returns the token of an "Authorization: Bearer <token>" header
// ("" if there is none).
func bearer(r *http.Request) string {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}

// serveFeishuBotInfo answers GET /open-apis/bot/v3/info, the business
// call: HTTP 400 with 99991661 without a token, 99991663 for an invalid
// or expired one, as Feishu answers.
func (s *Sim) serveFeishuBotInfo(w http.ResponseWriter, r *http.Request) {
	if !getOnly(w, r) {
		return
	}
	start := time.Now()
	tok := bearer(r)
	s.mu.Lock()
	t, st := s.lookup(tok, kindFeishu, s.opts.Now())
	s.countBiz(kindFeishu, st == tokValid)
	s.mu.Unlock()
	var ans answer
	caller := ""
	if e := feishuTokenErr(st); e != nil {
		ans = feishuAnswer(http.StatusBadRequest, e.Code, e.Msg)
	} else {
		caller = t.app
		b, _ := json.Marshal(map[string]any{"code": 0, "msg": "ok",
			"bot": map[string]any{"activate_status": 2, "app_name": t.app, "open_id": "ou_" + t.app}})
		ans = answer{status: http.StatusOK, ctype: feishuJSONType, body: b}
	}
	ans.write(w)
	s.report(Call{Path: PathFeishuBotInfo, AppID: caller, Status: ans.status, Errcode: ans.errcode,
		Token: contract.Fingerprint(tok), Duration: time.Since(start)})
}
