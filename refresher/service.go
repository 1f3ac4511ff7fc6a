package refresher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// Version is reported by the micro service's INFO.
var Version = "0.1.0"

// requestTimeout bounds how long a refresh request waits for its fetch.
const requestTimeout = 30 * time.Second

// startService registers the token.refresh micro service. Only the leader
// serves it, without a queue group (see the endpoint below); a request
// that arrives during a handover gets "no responders" and is retried by
// the client.
func (r *Refresher) startService() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.svc != nil || r.closed {
		return nil
	}
	svc, err := micro.AddService(r.nc, micro.Config{
		Name:        contract.ServiceName,
		Version:     Version,
		Description: "tokenkeeper passive token refresh",
		Metadata:    map[string]string{"replica": r.id, "bucket": r.cfg.Bucket},
		// Requests dropped at the pending limits (slow consumer) are
		// reported here; their requesters time out and retry.
		ErrorHandler: func(_ micro.Service, e *micro.NATSError) {
			r.log.Warn("token.refresh service error (at the pending limits requests are dropped unanswered)",
				"subject", sanitize(e.Subject, maxLoggedSubject), "error", sanitize(e.Description, 512))
		},
	})
	if err != nil {
		return err
	}
	err = svc.AddEndpoint("refresh", micro.HandlerFunc(r.handleRefresh),
		// Every key: token.refresh.<app> and (v2) token.refresh.<app>.<ticket>.
		micro.WithEndpointSubject(contract.RefreshPrefix+">"),
		// Bounded: the handler never blocks, so the queue holds only a
		// burst not handled yet; the requests in progress are bounded by
		// r.reqs, answered with a 503 past it.
		micro.WithEndpointPendingLimits(pendingMsgsLimit, pendingBytesLimit),
		// No queue group: only the leader subscribes, so every request
		// still reaches one live handler. With a shared group, a deposed
		// leader whose link came back would take its turn in the group
		// and answer nothing: micro stops an endpoint by draining it, and
		// a drain whose UNSUB was lost with a partitioned connection is
		// resubscribed on reconnect and swallows requests until the drain
		// times out (30 s). Without a group such a zombie only gets a
		// copy, and the leader still answers.
		micro.WithEndpointQueueGroupDisabled())
	if err != nil {
		_ = svc.Stop()
		return err
	}
	r.svc = svc
	return nil
}

func (r *Refresher) stopService() {
	r.mu.Lock()
	svc := r.svc
	r.svc = nil
	r.mu.Unlock()
	if svc != nil {
		_ = svc.Stop()
	}
}

// RequestError is a refresh request's failure: the code and message of
// the micro error reply.
type RequestError struct {
	Code    int
	Message string
	// RetryAt, when set, is the earliest moment a new request can be
	// served differently (upstream calls are paused until then).
	RetryAt time.Time
	Err     error
}

func (e *RequestError) Error() string { return e.Message }
func (e *RequestError) Unwrap() error { return e.Err }

func badRequest(format string, args ...any) *RequestError {
	return &RequestError{Code: contract.CodeBadRequest, Message: fmt.Sprintf(format, args...)}
}

// ParseRefreshRequest parses a token.refresh request body: empty (or
// JSON null, or {}) means no stale revision. It never panics.
func ParseRefreshRequest(body []byte) (*uint64, error) {
	if len(body) > contract.MaxRequestBody {
		return nil, badRequest("request body of %d bytes is over the limit of %d", len(body), contract.MaxRequestBody)
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 || string(body) == "null" {
		return nil, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, badRequest(`request body is not a JSON object: %v (want {"stale_revision": N} or empty)`, err)
	}
	v, ok := raw["stale_revision"]
	if !ok || string(v) == "null" {
		return nil, nil
	}
	n, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil {
		return nil, badRequest("stale_revision must be a non-negative integer, got %s", truncate(string(v), 40))
	}
	return &n, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// Bounds of the token.refresh request path: no request, subject or body
// can grow the refresher without bound.
const (
	// DefaultMaxPendingRequests bounds the token.refresh requests in
	// progress off the subscription's goroutine: those answered from a
	// goroutine of their own (a fetch, a manual request) plus those
	// parked on a fetch in flight. Past it a request gets a 503
	// ("overloaded, retry later") at once. It is above the 10 000
	// concurrent requests of one stale revision that docs/benchmarks.md
	// measures.
	DefaultMaxPendingRequests = 16384
	// pendingMsgsLimit and pendingBytesLimit bound the subscription's
	// queue of requests not yet handled. The handler never blocks (the
	// slow part runs elsewhere, or is refused with a 503), so the queue
	// holds only a burst the handler has not reached yet; past these
	// limits the NATS client drops requests (slow consumer), which is
	// logged and the requesters time out and retry.
	pendingMsgsLimit  = 65536
	pendingBytesLimit = 64 << 20
)

// requestGate counts the token.refresh requests in progress off the
// subscription's goroutine (DefaultMaxPendingRequests), and holds the test
// hooks of the request path.
type requestGate struct {
	limit    int // 0: DefaultMaxPendingRequests
	n        atomic.Int64
	refused  atomic.Int64 // 503s since the last overload log line
	loggedAt atomic.Int64 // unix ns of the last overload log line
	// hook, if set (tests only), runs at each stage of the request path
	// with the request's subject: a panic in it is a panic in the handler.
	hook func(stage, subject string)
}

// Stages of the request path at which requestGate.hook runs.
const (
	stageReceive = "receive" // on the subscription's goroutine, before anything else
	stageSlow    = "slow"    // in the goroutine of a slow request
	stageParked  = "parked"  // in a parked request, when its flight has finished
)

func (g *requestGate) max() int64 {
	if g.limit > 0 {
		return int64(g.limit)
	}
	return DefaultMaxPendingRequests
}

// acquire takes a slot, or reports false if all are taken.
func (g *requestGate) acquire() bool {
	if g.n.Add(1) > g.max() {
		g.n.Add(-1)
		return false
	}
	return true
}

func (g *requestGate) release() { g.n.Add(-1) }

func (g *requestGate) at(stage string, q *refreshReq) {
	if g.hook != nil {
		g.hook(stage, q.Subject())
	}
}

// withMaxPendingRequests sets the bound of requestGate (tests; n ≤ 0:
// DefaultMaxPendingRequests).
func withMaxPendingRequests(n int) Option { return func(r *Refresher) { r.reqs.limit = n } }

// withRequestHook sets requestGate.hook (tests).
func withRequestHook(h func(stage, subject string)) Option {
	return func(r *Refresher) { r.reqs.hook = h }
}

// refreshReq is a token.refresh request that remembers whether it was
// answered, so that a recovered panic answers only a request that has no
// answer yet. Replies go out through send, not through the micro.Request:
// many are sent from other goroutines after the handler returned, and
// micro reads the request's error state then, for its stats, without a
// lock (a data race).
type refreshReq struct {
	micro.Request
	send     func(*nats.Msg) error
	answered atomic.Bool
}

func (q *refreshReq) Respond(b []byte, _ ...micro.RespondOpt) error {
	q.answered.Store(true)
	return q.send(&nats.Msg{Subject: q.Reply(), Data: b})
}

func (q *refreshReq) RespondJSON(v any, _ ...micro.RespondOpt) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return q.Respond(b)
}

func (q *refreshReq) Error(code, description string, data []byte, _ ...micro.RespondOpt) error {
	q.answered.Store(true)
	m := nats.NewMsg(q.Reply())
	m.Header.Set(micro.ErrorHeader, description)
	m.Header.Set(micro.ErrorCodeHeader, code)
	m.Data = data
	return q.send(m)
}

// handleRefresh is the token.refresh endpoint's handler. It runs on the
// subscription's goroutine, one request at a time, and never blocks: the
// slow part runs elsewhere (handleSlow, flight.park) or is refused.
func (r *Refresher) handleRefresh(req micro.Request) {
	r.handle(req, r.nc.PublishMsg)
}

// handle is handleRefresh with the replies sent through send.
func (r *Refresher) handle(req micro.Request, send func(*nats.Msg) error) {
	q := &refreshReq{Request: req, send: send}
	defer r.recovered(q)
	r.reqs.at(stageReceive, q)

	// The name is bytes from the wire (one subject token, any bytes but
	// '.' and white space): it is only ever looked up, never used as a
	// label or logged as is. Observers see the configured name or
	// UnknownAppLabel.
	name := strings.TrimPrefix(q.Subject(), contract.RefreshPrefix)
	r.mu.Lock()
	a := r.apps[name]
	r.mu.Unlock()
	var tk *ticket
	if a == nil {
		tk = r.ticketByKey(name)
	}
	label := UnknownAppLabel
	if a != nil {
		label = a.name
	} else if tk != nil {
		label = r.metricLabel(tk.key)
	}
	stale, err := ParseRefreshRequest(q.Data())
	if err != nil {
		r.replyError(q, label, err)
		return
	}
	if a == nil && tk == nil {
		if au := r.authorizerByKey(name); au != nil {
			r.handleAuthorizer(q, au, stale, sourceOf(q))
			return
		}
		r.replyError(q, label, unknownApp(name))
		return
	}
	source := sourceOf(q)
	if tk != nil {
		r.handleTicket(q, tk, stale, source)
		return
	}
	// Fast paths without a goroutine: the stored record answers, or a
	// refresh of the stale revision is in flight and the request parks
	// on it (one goroutine answers every parked request, with one
	// encoding of the reply).
	if source == contract.SourcePassive && r.lease != nil && r.lease.Held() {
		rec, rev, valid := a.usable(r.now())
		if valid && answers(rev, stale) {
			r.replyOK(q, label, reply(rec, rev))
			return
		}
		if f := a.inFlight(); f != nil && rec != nil && stale != nil && rev == *stale {
			if !r.reqs.acquire() {
				r.replyOverloaded(q, label)
				return
			}
			if f.park(func(res flightResult, enc func() []byte) {
				handedOver := false
				defer func() {
					if !handedOver {
						r.reqs.release()
					}
				}()
				defer r.recovered(q)
				r.reqs.at(stageParked, q)
				if res.err == nil && res.rec.AccessToken != "" && res.rev > *stale {
					_ = q.Respond(enc())
					r.obs.PassiveRequest(label, "ok")
					return
				}
				handedOver = true
				r.goSlow(q, name, label, stale, source)
			}) {
				return
			}
			r.reqs.release()
		}
	}
	r.handleSlow(q, name, label, stale, source)
}

// handleSlow answers a parsed request from a goroutine of its own, or
// with a 503 if DefaultMaxPendingRequests (or the test's bound) requests
// are in progress already.
func (r *Refresher) handleSlow(q *refreshReq, name, label string, stale *uint64, source string) {
	if !r.reqs.acquire() {
		r.replyOverloaded(q, label)
		return
	}
	r.goSlow(q, name, label, stale, source)
}

// goSlow answers q from a goroutine of its own, which owns a slot of
// r.reqs (taken by the caller) and gives it back. Requests are delivered
// one at a time; the work runs off the subscription's goroutine so that
// one slow fetch does not hold up the replies that need none.
func (r *Refresher) goSlow(q *refreshReq, name, label string, stale *uint64, source string) {
	go func() {
		defer r.reqs.release()
		defer r.recovered(q)
		r.reqs.at(stageSlow, q)
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		defer cancel()
		rep, err := r.refreshAs(withRequester(ctx, requesterOf(nats.Header(q.Headers()))), name, stale, source)
		if err != nil {
			r.replyError(q, label, err)
			return
		}
		r.replyOK(q, label, rep)
	}()
}

// recovered is deferred by every part of the request path: a panic there
// is logged with the request's subject (sanitised) and answered with an
// internal error if nothing was answered yet, and the refresher goes on
// serving. An observer that panics while the error is answered changes
// nothing.
func (r *Refresher) recovered(q *refreshReq) {
	v := recover()
	if v == nil {
		return
	}
	r.log.Error("token.refresh handler panicked; the request is answered with an internal error and the refresher goes on",
		"subject", sanitize(q.Subject(), maxLoggedSubject), "panic", sanitize(fmt.Sprint(v), 512),
		"stack", string(debug.Stack()))
	if q.answered.Load() {
		return
	}
	defer func() { _ = recover() }()
	label := UnknownAppLabel
	name := strings.TrimPrefix(q.Subject(), contract.RefreshPrefix)
	r.mu.Lock()
	if a := r.apps[name]; a != nil {
		label = a.name
	}
	r.mu.Unlock()
	r.replyError(q, label, &RequestError{Code: contract.CodeInternal,
		Message: "refresher: internal error while handling the request (logged); retry later"})
}

// replyOK answers q with v, then tells the observer.
func (r *Refresher) replyOK(q *refreshReq, label string, v any) {
	_ = q.RespondJSON(v)
	r.obs.PassiveRequest(label, "ok")
}

// replyOverloaded answers q with a 503: too many requests are in progress.
// A warning is logged at most every overloadLogEvery, with the number of
// requests refused since the last one.
func (r *Refresher) replyOverloaded(q *refreshReq, label string) {
	n := r.reqs.refused.Add(1)
	now := time.Now().UnixNano()
	if last := r.reqs.loggedAt.Load(); now-last >= int64(overloadLogEvery) && r.reqs.loggedAt.CompareAndSwap(last, now) {
		r.reqs.refused.Add(-n)
		r.log.Warn("token.refresh overloaded: requests refused with 503", "refused", n, "in_progress_limit", r.reqs.max())
	}
	r.replyError(q, label, &RequestError{Code: contract.CodeUnavailable,
		Message: fmt.Sprintf("refresher overloaded: %d token.refresh requests are in progress already; retry later", r.reqs.max())})
}

// overloadLogEvery spaces the overload warnings.
const overloadLogEvery = 10 * time.Second

// maxLoggedSubject bounds a subject in a log line.
const maxLoggedSubject = 128

// sanitize makes text from the wire (a subject, a panic value) fit for a
// log line, a header or a metric label: valid UTF-8 (each run of invalid
// bytes becomes U+FFFD), no control or other non-printable characters
// (each becomes '?'), and at most n bytes (then "…" is appended).
func sanitize(s string, n int) string {
	var b strings.Builder
	for _, c := range strings.ToValidUTF8(s, "\uFFFD") {
		if !unicode.IsPrint(c) {
			c = '?'
		}
		if b.Len()+utf8.RuneLen(c) > n {
			b.WriteString("…")
			break
		}
		b.WriteRune(c)
	}
	return b.String()
}

// unknownApp is the error for a request naming no configured app. The
// name is quoted (and cut), so the message stays valid UTF-8 and short.
func unknownApp(name string) error {
	return fmt.Errorf("%w %q", ErrUnknownApp, truncate(name, 64))
}

// replyError sends err as a micro error reply: code and message in the
// headers and a JSON body, then tells the observer. label is the
// configured app or UnknownAppLabel.
func (r *Refresher) replyError(q *refreshReq, label string, err error) {
	r.obs.PassiveRequest(label, sendError(q, err))
}

// sendError sends err as a micro error reply (token.refresh and
// token.sign alike) and returns its code.
func sendError(q *refreshReq, err error) string {
	re := requestError(err)
	msg := sanitize(re.Message, contract.MaxRequestBody)
	body, _ := json.Marshal(contract.ErrorReply{Error: contract.ErrorDetail{Code: re.Code, Message: msg, RetryAt: re.RetryAt}})
	code := strconv.Itoa(re.Code)
	_ = q.Error(code, msg, body)
	return code
}

// pausedError is the reply to a request that would need an upstream call
// while the app's calls are paused after the failure why.
func pausedError(name string, until time.Time, why error) *RequestError {
	code := contract.CodeUnavailable
	if errors.Is(why, ErrQuotaReserved) || errors.Is(why, wechat.ErrQuotaExceeded) || errors.Is(why, wechat.ErrRateLimited) {
		code = contract.CodeTooMany
	}
	return &RequestError{Code: code, RetryAt: until, Err: errors.Join(ErrPaused, why),
		Message: fmt.Sprintf("upstream calls for %s are paused until %s after: %v", name, until.UTC().Format(time.RFC3339), why)}
}

// requestError maps an error to its reply code and message. Messages
// never carry secrets: upstream errors are already scrubbed.
func requestError(err error) *RequestError {
	var re *RequestError
	if errors.As(err, &re) {
		return re
	}
	code := contract.CodeUpstream
	switch {
	case errors.Is(err, ErrUnknownApp):
		code = contract.CodeNotFound
	case errors.Is(err, ErrNotLeader), errors.Is(err, ErrClosed), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		code = contract.CodeUnavailable
	case errors.Is(err, ErrQuotaReserved), errors.Is(err, wechat.ErrQuotaExceeded), errors.Is(err, wechat.ErrRateLimited):
		code = contract.CodeTooMany
	}
	return &RequestError{Code: code, Message: err.Error(), Err: err}
}

// Refresh answers a refresh request for app: with stale nil it returns a
// valid token (fetching only if none is stored or it expired); with stale
// N it returns the stored record if its revision is newer than N, and
// otherwise makes one upstream fetch that every concurrent caller shares.
// A stale N newer than the stored revision names no token anyone holds
// and is answered like stale nil.
// Forced fetches of one app happen at most once per passive_min_interval
// (for wechat-stable apps at least 30 s apart and 20 a day); inside that
// window the stored record is returned. Only the leader fetches; on a
// follower Refresh returns ErrNotLeader unless the stored record already
// answers the request. ctx bounds the wait, not the fetch: a fetch that
// has started is completed and stored.
func (r *Refresher) Refresh(ctx context.Context, name string, stale *uint64) (contract.RefreshReply, error) {
	return r.refreshAs(ctx, name, stale, contract.SourcePassive)
}

func (r *Refresher) refreshAs(ctx context.Context, name string, stale *uint64, source string) (contract.RefreshReply, error) {
	r.mu.Lock()
	a := r.apps[name]
	closed := r.closed
	r.mu.Unlock()
	if a == nil {
		return contract.RefreshReply{}, unknownApp(name)
	}
	if closed || r.refreshCtx == nil {
		return contract.RefreshReply{}, ErrClosed
	}
	for range 3 {
		now := r.now()
		rec, rev, valid := a.usable(now)
		if valid && answers(rev, stale) {
			return reply(rec, rev), nil
		}
		if !r.lease.Held() {
			return contract.RefreshReply{}, ErrNotLeader
		}
		// After a failure upstream calls wait (a polite pace after an
		// alert-worthy errcode, the WeChat midnight after 45009, a backoff
		// after a transient error): requests wait too, and say until when.
		if until, why := a.paused(now); !until.IsZero() && a.inFlight() == nil {
			return contract.RefreshReply{}, pausedError(name, until, why)
		}
		// A forced refresh only when the stored token is still valid and
		// was rejected; a missing or expired one is simply fetched.
		forced := valid && stale != nil
		f, started, limited := a.joinOrStart(now, forced, r.passiveMinFor(a))
		if limited {
			return reply(rec, rev), nil
		}
		if started {
			need := refreshNeed{stale: stale, force: forced && a.takeStableForce(now)}
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				res := r.refresh(withRequester(r.refreshCtx, requesterFrom(ctx)), a, source, need)
				a.finish(f, res)
				r.Tick()
			}()
		}
		select {
		case <-ctx.Done():
			return contract.RefreshReply{}, ctx.Err()
		case <-f.done:
		}
		res := f.res
		if res.err != nil {
			return contract.RefreshReply{}, res.err
		}
		if res.rec.AccessToken != "" && answers(res.rev, stale) {
			return reply(&res.rec, res.rev), nil
		}
		// We joined a flight that did not answer our need (a scheduled
		// refresh that found nothing to do): go round once more.
	}
	rec, rev := a.current()
	if rec == nil {
		return contract.RefreshReply{}, &RequestError{Code: contract.CodeUnavailable, Message: "no token stored yet"}
	}
	return reply(rec, rev), nil
}

// answers reports whether a valid record at revision rev answers a
// request with stale revision stale: unless the request says that this
// very revision was rejected. A stale revision newer than rev names no
// token this refresher has handed out (a bogus or hostile value, or one
// it has not seen yet): it is treated like an empty request, "give me a
// valid token", and forces no fetch. A refresh started for it re-reads
// the key, so a revision that really is the stored one is still
// refreshed (satisfiedBy).
func answers(rev uint64, stale *uint64) bool {
	return stale == nil || rev != *stale
}

// passiveMinFor is the least time between forced refreshes of a: for
// wechat-stable apps never under WeChat's 30 s between force_refresh calls.
func (r *Refresher) passiveMinFor(a *app) time.Duration {
	d := time.Duration(r.passiveMin.Load())
	if a.config().Kind == wechat.KindStable {
		return max(d, stableForceInterval)
	}
	return d
}

func reply(rec *contract.Record, rev uint64) contract.RefreshReply {
	return contract.RefreshReply{Record: *rec, Revision: rev}
}

// sourceOf is the source a token.refresh request's write is recorded
// with: manual with header Tokenkeeper-Source: manual, else passive.
func sourceOf(q *refreshReq) string {
	if q.Headers().Get(contract.SourceHeader) == contract.SourceManual {
		return contract.SourceManual
	}
	return contract.SourcePassive
}
