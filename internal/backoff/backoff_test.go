package backoff

import (
	"context"
	"testing"
	"time"
)

func TestBackoffGrowsJitteredAndResets(t *testing.T) {
	b := New(100*time.Millisecond, time.Second)
	wantMax := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, m := range wantMax {
		m *= time.Millisecond
		if d := b.Next(); d < m/2 || d > m {
			t.Fatalf("pause %d = %v, want in [%v, %v]", i, d, m/2, m)
		}
	}
	b.Reset()
	if d := b.Next(); d > 100*time.Millisecond {
		t.Fatalf("after Reset pause = %v, want ≤ 100ms", d)
	}
}

func TestCeiling(t *testing.T) {
	const s = time.Second
	for _, tc := range []struct {
		name       string
		base, maxD time.Duration
		n          int
		want       time.Duration
	}{
		{"first", s, 60 * s, 1, s},
		{"n below 1 counts as 1", s, 60 * s, 0, s},
		{"doubles", s, 60 * s, 4, 8 * s},
		{"capped", s, 60 * s, 7, 60 * s},
		{"stays capped", s, 60 * s, 1000, 60 * s},
		{"max below base", 10 * s, s, 1, s},
		{"no base", 0, s, 3, 0},
		{"no max", s, 0, 3, 0},
		{"huge max, huge n: no overflow", s, time.Duration(1<<63 - 1), 200, time.Duration(1<<63 - 1)},
	} {
		if got := Ceiling(tc.base, tc.maxD, tc.n); got != tc.want {
			t.Errorf("%s: Ceiling(%v, %v, %d) = %v, want %v", tc.name, tc.base, tc.maxD, tc.n, got, tc.want)
		}
	}
}

// TestJitterRanges holds each jitter to its range and checks that it
// spreads over it (2000 draws: an end farther than 2 % of the range
// away has a chance of about 1e-17).
func TestJitterRanges(t *testing.T) {
	const d = 10 * time.Second
	for _, tc := range []struct {
		name   string
		j      Jitter
		lo, hi time.Duration // [lo, hi]
	}{
		{"Full", Full, 0, d - 1},
		{"Equal", Equal, d / 2, d},
		{"Spread(0.2)", Spread(0.2), d * 8 / 10, d * 12 / 10},
	} {
		lowest, highest := tc.hi, tc.lo
		for range 2000 {
			v := tc.j(d)
			if v < tc.lo || v > tc.hi {
				t.Fatalf("%s(%v) = %v, want in [%v, %v]", tc.name, d, v, tc.lo, tc.hi)
			}
			lowest, highest = min(lowest, v), max(highest, v)
		}
		slack := (tc.hi - tc.lo) / 50
		if lowest > tc.lo+slack || highest < tc.hi-slack {
			t.Errorf("%s: draws span [%v, %v], want nearly [%v, %v]", tc.name, lowest, highest, tc.lo, tc.hi)
		}
		if v := tc.j(0); v != 0 {
			t.Errorf("%s(0) = %v, want 0", tc.name, v)
		}
	}
}

func TestDelay(t *testing.T) {
	if d := Delay(3, time.Second, time.Minute, nil); d != 4*time.Second {
		t.Fatalf("Delay without jitter = %v, want 4s", d)
	}
	for range 100 {
		if d := Delay(10, time.Second, time.Minute, Full); d < 0 || d >= time.Minute {
			t.Fatalf("Delay(10, 1s, 1m, Full) = %v, want in [0, 1m)", d)
		}
	}
}

func TestSleepStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if Sleep(ctx, time.Hour) {
		t.Fatal("Sleep reported the pause passed on a cancelled ctx")
	}
	if time.Since(start) > time.Second {
		t.Fatal("Sleep did not return at once on a cancelled ctx")
	}
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep of 1ms did not pass")
	}
}
