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
