package refresher

import (
	"fmt"
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
