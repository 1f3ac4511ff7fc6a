// Statistics: summaries and percentiles of measured durations.

package main

import (
	"math"
	"slices"
	"time"
)

// dist summarises durations.
type dist struct {
	n                                  int
	min, p50, p90, p95, p99, max, mean time.Duration
}

func summarize(ds []time.Duration) dist {
	if len(ds) == 0 {
		return dist{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return dist{n: len(s), min: s[0], p50: pct(s, 0.50), p90: pct(s, 0.90), p95: pct(s, 0.95), p99: pct(s, 0.99), max: s[len(s)-1], mean: sum / time.Duration(len(s))}
}

// pct is the nearest-rank percentile of sorted s.
func pct(s []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}
