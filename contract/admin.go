package contract

import (
	"errors"
	"fmt"
	"time"
)

// Operator requests (v2): the leading refresher serves the NATS micro
// service AdminServiceName on token.admin.authorizers.<op>.<component>
// for the operator role (tokenctl authorizers). Services may not publish
// there: their permissions deny token.admin.>. Replies carry appids,
// states, times and refresh-token fingerprints — never a token, except
// an export that asked for refresh tokens explicitly.

// AdminServiceName is the NATS micro service name of the operator
// requests.
const AdminServiceName = "tokenkeeper-admin"

// AdminPrefix prefixes every operator request subject: token.admin.>.
const AdminPrefix = "token.admin."

// The operations of AuthorizersSubject.
const (
	AuthorizersList      = "list"
	AuthorizersShow      = "show"
	AuthorizersImport    = "import"
	AuthorizersExport    = "export"
	AuthorizersReconcile = "reconcile"
)

// AuthorizersSubject is the subject of an operator request on the
// authorizers of component: token.admin.authorizers.<op>.<component>.
func AuthorizersSubject(op, component string) string {
	return AdminPrefix + "authorizers." + op + "." + component
}

// States of an authorizer (AuthorizerInfo.State).
const (
	// AuthorizerActive: authorized, refreshed by the refresher.
	AuthorizerActive = "active"
	// AuthorizerNeedsReauthorization: WeChat refused its refresh token
	// (61023); the merchant must authorize again. The refresh token is
	// kept.
	AuthorizerNeedsReauthorization = "needs_reauthorization"
	// AuthorizerUnauthorized: the merchant revoked the authorization;
	// the secrets bucket keeps a tombstone with the last refresh token.
	AuthorizerUnauthorized = "unauthorized"
)

// MaxAdminPage bounds the rows of one list or export page and of one
// import request.
const MaxAdminPage = 1000

// MaxRefreshTokenLength bounds an imported refresh token (WeChat's are 43
// characters).
const MaxRefreshTokenLength = 512

// PageRequest is the body of a list or export request. The first page
// has no Cursor; the reply's Cursor names the refresher's snapshot of the
// authorizers for the following pages (Offset counting from 0 in it).
type PageRequest struct {
	Cursor string `json:"cursor,omitempty"`
	Offset int    `json:"offset,omitempty"`
	// Limit is the page size (at most MaxAdminPage; 0: 500).
	Limit int `json:"limit,omitempty"`
	// IncludeRefreshTokens asks an export for the refresh tokens; the
	// refresher logs and audits every such export.
	IncludeRefreshTokens bool `json:"include_refresh_tokens,omitempty"`
}

// AuthorizerInfo is one authorizer as list and show describe it: no
// token, only the refresh token's fingerprint.
type AuthorizerInfo struct {
	AuthorizerAppID string `json:"authorizer_appid"`
	// State is AuthorizerActive, AuthorizerNeedsReauthorization or
	// AuthorizerUnauthorized.
	State string `json:"state"`
	// ExpiresAt and FetchedAt (the last refresh) of the stored access
	// token (zero: none stored).
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	FetchedAt time.Time `json:"fetched_at,omitzero"`
	// RefreshToken is the Fingerprint of the stored refresh token.
	RefreshToken string `json:"refresh_token_fingerprint,omitempty"`
	// RefreshTokenAt is when the refresh token was stored, and
	// RefreshTokenSource how (authorized, refresh, import, reconcile,
	// unauthorized).
	RefreshTokenAt     time.Time `json:"refresh_token_at,omitzero"`
	RefreshTokenSource string    `json:"refresh_token_source,omitempty"`
	// Why says why an unauthorized authorizer was unauthorized.
	Why       string `json:"why,omitempty"`
	LastError string `json:"last_error,omitempty"`
}

// ListReply is one page of a list request.
type ListReply struct {
	Component   string           `json:"component"`
	Cursor      string           `json:"cursor"`
	Total       int              `json:"total"`
	Offset      int              `json:"offset"`
	Authorizers []AuthorizerInfo `json:"authorizers"`
}

// ShowRequest is the body of a show request.
type ShowRequest struct {
	AuthorizerAppID string `json:"authorizer_appid"`
}

// RefreshTokenVersion is one revision of an authorizer's secrets record
// (the secrets bucket's history): never the token, its fingerprint.
type RefreshTokenVersion struct {
	Revision     uint64    `json:"revision"`
	StoredAt     time.Time `json:"stored_at"`
	State        string    `json:"state"`
	Source       string    `json:"source,omitempty"`
	RefreshToken string    `json:"refresh_token_fingerprint,omitempty"`
}

// ShowReply is the reply to a show request: the authorizer and the
// history of its refresh tokens, oldest first.
type ShowReply struct {
	Component string                `json:"component"`
	Info      AuthorizerInfo        `json:"authorizer"`
	History   []RefreshTokenVersion `json:"history"`
}

// AuthorizerRow is one row of an import file, an import request or an
// export: an authorizer appid and its refresh token. Line is the row's
// line in the import file (0 in an export).
type AuthorizerRow struct {
	Line            int    `json:"line,omitempty"`
	AuthorizerAppID string `json:"authorizer_appid"`
	RefreshToken    string `json:"refresh_token,omitempty"`
}

// CheckAuthorizerRow says what is wrong with an import row (nil: it may
// be imported). The error quotes neither field.
func CheckAuthorizerRow(row AuthorizerRow) error {
	switch {
	case row.AuthorizerAppID == "":
		return errors.New("authorizer_appid is empty")
	case !ValidAppName(row.AuthorizerAppID):
		// Not quoted: a file with its columns swapped holds a refresh
		// token here.
		return fmt.Errorf("authorizer_appid (%d bytes) is not 1-64 of A-Z a-z 0-9 _ -", len(row.AuthorizerAppID))
	case row.RefreshToken == "":
		return errors.New("refresh_token is empty")
	case len(row.RefreshToken) > MaxRefreshTokenLength:
		return fmt.Errorf("refresh_token is %d bytes, over the limit of %d", len(row.RefreshToken), MaxRefreshTokenLength)
	}
	for i := 0; i < len(row.RefreshToken); i++ {
		if b := row.RefreshToken[i]; b <= ' ' || b >= 0x7f {
			return fmt.Errorf("refresh_token has a character that is not printable ASCII at byte %d", i)
		}
	}
	return nil
}

// ImportRequest is the body of an import request: at most MaxAdminPage
// rows.
type ImportRequest struct {
	Rows []AuthorizerRow `json:"rows"`
	// Overwrite replaces stored refresh tokens — but never one stored
	// after MadeAt.
	Overwrite bool `json:"overwrite,omitempty"`
	// MadeAt is when the import file was made (its modification time):
	// a refresh token the refresher stored after it is newer than the
	// file's and is never replaced.
	MadeAt time.Time `json:"made_at"`
}

// Outcomes of an imported row.
const (
	ImportImported  = "imported"
	ImportSkipped   = "skipped"
	ImportInvalid   = "invalid"
	ImportUnchanged = "unchanged"
	ImportFailed    = "failed"
)

// ImportResult is the outcome of one row: ImportImported, ImportSkipped
// (Reason: exists, newer, unauthorized), ImportUnchanged (the same
// refresh token is stored), ImportInvalid (Reason says why) or
// ImportFailed (the store failed: import the row again). It never holds
// the refresh token.
type ImportResult struct {
	Line            int    `json:"line"`
	AuthorizerAppID string `json:"authorizer_appid"`
	Outcome         string `json:"outcome"`
	Reason          string `json:"reason,omitempty"`
}

// ImportReply is the reply to an import request: one result per row, in
// the request's order.
type ImportReply struct {
	Component string         `json:"component"`
	Results   []ImportResult `json:"results"`
}

// ExportReply is one page of an export request: rows without
// RefreshToken unless the request asked for them.
type ExportReply struct {
	Component string          `json:"component"`
	Cursor    string          `json:"cursor"`
	Total     int             `json:"total"`
	Offset    int             `json:"offset"`
	Rows      []AuthorizerRow `json:"rows"`
}
