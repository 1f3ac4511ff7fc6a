package refresher

import (
	"testing"
	"testing/quick"
	"time"
)

func TestRefreshAtTable(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)
	p := DefaultPolicy
	tests := []struct {
		name      string
		life      time.Duration
		u         float64
		wantAfter time.Duration // refresh moment - fetched_at, inclusive bounds
		wantMax   time.Duration
	}{
		{"wechat 7200s centre", 7200 * time.Second, 0.5, 4800 * time.Second, 4800 * time.Second},
		{"wechat 7200s early edge", 7200 * time.Second, 0, 4439 * time.Second, 4440 * time.Second},
		{"wechat 7200s late edge", 7200 * time.Second, 0.999999, 5150 * time.Second, 5160 * time.Second},
		{"5 seconds", 5 * time.Second, 0.5, 1250 * time.Millisecond, 1250 * time.Millisecond}, // MinLeft clamps to a quarter
		{"90 seconds keeps a minute left", 90 * time.Second, 0.5, 30 * time.Second, 30 * time.Second},
		{"two days", 48 * time.Hour, 0.5, 32 * time.Hour, 32 * time.Hour},
		{"one nanosecond", time.Nanosecond, 0.5, 0, 0},
		{"zero lifetime is due now", 0, 0.5, 0, 0},
		{"expired before fetched is due now", -time.Hour, 0.5, 0, 0},
		{"bad u falls back to centre", 7200 * time.Second, 7, 4800 * time.Second, 4800 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := p.RefreshAt(t0, t0.Add(tt.life), tt.u).Sub(t0)
			if got < tt.wantAfter || got > tt.wantMax {
				t.Errorf("RefreshAt after %v = %v, want in [%v, %v]", tt.life, got, tt.wantAfter, tt.wantMax)
			}
		})
	}
}

// TestRefreshAtProperty: whatever the lifetime (a nanosecond to years),
// the jitter draw and a valid policy, fetched_at <= next < expires_at.
func TestRefreshAtProperty(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := func(lifeNs int64, u float64, at, jitter uint16) bool {
		if lifeNs < 0 {
			lifeNs = -lifeNs
		}
		if lifeNs <= 0 {
			lifeNs = 1
		}
		lifeNs %= int64(400 * 24 * time.Hour)
		if lifeNs == 0 {
			lifeNs = 1
		}
		p := Policy{At: 0.05 + 0.9*float64(at)/65536, Jitter: 0.09 * float64(jitter) / 65536, MinLeft: time.Minute}
		if p.Validate() != nil {
			return true
		}
		if u < 0 {
			u = -u
		}
		u -= float64(int64(u))
		exp := t0.Add(time.Duration(lifeNs))
		r := p.RefreshAt(t0, exp, u)
		return !r.Before(t0) && r.Before(exp)
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 20000}); err != nil {
		t.Fatal(err)
	}
}

func TestRefreshAtSpreadsApps(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	exp := t0.Add(7200 * time.Second)
	lo := DefaultPolicy.RefreshAt(t0, exp, 0)
	hi := DefaultPolicy.RefreshAt(t0, exp, 0.99)
	if spread := hi.Sub(lo); spread < 10*time.Minute {
		t.Fatalf("jitter window %v, want at least 10m for a 2h token", spread)
	}
}

func TestPolicyValidate(t *testing.T) {
	bad := []Policy{{At: 0}, {At: 1}, {At: 0.5, Jitter: 1}, {At: 0.97, Jitter: 0.1}, {At: 0.5, Jitter: 0.1, MinLeft: -1}}
	for _, p := range bad {
		if p.Validate() == nil {
			t.Errorf("Validate(%+v) = nil, want an error", p)
		}
	}
	if err := DefaultPolicy.Validate(); err != nil {
		t.Fatal(err)
	}
}
