package refresher

import (
	"context"
	"errors"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// Values of the labels of the metrics that are not app names.
const (
	// ResultOK and ResultError are the values of the result label of
	// tokenkeeper_refreshes_total.
	ResultOK    = "ok"
	ResultError = "error"

	// Error classes of tokenkeeper_upstream_errors_total for failures
	// that carry no WeChat errcode.
	ErrClassHTTP5xx     = "http_5xx"     // the upstream answered HTTP 5xx
	ErrClassTransport   = "transport"    // connection, TLS, DNS, timeout
	ErrClassBadResponse = "bad_response" // a body that is not a token answer
	ErrClassOther       = "other"        // anything else (other HTTP statuses, invalid arguments)
	// ErrClassOtherErrcode is an errcode tokenkeeper does not know; the
	// log line of the failure carries the code itself.
	ErrClassOtherErrcode = "errcode_other"
)

// knownErrcodes are the upstream errcodes (WeChat, WeCom, Feishu) that get a label value of their
// own in tokenkeeper_upstream_errors_total; any other errcode is counted
// as ErrClassOtherErrcode, so that an upstream cannot grow the number of
// series without bound.
var knownErrcodes = map[int]bool{
	-1: true, 40001: true, 40002: true, 40013: true, 40014: true, 40125: true,
	40164: true, 40243: true, 41001: true, 41002: true, 41004: true, 42001: true,
	45009: true, 45011: true, 48001: true, 61024: true,
	89501: true, 89503: true, 89506: true, 89507: true,
	// WeCom
	60020: true, 40091: true,
	// Feishu
	10003: true, 10014: true, 99991400: true, 99991663: true, 99991668: true, 99991671: true, 99991677: true,
	// Open Platform
	61005: true, 61006: true, 61023: true,
}

// UpstreamErrorClass returns the errcode label value of
// tokenkeeper_upstream_errors_total for a failed upstream call: the WeChat
// errcode for a known errcode answer, else one of the ErrClass constants.
// The set of values is bounded.
func UpstreamErrorClass(err error) string {
	var we *wechat.Error
	if errors.As(err, &we) {
		if knownErrcodes[we.Code] {
			return strconv.Itoa(we.Code)
		}
		return ErrClassOtherErrcode
	}
	var he *wechat.HTTPError
	if errors.As(err, &he) {
		if he.Status >= 500 {
			return ErrClassHTTP5xx
		}
		return ErrClassOther
	}
	if errors.Is(err, wechat.ErrBadResponse) {
		return ErrClassBadResponse
	}
	var ue *url.Error
	if errors.As(err, &ue) || errors.Is(err, context.DeadlineExceeded) {
		return ErrClassTransport
	}
	return ErrClassOther
}

// lv makes v a legal label value: Prometheus panics on a label value that
// is not valid UTF-8, so each run of invalid bytes becomes U+FFFD. The
// refresher passes only configured app names (or UnknownAppLabel) and
// constant values; this is the defence against any other caller.
func lv(v string) string {
	if utf8.ValidString(v) {
		return v
	}
	return strings.ToValidUTF8(v, "\uFFFD")
}

// Metrics is an Observer that exports the refresher's events as
// Prometheus metrics (all named tokenkeeper_*). Labels are app names,
// sources, results, error codes and alert names only: no metric ever
// carries a token or a secret. Pass it to New with WithObserver. It is
// safe for concurrent use.
type Metrics struct {
	now func() time.Time

	mu      sync.Mutex
	expires map[string]time.Time // app -> expires_at of the token held

	expiryDesc       *prometheus.Desc
	refreshes        *prometheus.CounterVec
	upstreamErrors   *prometheus.CounterVec
	upstreamDuration *prometheus.HistogramVec
	quotaUsed        *prometheus.GaugeVec
	leader           prometheus.Gauge
	conflicts        *prometheus.CounterVec
	passive          *prometheus.CounterVec
	sign             *prometheus.CounterVec
	alerts           *prometheus.CounterVec
	callbacks        *prometheus.CounterVec
}

var (
	_ Observer     = (*Metrics)(nil)
	_ SignObserver = (*Metrics)(nil)
)

// UpstreamDurationBuckets are the buckets of
// tokenkeeper_upstream_duration_seconds: 1 ms to 30 s.
var UpstreamDurationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20, 30}

// NewMetrics returns Metrics registered on reg (prometheus.MustRegister
// semantics: it panics if a tokenkeeper_* metric is already registered
// there). A nil reg registers nothing, for callers that collect through
// Metrics' own Describe and Collect.
//
// The metrics:
//
//	tokenkeeper_token_expiry_seconds{app}            gauge, seconds until the held token expires (negative: expired), computed at scrape time
//	tokenkeeper_refreshes_total{app,source,result}    counter, result ok|error
//	tokenkeeper_upstream_errors_total{app,errcode}    counter, errcode: WeChat errcode or http_5xx|transport|bad_response|other|errcode_other
//	tokenkeeper_upstream_duration_seconds{app}        histogram of upstream token calls (retries included)
//	tokenkeeper_quota_used{app}                       gauge, upstream token calls made today (WeChat's day)
//	tokenkeeper_leader                                gauge, 1 while this replica holds the lease
//	tokenkeeper_kv_write_conflicts_total{app}         counter, revision-checked writes that met a newer revision
//	tokenkeeper_passive_requests_total{app,outcome}   counter, token.refresh requests by outcome (ok or error code)
//	tokenkeeper_alerts_total{app,alert}               counter, upstream errcodes an operator must act on
//	tokenkeeper_sign_requests_total{app,outcome}      counter, token.sign requests by outcome (ok or error code)
//	tokenkeeper_callback_pushes_total{app,result}     counter, component pushes by answer: success or why not
//
// A wechat-component's authorizers are counted under the component's app
// label (never one series per authorizer); the per-authorizer detail is
// in Refresher.AuthorizerStatuses.
//
// The app label is a configured app's name. token.refresh requests that
// name no configured app (typos, made-up or hostile names) are all counted
// under the one value app="(unknown)" (UnknownAppLabel), so the number of
// series is bounded by the configuration, not by what clients send. Every
// method takes any string without panicking: a label value that is not
// valid UTF-8 is made valid (invalid bytes become U+FFFD).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		now:     time.Now,
		expires: map[string]time.Time{},
		expiryDesc: prometheus.NewDesc("tokenkeeper_token_expiry_seconds",
			"Seconds until the access token held for the app expires; negative once it has expired.",
			[]string{"app"}, nil),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_refreshes_total",
			Help: "Token refreshes by app, source (startup, scheduled, passive, manual) and result (ok, error).",
		}, []string{"app", "source", "result"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_upstream_errors_total",
			Help: "Failed upstream token calls by app and errcode (the WeChat errcode, or http_5xx, transport, bad_response, other, errcode_other).",
		}, []string{"app", "errcode"}),
		upstreamDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenkeeper_upstream_duration_seconds",
			Help:    "Duration of upstream token calls, retries included.",
			Buckets: UpstreamDurationBuckets,
		}, []string{"app"}),
		quotaUsed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenkeeper_quota_used",
			Help: "Upstream token calls the app has made today (WeChat's day, UTC+8), as last counted before a call.",
		}, []string{"app"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenkeeper_leader",
			Help: "1 while this replica holds the leader lease (and fetches), else 0.",
		}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_kv_write_conflicts_total",
			Help: "Revision-checked KV writes that met a newer revision.",
		}, []string{"app"}),
		passive: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_passive_requests_total",
			Help: "token.refresh requests by app and outcome (ok, or the error code of the reply).",
		}, []string{"app", "outcome"}),
		sign: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_sign_requests_total",
			Help: "token.sign (JS-SDK signing) requests answered by this replica, by app and outcome (ok, or the error code of the reply).",
		}, []string{"app", "outcome"}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_alerts_total",
			Help: "Events an operator must act on, by app and alert: upstream errcodes (ip_not_whitelisted, secret_wrong_or_rotated, risk_control, daily_quota_exhausted, invalid_appid) and token_not_stored, invalid_record, bucket_lost (app \"\": bucket-wide).",
		}, []string{"app", "alert"}),
		callbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_callback_pushes_total",
			Help: "Component pushes to the callback by app and result: success, or too_large, bad_signature, bad_padding, appid_mismatch, malformed, not_stored.",
		}, []string{"app", "result"}),
	}
	if reg != nil {
		reg.MustRegister(m)
	}
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.expiryDesc
	m.refreshes.Describe(ch)
	m.upstreamErrors.Describe(ch)
	m.upstreamDuration.Describe(ch)
	m.quotaUsed.Describe(ch)
	m.leader.Describe(ch)
	m.conflicts.Describe(ch)
	m.passive.Describe(ch)
	m.sign.Describe(ch)
	m.alerts.Describe(ch)
	m.callbacks.Describe(ch)
}

// Collect implements prometheus.Collector. The expiry gauge is computed
// now, from the expiry of the token each app holds, so it counts down
// between refreshes.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	now := m.now()
	m.mu.Lock()
	apps := make([]string, 0, len(m.expires))
	for a := range m.expires {
		apps = append(apps, a)
	}
	sort.Strings(apps)
	left := make([]float64, len(apps))
	for i, a := range apps {
		left[i] = m.expires[a].Sub(now).Seconds()
	}
	m.mu.Unlock()
	for i, a := range apps {
		ch <- prometheus.MustNewConstMetric(m.expiryDesc, prometheus.GaugeValue, left[i], a)
	}
	m.refreshes.Collect(ch)
	m.upstreamErrors.Collect(ch)
	m.upstreamDuration.Collect(ch)
	m.quotaUsed.Collect(ch)
	m.leader.Collect(ch)
	m.conflicts.Collect(ch)
	m.passive.Collect(ch)
	m.sign.Collect(ch)
	m.alerts.Collect(ch)
	m.callbacks.Collect(ch)
}

// CallbackPush counts one component push by its answer (callback.go).
func (m *Metrics) CallbackPush(app, result string) {
	m.callbacks.WithLabelValues(lv(app), lv(result)).Inc()
}

// UpstreamCall implements Observer: it observes the duration and counts a
// failure by error class, and an alert for errcodes an operator must act
// on. A call cancelled by the refresher itself (shutdown) is timed but
// not counted as an upstream error.
func (m *Metrics) UpstreamCall(app string, d time.Duration, err error) {
	m.upstreamDuration.WithLabelValues(lv(app)).Observe(d.Seconds())
	if err == nil || errors.Is(err, context.Canceled) {
		return
	}
	m.upstreamErrors.WithLabelValues(lv(app), UpstreamErrorClass(err)).Inc()
	var we *wechat.Error
	if errors.As(err, &we) {
		if alert := alertFor(we.Code); alert != "" {
			m.alerts.WithLabelValues(lv(app), alert).Inc()
		}
	}
}

// Refreshed implements Observer: it remembers the expiry of app's token
// and, for a fetched token (source not empty), counts a successful
// refresh. A token read from the bucket (source empty) only moves the
// expiry gauge.
func (m *Metrics) Refreshed(app, source string, expiresAt time.Time) {
	app = lv(app)
	m.mu.Lock()
	m.expires[app] = expiresAt
	m.mu.Unlock()
	if source != "" {
		m.refreshes.WithLabelValues(app, lv(source), ResultOK).Inc()
	}
}

// RefreshFailed implements Observer: it counts a failed refresh.
func (m *Metrics) RefreshFailed(app, source string, _ error) {
	m.refreshes.WithLabelValues(lv(app), lv(source), ResultError).Inc()
}

// WriteConflict implements Observer.
func (m *Metrics) WriteConflict(app string) { m.conflicts.WithLabelValues(lv(app)).Inc() }

// Leader implements Observer: tokenkeeper_leader is 1 while leading.
func (m *Metrics) Leader(leader bool) {
	if leader {
		m.leader.Set(1)
	} else {
		m.leader.Set(0)
	}
}

// PassiveRequest implements Observer.
func (m *Metrics) PassiveRequest(app, outcome string) {
	m.passive.WithLabelValues(lv(app), lv(outcome)).Inc()
}

// SignRequest implements SignObserver.
func (m *Metrics) SignRequest(app, outcome string) {
	m.sign.WithLabelValues(lv(app), lv(outcome)).Inc()
}

// Forget deletes every series of app, for an app removed from the
// configuration (Reload): otherwise its expiry gauge would keep counting
// down and fire expiry alerts for an app nobody serves any more.
func (m *Metrics) Forget(app string) {
	app = lv(app)
	m.mu.Lock()
	delete(m.expires, app)
	m.mu.Unlock()
	l := prometheus.Labels{"app": app}
	m.refreshes.DeletePartialMatch(l)
	m.upstreamErrors.DeletePartialMatch(l)
	m.upstreamDuration.DeletePartialMatch(l)
	m.quotaUsed.DeletePartialMatch(l)
	m.conflicts.DeletePartialMatch(l)
	m.passive.DeletePartialMatch(l)
	m.sign.DeletePartialMatch(l)
	m.alerts.DeletePartialMatch(l)
}

// Alert implements Observer: it counts the alert in
// tokenkeeper_alerts_total (app "" for a bucket-wide alert).
func (m *Metrics) Alert(app, alert string) {
	if app != "" {
		app = lv(app)
	}
	m.alerts.WithLabelValues(app, lv(alert)).Inc()
}

// QuotaUsed implements Observer.
func (m *Metrics) QuotaUsed(app string, calls int) {
	m.quotaUsed.WithLabelValues(lv(app)).Set(float64(calls))
}
