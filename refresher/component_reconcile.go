package refresher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// ReconcileReport is what one reconciliation of a component against
// api_get_authorizer_list found and changed. It holds appids, never a
// token.
type ReconcileReport struct {
	Component string    `json:"component"`
	At        time.Time `json:"at"`
	// Listed is how many authorizers WeChat lists.
	Listed int `json:"listed"`
	// Recovered are authorizers WeChat lists whose refresh token the
	// store lacked: stored now, and refreshed.
	Recovered []string `json:"recovered,omitempty"`
	// Unauthorized are authorizers WeChat lists that the store keeps a
	// tombstone of: left alone (the merchant may authorize again; an
	// authorized push brings them back), reported.
	Unauthorized []string `json:"unauthorized,omitempty"`
	// NotListed are authorizers the store refreshes that WeChat does not
	// list: flagged, nothing deleted.
	NotListed []string `json:"not_listed,omitempty"`
}

// Reconcile pages through the component's api_get_authorizer_list and
// recovers every authorizer whose refresh token is missing from the
// secrets bucket, and reports what the store has that WeChat does not.
// Only the leader reconciles (ErrNotLeader otherwise).
func (r *Refresher) Reconcile(ctx context.Context, component string) (*ReconcileReport, error) {
	c := r.componentOf(component)
	if c == nil {
		return nil, fmt.Errorf("%w: %s is no wechat-component", ErrUnknownApp, component)
	}
	if r.lease == nil || !r.lease.Held() {
		return nil, ErrNotLeader
	}
	ctok, cfg, err := r.componentToken(ctx, c)
	if err != nil {
		return nil, err
	}
	rep := &ReconcileReport{Component: component, At: r.now().UTC()}
	listed := map[string]bool{}
	for offset := 0; ; {
		var fetched time.Time
		var at attempts
		page, err := r.clientFor(cfg).AuthorizerListPage(at.observe(ctx), cfg.APIBase, ctok.AccessToken, cfg.AppID, offset, wechat.MaxAuthorizerListPage, withLimit(c, r.leaseGate(&fetched)))
		r.obs.UpstreamCall(component, 0, err)
		r.auditCall(ctx, component, component, cfg.Kind, contract.ReasonReconcile, at, "")
		if err != nil {
			return nil, err
		}
		rep.Listed = page.Total
		for _, e := range page.Entries {
			if !contract.ValidAppName(e.AuthorizerAppID) || e.RefreshToken == "" {
				continue
			}
			listed[e.AuthorizerAppID] = true
			var cur authorizerSecret
			_, err := r.secrets.get(ctx, authorizerSecretKey(component, e.AuthorizerAppID), &cur)
			switch {
			case errors.Is(err, errNoSecret):
				if err := r.storeRefreshToken(ctx, c, e.AuthorizerAppID, e.RefreshToken, "reconcile", 0); err != nil {
					return rep, err
				}
				c.ensure(r, e.AuthorizerAppID)
				rep.Recovered = append(rep.Recovered, e.AuthorizerAppID)
			case err != nil:
				return rep, err
			case cur.State == authorizerUnauthorized:
				rep.Unauthorized = append(rep.Unauthorized, e.AuthorizerAppID)
			}
		}
		offset += len(page.Entries)
		if len(page.Entries) == 0 || offset >= page.Total {
			break
		}
	}
	for _, au := range c.list() {
		if !listed[au.appid] {
			rep.NotListed = append(rep.NotListed, au.appid)
		}
	}
	slices.Sort(rep.Recovered)
	slices.Sort(rep.Unauthorized)
	slices.Sort(rep.NotListed)
	c.mu.Lock()
	c.lastReconcile = rep
	c.mu.Unlock()
	r.log.Info("component reconciled with api_get_authorizer_list", "app", component, "listed", rep.Listed,
		"recovered", rep.Recovered, "unauthorized", rep.Unauthorized, "not_listed", rep.NotListed)
	r.Tick()
	return rep, nil
}
