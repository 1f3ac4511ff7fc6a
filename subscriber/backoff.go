package subscriber

import (
	"context"
	"time"
)

// sleep waits d, or until ctx is done (false) or wake receives (true,
// early). Pauses come from internal/backoff.
func sleep[T any](ctx context.Context, d time.Duration, wake <-chan T) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	case <-wake:
		return true
	}
}
