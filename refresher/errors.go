package refresher

import "errors"

// Sentinel errors of the refresher. Upstream errors are *wechat.Error and
// wrap the wechat package's sentinels.
var (
	// ErrUnknownApp is returned for an app name that is not configured.
	ErrUnknownApp = errors.New("refresher: unknown app")
	// ErrNotLeader is returned when this replica does not hold the lease,
	// or lost it while fetching: it fetches and writes nothing then.
	ErrNotLeader = errors.New("refresher: not the leader")
	// ErrClosed is returned by calls made after Run has returned.
	ErrClosed = errors.New("refresher: closed")
	// ErrQuotaReserved is returned when a forced refresh is refused to
	// keep the rest of the day's upstream quota for scheduled refreshes.
	ErrQuotaReserved = errors.New("refresher: daily quota nearly used, forced refreshes stopped")
	// ErrSuperseded is returned when a fetched token was not stored
	// because a newer one was already in the bucket.
	ErrSuperseded = errors.New("refresher: a newer token was stored first")
	// ErrNotStored is returned when a fetched token could not be written
	// to the bucket; the refresher keeps it and retries only the write.
	ErrNotStored = errors.New("refresher: fetched token not stored yet; retrying the write")
	// ErrPaused is returned for a refresh request while upstream calls
	// of the app are paused after a failure (see RequestError.RetryAt).
	ErrPaused = errors.New("refresher: upstream calls paused")
)
