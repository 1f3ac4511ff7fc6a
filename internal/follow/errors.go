package follow

import "errors"

// Reasons a watch is rebuilt, reported in Problem events (Event.Err
// matches them with errors.Is). Other Problem errors come from NATS:
// opening the bucket, building the watch.
var (
	// ErrReconnected: the connection reconnected; the watch is rebuilt at
	// once, resuming after the last revision delivered.
	ErrReconnected = errors.New("follow: the connection reconnected")
	// ErrStalled: the poll found a revision the watch had not delivered
	// (or the bucket gone); the watch is rebuilt at once.
	ErrStalled = errors.New("follow: the watch missed an update that a direct read found")
	// ErrWatchEnded: the watch's updates channel was closed; the watch is
	// rebuilt after a backoff.
	ErrWatchEnded = errors.New("follow: the watch ended")
	// ErrReplaced: Config.Replaced said the bucket was replaced; the watch
	// is rebuilt at once, from the new bucket's start.
	ErrReplaced = errors.New("follow: the bucket was replaced")
	// ErrOpen: Config.Open failed (the error wraps its error too); it is
	// tried again after a backoff.
	ErrOpen = errors.New("follow: cannot open the bucket")
	// ErrBuildTimeout: building the watch took longer than
	// Config.Timeout; it was abandoned and is tried again after a backoff.
	ErrBuildTimeout = errors.New("follow: building the watch timed out")
	// ErrInvalidConfig is returned by Start for a Config it cannot use.
	ErrInvalidConfig = errors.New("follow: invalid config")
)
