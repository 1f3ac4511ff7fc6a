package refresher_test

import (
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// TestReload: add an app, remove one, rotate a secret that upstream
// already switched to; unchanged apps keep their tokens (no fetch).
func TestReload(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	keep, drop, rot := e.App("keep"), e.App("drop"), e.App("rot")
	rep := e.Start(e.Config(keep, drop, rot))
	for _, n := range []string{"keep", "drop", "rot"} {
		e.WaitRecord(5*time.Second, n, func(contract.Record, uint64) bool { return true })
	}
	_, keepRev, _ := e.Record(contract.DefaultBucket, "keep")
	_, rotRev, _ := e.Record(contract.DefaultBucket, "rot")

	// The secret is rotated in the WeChat console: the old one fails.
	e.Sim.SetSecret(rot.AppID, "rotated-"+harness.Secret(rot.AppID))
	if _, err := rep.R.Refresh(t.Context(), "rot", &rotRev); err == nil {
		t.Fatal("refresh with the old secret succeeded")
	}
	if st := statusOf(rep.R, "rot"); st.Failures == 0 || !st.RetryAt.After(time.Now().Add(30*time.Second)) {
		t.Fatalf("a wrong secret should back off politely, status %+v", st)
	}

	added := e.App("added")
	fetchesKeep := e.Sim.Fetches(keep.AppID)
	need, err := rep.R.Reload(e.Config(keep, rot.WithSecret("rotated-"+harness.Secret(rot.AppID)), added))
	if err != nil || len(need) != 0 {
		t.Fatalf("Reload = %v, %v", need, err)
	}
	e.WaitRecord(5*time.Second, "added", func(contract.Record, uint64) bool { return true })
	// The rotated app's backoff is cleared and the new secret works.
	if st := statusOf(rep.R, "rot"); st.Failures != 0 || !st.RetryAt.IsZero() {
		t.Fatalf("reload did not clear the rotated app's backoff: %+v", st)
	}
	got, err := rep.R.Refresh(t.Context(), "rot", &rotRev)
	if err != nil || got.Revision <= rotRev {
		t.Fatalf("refresh with the rotated secret = %v, %v", got.Revision, err)
	}
	if _, v, _ := e.Record(contract.DefaultBucket, "keep"); v != keepRev || e.Sim.Fetches(keep.AppID) != fetchesKeep {
		t.Fatal("an unchanged app was re-fetched by the reload")
	}
	if statusOf(rep.R, "drop").App != "" {
		t.Fatal("the removed app is still managed")
	}
	if _, err := rep.R.Refresh(t.Context(), "drop", nil); err == nil {
		t.Fatal("a removed app is still served")
	}

	// An invalid config changes nothing; keys that need a restart are named.
	bad := e.Config(keep)
	bad.Apps = append(bad.Apps, refresher.AppConfig{Name: "bad name"})
	if _, err := rep.R.Reload(bad); err == nil {
		t.Fatal("Reload accepted an invalid config")
	}
	if statusOf(rep.R, "added").App == "" {
		t.Fatal("a failed reload changed the apps")
	}
	other := e.Config(keep, rot.WithSecret("rotated-"+harness.Secret(rot.AppID)), added)
	other.Schedule = "@every 2s"
	need, err = rep.R.Reload(other)
	if err != nil || len(need) != 1 || need[0] != "schedule" {
		t.Fatalf("Reload with a new schedule = %v, %v; want [schedule]", need, err)
	}
}

func statusOf(r *refresher.Refresher, app string) refresher.Status {
	for _, s := range r.Statuses() {
		if s.App == app {
			return s
		}
	}
	return refresher.Status{}
}
