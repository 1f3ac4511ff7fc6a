package refresher

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nats-io/nats.go"
)

// Timing of the bucket probe of /readyz.
const (
	// bucketProbeTimeout bounds one probe of the bucket (a stream info
	// request).
	bucketProbeTimeout = time.Second
	// bucketProbeCache is how long a probe's result is reused, so that a
	// storm of readiness checks costs NATS at most one request a second.
	bucketProbeCache = time.Second
)

// Names of the checks in a Readiness report.
const (
	CheckRunning = "running" // Run has provisioned the buckets and not returned
	CheckNATS    = "nats"    // the NATS connection is connected
	CheckBucket  = "bucket"  // the token bucket answers
	CheckLeader  = "leader"  // a live lease holder is known (this replica or another)
	CheckApp     = "app"     // an app holds a valid token (one check per app)
)

// Check is one readiness check of a Readiness report.
type Check struct {
	// Name is one of the Check* constants.
	Name string `json:"name"`
	// App is the app of a CheckApp check.
	App string `json:"app,omitempty"`
	// OK reports whether the check passed.
	OK bool `json:"ok"`
	// Reason says why the check failed, or, for a passing app whose
	// last refresh failed, what that failure was. It never holds a token
	// or a secret.
	Reason string `json:"reason,omitempty"`
}

// Readiness is the JSON body of /readyz.
type Readiness struct {
	// Ready is true when every check passed (HTTP 200; else 503).
	Ready bool `json:"ready"`
	// Replica is this replica's id.
	Replica string `json:"replica"`
	// Leader reports whether this replica holds the lease. Readiness
	// needs a live lease holder (CheckLeader), not this one.
	Leader bool `json:"leader"`
	// Checks are every check made, failing or not.
	Checks []Check `json:"checks"`
}

// StatusReport is the JSON body of /status. It carries no tokens.
type StatusReport struct {
	// Replica is this replica's id.
	Replica string `json:"replica"`
	// Leader is the id of the replica known to hold the lease ("" when
	// none is known).
	Leader string `json:"leader"`
	// IsLeader reports whether this replica holds the lease.
	IsLeader bool `json:"is_leader"`
	// Apps is the status of every app, sorted by name.
	Apps []Status `json:"apps"`
}

// health serves the health endpoints of one Refresher and caches the
// bucket probe.
type health struct {
	r *Refresher

	probeMu  sync.Mutex // held during a probe: concurrent checks share it
	probedAt time.Time  // monotonic time of the last probe
	probeErr error
}

// HealthHandler returns the health endpoints of r:
//
//   - /healthz: 200 "ok" while the process runs (liveness).
//   - /readyz: 200 when Run is running, the NATS connection is connected,
//     the token bucket answers (probed with a 1 s timeout, the result
//     cached for 1 s; a lost bucket is re-provisioned meanwhile), a live
//     lease holder is known and every app holds a token that has not
//     expired; otherwise 503. Either way the body is a JSON Readiness
//     listing each check and, for a failing app, why (no token yet,
//     expired at …, and the last error). The "leader" check reflects the
//     lease: it passes while this replica holds the lease or has seen the
//     lease record renewed (a new revision) within lease_ttl plus a margin
//     (half of lease_ttl, at least 1 s); it fails while this replica
//     knows that nobody refreshes the tokens (no holder, a lost lease
//     bucket, a lease nobody can write). Leadership of this replica is not
//     required: a follower that sees valid tokens and a live leader is
//     ready.
//   - /status: JSON StatusReport: every app's Status, the leader's and
//     this replica's ids. No tokens.
func (r *Refresher) HealthHandler() http.Handler {
	mux := http.NewServeMux()
	r.handleHealth(mux)
	return mux
}

// handleHealth registers the endpoints of HealthHandler on mux.
func (r *Refresher) handleHealth(mux *http.ServeMux) {
	h := &health{r: r}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", h.serveReady)
	mux.HandleFunc("GET /status", h.serveStatus)
}

// NewHTTPHandler returns the refresher daemon's HTTP handler: /metrics
// (the metrics of g in the Prometheus exposition formats; nil g means
// prometheus.DefaultGatherer) and the endpoints of r.HealthHandler.
func NewHTTPHandler(r *Refresher, g prometheus.Gatherer) http.Handler {
	if g == nil {
		g = prometheus.DefaultGatherer
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	r.handleHealth(mux)
	return mux
}

// started reports whether Run has provisioned the buckets (so r.kv and
// r.lease are set and may be read) and has not returned.
func (r *Refresher) started() (started, stopped bool) {
	select {
	case <-r.ready:
	default:
		return false, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return true, r.closed
}

// readiness runs the checks of /readyz.
func (h *health) readiness() Readiness {
	r := h.r
	rep := Readiness{Ready: true, Replica: r.id}
	add := func(c Check) {
		rep.Checks = append(rep.Checks, c)
		rep.Ready = rep.Ready && c.OK
	}

	started, stopped := r.started()
	switch {
	case !started:
		add(Check{Name: CheckRunning, Reason: "starting: buckets not provisioned yet"})
	case stopped:
		add(Check{Name: CheckRunning, Reason: "stopped"})
	default:
		add(Check{Name: CheckRunning, OK: true})
		rep.Leader = r.Leader()
	}

	connected := r.nc.Status() == nats.CONNECTED
	if connected {
		add(Check{Name: CheckNATS, OK: true})
	} else {
		add(Check{Name: CheckNATS, Reason: "NATS connection is " + r.nc.Status().String()})
	}

	switch {
	case !started || stopped:
		add(Check{Name: CheckBucket, Reason: "not checked: the refresher is not running"})
	case !connected:
		add(Check{Name: CheckBucket, Reason: "not checked: NATS is not connected"})
	default:
		if err := h.probeBucket(); err != nil {
			r.mu.Lock() // Reload swaps r.cfg
			bucket := r.cfg.Bucket
			r.mu.Unlock()
			add(Check{Name: CheckBucket, Reason: fmt.Sprintf("bucket %s: %v", bucket, err)})
		} else {
			add(Check{Name: CheckBucket, OK: true})
		}
	}

	if !started || stopped {
		add(Check{Name: CheckLeader, Reason: "not checked: the refresher is not running"})
	} else if ok, since := r.leaderKnown(); ok {
		add(Check{Name: CheckLeader, OK: true})
	} else {
		add(Check{Name: CheckLeader, Reason: fmt.Sprintf("no live lease holder seen for %s (lease_ttl %s): no replica refreshes the tokens",
			since.Round(100*time.Millisecond), r.bk.leaseTTL)})
	}

	for _, s := range r.Statuses() {
		add(appCheck(s))
	}
	return rep
}

// appCheck checks that the app holds a valid token.
func appCheck(s Status) Check {
	c := Check{Name: CheckApp, App: s.App, OK: s.Valid}
	switch {
	case s.ExpiresAt.IsZero():
		c.Reason = "no token yet"
	case !s.Valid:
		c.Reason = "token expired at " + s.ExpiresAt.UTC().Format(time.RFC3339)
	}
	if s.LastError != "" {
		last := "last error at " + s.LastErrAt.UTC().Format(time.RFC3339)
		if s.Failures > 1 {
			last += fmt.Sprintf(" (%d in a row)", s.Failures)
		}
		last += ": " + s.LastError
		if c.Reason == "" {
			c.Reason = last
		} else {
			c.Reason += "; " + last
		}
	}
	return c
}

// probeBucket asks the bucket for its status, at most once per
// bucketProbeCache; concurrent callers share one probe. The probe does
// not follow the HTTP request's context: a client that hangs up must not
// leave a cancelled probe in the cache.
func (h *health) probeBucket() error {
	h.probeMu.Lock()
	defer h.probeMu.Unlock()
	if !h.probedAt.IsZero() && time.Since(h.probedAt) < bucketProbeCache {
		return h.probeErr
	}
	ctx, cancel := context.WithTimeout(context.Background(), bucketProbeTimeout)
	defer cancel()
	// The bucket in use, without re-provisioning a lost one here (the
	// watchdog does): a readiness probe must answer within its timeout.
	_, err := h.r.bk.tokens.cur.Load().kv.Status(ctx)
	h.probedAt, h.probeErr = time.Now(), err
	return err
}

func (h *health) serveReady(w http.ResponseWriter, _ *http.Request) {
	rep := h.readiness()
	code := http.StatusOK
	if !rep.Ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, rep)
}

func (h *health) serveStatus(w http.ResponseWriter, _ *http.Request) {
	r := h.r
	rep := StatusReport{Replica: r.id, Apps: r.Statuses()}
	if started, _ := r.started(); started {
		rep.Leader = r.lease.Leader()
		rep.IsLeader = r.Leader()
	}
	writeJSON(w, http.StatusOK, rep)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(body, '\n'))
}
