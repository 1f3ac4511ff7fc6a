package wechat

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Paths of the token endpoints, below the base URL.
const (
	classicPath = "/cgi-bin/token"
	stablePath  = "/cgi-bin/stable_token"
	wecomPath   = "/cgi-bin/gettoken"
	feishuPath  = "/open-apis/auth/v3/tenant_access_token/internal"
)

// Client fetches access tokens from the WeChat token endpoints. It holds
// no token and no secret; one Client serves any number of apps and is
// safe for concurrent use. The zero Client works, with the defaults of
// [New].
type Client struct {
	hc      *http.Client
	base    string
	timeout time.Duration
	retry   RetryPolicy
	maxBody int64
	hook    func(appid string, attempt int, err error, d time.Duration)
}

// New returns a Client. It never fails and never panics; arguments are
// checked by Fetch. Options:
//
//   - [WithHTTPClient]: the *http.Client to send with (default: a client on
//     http.DefaultTransport); redirects are never followed.
//   - [WithBaseURL]: the API origin (default [DefaultBaseURL]).
//   - [WithTimeout]: the bound of each attempt (default [DefaultTimeout]).
//   - [WithRetry]: the retry policy (default 4 attempts, 200 ms–5 s backoff).
//   - [WithMaxBody]: the largest body read (default [DefaultMaxBody]).
//   - [WithAttemptHook]: a callback after every HTTP attempt.
func New(opts ...Option) *Client {
	c := &Client{
		hc:      defaultHTTPClient,
		base:    DefaultBaseURL,
		timeout: DefaultTimeout,
		retry:   RetryPolicy{}.normalized(),
		maxBody: DefaultMaxBody,
	}
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	return c
}

// defaultHTTPClient sends with http.DefaultTransport and never follows
// redirects.
var defaultHTTPClient = noRedirects(&http.Client{Transport: defaultTransport()})

// defaultTransport is http.DefaultTransport keeping enough idle
// connections per host for the refresher's concurrent fetches.
func defaultTransport() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 256 // refresh.concurrency is at most 256
	return t
}

// request is one prepared token request, rebuilt for every attempt.
type request struct {
	method      string
	url         string // with the secret; never put in an error
	redactedURL string // secret=REDACTED, password hidden
	body        []byte // stable_token JSON; nil for the classic GET
	// feishu: the answer is Feishu's {"code","msg",…}, which Feishu also
	// sends with HTTP 4xx statuses.
	feishu bool
	// maxBody, if larger than the client's limit, is this request's
	// (an answer that is long by design: a page of authorizers).
	maxBody int64
}

// feishuBody is the JSON request body of Feishu's tenant_access_token.
type feishuBody struct {
	AppID     string `json:"app_id"`
	AppSecret string `json:"app_secret"`
}

// stableBody is the JSON request body of /cgi-bin/stable_token.
type stableBody struct {
	GrantType    string `json:"grant_type"`
	AppID        string `json:"appid"`
	Secret       string `json:"secret"`
	ForceRefresh bool   `json:"force_refresh"`
}

// prepare validates the arguments of Fetch and builds the request.
func prepare(kind, base string, cred Credentials, force bool, sc scrubber) (request, error) {
	if !ValidKind(kind) {
		return request{}, fmt.Errorf("%w %q (want %q, %q, %q or %q)", ErrUnknownKind, sc.scrub(kind), KindClassic, KindStable, KindWeCom, KindFeishu)
	}
	if cred.AppID == "" {
		return request{}, fmt.Errorf("%w: empty AppID", ErrInvalidArgument)
	}
	if cred.Secret == "" {
		return request{}, fmt.Errorf("%w: empty Secret for appid %s", ErrInvalidArgument, cred.AppID)
	}
	u, err := url.Parse(base)
	if err != nil {
		// url.Parse quotes its input; keep none of it.
		return request{}, fmt.Errorf("%w: base URL does not parse", ErrInvalidArgument)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return request{}, fmt.Errorf("%w: base URL %q is not an absolute http(s) URL without query or fragment",
			ErrInvalidArgument, sc.redactURL(u.String()))
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	switch kind {
	case KindClassic, KindWeCom:
		path, q := classicPath, func(secret string) string {
			return "grant_type=client_credential&appid=" + url.QueryEscape(cred.AppID) + "&secret=" + url.QueryEscape(secret)
		}
		if kind == KindWeCom {
			path, q = wecomPath, func(secret string) string {
				return "corpid=" + url.QueryEscape(cred.AppID) + "&corpsecret=" + url.QueryEscape(secret)
			}
		}
		u.Path += path
		u.RawQuery = q(redacted)
		red := sc.scrub(u.Redacted())
		u.RawQuery = q(cred.Secret)
		return request{method: http.MethodGet, url: u.String(), redactedURL: red}, nil
	case KindFeishu:
		u.Path += feishuPath
		body, err := json.Marshal(feishuBody{AppID: cred.AppID, AppSecret: cred.Secret})
		if err != nil { // cannot happen for a struct of strings
			return request{}, fmt.Errorf("%w: encoding the request body", ErrInvalidArgument)
		}
		return request{method: http.MethodPost, url: u.String(), redactedURL: sc.scrub(u.Redacted()), body: body, feishu: true}, nil
	}
	u.Path += stablePath
	body, err := json.Marshal(stableBody{GrantType: "client_credential", AppID: cred.AppID, Secret: cred.Secret, ForceRefresh: force})
	if err != nil { // cannot happen for a struct of strings and a bool
		return request{}, fmt.Errorf("%w: encoding the request body", ErrInvalidArgument)
	}
	return request{method: http.MethodPost, url: u.String(), redactedURL: sc.scrub(u.Redacted()), body: body}, nil
}

// Fetch fetches a new token for cred from the endpoint of kind:
// [KindClassic] sends GET {base}/cgi-bin/token?grant_type=client_credential
// &appid=…&secret=…; [KindStable] sends POST {base}/cgi-bin/stable_token
// with the JSON body {"grant_type","appid","secret","force_refresh"}, where
// force_refresh is force (force is ignored for KindClassic). A non-empty
// base overrides the client's base URL.
//
// Retryable failures (see [IsRetryable]) are retried under the client's
// [RetryPolicy], each attempt bounded by its timeout; any other failure
// ends Fetch at once. When ctx ends, Fetch returns at once, during a
// request or a backoff, with an error that matches both ctx.Err() and the
// last attempt's error.
//
// The returned error is one of, or wraps one of: an [*Error] (errcode
// answer), an [*HTTPError] (status other than 200), [ErrBadResponse], a
// *url.Error with a redacted URL (transport failures and timeouts; it
// satisfies net.Error), [ErrUnknownKind] or [ErrInvalidArgument]. Its text
// names the kind, the AppID and the number of attempts, and never
// contains the secret.
func (c *Client) Fetch(ctx context.Context, kind, base string, cred Credentials, force bool) (Token, error) {
	return c.FetchGated(ctx, kind, base, cred, force, nil)
}

// Gate is called before every attempt of a fetch, retries included, with
// the fetch's ctx and the attempt's number (from 1). It returns the ctx the
// attempt runs under (its deadline bounds the attempt, on top of the
// client's timeout) and its cancel func; or an error, and then no request
// is sent and the fetch ends with that error (wrapped). The refresher
// uses it to send each attempt only inside its lease's trust window.
type Gate func(ctx context.Context, attempt int) (context.Context, context.CancelFunc, error)

// FetchGated is Fetch with gate called before each attempt (nil: none).
func (c *Client) FetchGated(ctx context.Context, kind, base string, cred Credentials, force bool, gate Gate) (Token, error) {
	sc := newScrubber(cred.Secret)
	if base == "" {
		base = c.baseFor(kind)
	}
	req, err := prepare(kind, base, cred, force, sc)
	if err != nil {
		return Token{}, newFetchError(sc, fmt.Sprintf("fetch %s token for appid %s: %s",
			kind, cred.AppID, strings.TrimPrefix(err.Error(), "wechat: ")), err)
	}
	var tok Token
	err = c.run(ctx, fmt.Sprintf("%s token for appid %s", kind, cred.AppID), cred.AppID, urlPath(req.url), sc, gate, func(actx context.Context) error {
		data, ct, err := c.roundTrip(actx, req, sc)
		switch {
		case err == nil && req.feishu:
			tok, err = parseFeishuToken(data, ct, sc)
		case err == nil:
			tok, err = parseToken(data, ct, sc)
		}
		return err
	})
	return tok, err
}

// baseFor returns the API origin of kind: the client's base URL if
// WithBaseURL set one, otherwise the kind's own default.
func (c *Client) baseFor(kind string) string {
	if c.base != "" && c.base != DefaultBaseURL {
		return c.base
	}
	return DefaultBase(kind)
}

// Run makes the attempts of one upstream call that is not one of the
// client's own endpoints (the refresher's OAuth2 provider uses it): gate
// before each attempt, retryable failures (see [IsRetryable]) retried
// under the client's [RetryPolicy], ctx honoured during attempts and
// backoffs, each attempt bounded by the client's timeout. what names the
// call in errors ("oauth2 token for client x"), path is the endpoint's
// path for attempt observers (WithAttemptObserver); every error's text
// has secret scrubbed out.
func (c *Client) Run(ctx context.Context, what, path, secret string, gate Gate, try func(context.Context) error) error {
	sc := newScrubber(secret)
	return c.run(ctx, what, what, path, sc, gate, func(actx context.Context) error {
		actx, cancel := context.WithTimeout(actx, cmp.Or(c.timeout, DefaultTimeout))
		defer cancel()
		if err := try(actx); err != nil {
			return sc.sanitize(err)
		}
		return nil
	})
}

// HTTPClient returns the *http.Client the client sends with (it never
// follows redirects).
func (c *Client) HTTPClient() *http.Client {
	if c.hc == nil {
		return defaultHTTPClient
	}
	return c.hc
}

// run makes the attempts of one fetch: gate before each, retryable
// failures retried under the client's policy, ctx honoured during requests
// and backoffs. what ("jsapi ticket for appid wx…") names the fetch in
// errors; hookID is what the attempt hook is given.
func (c *Client) run(ctx context.Context, what, hookID, path string, sc scrubber, gate Gate, try func(context.Context) error) error {
	observe, _ := ctx.Value(observerKey{}).(func(Attempt))
	policy := c.retry.normalized()
	var last error
	for attempt := 1; ; attempt++ {
		if ctx.Err() != nil {
			return c.stopped(ctx, what, attempt-1, last, sc)
		}
		actx, cancel := ctx, context.CancelFunc(func() {})
		if gate != nil {
			var gerr error
			if actx, cancel, gerr = gate(ctx, attempt); gerr != nil {
				msg := fmt.Sprintf("fetch %s stopped before attempt %d: %v", what, attempt, gerr)
				if last == nil {
					return newFetchError(sc, msg, gerr)
				}
				return newFetchError(sc, msg+"; last error: "+strings.TrimPrefix(last.Error(), "wechat: "), gerr, last)
			}
		}
		start := time.Now()
		err := try(actx)
		cancel()
		if c.hook != nil {
			c.hook(hookID, attempt, err, time.Since(start))
		}
		if observe != nil {
			observe(Attempt{Number: attempt, Path: path, Start: start, Duration: time.Since(start), Err: err})
		}
		if err == nil {
			return nil
		}
		last = err
		if ctx.Err() != nil {
			return c.stopped(ctx, what, attempt, last, sc)
		}
		if attempt >= policy.Attempts || !IsRetryable(err) {
			return newFetchError(sc, fmt.Sprintf("fetch %s failed after %s: %s",
				what, attempts(attempt), strings.TrimPrefix(err.Error(), "wechat: ")), err)
		}
		t := time.NewTimer(policy.backoff(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return c.stopped(ctx, what, attempt, last, sc)
		case <-t.C:
		}
	}
}

// stopped is the error of a fetch whose ctx ended.
func (c *Client) stopped(ctx context.Context, what string, n int, last error, sc scrubber) error {
	msg := fmt.Sprintf("fetch %s stopped after %s: %v", what, attempts(n), ctx.Err())
	if last == nil {
		return newFetchError(sc, msg, ctx.Err())
	}
	return newFetchError(sc, msg+"; last error: "+strings.TrimPrefix(last.Error(), "wechat: "), ctx.Err(), last)
}

func attempts(n int) string {
	if n == 1 {
		return "1 attempt"
	}
	return strconv.Itoa(n) + " attempts"
}

// roundTrip makes one HTTP request and returns the body of a 200 answer
// and its Content-Type.
func (c *Client) roundTrip(ctx context.Context, r request, sc scrubber) ([]byte, string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(c.timeout, DefaultTimeout))
	defer cancel()
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	hr, err := http.NewRequestWithContext(ctx, r.method, r.url, body)
	if err != nil {
		return nil, "", sc.transportError(r.method, r.redactedURL, err)
	}
	hr.Header.Set("Accept", "application/json")
	if r.body != nil {
		hr.Header.Set("Content-Type", "application/json")
	}
	hc := c.hc
	if hc == nil {
		hc = defaultHTTPClient
	}
	resp, err := hc.Do(hr)
	if err != nil {
		return nil, "", sc.transportError(r.method, r.redactedURL, err)
	}
	defer resp.Body.Close()
	maxBody := max(cmp.Or(c.maxBody, DefaultMaxBody), r.maxBody)
	if resp.StatusCode != http.StatusOK {
		if r.feishu && resp.StatusCode >= 400 && resp.StatusCode < 500 {
			// Feishu answers errors as {"code","msg"} with a 4xx status.
			data, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
			if code, msg, ok := parseFeishuCode(data); ok && code != 0 {
				return nil, "", &Error{Code: code, Msg: sc.cleanMsg(msg)}
			}
			return nil, "", &HTTPError{Status: resp.StatusCode}
		}
		// Drain a little so the connection can be reused; ignore the content.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
		return nil, "", &HTTPError{Status: resp.StatusCode}
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, "", &url.Error{Op: r.method, URL: r.redactedURL, Err: sc.sanitize(&bodyError{err})}
	}
	if int64(len(data)) > maxBody {
		return nil, "", fmt.Errorf("%w: body larger than %d bytes", ErrBadResponse, maxBody)
	}
	return data, resp.Header.Get("Content-Type"), nil
}

// fetchError is every error Fetch returns: a message
// built once and scrubbed of the secret, and the errors it wraps. Every
// fmt verb prints the message only.
type fetchError struct {
	msg  string
	errs []error
}

// newFetchError returns the error with message msg, scrubbed, wrapping errs.
func newFetchError(sc scrubber, msg string, errs ...error) *fetchError {
	return &fetchError{msg: sc.scrub("wechat: " + msg), errs: errs}
}

func (e *fetchError) Error() string   { return e.msg }
func (e *fetchError) Unwrap() []error { return e.errs }

// Format prints the scrubbed message for every verb, so that %+v and %#v
// do not walk into the wrapped errors.
func (e *fetchError) Format(f fmt.State, verb rune) {
	if verb == 'q' {
		_, _ = io.WriteString(f, strconv.Quote(e.msg))
		return
	}
	_, _ = io.WriteString(f, e.msg)
}

// Timeout reports whether the last attempt timed out, so that a fetch
// error satisfies net.Error-like checks directly.
func (e *fetchError) Timeout() bool { return isTimeout(e.errs[len(e.errs)-1]) }
