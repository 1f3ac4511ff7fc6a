package wechat

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
)

// Sentinel errors. An errcode answer is returned as an [*Error], which
// matches (errors.Is) the sentinels listed for its code below; several
// sentinels may match one code (40001 is both [ErrInvalidCredential] and
// [ErrTokenRejected]). Compare with errors.Is, never with ==.
var (
	// ErrBusy is matched by errcode -1, "system error": the upstream is
	// busy. Retryable; Fetch retries it.
	ErrBusy = errors.New("wechat: upstream busy (errcode -1)")

	// ErrInvalidCredential is matched by errcode 40001 ("invalid
	// credential") and 40125 ("invalid appsecret") from the token
	// endpoint: the AppSecret is wrong or was reset in the WeChat console.
	// Permanent until the configuration changes.
	ErrInvalidCredential = errors.New("wechat: invalid credential (wrong or rotated AppSecret)")

	// ErrInvalidGrantType is matched by errcode 40002, "invalid grant_type".
	// Permanent; it means a broken request or a non-WeChat upstream.
	ErrInvalidGrantType = errors.New("wechat: invalid grant_type")

	// ErrInvalidAppID is matched by errcode 40013, "invalid appid": the
	// AppID does not exist or does not match the secret. Permanent.
	ErrInvalidAppID = errors.New("wechat: invalid appid")

	// ErrSecretFrozen is matched by errcode 40243: the AppSecret was frozen
	// in the WeChat console and must be unfrozen there. Permanent.
	ErrSecretFrozen = errors.New("wechat: appsecret frozen")

	// ErrIPNotAllowed is matched by errcode 40164: the caller's IP is not
	// on the app's IP allow list. Permanent until the list changes.
	ErrIPNotAllowed = errors.New("wechat: caller IP not on the allow list")

	// ErrRiskControl is matched by the errcodes of WeChat's IP risk
	// control, where an administrator must confirm the calling IP: 89503
	// (waiting for confirmation), 89501 (confirmation pending), 89506 and
	// 89507 (an administrator refused this IP recently). Permanent: do not
	// hammer, an administrator has to act.
	ErrRiskControl = errors.New("wechat: call blocked by risk control, administrator confirmation needed")

	// ErrQuotaExceeded is matched by errcode 45009: the day's quota of the
	// endpoint is used up. Permanent until the quota resets (or is reset
	// in the console).
	ErrQuotaExceeded = errors.New("wechat: daily API quota exceeded")

	// ErrRateLimited is matched by errcode 45011: the per-minute quota is
	// exceeded, or stable_token was forced again within its 30-second
	// interval. Not retried by Fetch (its backoff is far shorter than the
	// limit); try again on the next schedule.
	ErrRateLimited = errors.New("wechat: API rate limited")

	// ErrTokenRejected is matched by errcode 40001 ("invalid credential,
	// access_token is invalid or not latest"), 40014 ("invalid
	// access_token") and 42001 ("access_token expired"). The token endpoint
	// itself answers 40001 for a wrong secret, but business APIs answer
	// these codes when the access token they were given was rejected;
	// callers of business APIs (the subscriber package) match it to ask
	// for a refresh. See also contract.RejectedTokenCode.
	ErrTokenRejected = errors.New("wechat: the access token was rejected")

	// ErrBadResponse is wrapped by every error about a response that is
	// not a token answer: an empty body, a body that is not JSON (an HTML
	// error page from a proxy), JSON with neither access_token nor a
	// non-zero errcode, an expires_in that is missing or not positive, or
	// a body larger than the client's limit ([WithMaxBody]). Retryable:
	// such bodies usually come from a proxy or gateway in trouble.
	ErrBadResponse = errors.New("wechat: bad response")

	// ErrUnknownKind is wrapped by the error Fetch returns for a kind that
	// is neither [KindClassic] nor [KindStable]. No request is made.
	ErrUnknownKind = errors.New("wechat: unknown kind")

	// ErrInvalidArgument is wrapped by the error Fetch returns when the
	// request cannot be built: an empty AppID or Secret, or a base URL that
	// is not an absolute http or https URL without query or fragment. No
	// request is made.
	ErrInvalidArgument = errors.New("wechat: invalid argument")
)

// codeSentinels lists, for each known errcode, the sentinels its *Error
// matches.
var codeSentinels = map[int][]error{
	-1:    {ErrBusy},
	40001: {ErrInvalidCredential, ErrTokenRejected},
	40125: {ErrInvalidCredential},
	40002: {ErrInvalidGrantType},
	40013: {ErrInvalidAppID},
	40243: {ErrSecretFrozen},
	40164: {ErrIPNotAllowed},
	89501: {ErrRiskControl},
	89503: {ErrRiskControl},
	89506: {ErrRiskControl},
	89507: {ErrRiskControl},
	45009: {ErrQuotaExceeded},
	45011: {ErrRateLimited},
	40014: {ErrTokenRejected},
	42001: {ErrTokenRejected},

	// WeCom (企业微信) shares WeChat's codes above and adds these.
	60020: {ErrIPNotAllowed},      // not allow to access from your ip
	40091: {ErrInvalidCredential}, // secret is invalid
	41004: {ErrInvalidCredential}, // corpsecret missing

	// Feishu's codes live far from WeChat's, so one table serves both.
	10014:    {ErrInvalidCredential}, // app secret invalid
	10003:    {ErrInvalidAppID},      // invalid param (app_id)
	99991400: {ErrRateLimited},       // request trigger frequency limit
	99991663: {ErrTokenRejected},     // invalid tenant access token
	99991668: {ErrTokenRejected},     // invalid access token
	99991671: {ErrTokenRejected},     // invalid token format
	99991677: {ErrTokenRejected},     // token expired
}

// Error is an errcode answer of a WeChat API: {"errcode":N,"errmsg":"…"}
// with N != 0. Msg is the upstream's errmsg with the request's secret
// scrubbed out, control characters replaced and its length bounded.
//
// Match a class of codes with errors.Is against the sentinels (ErrBusy,
// ErrInvalidCredential, ...) or one exact code with
// errors.Is(err, &Error{Code: 40013}).
type Error struct {
	// Code is the errcode.
	Code int
	// Msg is the sanitized errmsg.
	Msg string
}

// Error returns "wechat: errcode <Code>: <Msg>".
func (e *Error) Error() string {
	return "wechat: errcode " + strconv.Itoa(e.Code) + ": " + e.Msg
}

// Retryable reports whether asking again soon can succeed: true only for
// -1 (busy). Every other code, known or not, is a configuration or policy
// answer and is not retried.
func (e *Error) Retryable() bool { return e.Code == -1 }

// Is reports whether e matches target: one of the sentinels listed for
// e.Code, or an *Error with the same Code.
func (e *Error) Is(target error) bool {
	if t, ok := target.(*Error); ok {
		return t != nil && t.Code == e.Code
	}
	for _, s := range codeSentinels[e.Code] {
		if s == target {
			return true
		}
	}
	return false
}

// HTTPError is returned when the upstream answers with an HTTP status
// other than 200. The body is not included: it may echo the request.
type HTTPError struct {
	// Status is the HTTP status code.
	Status int
}

// Error returns "wechat: HTTP <status> <text>".
func (e *HTTPError) Error() string {
	s := "wechat: HTTP " + strconv.Itoa(e.Status)
	if t := http.StatusText(e.Status); t != "" {
		s += " " + t
	}
	return s
}

// Retryable reports whether the status is worth another try: 5xx, 429 Too
// Many Requests and 408 Request Timeout. Other statuses, redirects
// included (Fetch never follows redirects), are permanent.
func (e *HTTPError) Retryable() bool {
	return e.Status >= 500 || e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout
}

// IsRetryable reports whether err is a failure that trying again can cure:
//
//   - retryable: errcode -1, transport errors (connection refused or
//     reset, DNS failures, TLS errors), timeouts, HTTP 5xx/429/408, and
//     [ErrBadResponse];
//   - not retryable: nil, context.Canceled anywhere in the chain, every
//     other errcode (40001, 40002, 40013, 40125, 40164, 40243, 45009,
//     45011, 89503, ...), other HTTP statuses, [ErrUnknownKind],
//     [ErrInvalidArgument], and errors it does not know.
//
// An error Fetch returned because its context's deadline passed is
// retryable (context.DeadlineExceeded): a later call may succeed.
func IsRetryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, ErrUnknownKind) || errors.Is(err, ErrInvalidArgument) {
		return false
	}
	var we *Error
	if errors.As(err, &we) {
		return we.Retryable()
	}
	var he *HTTPError
	if errors.As(err, &he) {
		return he.Retryable()
	}
	if errors.Is(err, ErrBadResponse) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return true
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne)
}
