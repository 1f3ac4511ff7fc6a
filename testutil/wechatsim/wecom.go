package wechatsim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// WeCom (企业微信, qyapi.weixin.qq.com) endpoints served by the emulator.
const (
	// PathWeComToken: GET ?corpid=…&corpsecret=… → the app's access_token.
	PathWeComToken = "/cgi-bin/gettoken"
	// PathWeComJSAPITicket: GET ?access_token=… → the corp's jsapi_ticket.
	PathWeComJSAPITicket = "/cgi-bin/get_jsapi_ticket"
	// PathWeComAgentTicket: GET ?access_token=…&type=agent_config → the
	// app's wx.agentConfig ticket.
	PathWeComAgentTicket = "/cgi-bin/ticket/get"
	// PathWeComAgentGet: GET ?access_token=…&agentid=… → the app's
	// details; the WeCom business call.
	PathWeComAgentGet = "/cgi-bin/agent/get"
)

// WeCom errcodes produced by the emulator (WeCom's global error codes);
// 41001 and 42001 are CodeTokenMissing and CodeTokenExpired.
const (
	CodeWeComInvalidSecret  = 40001 // "invalid credential": no app of the corp has this corpsecret
	CodeWeComInvalidType    = 40005 // ticket/get without type=agent_config
	CodeWeComInvalidCorpID  = 40013
	CodeWeComInvalidToken   = 40014 // unknown, pruned or revoked access_token
	CodeWeComInvalidAgentID = 40056 // agent/get with a missing, malformed or other app's agentid
	CodeWeComCorpIDMissing  = 41002
	CodeWeComSecretMissing  = 41004
	CodeWeComFreqLimit      = 45009 // the jsapi_ticket hourly limits
	CodeWeComIPNotTrusted   = 60020 // for fault injection: "not allow to access from your ip"
)

// Errors returned by CheckWeCom; compare with errors.Is.
var (
	// ErrWeComInvalidToken: unknown, pruned or revoked WeCom token (40014).
	ErrWeComInvalidToken = &Error{CodeWeComInvalidToken, "invalid access_token"}
	// ErrWeComExpiredToken: the WeCom token is past its expires_in (42001).
	ErrWeComExpiredToken = &Error{CodeTokenExpired, "access_token expired"}
)

// wecomCorp is one WeCom corp: its apps and the corp's jsapi ticket.
type wecomCorp struct {
	apps        map[int]*wecomApp
	jsapi       *token // current corp jsapi_ticket
	jsapiIssued int
	hour        int64 // the clock hour hourUsed counts
	hourUsed    int   // ticket fetches of every app this hour
}

// wecomApp is one app (agent) of a corp: tokens are per app.
type wecomApp struct {
	corp        *wecomCorp
	key         string // WeComKey(corpid, agentid)
	corpid      string
	agentid     int
	secret      string
	token       *token
	fetches     int // successful gettoken answers
	issued      int
	agentTicket *token // current agent_config ticket
	agentIssued int
	ticketCalls map[string]int // by ticket type, with a valid token
	hour        int64
	hourUsed    int // ticket fetches with this app's tokens this hour
}

// WeComKey names a WeCom app in Call.AppID, MaxConcurrentFetches and
// InFlight: "corpid/agentid". A gettoken call whose secret matches no app
// is named by its corpid alone.
func WeComKey(corpid string, agentid int) string { return fmt.Sprintf("%s/%d", corpid, agentid) }

// AddWeComApp registers app agentid of WeCom corp corpid with its secret;
// for an existing app it only sets the secret (tokens already issued stay
// valid). Tokens are per app — corpid plus that app's secret — never per
// corp. Secrets differ between the apps of a corp, as in WeCom: a secret
// registered for one app is taken from any other app of the corp.
func (s *Sim) AddWeComApp(corpid string, agentid int, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.wecom[corpid]
	if c == nil {
		c = &wecomCorp{apps: map[int]*wecomApp{}}
		s.wecom[corpid] = c
	}
	for id, o := range c.apps {
		if id != agentid && o.secret == secret {
			o.secret = ""
		}
	}
	if a := c.apps[agentid]; a != nil {
		a.secret = secret
		return
	}
	c.apps[agentid] = &wecomApp{corp: c, key: WeComKey(corpid, agentid), corpid: corpid, agentid: agentid,
		secret: secret, ticketCalls: map[string]int{}}
}

// wecomApp finds an app; nil if unknown. Caller holds s.mu.
func (s *Sim) wecomApp(corpid string, agentid int) *wecomApp {
	if c := s.wecom[corpid]; c != nil {
		return c.apps[agentid]
	}
	return nil
}

// wecomBySecret finds the app of corpid whose secret is secret. Caller
// holds s.mu.
func (s *Sim) wecomBySecret(corpid, secret string) *wecomApp {
	c := s.wecom[corpid]
	if c == nil || secret == "" {
		return nil
	}
	for _, a := range c.apps {
		if a.secret == secret {
			return a
		}
	}
	return nil
}

// wecomOwner finds the app a WeCom token was issued to. Caller holds s.mu.
func (s *Sim) wecomOwner(t *token) *wecomApp {
	for _, c := range s.wecom {
		for _, a := range c.apps {
			if a.key == t.app {
				return a
			}
		}
	}
	return nil
}

// wecomCount reads one counter of an app under the lock (0 if unknown).
func (s *Sim) wecomCount(corpid string, agentid int, f func(*wecomApp) int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.wecomApp(corpid, agentid); a != nil {
		return f(a)
	}
	return 0
}

// WeComTokenCalls is the number of successful gettoken answers for the app
// (the same token or a new one).
func (s *Sim) WeComTokenCalls(corpid string, agentid int) int {
	return s.wecomCount(corpid, agentid, func(a *wecomApp) int { return a.fetches })
}

// WeComTokensIssued is the number of distinct tokens issued for the app.
func (s *Sim) WeComTokensIssued(corpid string, agentid int) int {
	return s.wecomCount(corpid, agentid, func(a *wecomApp) int { return a.issued })
}

// WeComTicketCalls is the number of ticket calls of type typ (jsapi or
// agent_config) that presented a valid token of the app, whatever their
// outcome (45009 included).
func (s *Sim) WeComTicketCalls(corpid string, agentid int, typ string) int {
	return s.wecomCount(corpid, agentid, func(a *wecomApp) int { return a.ticketCalls[typ] })
}

// WeComTicketsIssued is the number of distinct tickets of type typ issued:
// for jsapi the corp's (agentid is ignored), for agent_config the app's.
func (s *Sim) WeComTicketsIssued(corpid string, agentid int, typ string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.wecom[corpid]
	if c == nil {
		return 0
	}
	switch typ {
	case contract.TicketJSAPI:
		return c.jsapiIssued
	case contract.TicketAgentConfig:
		if a := c.apps[agentid]; a != nil {
			return a.agentIssued
		}
	}
	return 0
}

// WeComTicketHourUsed is the number of ticket fetches counted against this
// clock hour's limits: the corp's (every app) and the app's.
func (s *Sim) WeComTicketHourUsed(corpid string, agentid int) (corp, app int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.wecomApp(corpid, agentid)
	if a == nil {
		return 0, 0
	}
	s.rollWeComHour(a, s.opts.Now())
	return a.corp.hourUsed, a.hourUsed
}

// LastWeComToken is the latest token issued for the app ("" if none).
func (s *Sim) LastWeComToken(corpid string, agentid int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.wecomApp(corpid, agentid); a != nil && a.token != nil {
		return a.token.value
	}
	return ""
}

// LastWeComTicket is the latest ticket of type typ ("" if none): for
// jsapi the corp's (agentid is ignored), for agent_config the app's.
func (s *Sim) LastWeComTicket(corpid string, agentid int, typ string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var t *token
	if c := s.wecom[corpid]; c != nil {
		switch typ {
		case contract.TicketJSAPI:
			t = c.jsapi
		case contract.TicketAgentConfig:
			if a := c.apps[agentid]; a != nil {
				t = a.agentTicket
			}
		}
	}
	if t == nil {
		return ""
	}
	return t.value
}

// CheckWeCom returns nil if tok is a currently valid WeCom token,
// ErrMissingToken for "", ErrWeComExpiredToken past its expiry and
// ErrWeComInvalidToken if it is unknown (or of another upstream) or
// revoked.
func (s *Sim) CheckWeCom(tok string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, st := s.lookup(tok, kindWeCom, s.opts.Now())
	return wecomTokenErr(st)
}

func wecomTokenErr(st tokenState) error {
	switch st {
	case tokMissing:
		return ErrMissingToken
	case tokExpired:
		return ErrWeComExpiredToken
	case tokUnknown, tokInvalid:
		return ErrWeComInvalidToken
	}
	return nil
}

// CheckWeComSignature is the business check of a WeCom JS-SDK page: for
// typ jsapi (wx.config) the corp's ticket, for agent_config
// (wx.agentConfig) the app's; the signature is contract.JSSDKSignature of
// that ticket, valid now, with nonceStr, timestamp and url. It returns nil
// or ErrInvalidSignature, counted in SignatureChecks.
func (s *Sim) CheckWeComSignature(corpid string, agentid int, typ, url, nonceStr string, timestamp int64, signature string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	owner := corpid
	if typ == contract.TicketAgentConfig {
		owner = WeComKey(corpid, agentid)
	}
	now := s.opts.Now()
	for _, t := range s.tickets {
		if t.kind != kindWeCom || t.ticketType != typ || t.app != owner || !now.Before(t.expiresAt) {
			continue
		}
		if contract.JSSDKSignature(t.value, nonceStr, timestamp, url) == signature {
			s.sigOK++
			return nil
		}
	}
	s.sigRejected++
	return ErrInvalidSignature
}

// WeComBusinessCalls counts agent/get answers: accepted tokens (whatever
// the agentid) and rejected ones.
func (s *Sim) WeComBusinessCalls() (ok, rejected int) { return s.bizCalls(kindWeCom) }

// hourOf numbers clock hours (the WeCom limits' windows).
func hourOf(t time.Time) int64 {
	sec := t.Unix()
	h := sec / 3600
	if sec%3600 < 0 {
		h--
	}
	return h
}

func (s *Sim) rollWeComHour(a *wecomApp, now time.Time) {
	h := hourOf(now)
	if a.corp.hour != h {
		a.corp.hour, a.corp.hourUsed = h, 0
	}
	if a.hour != h {
		a.hour, a.hourUsed = h, 0
	}
}

// addToken records an issued access token. Caller holds s.mu.
func (s *Sim) addToken(t *token, now time.Time) {
	s.tokens[t.value] = t
	s.order = append(s.order, t)
	s.prune(now)
}

func wecomTokenAnswer(tok string, expiresIn int) answer {
	b, _ := json.Marshal(struct {
		Errcode     int    `json:"errcode"`
		Errmsg      string `json:"errmsg"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}{0, "ok", tok, expiresIn})
	return answer{status: http.StatusOK, ctype: jsonType, body: b, token: tok}
}

func wecomTokenAnswerErr(st tokenState) answer {
	var e *Error
	switch st {
	case tokMissing:
		e = ErrMissingToken
	case tokExpired:
		e = ErrWeComExpiredToken
	default:
		e = ErrWeComInvalidToken
	}
	return errAnswer(e.Code, e.Msg)
}

func getOnly(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet {
		return true
	}
	w.Header().Set("Allow", http.MethodGet)
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	return false
}

// serveWeComToken answers GET /cgi-bin/gettoken: inside the validity of
// the app's token the same token with the remaining expires_in, after
// expiry (or revocation) a new one.
func (s *Sim) serveWeComToken(w http.ResponseWriter, r *http.Request) {
	if !getOnly(w, r) {
		return
	}
	q := r.URL.Query()
	corpid, secret := q.Get("corpid"), q.Get("corpsecret")
	caller := corpid
	s.mu.Lock()
	if a := s.wecomBySecret(corpid, secret); a != nil {
		caller = a.key
	}
	s.mu.Unlock()
	s.tokenCall(w, r, PathWeComToken, kindWeCom, caller, func(now time.Time) answer {
		switch {
		case corpid == "":
			return errAnswer(CodeWeComCorpIDMissing, "corpid missing")
		case s.wecom[corpid] == nil:
			return errAnswer(CodeWeComInvalidCorpID, "invalid corpid")
		case secret == "":
			return errAnswer(CodeWeComSecretMissing, "corpsecret missing")
		}
		a := s.wecomBySecret(corpid, secret)
		if a == nil {
			return errAnswer(CodeWeComInvalidSecret, "invalid credential")
		}
		a.fetches++
		if t := a.token; t != nil && !t.revoked && now.Before(t.expiresAt) {
			return wecomTokenAnswer(t.value, secondsAtLeast1(t.expiresAt.Sub(now)))
		}
		t := &token{value: s.newTokenValue(), kind: kindWeCom, app: a.key, issuedAt: now, expiresAt: now.Add(s.opts.ExpiresIn)}
		s.addToken(t, now)
		a.token = t
		a.issued++
		return wecomTokenAnswer(t.value, secondsAtLeast1(s.opts.ExpiresIn))
	})
}

func (s *Sim) serveWeComJSAPITicket(w http.ResponseWriter, r *http.Request) {
	if getOnly(w, r) {
		s.wecomTicket(w, r, PathWeComJSAPITicket, contract.TicketJSAPI)
	}
}

func (s *Sim) serveWeComAgentTicket(w http.ResponseWriter, r *http.Request) {
	if getOnly(w, r) {
		s.wecomTicket(w, r, PathWeComAgentTicket, r.URL.Query().Get("type"))
	}
}

// wecomTicket answers both ticket endpoints. The token is checked first
// (41001, 40014, 42001), then the type (40005), then the hourly limits of
// the corp and of the token's app (45009); a fetch inside the current
// ticket's validity returns that ticket with the remaining expires_in.
func (s *Sim) wecomTicket(w http.ResponseWriter, r *http.Request, path, typ string) {
	start := time.Now()
	tok := r.URL.Query().Get("access_token")
	s.mu.Lock()
	now := s.opts.Now()
	var ans answer
	caller := ""
	t, st := s.lookup(tok, kindWeCom, now)
	a := (*wecomApp)(nil)
	if st == tokValid {
		a = s.wecomOwner(t)
	}
	switch {
	case st != tokValid:
		ans = wecomTokenAnswerErr(st)
	case a == nil: // the app is gone: cannot happen, apps are never removed
		ans = wecomTokenAnswerErr(tokUnknown)
	case typ != contract.TicketJSAPI && typ != contract.TicketAgentConfig:
		caller = a.key
		ans = errAnswer(CodeWeComInvalidType, "invalid type")
	default:
		caller = a.key
		a.ticketCalls[typ]++
		s.rollWeComHour(a, now)
		corpLimit, appLimit := s.opts.WeComTicketCorpHourly, s.opts.WeComTicketAppHourly
		if (corpLimit > 0 && a.corp.hourUsed >= corpLimit) || (appLimit > 0 && a.hourUsed >= appLimit) {
			ans = errAnswer(CodeWeComFreqLimit, "api freq out of limit")
			break
		}
		a.corp.hourUsed++
		a.hourUsed++
		cur, owner, issued := &a.corp.jsapi, a.corpid, &a.corp.jsapiIssued
		if typ == contract.TicketAgentConfig {
			cur, owner, issued = &a.agentTicket, a.key, &a.agentIssued
		}
		if c := *cur; c != nil && now.Before(c.expiresAt) {
			ans = ticketAnswer(c.value, secondsAtLeast1(c.expiresAt.Sub(now)))
			break
		}
		nt := &token{value: s.newTicketValue(), kind: kindWeCom, app: owner, issuedAt: now,
			expiresAt: now.Add(s.opts.ExpiresIn), ticketType: typ}
		s.tickets[nt.value] = nt
		s.ticketOrder = append(s.ticketOrder, nt)
		s.prune(now)
		*cur = nt
		*issued++
		ans = ticketAnswer(nt.value, secondsAtLeast1(s.opts.ExpiresIn))
	}
	s.mu.Unlock()
	ans.write(w)
	s.report(Call{Path: path, AppID: caller, Status: ans.status, Errcode: ans.errcode,
		Token: contract.Fingerprint(ans.token), Duration: time.Since(start)})
}

// serveWeComAgentGet answers GET /cgi-bin/agent/get, the business call:
// the token must be valid (41001, 40014, 42001) and agentid its app's
// (40056).
func (s *Sim) serveWeComAgentGet(w http.ResponseWriter, r *http.Request) {
	if !getOnly(w, r) {
		return
	}
	start := time.Now()
	q := r.URL.Query()
	tok := q.Get("access_token")
	s.mu.Lock()
	t, st := s.lookup(tok, kindWeCom, s.opts.Now())
	s.countBiz(kindWeCom, st == tokValid)
	var ans answer
	caller := ""
	if st != tokValid {
		ans = wecomTokenAnswerErr(st)
	} else {
		a := s.wecomOwner(t)
		caller = t.app
		id, err := strconv.Atoi(q.Get("agentid"))
		if a == nil || err != nil || id != a.agentid {
			ans = errAnswer(CodeWeComInvalidAgentID, "invalid agentid")
		} else {
			b, _ := json.Marshal(struct {
				Errcode int    `json:"errcode"`
				Errmsg  string `json:"errmsg"`
				AgentID int    `json:"agentid"`
				Name    string `json:"name"`
				Close   int    `json:"close"`
			}{0, "ok", a.agentid, fmt.Sprintf("app %d", a.agentid), 0})
			ans = answer{status: http.StatusOK, ctype: jsonType, body: b}
		}
	}
	s.mu.Unlock()
	ans.write(w)
	s.report(Call{Path: PathWeComAgentGet, AppID: caller, Status: ans.status, Errcode: ans.errcode,
		Token: contract.Fingerprint(tok), Duration: time.Since(start)})
}
