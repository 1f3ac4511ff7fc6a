package refresher

import "time"

// UnknownAppLabel is the app an Observer is told for a token.refresh
// request that names no configured app: one fixed value, so that requests
// for made-up names cannot create one metric series each. It is not a
// legal app name, so it never mixes with a configured app.
const UnknownAppLabel = "(unknown)"

// Observer receives the refresher's events, for metrics. Methods are
// called from many goroutines and must not block. The app passed to any
// method is a configured app name or UnknownAppLabel, never a name taken
// from the wire. A panic in PassiveRequest is recovered by the request
// path (the request is answered, the refresher goes on); a panic in the
// other methods is not.
type Observer interface {
	// UpstreamCall: one upstream token call (with its retries) took d.
	UpstreamCall(app string, d time.Duration, err error)
	// Refreshed: app now holds a token that expires at expiresAt; source
	// is empty when the token was read from the bucket, not fetched.
	Refreshed(app, source string, expiresAt time.Time)
	// RefreshFailed: a refresh of app failed with err.
	RefreshFailed(app, source string, err error)
	// WriteConflict: a revision-checked write of app met a newer revision.
	WriteConflict(app string)
	// Leader: this replica gained (true) or lost (false) the lease.
	Leader(leader bool)
	// PassiveRequest: a token.refresh request for app (UnknownAppLabel if
	// it named no configured app) was answered with outcome ("ok" or the
	// error code), after the reply was sent.
	PassiveRequest(app, outcome string)
	// QuotaUsed: app has made calls upstream calls today.
	QuotaUsed(app string, calls int)
	// Alert: something an operator must act on happened that is not an
	// upstream errcode (those come with UpstreamCall): AlertTokenNotStored,
	// AlertInvalidRecord (app set) or AlertBucketLost (app "").
	Alert(app, alert string)
}

type nopObserver struct{}

func (nopObserver) UpstreamCall(string, time.Duration, error) {}
func (nopObserver) Refreshed(string, string, time.Time)       {}
func (nopObserver) RefreshFailed(string, string, error)       {}
func (nopObserver) WriteConflict(string)                      {}
func (nopObserver) Leader(bool)                               {}
func (nopObserver) PassiveRequest(string, string)             {}
func (nopObserver) QuotaUsed(string, int)                     {}
func (nopObserver) Alert(string, string)                      {}
