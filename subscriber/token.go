package subscriber

import (
	"log/slog"
	"strconv"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// Token is an immutable snapshot of a record in the tokens bucket: the
// access token (or, for a ticket key, the ticket), the KV revision it was
// stored at, and its lifetime.
// A *Token handed out by a Source is never modified; share it freely
// between goroutines.
//
// Its String, GoString and LogValue methods never print AccessToken, only
// a fingerprint, so that a token logged by accident does not leak. (It is
// not protected against encoding/json: don't marshal it.)
type Token struct {
	// App is the key the token was read under: an app name, or a v2 key
	// (<app>.<ticket>, <component>.<authorizer_appid>,
	// <component>.<authorizer_appid>.<ticket>).
	App string
	// AccessToken is the token to send upstream; for a ticket key (see
	// TicketType), the ticket.
	AccessToken string
	// Revision is the KV revision of the record. Revisions of one bucket
	// only grow (they start over only if the bucket is deleted and created
	// anew); pass it to Source.Refresh when upstream rejects the token.
	Revision uint64
	// ExpiresAt is when upstream stops accepting the token.
	ExpiresAt time.Time
	// FetchedAt is when the refresher fetched the token.
	FetchedAt time.Time
	// Source says why the record was written: startup, scheduled,
	// passive or manual (contract.Source*).
	Source string
	// AppID is the upstream (WeChat) appid the token belongs to; empty
	// for records written before the refresher stored it.
	AppID string
	// Kind is the app's kind (contract.KindWeChat, …, KindFeishu,
	// KindOAuth2); empty for records written before v2 (WeChat's).
	// Transport places the token and recognises rejections by it.
	Kind string
	// TicketType is set when the key holds a ticket record
	// (contract.TicketJSAPI, contract.TicketWXCard,
	// contract.TicketAgentConfig): AccessToken is then the ticket, which
	// no business API takes (Transport refuses it).
	TicketType string
}

// Valid reports whether t is a usable token now (by time.Now): non-nil,
// not empty and not expired. It is ValidAt(time.Now()).
func (t *Token) Valid() bool { return t.ValidAt(time.Now()) }

// ValidAt reports whether t is non-nil, not empty and not yet expired at
// now. A token is expired from its ExpiresAt on.
func (t *Token) ValidAt(now time.Time) bool {
	return t != nil && t.AccessToken != "" && now.Before(t.ExpiresAt)
}

// String describes the token without revealing it:
// "mp-main@42 (token 1a2b3c4d, expires 2025-01-02T03:04:05Z)". The
// fingerprint is the first 8 hex digits of the token's SHA-256, the same
// one the refresher logs.
func (t *Token) String() string {
	if t == nil {
		return "<no token>"
	}
	return t.App + "@" + strconv.FormatUint(t.Revision, 10) +
		" (token " + contract.Fingerprint(t.AccessToken) + ", expires " + t.ExpiresAt.UTC().Format(time.RFC3339) + ")"
}

// GoString is String, so that %#v does not print the token either.
func (t *Token) GoString() string { return t.String() }

// LogValue makes slog log the token as app, revision, fingerprint and
// expiry, never the token itself.
func (t *Token) LogValue() slog.Value {
	if t == nil {
		return slog.StringValue("<no token>")
	}
	return slog.GroupValue(
		slog.String("app", t.App),
		slog.Uint64("revision", t.Revision),
		slog.String("fingerprint", contract.Fingerprint(t.AccessToken)),
		slog.Time("expires_at", t.ExpiresAt),
	)
}

// stored is a record under any key of the tokens bucket: an access token
// record (contract.Record) or a ticket record (contract.TicketRecord),
// whose fields app, key, expires_at, fetched_at and source are the same.
type stored struct {
	contract.Record
	TicketType string `json:"ticket_type"`
	Ticket     string `json:"ticket"`
}

// credential returns the token, or the ticket of a ticket record.
func (r *stored) credential() string {
	if r.AccessToken == "" && r.TicketType != "" {
		return r.Ticket
	}
	return r.AccessToken
}

// storedKey is the key the record says it is stored under: Key, or App
// for a v1 record.
func (r *stored) storedKey() string {
	if r.Key != "" {
		return r.Key
	}
	return r.App
}

// tokenOf makes a Token of a record stored (or replied) at rev under key
// app.
func tokenOf(app string, rec *stored, rev uint64) *Token {
	t := &Token{
		App:         app,
		AccessToken: rec.credential(),
		Revision:    rev,
		ExpiresAt:   rec.ExpiresAt,
		FetchedAt:   rec.FetchedAt,
		Source:      rec.Source,
		AppID:       rec.AppID,
		Kind:        rec.Kind,
	}
	if rec.AccessToken == "" {
		t.TicketType = rec.TicketType
	}
	return t
}
