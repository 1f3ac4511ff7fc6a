// Package natsconf holds the names and shapes of the tokenkeeper wire
// contract (bucket, keys, subjects, records, events), NATS connection
// options, the embedded nats-server, and bucket provisioning.
//
// The wire contract is documented in docs/protocol.md; everything in this
// file is part of it and changes only by adding.
package natsconf

import (
	"regexp"
	"time"
)

// Names of the contract.
const (
	// DefaultBucket is the KV bucket that holds one record per app.
	DefaultBucket = "tokens"
	// UpdatedPrefix prefixes the event subject: token.updated.<app>.
	UpdatedPrefix = "token.updated."
	// RefreshPrefix prefixes the request subject: token.refresh.<app>.
	RefreshPrefix = "token.refresh."
	// ServiceName is the NATS micro service name of the refresh endpoint.
	ServiceName = "tokenkeeper"
	// MaxRequestBody is the largest token.refresh request body accepted.
	MaxRequestBody = 1024
)

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

var appNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidAppName reports whether name is a legal app name: 1–64 characters
// of [A-Za-z0-9_-], so that it is one NATS subject token and one KV key.
func ValidAppName(name string) bool { return appNameRE.MatchString(name) }

// UpdatedSubject is the subject of the event published after every write
// of app's record.
func UpdatedSubject(app string) string { return UpdatedPrefix + app }

// RefreshSubject is the subject on which the refresher serves passive
// refresh requests for app.
func RefreshSubject(app string) string { return RefreshPrefix + app }

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
}

// Event is the payload of token.updated.<app>. It never carries the token.
type Event struct {
	App       string    `json:"app"`
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
