package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// statusCommand is tokenctl status.
var statusCommand = &command{
	name:    "status",
	args:    "",
	summary: "list every app with its time to expiry, last error and calls today, and the leader",
	help: `
Lists every key of the token bucket and of the state bucket, none
skipped, as a table:

  APP          the app (the KV key)
  REVISION     the KV revision of its record
  SOURCE       why the record was written: startup, scheduled, passive, manual
  FETCHED_AT   when the token was requested from the upstream
  EXPIRES_AT   when it expires
  EXPIRES_IN   time to expiry; negative and EXPIRED once expired;
               NO TOKEN for an app with state but no record (its first
               fetch failed: see LAST_ERROR)
  CALLS_TODAY  upstream token calls on WeChat's day (UTC+8) / daily quota
  LAST_ERROR   the last failed refresh (errcode, message, how long ago),
               "-" when the last refresh succeeded

Each app's tickets (keys APP.TICKET such as mp.jsapi) are listed on the
rows under it, indented, with the same columns (CALLS_TODAY and
LAST_ERROR are the app's only: "-"); so are a wechat-component's
authorizers (COMPONENT.AUTHORIZER) and their tickets
(COMPONENT.AUTHORIZER.TICKET), in key order ("tokenctl authorizers"
has their detail).

CALLS_TODAY and LAST_ERROR come from the refresher's state bucket
BUCKET_state (one JSON object per app, written after every upstream call);
"-" when it holds nothing for the app. A key whose value does not parse is
listed too, marked INVALID.

Above the table: the refresher replica that holds the leader lease (read
from the lease bucket BUCKET_lease, key "leader"), when it acquired the
lease and when it last renewed it; "none" when no replica holds it.

With --json it prints one object:
  {"bucket":"tokens",
   "leader":{"id","acquired_at","renewed_at"} or null,
   "apps":[{"app","revision","source","fetched_at","expires_at",
            "expires_in_seconds","expired","no_token","invalid",
            "calls_today","daily_quota","failures","last_error",
            "last_errcode","last_error_at",
            "tickets":[{"app","key","revision","source","fetched_at",
                        "expires_at","expires_in_seconds","expired"}, ...]}, ...]}
(fields without a value are left out, except revision, expires_in_seconds
and expired).

Needs read access to the token, lease and state buckets (see "Permissions"
in docs/protocol.md).`,
	nargs: 0,
	flags: func(*flag.FlagSet) any { return nil },
	run:   runStatus,
}

// appStatus is one row of status.
type appStatus struct {
	App              string    `json:"app"`
	Revision         uint64    `json:"revision"`
	Source           string    `json:"source,omitempty"`
	FetchedAt        time.Time `json:"fetched_at,omitzero"`
	ExpiresAt        time.Time `json:"expires_at,omitzero"`
	ExpiresInSeconds int64     `json:"expires_in_seconds"`
	Expired          bool      `json:"expired"`
	// NoToken: the state bucket knows the app, the token bucket does not.
	NoToken bool   `json:"no_token,omitempty"`
	Invalid string `json:"invalid,omitempty"`

	// From the state bucket.
	CallsToday  *int      `json:"calls_today,omitempty"`
	DailyQuota  int       `json:"daily_quota,omitempty"`
	Failures    int       `json:"failures,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrcode int       `json:"last_errcode,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`

	// Tickets are the app's ticket records (v2 keys <app>.<ticket>),
	// sorted by key; each has Key set, and App is its app.
	Tickets []appStatus `json:"tickets,omitempty"`
	Key     string      `json:"key,omitempty"`
}

// statusReport is the --json output of status.
type statusReport struct {
	Bucket string                `json:"bucket"`
	Leader *contract.LeaseRecord `json:"leader"`
	Apps   []appStatus           `json:"apps"`
}

// cst is WeChat's time zone (China Standard Time, no daylight saving):
// the daily quota resets at midnight there.
var cst = time.FixedZone("CST", 8*3600)

// wechatDay is WeChat's day of t as yyyymmdd, as AppState.Day counts it.
func wechatDay(t time.Time) int {
	y, m, d := t.In(cst).Date()
	return y*10000 + int(m)*100 + d
}

// loadStates reads every app's state from the state bucket, keyed by app
// name; nil when the bucket does not exist (a refresher older than it).
func (c *cli) loadStates(ctx context.Context, s *session) (map[string]contract.AppState, error) {
	name := contract.StateBucket(c.g.bucket)
	rctx, cancel := c.withTimeout(ctx)
	defer cancel()
	kv, err := s.js.KeyValue(rctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, c.requestError(s, "open bucket "+name, err)
	}
	entries, err := c.snapshot(ctx, s, kv, name)
	if err != nil {
		return nil, err
	}
	out := make(map[string]contract.AppState, len(entries))
	for _, e := range entries {
		var st contract.AppState
		if json.Unmarshal(e.Value(), &st) == nil {
			out[e.Key()] = st
		}
	}
	return out, nil
}

// runStatus is tokenctl status.
func runStatus(ctx context.Context, c *cli, _ []string, _ any) error {
	s, err := c.connect(ctx, nil)
	if err != nil {
		return err
	}
	defer s.close()
	kv, err := c.openBucket(ctx, s)
	if err != nil {
		return err
	}
	entries, err := c.snapshot(ctx, s, kv, c.g.bucket)
	if err != nil {
		return err
	}
	leader, noLeader, err := c.readLeader(ctx, s)
	if err != nil {
		return err
	}
	states, err := c.loadStates(ctx, s)
	if err != nil {
		return err
	}

	rows := map[string]*appStatus{}
	for _, e := range entries {
		st := &appStatus{App: e.Key(), Revision: e.Revision()}
		rec, err := parseRecord(e.Key(), e.Revision(), e.Value())
		if err != nil {
			st.Invalid = fmt.Sprintf("not a JSON record (%d bytes)", len(e.Value()))
		} else {
			st.Source, st.FetchedAt, st.ExpiresAt = rec.Source, rec.FetchedAt, rec.ExpiresAt
			d := ttl(rec.ExpiresAt)
			st.ExpiresInSeconds = int64(d / time.Second)
			st.Expired = d <= 0
		}
		rows[e.Key()] = st
	}
	today := wechatDay(now())
	for app, state := range states {
		st := rows[app]
		if st == nil {
			st = &appStatus{App: app, NoToken: true, Expired: true}
			rows[app] = st
		}
		calls := 0
		if state.Day == today {
			calls = state.Calls
		}
		st.CallsToday, st.DailyQuota = &calls, state.Quota
		st.Failures, st.LastError, st.LastErrcode, st.LastErrorAt = state.Failures, state.LastError, state.LastErrcode, state.LastErrorAt
	}
	// Tickets (<app>.<ticket>) go under their app's row (in key order:
	// entries are sorted); one whose app has no row stays a row itself.
	for _, e := range entries {
		app, rest, err := contract.ParseKey(e.Key())
		if err != nil || rest == "" || rows[app] == nil {
			continue
		}
		t := rows[e.Key()]
		delete(rows, e.Key())
		t.Key, t.App = e.Key(), app
		rows[app].Tickets = append(rows[app].Tickets, *t)
	}
	rep := statusReport{Bucket: c.g.bucket, Leader: leader, Apps: []appStatus{}}
	for _, st := range rows {
		rep.Apps = append(rep.Apps, *st)
	}
	sort.Slice(rep.Apps, func(i, j int) bool { return rep.Apps[i].App < rep.Apps[j].App })

	if c.g.json {
		b, err := json.Marshal(rep)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(c.stdout, "%s\n", b)
		return err
	}

	w := c.stdout
	if leader != nil {
		fmt.Fprintf(w, "leader: %s (acquired %s, renewed %s ago)\n", leader.ID, fmtTime(leader.AcquiredAt),
			now().Sub(leader.RenewedAt).Round(100*time.Millisecond))
	} else {
		fmt.Fprintf(w, "leader: none (%s)\n", noLeader)
	}
	fmt.Fprintf(w, "bucket: %s, %d apps\n", c.g.bucket, len(rep.Apps))
	if states == nil {
		fmt.Fprintf(w, "no state bucket %s: calls today and last errors unknown (refresher older than the state bucket?)\n",
			contract.StateBucket(c.g.bucket))
	}
	fmt.Fprintln(w)
	if len(rep.Apps) == 0 {
		fmt.Fprintf(w, "no tokens stored in bucket %s yet\n", c.g.bucket)
		return nil
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "APP\tREVISION\tSOURCE\tFETCHED_AT\tEXPIRES_AT\tEXPIRES_IN\tCALLS_TODAY\tLAST_ERROR")
	for _, st := range rep.Apps {
		statusRow(tw, st.App, st)
		for _, t := range st.Tickets {
			statusRow(tw, "  "+t.Key, t)
		}
	}
	return tw.Flush()
}

// statusRow writes one row of the status table, named name.
func statusRow(tw io.Writer, name string, st appStatus) {
	switch {
	case st.Invalid != "":
		fmt.Fprintf(tw, "%s\t%d\tINVALID\t-\t-\t%s", name, st.Revision, st.Invalid)
	case st.NoToken:
		fmt.Fprintf(tw, "%s\t-\t-\t-\t-\tNO TOKEN", name)
	default:
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s", name, st.Revision, st.Source,
			fmtTime(st.FetchedAt), fmtTime(st.ExpiresAt), fmtTTL(st.ExpiresAt))
	}
	fmt.Fprintf(tw, "\t%s\t%s\n", fmtCalls(st), fmtLastError(st))
}

// fmtCalls writes "calls/quota", "-" when the state is unknown.
func fmtCalls(st appStatus) string {
	if st.CallsToday == nil {
		return "-"
	}
	if st.DailyQuota > 0 {
		return fmt.Sprintf("%d/%d", *st.CallsToday, st.DailyQuota)
	}
	return strconv.Itoa(*st.CallsToday)
}

// fmtLastError writes the last error shortly: errcode and message (cut at
// 80 characters; --json has it whole), how long ago, failures in a row.
func fmtLastError(st appStatus) string {
	if st.LastError == "" {
		return "-"
	}
	msg := st.LastError
	if st.LastErrcode != 0 {
		// "wechat: fetch … failed after N attempts: errcode 40001: invalid
		// credential" reads best from the errcode on.
		code := fmt.Sprintf("errcode %d", st.LastErrcode)
		if i := strings.Index(msg, code); i >= 0 {
			msg = msg[i:]
		} else {
			msg = code + ": " + msg
		}
	}
	if r := []rune(msg); len(r) > 80 {
		msg = string(r[:79]) + "…"
	}
	var extra []string
	if !st.LastErrorAt.IsZero() {
		extra = append(extra, now().Sub(st.LastErrorAt).Round(time.Second).String()+" ago")
	}
	if st.Failures > 1 {
		extra = append(extra, fmt.Sprintf("%d failures in a row", st.Failures))
	}
	if len(extra) > 0 {
		msg += " (" + strings.Join(extra, ", ") + ")"
	}
	return msg
}

// snapshot reads the latest entry of every key in the bucket, sorted by
// key, with one ordered consumer: a fresh watcher delivers each key's
// last value, then a nil marker.
func (c *cli) snapshot(ctx context.Context, s *session, kv jetstream.KeyValue, bucket string) ([]jetstream.KeyValueEntry, error) {
	rctx, cancel := c.withTimeout(ctx)
	defer cancel()
	w, err := kv.WatchAll(rctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, c.requestError(s, "list bucket "+bucket, err)
	}
	defer w.Stop()
	latest := map[string]jetstream.KeyValueEntry{}
	for {
		select {
		case <-rctx.Done():
			return nil, c.requestError(s, "list bucket "+bucket, rctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("list bucket %s: the watcher closed", bucket)
			}
			if e == nil {
				out := make([]jetstream.KeyValueEntry, 0, len(latest))
				for _, e := range latest {
					out = append(out, e)
				}
				sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
				return out, nil
			}
			if cur, ok := latest[e.Key()]; !ok || e.Revision() > cur.Revision() {
				latest[e.Key()] = e
			}
		}
	}
}
