package contract

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Names of the contract.
const (
	// DefaultBucket is the KV bucket that holds one record per app.
	DefaultBucket = "tokens"
	// UpdatedPrefix prefixes the event subject: token.updated.<key>.
	UpdatedPrefix = "token.updated."
	// RefreshPrefix prefixes the request subject: token.refresh.<key>.
	RefreshPrefix = "token.refresh."
	// SignPrefix prefixes the JS-SDK signing subject: token.sign.<key>
	// (v2).
	SignPrefix = "token.sign."
	// ServiceName is the NATS micro service name of the refresh endpoint.
	ServiceName = "tokenkeeper"
	// MaxRequestBody is the largest token.refresh request body accepted.
	MaxRequestBody = 1024
)

// Headers of an error reply to a token.refresh request: those of a NATS
// micro error (the values of micro.ErrorCodeHeader and micro.ErrorHeader).
// The code is a decimal string; the body is an ErrorReply with the same
// code and message.
const (
	ErrorCodeHeader = "Nats-Service-Error-Code"
	ErrorHeader     = "Nats-Service-Error"
)

// ServiceInboxPrefix is the inbox prefix a NATS user of role service must
// connect with (nats.CustomInboxPrefix in Go): "_INBOX_<user>". Its
// replies carry tokens; with the shared "_INBOX." prefix every holder of
// "_INBOX.>" could read them.
func ServiceInboxPrefix(user string) string { return "_INBOX_" + user }

// SourceHeader is an optional header of a token.refresh request: the
// value "manual" (tokenctl refresh) records the write as manual instead of
// passive.
const SourceHeader = "Tokenkeeper-Source"

// Sources say why a record was written.
const (
	SourceStartup   = "startup"
	SourceScheduled = "scheduled"
	SourcePassive   = "passive"
	SourceManual    = "manual"
)

// UpdatedSubject is the subject of the event published after every write
// of the record under key (an app name in v1, any key of ValidKey in v2).
func UpdatedSubject(key string) string { return UpdatedPrefix + key }

// RefreshSubject is the subject on which the refresher serves passive
// refresh requests for key.
func RefreshSubject(key string) string { return RefreshPrefix + key }

// SignSubject is the subject of JS-SDK signing requests for key (v2):
// token.sign.<app> or token.sign.<component>.<authorizer>.
func SignSubject(key string) string { return SignPrefix + key }

// Record is the JSON value stored under the app's key in the bucket.
// Fields may be added; none are removed.
type Record struct {
	App         string    `json:"app"`
	AccessToken string    `json:"access_token"`
	ExpiresAt   time.Time `json:"expires_at"`
	FetchedAt   time.Time `json:"fetched_at"`
	Source      string    `json:"source"`
	// AppID is the upstream app the token belongs to (added in v1.1; may
	// be empty in records written before). A refresher whose config names
	// another appid for this app does not reuse the token.
	AppID string `json:"appid,omitempty"`
	// Kind is the app's kind (v2: wechat, wechat-stable, wecom, feishu,
	// oauth2); empty in records written before, which are WeChat's. It
	// says where the token goes in a business request and which answers
	// reject it (PlacementOf, RejectedAnswer).
	Kind string `json:"kind,omitempty"`
	// Key is the full key of a v2 record stored under another key than
	// its app: <component>.<authorizer_appid>. Empty in records stored
	// under <app>; read an empty Key as App.
	Key string `json:"key,omitempty"`
	// AuthorizerAppID is set in an authorizer's record (kind
	// wechat-component, key <component>.<authorizer_appid>): the
	// merchant's appid whose token this is. AppID is then the
	// component's appid.
	AuthorizerAppID string `json:"authorizer_appid,omitempty"`
}

// Limits of a valid Record (see Record.Validate).
const (
	// MaxTokenSize is the longest access token a record may hold, in
	// bytes. WeChat asks for at least 512 characters of storage; 8 KiB
	// leaves room for any upstream and bounds what a reader holds.
	MaxTokenSize = 8 << 10
	// MaxTokenLifetime is the longest lifetime (expires_at − fetched_at)
	// a writer stores; an upstream that announces a longer one gets its
	// token refreshed as if it had announced this (WeChat's is 7200 s).
	MaxTokenLifetime = 24 * time.Hour
	// LifetimeSlack is what readers allow above MaxTokenLifetime, for
	// writers that round differently.
	LifetimeSlack = 5 * time.Minute
)

// ErrInvalidRecord marks a record that Record.Validate rejects: readers
// treat it as missing (never serve it) and replace it.
var ErrInvalidRecord = errors.New("invalid token record")

// Validate reports what is wrong with rec read under key: an empty token
// or one over MaxTokenSize, an app that is not key (for a record with a
// Key: a Key that is not key, or an app that is not its first segment),
// an expires_at before
// fetched_at or more than maxLifetime after it (pass MaxTokenLifetime +
// LifetimeSlack). The error wraps ErrInvalidRecord, names every problem
// and never contains the token.
func (rec Record) Validate(key string, maxLifetime time.Duration) error {
	var bad []string
	switch n := len(rec.AccessToken); {
	case n == 0:
		bad = append(bad, "empty access_token")
	case n > MaxTokenSize:
		bad = append(bad, fmt.Sprintf("access_token of %d bytes is over the limit of %d", n, MaxTokenSize))
	}
	switch app, _, _ := strings.Cut(key, "."); {
	case rec.Key != "" && rec.Key != key:
		bad = append(bad, fmt.Sprintf("key %s is not the key %s", quoteShort(rec.Key), quoteShort(key)))
	case rec.Key != "" && rec.App != app:
		bad = append(bad, fmt.Sprintf("app %s is not the first segment of the key %s", quoteShort(rec.App), quoteShort(key)))
	case rec.Key == "" && rec.App != key:
		bad = append(bad, fmt.Sprintf("app %s is not the key %s", quoteShort(rec.App), quoteShort(key)))
	}
	if p := timesProblem(rec.FetchedAt, rec.ExpiresAt, maxLifetime); p != "" {
		bad = append(bad, p)
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrInvalidRecord, strings.Join(bad, "; "))
}

// timesProblem says what is wrong with a record's fetched_at and
// expires_at ("" if nothing): both set, expires_at not before fetched_at,
// the lifetime at most maxLifetime.
func timesProblem(fetched, expires time.Time, maxLifetime time.Duration) string {
	switch {
	case fetched.IsZero() || expires.IsZero():
		return "fetched_at or expires_at missing"
	case expires.Before(fetched):
		return fmt.Sprintf("expires_at %s is before fetched_at %s",
			expires.UTC().Format(time.RFC3339), fetched.UTC().Format(time.RFC3339))
	case expires.Sub(fetched) > maxLifetime:
		return fmt.Sprintf("lifetime %s (expires_at %s) is over the limit of %s",
			expires.Sub(fetched).Round(time.Second), expires.UTC().Format(time.RFC3339), maxLifetime)
	}
	return ""
}

// quoteShort quotes s for an error message, cut to 64 bytes: a foreign
// record's fields are not trusted to be short or printable.
func quoteShort(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return strconv.Quote(strings.ToValidUTF8(s, "?"))
}

// Event is the payload of token.updated.<key>. It never carries the token
// (or ticket).
type Event struct {
	App string `json:"app"`
	// Key is the full key written (v2), set in events of v2 keys such as
	// <app>.<ticket>. Events of an app's v1 key <app> leave it out (their
	// payload is unchanged); read an empty Key as App.
	Key       string    `json:"key,omitempty"`
	Revision  uint64    `json:"revision"`
	ExpiresAt time.Time `json:"expires_at"`
	FetchedAt time.Time `json:"fetched_at"`
	Source    string    `json:"source"`
}

// RefreshRequest is the body of a token.refresh.<app> request. An empty
// body means "give me a valid token"; StaleRevision N means "the token at
// revision N was rejected".
type RefreshRequest struct {
	StaleRevision *uint64 `json:"stale_revision,omitempty"`
}

// RefreshReply is the successful reply to a refresh request: the stored
// record plus its KV revision.
type RefreshReply struct {
	Record
	Revision uint64 `json:"revision"`
}

// ErrorReply is the JSON body of a failed refresh request. The same code
// and message travel in the Nats-Service-Error-Code and Nats-Service-Error
// headers.
type ErrorReply struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the error object of an ErrorReply.
type ErrorDetail struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	// RetryAt, when set, says when upstream calls resume (added in v1.2):
	// a request before then gets the same answer.
	RetryAt time.Time `json:"retry_at,omitzero"`
}

// Error codes of refresh replies (HTTP-like, so they read naturally).
const (
	CodeBadRequest  = 400 // bad JSON, wrong type, oversized body
	CodeNotFound    = 404 // unknown app
	CodeTooMany     = 429 // quota exhausted or forced refresh limited
	CodeUpstream    = 502 // the upstream fetch failed
	CodeUnavailable = 503 // not leader / shutting down / no token yet / overloaded
	CodeInternal    = 500 // the refresher failed while handling the request (a bug; logged)
)

// TimeFormat is how times are written: RFC 3339 in UTC. encoding/json
// writes time.Time as RFC 3339 already; records are stored in UTC.
const TimeFormat = time.RFC3339Nano
