package subscriber

import (
	"errors"
	"strconv"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// Sentinel errors. Compare with errors.Is: most errors returned by this
// package wrap one of these together with the underlying cause.
var (
	// ErrClosed is returned by every method of a Source (Token,
	// AccessToken, Refresh, WaitUntilUpdated, Listener.Next, and by
	// RoundTrip) once Close has been called.
	ErrClosed = errors.New("subscriber: source closed")

	// ErrNoToken is wrapped by the error NewSource returns when its ctx
	// ends before a valid token arrived. The error also wraps ctx.Err()
	// and says what the Source was waiting for (the bucket or the key did
	// not exist yet, the stored token had expired, the refresher did not
	// answer). NewSource on a closed connection returns it too, wrapping
	// nats.ErrConnectionClosed.
	ErrNoToken = errors.New("subscriber: no valid token yet")

	// ErrExpired is returned, together with the last token, by Token and
	// AccessToken when the token the Source holds has passed its
	// ExpiresAt and no newer one has arrived (the refresher is down or
	// cannot reach upstream). The token is still returned by both so that
	// a caller may log it or try it; upstream will most likely reject it.
	// The Source keeps asking the refresher for a new one meanwhile.
	ErrExpired = errors.New("subscriber: token expired")

	// ErrNoResponders is wrapped by the error Refresh returns when no
	// refresher answered token.refresh.<app> (none running, or a leader
	// handover) until the caller's ctx ended; the error wraps ctx.Err()
	// too. Refresh retries "no responders" with backoff until then.
	ErrNoResponders = errors.New("subscriber: no refresher answered token.refresh")

	// ErrBadReply is wrapped by the error Refresh returns when a reply
	// cannot be understood: not JSON, another app's record, or no token.
	ErrBadReply = errors.New("subscriber: bad token.refresh reply")

	// ErrInvalidArgument is wrapped by the error NewSource returns for an
	// invalid app name, bucket name or option value, and by Transport's
	// RoundTrip for a request it cannot send (or with a Source of a
	// ticket key, which holds no access token). No I/O is done then.
	ErrInvalidArgument = errors.New("subscriber: invalid argument")
)

// RequestError is the refresher's error reply to a token.refresh request
// (the micro headers Nats-Service-Error-Code and Nats-Service-Error, or
// the JSON body {"error":{"code","message"}}), or to a token.sign
// request. Refresh and Sign return it as is; match it with errors.As:
//
//	var re *subscriber.RequestError
//	if errors.As(err, &re) && re.Code == contract.CodeTooMany { ... }
//
// Codes (contract.Code*): 400 bad request, 404 unknown app, 429 quota
// exhausted or forced refresh limited, 502 the upstream fetch failed, 503
// no leader / shutting down / no token yet. Refresh retries 503 itself
// until its ctx ends and returns the last one then.
type RequestError struct {
	// Code is the error code of the reply.
	Code int
	// Message is the refresher's description; it never contains a secret.
	Message string
	// RetryAt, when set, is when the refresher resumes upstream calls
	// (it paused them after a failure); asking before then gets the same
	// answer, so Refresh waits until then before asking again.
	RetryAt time.Time

	op string // "token.sign", or "" for token.refresh
}

// Error returns "subscriber: token.refresh failed: <code> <message>"
// (token.sign for an error reply to Sign).
func (e *RequestError) Error() string {
	op := e.op
	if op == "" {
		op = "token.refresh"
	}
	return "subscriber: " + op + " failed: " + strconv.Itoa(e.Code) + " " + e.Message
}

// Retryable reports whether asking again later may succeed: 503 (no
// leader, shutting down, paused) and 502 (the upstream fetch failed). The
// name is the one every error type of tokenkeeper uses for this
// (wechat.Error, wechat.HTTPError).
func (e *RequestError) Retryable() bool {
	return e.Code == contract.CodeUnavailable || e.Code == contract.CodeUpstream
}
