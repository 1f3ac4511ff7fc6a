package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// RevisionHeader carries the KV revision of the record a GET returns (the
// body is the record exactly as stored, which has no revision): pass it as
// stale_revision when upstream rejects the token.
const RevisionHeader = "Tokenkeeper-Revision"

// Endpoints, as logged.
const (
	endpointGet     = "get"
	endpointRefresh = "refresh"
	endpointSign    = "sign"
)

// outcome is what one request did, for its log line.
type outcome struct {
	client   string
	endpoint string
	key      string
	status   int
	revision uint64
	reason   string // why it failed; never a secret
}

// ServeHTTP serves one request of the API in the package doc.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.inflight.Add(1)
	defer g.inflight.Add(-1)
	start := time.Now()
	o := &outcome{}
	g.serve(w, r, o)
	level := slog.LevelInfo
	if o.status >= 400 {
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.String("client", o.client),
		slog.String("endpoint", o.endpoint),
		slog.String("key", o.key),
		slog.Int("status", o.status),
		slog.String("remote", r.RemoteAddr),
		slog.Duration("duration", time.Since(start)),
	}
	if o.revision != 0 {
		attrs = append(attrs, slog.Uint64("revision", o.revision))
	}
	if o.reason != "" {
		attrs = append(attrs, slog.String("reason", o.reason))
	}
	g.log.LogAttrs(r.Context(), level, "gateway request", attrs...)
}

// serve routes, authenticates, limits and answers; it records what it did
// in o.
func (g *Gateway) serve(w http.ResponseWriter, r *http.Request, o *outcome) {
	fail := func(status int, format string, args ...any) {
		o.status, o.reason = status, fmt.Sprintf(format, args...)
		writeError(w, status, o.reason)
	}
	// Route first (without answering), so the log line names the key.
	path := r.URL.Path
	var method string
	switch {
	case strings.HasPrefix(path, "/v1/tokens/"):
		rest := strings.TrimPrefix(path, "/v1/tokens/")
		if k, ok := strings.CutSuffix(rest, "/refresh"); ok {
			o.endpoint, o.key, method = endpointRefresh, k, http.MethodPost
		} else {
			o.endpoint, o.key, method = endpointGet, rest, http.MethodGet
		}
	case strings.HasPrefix(path, "/v1/sign/"):
		o.endpoint, o.key, method = endpointSign, strings.TrimPrefix(path, "/v1/sign/"), http.MethodPost
	}
	if !contract.ValidKey(o.key) {
		o.key = "" // not logged: it may be anything a caller sent
	}

	// Authenticate before anything else is told.
	c, why := g.authenticate(r)
	if c == nil {
		o.reason, o.status = why, http.StatusUnauthorized
		hdr := `Bearer realm="tokenkeeper"`
		if why != "no bearer token" {
			hdr += `, error="invalid_token"`
		}
		w.Header().Set("WWW-Authenticate", hdr)
		writeError(w, http.StatusUnauthorized, "a valid bearer token is required (Authorization: Bearer <token>)")
		return
	}
	o.client = c.name
	if res := c.lim.Reserve(); res.Delay() > 0 {
		d := res.Delay()
		res.Cancel()
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(d.Seconds()))))
		fail(http.StatusTooManyRequests, "rate limit of client %s exceeded (%g requests/s, burst %d); retry after %s", c.name, c.rps, c.burst, d.Round(time.Millisecond))
		return
	}
	switch {
	case o.endpoint == "":
		fail(http.StatusNotFound, "no such endpoint %s (see GET /v1/tokens/{key}, POST /v1/tokens/{key}/refresh, POST /v1/sign/{app} or /v1/sign/{component}.{authorizer_appid})", strconv.Quote(clip(path)))
		return
	case r.Method != method:
		w.Header().Set("Allow", method)
		fail(http.StatusMethodNotAllowed, "%s takes %s, not %s", o.endpoint, method, clip(r.Method))
		return
	case o.key == "":
		fail(http.StatusBadRequest, "the key in the path is not a valid key (dot-separated segments of 1-64 of A-Z a-z 0-9 _ -)")
		return
	}

	switch o.endpoint {
	case endpointGet:
		if !c.allowed(o.key) {
			fail(http.StatusForbidden, "client %s may not read key %s", c.name, o.key)
			return
		}
		g.get(w, r, o, fail)
	case endpointRefresh:
		if !c.allowed(o.key) {
			fail(http.StatusForbidden, "client %s may not read key %s", c.name, o.key)
			return
		}
		body, ok := readBody(w, r, fail)
		if !ok {
			return
		}
		req, err := parseRefresh(body)
		if err != nil {
			fail(http.StatusBadRequest, "body: %v (want {\"stale_revision\":N} or nothing)", err)
			return
		}
		g.forward(w, r, o, fail, contract.RefreshSubject(o.key), req)
	case endpointSign:
		body, ok := readBody(w, r, fail)
		if !ok {
			return
		}
		if first, rest, _ := contract.ParseKey(o.key); strings.Contains(rest, ".") || contract.ValidTicketType(rest) {
			fail(http.StatusBadRequest, "sign takes an app or {component}.{authorizer_appid}, not the key %s (POST /v1/sign/%s; the body's \"ticket\" chooses the ticket)", o.key, first)
			return
		}
		req, ticket, err := parseSign(body)
		if err != nil {
			fail(http.StatusBadRequest, "body: %v (want {\"url\":\"https://…\"})", err)
			return
		}
		if signer := o.key + "." + ticket; !contract.ValidKey(signer) || !c.allowed(signer) {
			fail(http.StatusForbidden, "client %s may not sign with key %s (signing needs read access to the ticket)", c.name, signer)
			return
		}
		g.forward(w, r, o, fail, contract.SignSubject(o.key), req)
	}
}

// authenticate returns the client of the request's bearer token, or nil
// and why not (never the token).
func (g *Gateway) authenticate(r *http.Request) (*client, string) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return nil, "no bearer token"
	}
	scheme, tok, _ := strings.Cut(h, " ")
	tok = strings.TrimSpace(tok)
	if !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return nil, "Authorization is not a bearer token"
	}
	c := g.clients.Load().lookup(tok)
	if c == nil {
		return nil, "unknown bearer token"
	}
	return c, ""
}

// get answers GET /v1/tokens/{key}: the record as stored.
func (g *Gateway) get(w http.ResponseWriter, r *http.Request, o *outcome, fail func(int, string, ...any)) {
	ctx, cancel := context.WithTimeout(r.Context(), g.reqTimeout)
	defer cancel()
	kv, err := g.bucketKV(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			fail(http.StatusServiceUnavailable, "bucket %s does not exist yet (is a refresher running?)", g.bucket)
		} else {
			fail(natsStatus(err), "cannot look up bucket %s: %v", g.bucket, err)
		}
		return
	}
	e, err := kv.Get(ctx, o.key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		fail(http.StatusNotFound, "no record for key %s", o.key)
		return
	case err != nil:
		fail(natsStatus(err), "cannot read key %s: %v", o.key, err)
		return
	}
	val := e.Value()
	if !json.Valid(val) || len(bytes.TrimSpace(val)) == 0 || bytes.TrimSpace(val)[0] != '{' {
		fail(http.StatusBadGateway, "the record stored under %s is not a JSON object", o.key)
		return
	}
	o.status, o.revision = http.StatusOK, e.Revision()
	w.Header().Set(RevisionHeader, strconv.FormatUint(e.Revision(), 10))
	writeJSON(w, http.StatusOK, val)
}

// forward sends req on subject and answers with the reply: its body on
// success, its error (code and message) as the HTTP status otherwise.
func (g *Gateway) forward(w http.ResponseWriter, r *http.Request, o *outcome, fail func(int, string, ...any), subject string, req []byte) {
	ctx, cancel := context.WithTimeout(r.Context(), g.reqTimeout)
	defer cancel()
	m := nats.NewMsg(subject)
	m.Data = req
	// The refresher's audit trail names the gateway client who asked.
	m.Header.Set(contract.RequesterHeader, "gateway client "+o.client)
	reply, err := g.nc.RequestMsgWithContext(ctx, m)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		fail(http.StatusServiceUnavailable, "nobody serves %s (is a refresher running?)", subject)
		return
	case err != nil:
		fail(natsStatus(err), "%s: %v", subject, err)
		return
	}
	if code := reply.Header.Get(contract.ErrorCodeHeader); code != "" {
		var er contract.ErrorReply
		_ = json.Unmarshal(reply.Data, &er)
		status, _ := strconv.Atoi(code)
		if status < 400 || status > 599 {
			status = http.StatusBadGateway
		}
		msg := er.Error.Message
		if msg == "" {
			msg = reply.Header.Get(contract.ErrorHeader)
		}
		if !er.Error.RetryAt.IsZero() {
			secs := math.Ceil(time.Until(er.Error.RetryAt).Seconds())
			w.Header().Set("Retry-After", strconv.Itoa(int(max(1, secs))))
		}
		o.status, o.reason = status, clip(msg)
		writeErrorDetail(w, status, contract.ErrorDetail{Code: status, Message: o.reason, RetryAt: er.Error.RetryAt})
		return
	}
	if !json.Valid(reply.Data) {
		fail(http.StatusBadGateway, "%s answered with something that is not JSON", subject)
		return
	}
	var rev struct {
		Revision uint64 `json:"revision"`
	}
	_ = json.Unmarshal(reply.Data, &rev)
	o.status, o.revision = http.StatusOK, rev.Revision
	writeJSON(w, http.StatusOK, reply.Data)
}

// natsStatus is the HTTP status of a failed NATS call.
func natsStatus(err error) int {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return http.StatusGatewayTimeout
	case errors.Is(err, context.Canceled):
		return 499 // the client went away (nginx's code); nobody reads it
	}
	return http.StatusServiceUnavailable
}

// readBody reads the request body, at most MaxBodyBytes: 413 above, 408
// when the client sends it too slowly (the server's read timeout).
func readBody(w http.ResponseWriter, r *http.Request, fail func(int, string, ...any)) ([]byte, bool) {
	if r.ContentLength > MaxBodyBytes {
		fail(http.StatusRequestEntityTooLarge, "body of %d bytes is over the limit of %d", r.ContentLength, MaxBodyBytes)
		return nil, false
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		fail(http.StatusRequestEntityTooLarge, "body is over the limit of %d bytes", MaxBodyBytes)
		return nil, false
	case err != nil:
		fail(http.StatusRequestTimeout, "body not read: %v", err)
		return nil, false
	}
	return b, true
}

// parseRefresh checks a refresh body and returns the token.refresh
// request to send: {"stale_revision":N}, or empty for "a valid token".
func parseRefresh(body []byte) ([]byte, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, nil
	}
	var req contract.RefreshRequest
	if err := decodeStrict(body, &req); err != nil {
		return nil, err
	}
	return json.Marshal(req)
}

// parseSign checks a sign body and returns the token.sign request to send
// and the ticket that signs.
func parseSign(body []byte) ([]byte, string, error) {
	var req contract.SignRequest
	if err := decodeStrict(body, &req); err != nil {
		return nil, "", err
	}
	if req.URL == "" {
		return nil, "", errors.New("url is missing")
	}
	ticket := req.Ticket
	if ticket == "" {
		ticket = contract.TicketJSAPI
	}
	if ticket != contract.TicketJSAPI && ticket != contract.TicketAgentConfig {
		return nil, "", fmt.Errorf("ticket %s is not %s or %s", strconv.Quote(clip(ticket)), contract.TicketJSAPI, contract.TicketAgentConfig)
	}
	b, err := json.Marshal(req)
	return b, ticket, err
}

// decodeStrict decodes exactly one JSON object into v, refusing unknown
// fields and trailing data.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		return errors.New("more than one JSON value")
	}
	return nil
}

// writeJSON writes a JSON body that must not be cached: it may hold a
// token.
func writeJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// writeError writes {"error":{"code":status,"message":msg}}.
func writeError(w http.ResponseWriter, status int, msg string) {
	writeErrorDetail(w, status, contract.ErrorDetail{Code: status, Message: msg})
}

func writeErrorDetail(w http.ResponseWriter, status int, d contract.ErrorDetail) {
	b, _ := json.Marshal(contract.ErrorReply{Error: d})
	writeJSON(w, status, append(b, '\n'))
}

// clip cuts a caller-supplied string for a message or a log line.
func clip(s string) string {
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}
