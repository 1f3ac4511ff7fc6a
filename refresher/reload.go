package refresher

import (
	"reflect"
	"sort"
	"time"
)

// Reload applies a new configuration without a restart (cmd/refresher
// calls it on SIGHUP): apps are added and removed, an app's secret, kind,
// appid, api_base and daily_quota change, and passive_min_interval
// changes. Apps whose upstream identity (kind, appid, api_base) is
// unchanged keep their token, state and counters; a rotated secret clears
// the app's failure backoff so that it retries at once. Keys that need a
// restart (nats, bucket, replicas, schedule, lease_ttl, http, log,
// refresh) are reported in the returned list and left as they are. cfg is
// validated first; an invalid cfg, or one whose secrets have not been read
// (LoadConfig reads them; see Config.ResolveSecrets), changes nothing.
// Reload itself reads no file and no environment variable.
func (r *Refresher) Reload(cfg *Config) (needRestart []string, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Mode == ModeFollow {
		return nil, &ConfigError{Problems: []string{"mode: follow needs a restart (a lead refresher does not become a follower on SIGHUP)"}}
	}
	if err := cfg.checkResolved(); err != nil {
		return nil, err
	}
	if err := r.componentsUnchanged(cfg); err != nil {
		return nil, err
	}
	r.mu.Lock()
	old := r.cfg
	checks := []struct {
		key  string
		a, b any
	}{
		{"nats", old.NATS, cfg.NATS}, {"bucket", old.Bucket, cfg.Bucket}, {"replicas", old.Replicas, cfg.Replicas},
		{"schedule", old.Schedule, cfg.Schedule}, {"lease_ttl", old.LeaseTTL, cfg.LeaseTTL},
		{"http", old.HTTP, cfg.HTTP}, {"log", old.Log, cfg.Log}, {"refresh", old.RefreshPolicy(), cfg.RefreshPolicy()},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.a, c.b) {
			needRestart = append(needRestart, c.key)
		}
	}

	apps := make(map[string]*app, len(cfg.Apps))
	var added, changed, rotated, removed []string
	for _, ac := range cfg.Apps {
		a := r.apps[ac.Name]
		if a == nil {
			na := &app{name: ac.Name, cfg: ac, policy: &r.policy}
			na.syncTickets()
			apps[ac.Name] = na
			added = append(added, ac.Name)
			continue
		}
		apps[ac.Name] = a
		a.mu.Lock()
		prev := a.cfg
		a.cfg = ac
		if prev.Kind != ac.Kind || prev.AppID != ac.AppID || prev.APIBase != ac.APIBase {
			// Another upstream app: the stored token is not its token.
			if a.rec != nil && !a.ownsLocked(a.rec) || prev.AppID != ac.AppID {
				a.due = time.Time{}
			}
			a.retryAt, a.failures = time.Time{}, 0
			changed = append(changed, ac.Name)
		} else if prev.secret != ac.secret {
			a.retryAt, a.failures = time.Time{}, 0
			rotated = append(rotated, ac.Name)
		}
		a.mu.Unlock()
		a.syncTickets()
	}
	for name := range r.apps {
		if _, ok := apps[name]; !ok {
			removed = append(removed, name)
		}
	}
	r.apps = apps
	r.order = r.order[:0]
	for name := range apps {
		r.order = append(r.order, name)
	}
	sort.Strings(r.order)
	nc := *old
	nc.Apps = cfg.Apps
	nc.PassiveMinInterval = cfg.PassiveMinInterval
	r.cfg = &nc
	r.passiveMin.Store(int64(cfg.MinPassiveInterval()))
	r.mu.Unlock()
	for _, ac := range cfg.Apps {
		if c := r.componentOf(ac.Name); c != nil && ac.Kind == KindWeChatComponent {
			c.setLimit(ac.MaxCallsPerSecond) // max_calls_per_second applies at once
		}
	}

	r.log.Info("config reloaded", "added", added, "removed", removed, "changed", changed, "secret_rotated", rotated,
		"passive_min_interval", cfg.MinPassiveInterval())
	if f, ok := r.obs.(interface{ Forget(app string) }); ok {
		for _, name := range removed {
			f.Forget(name)
		}
	}
	if len(removed) > 0 {
		r.log.Info("removed apps are no longer refreshed; their records stay in the bucket until they expire", "apps", removed)
	}
	if len(needRestart) > 0 {
		r.log.Warn("these config keys change only on restart; kept as they were", "keys", needRestart)
	}
	r.Tick()
	return needRestart, nil
}
