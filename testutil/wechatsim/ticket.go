package wechatsim

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// PathGetTicket is WeChat's ticket endpoint:
// GET /cgi-bin/ticket/getticket?access_token=…&type=jsapi|wx_card.
const PathGetTicket = "/cgi-bin/ticket/getticket"

// Errcodes of the ticket endpoint and of CheckSignature.
const (
	CodeInvalidArgs      = 40097 // type missing or not jsapi / wx_card
	CodeInvalidSignature = 63002 // the JS-SDK's "invalid signature"
)

// ticketLength is the length of issued tickets (WeChat's are 86).
const ticketLength = 86

// ErrInvalidSignature is returned by CheckSignature for a signature that no
// currently valid jsapi ticket of the app produces.
var ErrInvalidSignature = &Error{CodeInvalidSignature, "invalid signature"}

// TicketCalls is the number of getticket calls that presented a valid
// access token of appid, whatever their outcome.
func (s *Sim) TicketCalls(appid string) int {
	return s.count(appid, false, func(a *app) int { return a.ticketCalls })
}

// TicketsIssued is the number of tickets of type typ issued for appid.
func (s *Sim) TicketsIssued(appid, typ string) int {
	return s.count(appid, false, func(a *app) int { return a.ticketsIssued[typ] })
}

// TicketQuotaUsed is the number of getticket calls counted against
// today's ticket limit of appid.
func (s *Sim) TicketQuotaUsed(appid string) int {
	return s.count(appid, true, func(a *app) int { return a.ticketQuotaUsed })
}

// LastTicket is the latest ticket of type typ issued for appid ("" if
// none), for tests.
func (s *Sim) LastTicket(appid, typ string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.apps[appid]; a != nil {
		if t := a.tickets[typ]; t != nil {
			return t.value
		}
	}
	return ""
}

// CheckTicket returns nil if ticket is a currently valid ticket,
// ErrExpiredToken if it is past its expiry and ErrInvalidToken if it is
// unknown or superseded past its grace.
func (s *Sim) CheckTicket(ticket string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := s.checkTicket(ticket, s.opts.Now())
	return err
}

// CheckSignature is the business check of a JS-SDK page (what wx.config
// does): nil if signature is contract.JSSDKSignature of a jsapi ticket of
// appid that is valid now, with nonceStr, timestamp and url; otherwise
// ErrInvalidSignature. Counted in SignatureChecks.
func (s *Sim) CheckSignature(appid, url, nonceStr string, timestamp int64, signature string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Now()
	for _, t := range s.tickets {
		if t.kind != kindWeChat || t.app != appid || t.ticketType != contract.TicketJSAPI {
			continue
		}
		if _, err := s.checkTicket(t.value, now); err != nil {
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

// SignatureChecks counts CheckSignature answers: accepted and rejected.
func (s *Sim) SignatureChecks() (ok, rejected int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sigOK, s.sigRejected
}

func (s *Sim) checkTicket(v string, now time.Time) (*token, error) {
	t := s.tickets[v]
	if t == nil || t.kind != kindWeChat {
		return nil, ErrInvalidToken
	}
	if !now.Before(t.expiresAt) {
		return t, ErrExpiredToken
	}
	if !t.validUntil.IsZero() && !now.Before(t.validUntil) {
		return t, ErrInvalidToken
	}
	return t, nil
}

// ticketHolder returns the app whose tickets appid's tokens fetch: the
// app itself, or for an authorizer's token (Open Platform) an entry of
// its own, made on first use. Caller holds s.mu.
func (s *Sim) ticketHolder(appid string) *app {
	a := s.apps[appid]
	if a == nil {
		a = s.newApp("")
		s.apps[appid] = a
	}
	return a
}

// IssuedTicket is a ticket issued by BulkAuthorizerTickets.
type IssuedTicket struct {
	Ticket    string
	ExpiresAt time.Time
}

// BulkAuthorizerTickets issues each of authorizerAppIDs, authorized
// accounts of component, a ticket of typ (contract.TicketJSAPI or
// TicketWXCard) as getticket called with the authorizer's token would,
// without a call: counted in TicketsIssued, not in TicketCalls or the
// ticket quota. It returns them in the same order, or nil for an unknown
// component, a type getticket refuses, or an appid that is not an
// authorized account of the component (then nothing is issued). The cost
// is O(len(authorizerAppIDs)).
func (s *Sim) BulkAuthorizerTickets(component, typ string, authorizerAppIDs []string) []IssuedTicket {
	if typ != contract.TicketJSAPI && typ != contract.TicketWXCard {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range authorizerAppIDs {
		if a := s.authorizerOf(component, id); a == nil || !a.authorized {
			return nil
		}
	}
	now := s.opts.Now()
	out := make([]IssuedTicket, len(authorizerAppIDs))
	for i, id := range authorizerAppIDs {
		t := s.issueTicket(id, s.ticketHolder(id), typ, now)
		out[i] = IssuedTicket{Ticket: t.value, ExpiresAt: t.expiresAt}
	}
	return out
}

// issueTicket makes a new ticket of typ for a, superseding the current one
// (which stays valid for Grace, never past its expiry). Caller holds s.mu.
func (s *Sim) issueTicket(appid string, a *app, typ string, now time.Time) *token {
	if prev := a.tickets[typ]; prev != nil {
		until := now.Add(s.opts.Grace)
		if until.After(prev.expiresAt) {
			until = prev.expiresAt
		}
		if prev.validUntil.IsZero() || until.Before(prev.validUntil) {
			prev.validUntil = until
		}
	}
	t := &token{value: s.newTicketValue(), app: appid, issuedAt: now, expiresAt: now.Add(s.opts.ExpiresIn), ticketType: typ}
	s.tickets[t.value] = t
	s.ticketOrder = append(s.ticketOrder, t)
	a.tickets[typ] = t
	a.ticketsIssued[typ]++
	s.prune(now)
	return t
}

// newTicketValue returns a random ticket value not issued yet. Caller
// holds s.mu.
func (s *Sim) newTicketValue() string {
	buf := make([]byte, ticketLength)
	for {
		_, _ = rand.Read(buf) // never fails (crypto/rand, Go >= 1.24)
		for i, b := range buf {
			buf[i] = tokenAlphabet[b&63]
		}
		if v := string(buf); s.tickets[v] == nil {
			return v
		}
	}
}

func ticketAnswer(ticket string, expiresIn int) answer {
	b, _ := json.Marshal(struct {
		Errcode   int    `json:"errcode"`
		Errmsg    string `json:"errmsg"`
		Ticket    string `json:"ticket"`
		ExpiresIn int    `json:"expires_in"`
	}{0, "ok", ticket, expiresIn})
	return answer{status: http.StatusOK, ctype: jsonType, body: b, token: ticket}
}

// serveGetTicket answers GET /cgi-bin/ticket/getticket. The access token
// is checked first (41001 missing, 40001 invalid or superseded, 42001
// expired), then the type (40097), then the app's ticket limit (45009).
func (s *Sim) serveGetTicket(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	start := time.Now()
	q := r.URL.Query()
	tok, typ := q.Get("access_token"), q.Get("type")
	s.mu.Lock()
	now := s.opts.Now()
	var ans answer
	appid := ""
	t, err := s.check(tok, now)
	switch {
	case err != nil:
		var e *Error
		errors.As(err, &e)
		ans = errAnswer(e.Code, e.Msg)
	default:
		appid = t.app
		a := s.ticketHolder(appid)
		a.ticketCalls++
		s.rollDay(a, now)
		switch {
		case typ != contract.TicketJSAPI && typ != contract.TicketWXCard:
			ans = errAnswer(CodeInvalidArgs, "invalid args")
		case s.opts.TicketDailyQuota > 0 && a.ticketQuotaUsed >= s.opts.TicketDailyQuota:
			ans = errAnswer(CodeDailyQuota, "reach max api daily quota limit")
		default:
			a.ticketQuotaUsed++
			nt := s.issueTicket(appid, a, typ, now)
			ans = ticketAnswer(nt.value, secondsAtLeast1(s.opts.ExpiresIn))
		}
	}
	s.mu.Unlock()
	ans.write(w)
	s.report(Call{Path: PathGetTicket, AppID: appid, Status: ans.status, Errcode: ans.errcode,
		Token: contract.Fingerprint(ans.token), Duration: time.Since(start)})
}
