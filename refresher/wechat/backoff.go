package wechat

import (
	"math/rand/v2"
	"time"
)

// backoff returns the wait before attempt n+1 after attempt n failed
// (n ≥ 1): full jitter, uniform in [0, min(p.Max, p.Base·2^(n-1))).
func (p RetryPolicy) backoff(n int) time.Duration {
	ceiling := p.Base
	for i := 1; i < n && ceiling < p.Max; i++ {
		ceiling *= 2
	}
	if ceiling > p.Max || ceiling <= 0 {
		ceiling = p.Max
	}
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling)
}
