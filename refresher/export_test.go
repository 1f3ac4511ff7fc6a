package refresher

// Test-only access to unexported knobs of the request path, for the
// external tests in package refresher_test.

// WithMaxPendingRequests sets the bound on token.refresh requests in
// progress (DefaultMaxPendingRequests otherwise).
var WithMaxPendingRequests = withMaxPendingRequests

// WithRequestHook runs h at each stage of the request path (StageReceive,
// StageSlow, StageParked) with the request's subject; a panic in h is a
// panic in the handler.
var WithRequestHook = withRequestHook

// Stages of the request path, for WithRequestHook.
const (
	StageReceive = stageReceive
	StageSlow    = stageSlow
	StageParked  = stageParked
)

// Sanitize is sanitize.
var Sanitize = sanitize

// MaxLoggedSubject is how many bytes of a subject a log line keeps.
const MaxLoggedSubject = maxLoggedSubject
