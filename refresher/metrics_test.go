package refresher_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// metricValue returns the value of the counter, gauge or histogram
// (its sample count) name{labels} in g (ok false if there is none).
func metricValue(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			if len(have) != len(labels) {
				continue
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				return m.GetCounter().GetValue(), true
			case dto.MetricType_GAUGE:
				return m.GetGauge().GetValue(), true
			case dto.MetricType_HISTOGRAM:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func TestMetricsObserverEvents(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := refresher.NewMetrics(reg)

	now := time.Now()
	m.Refreshed("mp", contract.SourceStartup, now.Add(100*time.Second))
	m.Refreshed("mp", contract.SourceScheduled, now.Add(100*time.Second))
	m.Refreshed("mini", "", now.Add(-50*time.Second)) // read from the bucket: no refresh counted
	m.RefreshFailed("mp", contract.SourceScheduled, errors.New("boom"))
	m.RefreshFailed("mp", contract.SourcePassive, &wechat.Error{Code: 40164})

	m.UpstreamCall("mp", 20*time.Millisecond, nil)
	m.UpstreamCall("mp", time.Millisecond, &wechat.Error{Code: 40164, Msg: "invalid ip"})
	m.UpstreamCall("mp", time.Millisecond, fmt.Errorf("refresh: %w", &wechat.Error{Code: 40164}))
	m.UpstreamCall("mp", time.Millisecond, &wechat.Error{Code: 40125})
	m.UpstreamCall("mp", time.Millisecond, &wechat.Error{Code: 40001})
	m.UpstreamCall("mp", time.Millisecond, &wechat.Error{Code: 89503})
	m.UpstreamCall("mp", time.Millisecond, &wechat.Error{Code: 45009})
	m.UpstreamCall("mp", time.Millisecond, &wechat.Error{Code: 40013})
	m.UpstreamCall("mp", time.Millisecond, &wechat.Error{Code: -1}) // busy: counted, no alert
	m.UpstreamCall("mp", time.Millisecond, &wechat.Error{Code: 99999})
	m.UpstreamCall("mp", time.Millisecond, &wechat.Error{Code: 99998}) // unknown codes share one series
	m.UpstreamCall("mp", time.Millisecond, &wechat.HTTPError{Status: 502})
	m.UpstreamCall("mp", time.Millisecond, &wechat.HTTPError{Status: 404})
	m.UpstreamCall("mp", time.Millisecond, fmt.Errorf("%w: empty body", wechat.ErrBadResponse))
	m.UpstreamCall("mp", 30*time.Second, &url.Error{Op: "Get", URL: "https://api.example/cgi-bin/token", Err: errors.New("connection refused")})
	m.UpstreamCall("mp", time.Second, context.DeadlineExceeded)
	m.UpstreamCall("mp", time.Millisecond, errors.New("something else"))
	m.UpstreamCall("mp", time.Millisecond, context.Canceled) // ours, not the upstream's: timed only

	m.WriteConflict("mp")
	m.WriteConflict("mp")
	m.Leader(true)
	m.PassiveRequest("mp", "ok")
	m.PassiveRequest("mp", "ok")
	m.PassiveRequest("mp", "502")
	m.QuotaUsed("mp", 7)
	m.QuotaUsed("mp", 8)

	want := `
# HELP tokenkeeper_alerts_total Events an operator must act on, by app and alert: upstream errcodes (ip_not_whitelisted, secret_wrong_or_rotated, risk_control, daily_quota_exhausted, invalid_appid) and token_not_stored, invalid_record, bucket_lost (app "": bucket-wide).
# TYPE tokenkeeper_alerts_total counter
tokenkeeper_alerts_total{alert="daily_quota_exhausted",app="mp"} 1
tokenkeeper_alerts_total{alert="invalid_appid",app="mp"} 1
tokenkeeper_alerts_total{alert="ip_not_whitelisted",app="mp"} 2
tokenkeeper_alerts_total{alert="risk_control",app="mp"} 1
tokenkeeper_alerts_total{alert="secret_wrong_or_rotated",app="mp"} 2
# HELP tokenkeeper_kv_write_conflicts_total Revision-checked KV writes that met a newer revision.
# TYPE tokenkeeper_kv_write_conflicts_total counter
tokenkeeper_kv_write_conflicts_total{app="mp"} 2
# HELP tokenkeeper_leader 1 while this replica holds the leader lease (and fetches), else 0.
# TYPE tokenkeeper_leader gauge
tokenkeeper_leader 1
# HELP tokenkeeper_passive_requests_total token.refresh requests by app and outcome (ok, or the error code of the reply).
# TYPE tokenkeeper_passive_requests_total counter
tokenkeeper_passive_requests_total{app="mp",outcome="502"} 1
tokenkeeper_passive_requests_total{app="mp",outcome="ok"} 2
# HELP tokenkeeper_quota_used Upstream token calls the app has made today (WeChat's day, UTC+8), as last counted before a call.
# TYPE tokenkeeper_quota_used gauge
tokenkeeper_quota_used{app="mp"} 8
# HELP tokenkeeper_refreshes_total Token refreshes by app, source (startup, scheduled, passive, manual) and result (ok, error).
# TYPE tokenkeeper_refreshes_total counter
tokenkeeper_refreshes_total{app="mp",result="error",source="passive"} 1
tokenkeeper_refreshes_total{app="mp",result="error",source="scheduled"} 1
tokenkeeper_refreshes_total{app="mp",result="ok",source="scheduled"} 1
tokenkeeper_refreshes_total{app="mp",result="ok",source="startup"} 1
# HELP tokenkeeper_upstream_errors_total Failed upstream token calls by app and errcode (the WeChat errcode, or http_5xx, transport, bad_response, other, errcode_other).
# TYPE tokenkeeper_upstream_errors_total counter
tokenkeeper_upstream_errors_total{app="mp",errcode="-1"} 1
tokenkeeper_upstream_errors_total{app="mp",errcode="40001"} 1
tokenkeeper_upstream_errors_total{app="mp",errcode="40013"} 1
tokenkeeper_upstream_errors_total{app="mp",errcode="40125"} 1
tokenkeeper_upstream_errors_total{app="mp",errcode="40164"} 2
tokenkeeper_upstream_errors_total{app="mp",errcode="45009"} 1
tokenkeeper_upstream_errors_total{app="mp",errcode="89503"} 1
tokenkeeper_upstream_errors_total{app="mp",errcode="bad_response"} 1
tokenkeeper_upstream_errors_total{app="mp",errcode="errcode_other"} 2
tokenkeeper_upstream_errors_total{app="mp",errcode="http_5xx"} 1
tokenkeeper_upstream_errors_total{app="mp",errcode="other"} 2
tokenkeeper_upstream_errors_total{app="mp",errcode="transport"} 2
`
	if err := promtest.GatherAndCompare(reg, strings.NewReader(want),
		"tokenkeeper_alerts_total", "tokenkeeper_kv_write_conflicts_total", "tokenkeeper_leader",
		"tokenkeeper_passive_requests_total", "tokenkeeper_quota_used", "tokenkeeper_refreshes_total",
		"tokenkeeper_upstream_errors_total"); err != nil {
		t.Error(err)
	}

	if n, _ := metricValue(t, reg, "tokenkeeper_upstream_duration_seconds", map[string]string{"app": "mp"}); n != 18 {
		t.Errorf("upstream_duration_seconds count = %v, want 18 (every call timed)", n)
	}
	left, ok := metricValue(t, reg, "tokenkeeper_token_expiry_seconds", map[string]string{"app": "mp"})
	if !ok || left > 100 || left < 95 {
		t.Errorf("token_expiry_seconds{mp} = %v (present %v), want just under 100", left, ok)
	}
	if left, _ := metricValue(t, reg, "tokenkeeper_token_expiry_seconds", map[string]string{"app": "mini"}); left > -50 || left < -55 {
		t.Errorf("token_expiry_seconds{mini} = %v, want about -50 (expired)", left)
	}
	// The expiry gauge counts down between refreshes.
	testutil.WaitFor(t, 2*time.Second, func() bool {
		v, _ := metricValue(t, reg, "tokenkeeper_token_expiry_seconds", map[string]string{"app": "mp"})
		return v < left
	}, "token_expiry_seconds does not count down")

	m.Leader(false)
	if v, _ := metricValue(t, reg, "tokenkeeper_leader", nil); v != 0 {
		t.Errorf("leader = %v after losing the lease, want 0", v)
	}
	if problems, err := promtest.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}

	// A removed app's series go away; the others stay.
	m.Forget("mp")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			for _, lp := range mt.GetLabel() {
				if lp.GetName() == "app" && lp.GetValue() == "mp" {
					t.Errorf("%s still has a series of the forgotten app", mf.GetName())
				}
			}
		}
	}
	if _, ok := metricValue(t, reg, "tokenkeeper_token_expiry_seconds", map[string]string{"app": "mini"}); !ok {
		t.Error("Forget(mp) removed mini's expiry")
	}
}

func TestMetricsUpstreamErrorClass(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&wechat.Error{Code: 40164}, "40164"},
		{fmt.Errorf("wrapped: %w", &wechat.Error{Code: 45009}), "45009"},
		{&wechat.Error{Code: 12345}, refresher.ErrClassOtherErrcode},
		{&wechat.HTTPError{Status: 503}, refresher.ErrClassHTTP5xx},
		{&wechat.HTTPError{Status: 403}, refresher.ErrClassOther},
		{fmt.Errorf("%w: not JSON", wechat.ErrBadResponse), refresher.ErrClassBadResponse},
		{&url.Error{Op: "Post", URL: "https://x/cgi-bin/stable_token", Err: io.ErrUnexpectedEOF}, refresher.ErrClassTransport},
		{context.DeadlineExceeded, refresher.ErrClassTransport},
		{errors.New("?"), refresher.ErrClassOther},
	} {
		if got := refresher.UpstreamErrorClass(tc.err); got != tc.want {
			t.Errorf("UpstreamErrorClass(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestMetricsRegisterTwicePanics(t *testing.T) {
	reg := prometheus.NewRegistry()
	refresher.NewMetrics(reg)
	defer func() {
		if recover() == nil {
			t.Error("a second NewMetrics on the same registry did not panic")
		}
	}()
	refresher.NewMetrics(reg)
}

// scrapeMetrics returns the text exposition of /metrics served by
// NewHTTPHandler.
func scrapeMetrics(t *testing.T, r *refresher.Refresher, g prometheus.Gatherer) string {
	t.Helper()
	srv := httptest.NewServer(refresher.NewHTTPHandler(r, g))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return string(body)
}

func assertNoneOf(t *testing.T, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			t.Errorf("the metrics contain a secret or token (%.6s…)", s)
		}
	}
}

func TestMetricsWithRefresher(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	reg := prometheus.NewRegistry()
	m := refresher.NewMetrics(reg)
	rep := e.Start(e.Config(app), refresher.WithObserver(m))
	rec, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })

	val := func(name string, labels map[string]string) float64 {
		v, _ := metricValue(t, reg, name, labels)
		return v
	}
	testutil.WaitFor(t, 5*time.Second, func() bool {
		return val("tokenkeeper_refreshes_total", map[string]string{"app": "mp", "source": "startup", "result": "ok"}) >= 1 &&
			val("tokenkeeper_leader", nil) == 1 &&
			val("tokenkeeper_quota_used", map[string]string{"app": "mp"}) >= 1
	}, "no ok refresh, leadership or quota count in the metrics")
	if left := val("tokenkeeper_token_expiry_seconds", map[string]string{"app": "mp"}); left > 3600 || left < 3590 {
		t.Errorf("token_expiry_seconds = %v, want about 3600", left)
	}
	if n := val("tokenkeeper_upstream_duration_seconds", map[string]string{"app": "mp"}); n < 1 {
		t.Errorf("upstream_duration_seconds count = %v, want ≥ 1", n)
	}

	// A passive refresh of the stored revision.
	body, _ := json.Marshal(contract.RefreshRequest{StaleRevision: &rev})
	msg, err := e.NC.Request(contract.RefreshSubject("mp"), body, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var reply contract.RefreshReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Revision <= rev {
		t.Fatalf("refresh reply %s: %v", msg.Data, err)
	}
	testutil.WaitFor(t, 5*time.Second, func() bool {
		return val("tokenkeeper_passive_requests_total", map[string]string{"app": "mp", "outcome": "ok"}) == 1 &&
			val("tokenkeeper_refreshes_total", map[string]string{"app": "mp", "source": "passive", "result": "ok"}) == 1
	}, "the passive refresh is not counted")

	text := scrapeMetrics(t, rep.R, reg)
	for _, want := range []string{"tokenkeeper_leader 1", `tokenkeeper_token_expiry_seconds{app="mp"}`, `tokenkeeper_refreshes_total{app="mp",result="ok",source="startup"} 1`} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	assertNoneOf(t, text, harness.Secret(app.AppID), rec.AccessToken, reply.AccessToken)
}

func TestMetricsUpstreamAlert(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("blocked")
	e.Sim.SetFault(wechatsim.Fault{Errcode: 40164})
	reg := prometheus.NewRegistry()
	m := refresher.NewMetrics(reg)
	rep := e.Start(e.Config(app), refresher.WithObserver(m))

	val := func(name string, labels map[string]string) float64 {
		v, _ := metricValue(t, reg, name, labels)
		return v
	}
	testutil.WaitFor(t, 5*time.Second, func() bool {
		return val("tokenkeeper_alerts_total", map[string]string{"app": "blocked", "alert": "ip_not_whitelisted"}) >= 1 &&
			val("tokenkeeper_upstream_errors_total", map[string]string{"app": "blocked", "errcode": "40164"}) >= 1 &&
			val("tokenkeeper_refreshes_total", map[string]string{"app": "blocked", "source": "startup", "result": "error"}) >= 1
	}, "the 40164 is not in the metrics")
	if _, ok := metricValue(t, reg, "tokenkeeper_token_expiry_seconds", map[string]string{"app": "blocked"}); ok {
		t.Error("an app that never had a token has an expiry")
	}
	text := scrapeMetrics(t, rep.R, reg)
	if !strings.Contains(text, `tokenkeeper_alerts_total{alert="ip_not_whitelisted",app="blocked"}`) {
		t.Errorf("/metrics lacks the alert:\n%s", text)
	}
	assertNoneOf(t, text, harness.Secret(app.AppID))
}
