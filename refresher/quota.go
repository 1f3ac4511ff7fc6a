package refresher

import (
	"fmt"
	"time"

	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// DefaultDailyQuota is WeChat's daily limit of token calls per app.
const DefaultDailyQuota = 2000

// checkQuota refuses a forced (passive or manual) refresh once 90 % of the
// day's quota is used, so that scheduled refreshes can still run; it warns
// at 80 %.
func (r *Refresher) checkQuota(a *app, source string) error {
	used := a.callsToday(r.now())
	quota := a.config().dailyQuota()
	r.obs.QuotaUsed(a.name, used)
	if used*10 >= quota*8 {
		r.log.Warn("upstream quota mostly used today", "app", a.name, "used", used, "quota", quota)
	}
	if source != "scheduled" && source != "startup" && used*10 >= quota*9 {
		return fmt.Errorf("%w (%d of %d calls used)", ErrQuotaReserved, used, quota)
	}
	return nil
}

func (a AppConfig) dailyQuota() int {
	if a.DailyQuota > 0 {
		return a.DailyQuota
	}
	return DefaultDailyQuota
}

// appDay is WeChat's day (China Standard Time, UTC+8) of t, as yyyymmdd:
// the daily quota resets at midnight in Beijing.
func appDay(t time.Time) int {
	t = t.In(cst)
	y, m, d := t.Date()
	return y*10000 + int(m)*100 + d
}

// cst is China Standard Time (no daylight saving), built without tzdata.
var cst = time.FixedZone("CST", 8*3600)

// nextQuotaReset returns the next midnight in China Standard Time.
func nextQuotaReset(t time.Time) time.Time {
	t = t.In(cst)
	y, m, d := t.Date()
	return time.Date(y, m, d+1, 0, 0, 0, 0, cst)
}

// WeChat's limits on stable_token force_refresh.
const (
	stableForceInterval = 30 * time.Second
	stableForceDaily    = 20
)

// takeStableForce reports whether a forced refresh may use stable_token's
// force mode (20 a day); past that, normal mode is used. For classic apps
// every fetch issues a new token anyway.
func (a *app) takeStableForce(now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cfg.Kind != wechat.KindStable {
		return true
	}
	if d := appDay(now); d != a.forceDay {
		a.forceDay, a.forcedToday = d, 0
	}
	if a.forcedToday >= stableForceDaily {
		return false
	}
	a.forcedToday++
	return true
}

// countCall counts one upstream call against the app's daily quota.
func (a *app) countCall(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pacing.countCall(now)
}

// callsToday returns the upstream calls made on WeChat's current day.
func (a *app) callsToday(now time.Time) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.callsOn(now)
}
