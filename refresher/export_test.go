package refresher

// Test-only access to unexported knobs of the request path, for the
// external tests in package refresher_test.

// WithMaxPendingRequests sets the bound on token.refresh requests in
// progress (DefaultMaxPendingRequests otherwise).
var WithMaxPendingRequests = withMaxPendingRequests
