package contract

import "time"

// RequesterHeader is an optional header of a token.refresh request: who
// asks (the subscriber sends its NATS connection name). The audit record
// of the upstream call it causes names it as requester.
const RequesterHeader = "Tokenkeeper-Requester"

// Audit reasons besides the Sources (startup, scheduled, passive,
// manual): an Open Platform reconciliation call, and the redemption of an
// authorization code WeChat pushed to the callback.
const (
	ReasonReconcile = "reconcile"
	ReasonCallback  = "callback"
)

// ReasonExport is the audit reason of an operator's export of refresh
// tokens (tokenctl authorizers export --include-refresh-tokens): no
// upstream call; Count says how many were exported, Requester who asked.
const ReasonExport = "export"

// AuditRecord is one upstream call (one HTTP attempt; retries are records
// of their own). It never holds a credential or a secret: the new
// credential only as its Fingerprint, the endpoint only as its path.
type AuditRecord struct {
	// Time is when the attempt was sent; DurationMS how long it took.
	Time       time.Time `json:"time"`
	DurationMS int64     `json:"duration_ms"`
	// Replica is the refresher replica that called (its lease id).
	Replica string `json:"replica"`
	// App is the configured app, Key the key the call was for (the app,
	// or <app>.<ticket>), Kind the app's kind.
	App  string `json:"app"`
	Key  string `json:"key"`
	Kind string `json:"kind,omitempty"`
	// Endpoint is the upstream path called, never a query string.
	Endpoint string `json:"endpoint"`
	// Attempt counts the attempts of one fetch from 1.
	Attempt int `json:"attempt"`
	// Reason is why: startup, scheduled, passive, manual (Source*) or
	// reconcile.
	Reason string `json:"reason"`
	// Requester is who asked for a passive or manual refresh, as the
	// request said (RequesterHeader) or NATS told (Nats-Request-Info).
	Requester string `json:"requester,omitempty"`
	// OK says whether the attempt got a credential. Otherwise Errcode
	// and Errmsg are the upstream's error answer (sanitised), HTTPStatus
	// a non-200 status, Error any other failure (transport, timeout).
	OK         bool   `json:"ok"`
	Errcode    int    `json:"errcode,omitempty"`
	Errmsg     string `json:"errmsg,omitempty"`
	HTTPStatus int    `json:"http_status,omitempty"`
	Error      string `json:"error,omitempty"`
	// RID is WeChat's request id from the errmsg, when it has one.
	RID string `json:"rid,omitempty"`
	// Credential is the Fingerprint of the credential the attempt got.
	Credential string `json:"credential,omitempty"`
	// Count is how many refresh tokens an export (ReasonExport) handed
	// out.
	Count int `json:"count,omitempty"`
}
