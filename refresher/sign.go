package refresher

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// JS-SDK signing (v2): token.sign.<app> answers what a page passes to
// wx.config (or WeCom's wx.agentConfig), signed with the app's current
// ticket. Every replica serves it, in one queue group: signing makes no
// upstream call, it reads the ticket record this replica follows.

// SignServiceName is the NATS micro service name of the token.sign
// endpoint, which every replica registers (the token.refresh service,
// contract.ServiceName, is registered by the leader only).
const SignServiceName = "tokenkeeper-sign"

// signQueueGroup is the queue group of the token.sign endpoint: each
// request reaches one replica.
const signQueueGroup = "tokenkeeper-sign"

// signReadTimeout bounds the KV read of a ticket this replica does not
// hold a valid record of.
const signReadTimeout = 2 * time.Second

// SignObserver is implemented by an Observer that also counts token.sign
// requests (Metrics does); the refresher tells it when the Observer
// given to WithObserver implements it.
type SignObserver interface {
	// SignRequest: a token.sign request for app (a configured app, or
	// UnknownAppLabel) was answered with outcome ("ok" or the error
	// code), after the reply was sent.
	SignRequest(app, outcome string)
}

// startSign registers the token.sign micro service; Run calls it once
// the stored records are loaded, on every replica.
func (r *Refresher) startSign() error {
	svc, err := micro.AddService(r.nc, micro.Config{
		Name:        SignServiceName,
		Version:     Version,
		Description: "tokenkeeper JS-SDK signing",
		Metadata:    map[string]string{"replica": r.id, "bucket": r.cfg.Bucket},
		ErrorHandler: func(_ micro.Service, e *micro.NATSError) {
			r.log.Warn("token.sign service error (at the pending limits requests are dropped unanswered)",
				"subject", sanitize(e.Subject, maxLoggedSubject), "error", sanitize(e.Description, 512))
		},
	})
	if err != nil {
		return err
	}
	err = svc.AddEndpoint("sign", micro.HandlerFunc(r.handleSign),
		micro.WithEndpointSubject(contract.SignPrefix+">"),
		micro.WithEndpointPendingLimits(pendingMsgsLimit, pendingBytesLimit),
		// Every replica can answer (no upstream call): one of them does.
		micro.WithEndpointQueueGroup(signQueueGroup))
	if err != nil {
		_ = svc.Stop()
		return err
	}
	r.mu.Lock()
	r.signSvc = svc
	r.mu.Unlock()
	return nil
}

func (r *Refresher) stopSign() {
	r.mu.Lock()
	svc := r.signSvc
	r.signSvc = nil
	r.mu.Unlock()
	if svc != nil {
		_ = svc.Stop()
	}
}

// followTicket takes a ticket record seen by the follow watch (a key that
// is no configured app), so that every replica holds the current ticket
// of each configured ticket key.
func (r *Refresher) followTicket(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		return
	}
	t := r.ticketByKey(e.Key())
	if t == nil {
		return
	}
	t.adopt(r.parseTicket(e.Key(), e.Revision(), e.Value()), e.Revision())
}

// ParseSignRequest parses a token.sign request body: a JSON object with
// "url" (an absolute http(s) URL of at most contract.MaxSignURL bytes)
// and optionally "ticket" (contract.TicketJSAPI, the default, or
// contract.TicketAgentConfig). Unknown fields are ignored. The error is a
// *RequestError with code 400. It never panics.
func ParseSignRequest(body []byte) (contract.SignRequest, error) {
	var req contract.SignRequest
	if len(body) > contract.MaxSignRequestBody {
		return req, badRequest("request body of %d bytes is over the limit of %d", len(body), contract.MaxSignRequestBody)
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 || body[0] != '{' {
		return req, badRequest(`request body must be a JSON object {"url": "https://…"}`)
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return contract.SignRequest{}, badRequest(`request body is not {"url": "…", "ticket": "…"}: %v`, err)
	}
	if err := contract.CheckSignURL(req.URL); err != nil {
		return contract.SignRequest{}, badRequest("%v", err)
	}
	switch req.Ticket {
	case "":
		req.Ticket = contract.TicketJSAPI
	case contract.TicketJSAPI, contract.TicketAgentConfig:
	default:
		return contract.SignRequest{}, badRequest("ticket %q cannot sign a JS-SDK config: want %q (default) or %q",
			truncate(req.Ticket, 40), contract.TicketJSAPI, contract.TicketAgentConfig)
	}
	return req, nil
}

// handleSign is the token.sign endpoint's handler. It runs on the
// subscription's goroutine and never blocks: a ticket held here answers
// at once; otherwise the work runs on a goroutine of its own (bounded by
// the requests in progress, as for token.refresh).
func (r *Refresher) handleSign(req micro.Request) {
	r.sign(req, r.nc.PublishMsg)
}

// sign is handleSign with the replies sent through send.
func (r *Refresher) sign(req micro.Request, send func(*nats.Msg) error) {
	q := &refreshReq{Request: req, send: send}
	label := UnknownAppLabel
	defer r.signRecovered(q, &label)
	r.reqs.at(stageReceive, q)

	// The key is bytes from the wire: only ever looked up; observers see
	// a configured app name or UnknownAppLabel.
	key := strings.TrimPrefix(q.Subject(), contract.SignPrefix)
	name, rest, err := contract.ParseKey(key)
	if err != nil {
		r.signError(q, label, badRequest("token.sign.<app>: %v", err))
		return
	}
	r.mu.Lock()
	a := r.apps[name]
	r.mu.Unlock()
	if a != nil {
		label = a.name
	}
	sr, err := ParseSignRequest(q.Data())
	if err != nil {
		r.signError(q, label, err)
		return
	}
	if a == nil {
		r.signError(q, label, unknownApp(name))
		return
	}
	t, err := r.signedTicket(a, key, rest, sr)
	if err != nil {
		r.signError(q, label, err)
		return
	}
	if rec, _, ok := t.usable(r.now()); ok {
		r.signOK(q, label, t, sr, rec)
		return
	}
	if !r.reqs.acquire() {
		r.signError(q, label, &RequestError{Code: contract.CodeUnavailable,
			Message: fmt.Sprintf("refresher overloaded: %d requests are in progress already; retry later", r.reqs.max())})
		return
	}
	go func() {
		defer r.reqs.release()
		defer r.signRecovered(q, &label)
		r.reqs.at(stageSlow, q)
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		defer cancel()
		rec, err := r.signTicket(ctx, t)
		if err != nil {
			r.signError(q, label, err)
			return
		}
		r.signOK(q, label, t, sr, rec)
	}()
}

// signTicket returns the current valid record of t when the one held
// here is missing or expired: it re-reads the key (this replica's watch
// may lag), and on the leader asks for it as an empty token.refresh
// request would (one fetch if none is valid, none while upstream calls
// are paused). A follower without one answers 503, and the requester's
// retry may reach the leader.
func (r *Refresher) signTicket(ctx context.Context, t *ticket) (*contract.TicketRecord, error) {
	rctx, cancel := context.WithTimeout(ctx, signReadTimeout)
	rec, rev, err := r.readTicket(rctx, t.key)
	cancel()
	if err == nil {
		t.adopt(rec, rev)
	}
	if rec, _, ok := t.usable(r.now()); ok {
		return rec, nil
	}
	if r.Leader() {
		rep, err := r.refreshTicketAs(ctx, t, nil, contract.SourcePassive)
		if err != nil {
			return nil, err
		}
		if rep.Ticket != "" && rep.ExpiresAt.After(r.now()) {
			return &rep.TicketRecord, nil
		}
	}
	return nil, &RequestError{Code: contract.CodeUnavailable,
		Message: fmt.Sprintf("no valid %s ticket is stored yet (the refresher fetches it); retry later", t.key)}
}

// signedTicket returns the ticket a token.sign request for key signs
// with: the app's (token.sign.<app>) or an authorizer's of a component
// (token.sign.<component>.<authorizer_appid>); a 404 naming what is
// missing otherwise.
func (r *Refresher) signedTicket(a *app, key, rest string, sr contract.SignRequest) (*ticket, error) {
	cfg := a.config()
	if rest == "" {
		if cfg.Kind == KindWeChatComponent {
			return nil, &RequestError{Code: contract.CodeNotFound, Message: fmt.Sprintf(
				"component %s signs for its authorizers: use token.sign.%s.<authorizer_appid>", a.name, a.name)}
		}
		if t := r.ticketByKey(contract.Key(a.name, sr.Ticket)); t != nil {
			return t, nil
		}
		return nil, &RequestError{Code: contract.CodeNotFound, Message: fmt.Sprintf(
			"app %s keeps no %s ticket (add it to the app's tickets in the refresher's config)", a.name, sr.Ticket)}
	}
	if cfg.Kind != KindWeChatComponent || strings.Contains(rest, ".") {
		return nil, &RequestError{Code: contract.CodeNotFound, Message: fmt.Sprintf(
			"nothing signs for %q: token.sign takes a configured app, or <component>.<authorizer_appid> of a wechat-component",
			truncate(key, 3*contract.MaxAppName))}
	}
	if !slices.Contains(cfg.AuthorizerTickets, sr.Ticket) {
		return nil, &RequestError{Code: contract.CodeNotFound, Message: fmt.Sprintf(
			"component %s keeps no %s ticket for its authorizers (add it to the component's authorizer_tickets in the refresher's config)", a.name, sr.Ticket)}
	}
	if t := r.ticketByKey(contract.Key(key, sr.Ticket)); t != nil {
		return t, nil
	}
	return nil, &RequestError{Code: contract.CodeNotFound, Message: fmt.Sprintf(
		"component %s has no authorizer %s (not authorized, or unauthorized)", a.name, truncate(rest, contract.MaxAppName))}
}

// signOK answers q with the signature of sr's URL over rec, the record
// of t: appId is the app's appid (the corpid for WeCom), an authorizer's
// appid for an authorizer's ticket.
func (r *Refresher) signOK(q *refreshReq, label string, t *ticket, sr contract.SignRequest, rec *contract.TicketRecord) {
	cfg := t.parent.config()
	nonce, err := newNonce()
	if err != nil {
		r.signError(q, label, &RequestError{Code: contract.CodeInternal, Message: "cannot draw a nonce; retry later"})
		return
	}
	ts := r.now().Unix()
	rep := contract.SignReply{AppID: cfg.AppID, Timestamp: ts, NonceStr: nonce,
		Signature: contract.JSSDKSignature(rec.Ticket, nonce, ts, sr.URL)}
	if cfg.CorpID != "" {
		rep.AppID = cfg.CorpID
	}
	if t.au != nil {
		rep.AppID = t.au.appid
	}
	if sr.Ticket == contract.TicketAgentConfig {
		rep.AgentID = int64(cfg.AgentID)
	}
	_ = q.RespondJSON(rep)
	r.signObserved(label, "ok")
}

// newNonce returns 32 hex characters from crypto/rand (WeChat takes a
// nonceStr of at most 32 characters).
func newNonce() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// signError sends err as a micro error reply, as token.refresh does.
func (r *Refresher) signError(q *refreshReq, label string, err error) {
	r.signObserved(label, sendError(q, err))
}

func (r *Refresher) signObserved(label, outcome string) {
	if so, ok := r.obs.(SignObserver); ok {
		so.SignRequest(label, outcome)
	}
}

// signRecovered is deferred by the sign path: a panic is logged and
// answered with an internal error if nothing was answered yet.
func (r *Refresher) signRecovered(q *refreshReq, label *string) {
	v := recover()
	if v == nil {
		return
	}
	r.log.Error("token.sign handler panicked; the request is answered with an internal error and the refresher goes on",
		"subject", sanitize(q.Subject(), maxLoggedSubject), "panic", sanitize(fmt.Sprint(v), 512),
		"stack", string(debug.Stack()))
	if q.answered.Load() {
		return
	}
	defer func() { _ = recover() }()
	r.signError(q, *label, &RequestError{Code: contract.CodeInternal,
		Message: "refresher: internal error while signing (logged); retry later"})
}
