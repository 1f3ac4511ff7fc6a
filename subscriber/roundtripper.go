package subscriber

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// MaxPeek is the largest response body Transport inspects for a WeChat
// errcode. Error answers are tiny; a larger body is passed on untouched.
const MaxPeek = 64 << 10

// Transport is an http.RoundTripper for the business APIs of the token's
// upstream. It puts the Source's token where the token's kind
// (Token.Kind, or Transport.Kind) wants it — access_token=<token> in the
// query for WeChat and WeCom (replacing any access_token already there),
// Authorization: Bearer <token> for Feishu and OAuth2 — and sends the
// request with Base. If the answer says the token was rejected
// (contract.RejectedAnswer: a JSON body of at most MaxPeek bytes with
// errcode 40001, 40014 or 42001 for WeChat and WeCom, code 99991663,
// 99991668, 99991671 or 99991677 for Feishu, HTTP 401 for OAuth2), it
// calls Source.Refresh(ctx, revision used) and sends the request once
// more with the new token, so that the caller never sees that first
// rejection.
//
// The retry happens only when the request can be sent again: it has no
// body, or req.GetBody is set (http.NewRequest sets it for
// *bytes.Buffer, *bytes.Reader and *strings.Reader bodies). Otherwise the
// rejection is returned as it came (after Refresh, so that the next call
// gets a new token); so it is when Refresh fails or brings no new token. The body of every response returned is intact:
// what was peeked at is put back in front of the rest.
//
// The token never appears in logs or in errors Transport returns (they
// carry its fingerprint instead), and the Response's Request is the
// caller's request, without the token. The request's context bounds
// Refresh. A request made while the Source's token is expired first asks
// for a new one (Refresh) and fails if none comes.
//
// Use it only for hosts that should receive the token; a Source of a
// ticket key (Token.TicketType set) is refused with ErrInvalidArgument,
// since no business API takes a ticket for a token. Safe for
// concurrent use, like the Source and Base it uses.
type Transport struct {
	// Source provides the token; required. A *Source, or a StaticSource
	// in a service's unit tests.
	Source TokenSource
	// Base sends the requests; nil means http.DefaultTransport.
	Base http.RoundTripper
	// Log receives a line per rejection and retry; nil: none.
	Log *slog.Logger
	// Kind overrides the token's kind (contract.Kind*): where the token
	// goes and which answers reject it. Empty: the token's own Kind.
	Kind string
}

// TokenSource is what Transport needs of a token's source: the current
// token, and a refresh after upstream rejected the token of a revision.
// *Source implements it; StaticSource does for tests without NATS.
type TokenSource interface {
	// Token returns the current token; with ErrExpired, the expired one.
	Token() (*Token, error)
	// Refresh returns a token newer than revision stale.
	Refresh(ctx context.Context, stale uint64) (*Token, error)
}

var (
	_ TokenSource = (*Source)(nil)
	_ TokenSource = (*StaticSource)(nil)
)

// StaticSource is a TokenSource that always returns one token: for unit
// tests of a service's HTTP client, with no NATS and no refresher. Its
// Refresh returns the same token, so a Transport over it returns an
// upstream rejection as it came.
type StaticSource struct{ tok *Token }

// NewStaticSource returns a StaticSource for tok (nil: Token returns
// ErrNoToken).
func NewStaticSource(tok *Token) *StaticSource { return &StaticSource{tok: tok} }

// StaticAccessToken returns a StaticSource for the access token tok of
// app, at revision 1, valid for a day from now.
func StaticAccessToken(app, tok string) *StaticSource {
	now := time.Now()
	return NewStaticSource(&Token{App: app, AccessToken: tok, Revision: 1, FetchedAt: now, ExpiresAt: now.Add(24 * time.Hour)})
}

// Token implements TokenSource: the token, with ErrExpired once it has
// expired.
func (s *StaticSource) Token() (*Token, error) {
	switch {
	case s.tok == nil:
		return nil, ErrNoToken
	case !s.tok.Valid():
		return s.tok, ErrExpired
	}
	return s.tok, nil
}

// Refresh implements TokenSource: the same token (a static source has no
// newer one).
func (s *StaticSource) Refresh(context.Context, uint64) (*Token, error) { return s.Token() }

// RoundTripper returns a Transport that sets s's token on every request
// sent through base (nil: http.DefaultTransport) and retries once when
// upstream rejects it, logging with the Source's logger. See Transport.
func (s *Source) RoundTripper(base http.RoundTripper) http.RoundTripper {
	return &Transport{Source: s, Base: base, Log: s.log}
}

func (t *Transport) log() *slog.Logger {
	if t.Log != nil {
		return t.Log
	}
	return discardLogger
}

var discardLogger = slog.New(slog.DiscardHandler)

func (t *Transport) base() http.RoundTripper {
	if t.Base != nil {
		return t.Base
	}
	return http.DefaultTransport
}

// RoundTrip implements http.RoundTripper; see Transport. It does not
// modify req and always closes its body.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	s := t.Source
	if s == nil || req.URL == nil {
		closeBody(req)
		return nil, fmt.Errorf("%w: Transport without a Source, or a request without a URL", ErrInvalidArgument)
	}
	ctx := req.Context()
	tok, err := s.Token()
	if errors.Is(err, ErrExpired) && tok != nil {
		tok, err = s.Refresh(ctx, tok.Revision)
	}
	if err != nil {
		closeBody(req)
		return nil, fmt.Errorf("subscriber: no valid token: %w", err)
	}
	if tok.TicketType != "" {
		closeBody(req)
		return nil, fmt.Errorf("%w: %s holds a %s ticket, not an access token: use a Source of the app (or authorizer) in Transport",
			ErrInvalidArgument, tok.App, tok.TicketType)
	}
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil

	kind := t.Kind
	if kind == "" {
		kind = tok.Kind
	}
	resp, err := t.base().RoundTrip(withToken(req, kind, tok.AccessToken, req.Body))
	if err != nil {
		return nil, scrub(err, tok.AccessToken)
	}
	ans := peekAnswer(resp)
	if !contract.RejectedAnswer(kind, ans) {
		resp.Request = req
		return resp, nil
	}
	log := t.log().With("path", req.URL.Path, "status", ans.Status, "token", tok)
	switch {
	case ans.HasErr:
		log = log.With("errcode", ans.Errcode)
	case ans.HasCode:
		log = log.With("code", ans.Code)
	}
	ntok, err := s.Refresh(ctx, tok.Revision)
	if !replayable {
		// The token is known bad: refreshed for the next call, but this
		// one cannot be sent again.
		log.Warn("upstream rejected the token; the request body cannot be replayed, so the rejection is returned", "refresh_err", err)
		resp.Request = req
		return resp, nil
	}
	if err != nil || ntok.AccessToken == tok.AccessToken {
		log.Warn("upstream rejected the token and no new one came; returning the rejection", "err", err)
		resp.Request = req
		return resp, nil
	}
	body := req.Body
	if req.GetBody != nil && req.Body != nil && req.Body != http.NoBody {
		if body, err = req.GetBody(); err != nil {
			log.Warn("upstream rejected the token; GetBody failed, returning the rejection", "err", err)
			resp.Request = req
			return resp, nil
		}
	}
	resp.Body.Close()
	log.Info("upstream rejected the token; retrying with a refreshed one", "new_token", ntok)
	resp, err = t.base().RoundTrip(withToken(req, kind, ntok.AccessToken, body))
	if err != nil {
		return nil, scrub(err, ntok.AccessToken)
	}
	resp.Request = req
	return resp, nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// withToken returns a copy of req that carries token where kind wants
// it (the access_token query parameter, or Authorization: Bearer) and
// has body as its body.
func withToken(req *http.Request, kind, token string, body io.ReadCloser) *http.Request {
	r := req.Clone(req.Context())
	r.Body = body
	if contract.PlacementOf(kind) == contract.PlaceBearer {
		r.Header.Set("Authorization", "Bearer "+token)
		return r
	}
	r.URL.RawQuery = setQuery(r.URL.RawQuery, "access_token", token)
	return r
}

// setQuery replaces every key=... in the raw query by one key=value at
// the end, leaving the other parameters exactly as they were.
func setQuery(raw, key, value string) string {
	var b strings.Builder
	for part := range strings.SplitSeq(raw, "&") {
		if part == "" {
			continue
		}
		k, _, _ := strings.Cut(part, "=")
		if uk, err := url.QueryUnescape(k); err == nil && uk == key {
			continue
		}
		b.WriteString(part)
		b.WriteByte('&')
	}
	b.WriteString(url.QueryEscape(key))
	b.WriteByte('=')
	b.WriteString(url.QueryEscape(value))
	return b.String()
}

// peekAnswer returns resp's status and, for a JSON-looking body of at
// most MaxPeek bytes (read and put back in front of the rest), the
// errcode and code it has.
func peekAnswer(resp *http.Response) contract.Answer {
	a := contract.Answer{Status: resp.StatusCode}
	if resp.Body == nil || resp.Body == http.NoBody {
		return a
	}
	if ct := strings.ToLower(resp.Header.Get("Content-Type")); ct != "" &&
		!strings.Contains(ct, "json") && !strings.HasPrefix(ct, "text/") {
		return a // media downloads and the like: no errcode here
	}
	if resp.ContentLength > MaxPeek {
		return a
	}
	buf, err := io.ReadAll(io.LimitReader(resp.Body, MaxPeek+1))
	resp.Body = &peekedBody{Reader: io.MultiReader(bytes.NewReader(buf), resp.Body), Closer: resp.Body}
	if err != nil || len(buf) > MaxPeek {
		return a
	}
	trimmed := bytes.TrimSpace(buf)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return a
	}
	// Each field on its own: a string "code" must not hide an errcode.
	var v struct {
		Errcode json.RawMessage `json:"errcode"`
		Code    json.RawMessage `json:"code"`
	}
	if json.Unmarshal(trimmed, &v) != nil {
		return a
	}
	if n, err := strconv.Atoi(string(v.Errcode)); err == nil {
		a.Errcode, a.HasErr = n, true
	}
	if n, err := strconv.Atoi(string(v.Code)); err == nil {
		a.Code, a.HasCode = n, true
	}
	return a
}

// peekedBody is a response body whose start was read already.
type peekedBody struct {
	io.Reader
	io.Closer
}

// scrubbedError is an error whose text had the token replaced by its
// fingerprint.
type scrubbedError struct {
	err error
	msg string
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }

// scrub makes sure err's text does not contain token (a base transport
// may print the request URL).
func scrub(err error, token string) error {
	if token == "" {
		return err
	}
	orig := err.Error()
	msg := orig
	for _, enc := range []string{token, url.QueryEscape(token)} {
		msg = strings.ReplaceAll(msg, enc, "<token "+contract.Fingerprint(token)+">")
	}
	if msg == orig {
		return err
	}
	return &scrubbedError{err: err, msg: msg}
}
