package refresher_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// healthGet fetches path from h and returns the status and body.
func healthGet(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

// healthReadiness fetches /readyz from h.
func healthReadiness(t *testing.T, h http.Handler) (int, refresher.Readiness) {
	t.Helper()
	code, body := healthGet(t, h, "/readyz")
	var rep refresher.Readiness
	if err := json.Unmarshal([]byte(body), &rep); err != nil {
		t.Fatalf("/readyz body %q: %v", body, err)
	}
	if (code == http.StatusOK) != rep.Ready {
		t.Fatalf("/readyz answered %d with ready=%v", code, rep.Ready)
	}
	if code != http.StatusOK && code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz answered %d", code)
	}
	return code, rep
}

// findCheck returns the named check of rep (app "" for the non-app checks).
func findCheck(rep refresher.Readiness, name, app string) (refresher.Check, bool) {
	for _, c := range rep.Checks {
		if c.Name == name && c.App == app {
			return c, true
		}
	}
	return refresher.Check{}, false
}

func TestHealthReadyAfterFirstToken(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	cfg := e.Config(app)
	nc, _ := testutil.Connect(t, e.URL)
	r, err := refresher.New(cfg, nc, refresher.WithUpstream(harness.Client()), refresher.WithReplicaID("health-1"),
		refresher.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	h := r.HealthHandler()

	// Alive, but not ready before Run.
	if code, body := healthGet(t, h, "/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz = %d %q, want 200 ok", code, body)
	}
	code, rep := healthReadiness(t, h)
	if code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before Run = %d, want 503", code)
	}
	if c, _ := findCheck(rep, refresher.CheckRunning, ""); c.OK || c.Reason == "" {
		t.Errorf("running check before Run: %+v", c)
	}
	if c, _ := findCheck(rep, refresher.CheckApp, "mp"); c.OK || !strings.Contains(c.Reason, "no token yet") {
		t.Errorf("app check before Run: %+v", c)
	}
	if code, body := healthGet(t, h, "/status"); code != http.StatusOK || !strings.Contains(body, `"app": "mp"`) {
		t.Errorf("/status before Run = %d %s", code, body)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	testutil.WaitFor(t, 5*time.Second, func() bool { c, _ := healthReadiness(t, h); return c == http.StatusOK }, "not ready after the first token")
	_, rep = healthReadiness(t, h)
	for _, name := range []string{refresher.CheckRunning, refresher.CheckNATS, refresher.CheckBucket} {
		if c, ok := findCheck(rep, name, ""); !ok || !c.OK {
			t.Errorf("check %s: %+v (present %v)", name, c, ok)
		}
	}
	if c, ok := findCheck(rep, refresher.CheckApp, "mp"); !ok || !c.OK || c.Reason != "" {
		t.Errorf("app check: %+v", c)
	}
	if rep.Replica != "health-1" {
		t.Errorf("replica %q, want health-1", rep.Replica)
	}

	// /status, through the daemon's handler (with /metrics).
	rec, _ := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	full := refresher.NewHTTPHandler(r, prometheus.NewRegistry())
	testutil.WaitFor(t, 5*time.Second, func() bool {
		_, body := healthGet(t, full, "/status")
		var st refresher.StatusReport
		return json.Unmarshal([]byte(body), &st) == nil && st.Leader == "health-1" && st.IsLeader
	}, "/status does not name this replica the leader")
	code, body := healthGet(t, full, "/status")
	var st refresher.StatusReport
	if err := json.Unmarshal([]byte(body), &st); err != nil || code != http.StatusOK {
		t.Fatalf("/status = %d %q: %v", code, body, err)
	}
	if st.Replica != "health-1" || len(st.Apps) != 1 || st.Apps[0].App != "mp" || !st.Apps[0].Valid || st.Apps[0].Revision == 0 {
		t.Errorf("/status = %+v", st)
	}
	if strings.Contains(body, rec.AccessToken) || strings.Contains(body, harness.Secret(app.AppID)) {
		t.Error("/status shows the token or the secret")
	}
	if code, _ := healthGet(t, full, "/metrics"); code != http.StatusOK {
		t.Errorf("/metrics = %d", code)
	}
	if code, _ := healthGet(t, full, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := healthReadiness(t, full); code != http.StatusOK {
		t.Errorf("/readyz through NewHTTPHandler = %d", code)
	}
}

func TestHealthNotReadyWhileUpstreamFails(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("blocked")
	e.Sim.SetFault(wechatsim.Fault{Errcode: 40164})
	cfg := e.Config(app)
	// A polite pace short enough for the test: the recovery below comes
	// from the scheduled retry, not from a request.
	cfg.Policy.PermanentRetry = 300 * time.Millisecond
	rep := e.Start(cfg)
	h := rep.R.HealthHandler()

	var c refresher.Check
	testutil.WaitFor(t, 5*time.Second, func() bool {
		_, rd := healthReadiness(t, h)
		c, _ = findCheck(rd, refresher.CheckApp, "blocked")
		return strings.Contains(c.Reason, "40164")
	}, "/readyz does not report the upstream error")
	code, rd := healthReadiness(t, h)
	if code != http.StatusServiceUnavailable || c.OK || !strings.Contains(c.Reason, "no token yet") {
		t.Errorf("/readyz = %d, app check %+v", code, c)
	}
	for _, name := range []string{refresher.CheckNATS, refresher.CheckBucket} {
		if c, ok := findCheck(rd, name, ""); !ok || !c.OK {
			t.Errorf("check %s: %+v", name, c)
		}
	}
	_, body := healthGet(t, h, "/readyz")
	if strings.Contains(body, harness.Secret(app.AppID)) {
		t.Error("/readyz shows the secret")
	}

	// The upstream recovers: ready once the next scheduled attempt
	// stores a token.
	e.Sim.SetFault(wechatsim.Fault{})
	testutil.WaitFor(t, 5*time.Second, func() bool { c, _ := healthReadiness(t, h); return c == http.StatusOK }, "not ready after the upstream recovered")
}

func TestHealthNotReadyWithoutNATS(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	rep := e.Start(e.Config(e.App("mp")))
	h := rep.R.HealthHandler()
	testutil.WaitFor(t, 5*time.Second, func() bool { c, _ := healthReadiness(t, h); return c == http.StatusOK }, "not ready")

	e.Server.Shutdown()
	testutil.WaitFor(t, 5*time.Second, func() bool {
		code, rd := healthReadiness(t, h)
		c, _ := findCheck(rd, refresher.CheckNATS, "")
		return code == http.StatusServiceUnavailable && !c.OK && strings.Contains(c.Reason, "RECONNECTING")
	}, "/readyz does not fail when NATS is gone")
	_, rd := healthReadiness(t, h)
	if c, _ := findCheck(rd, refresher.CheckBucket, ""); c.OK {
		t.Errorf("bucket check passes without NATS: %+v", c)
	}
	if c, _ := findCheck(rd, refresher.CheckApp, "mp"); !c.OK {
		t.Errorf("the app's valid token is reported invalid: %+v", c)
	}
	if code, _ := healthGet(t, h, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d without NATS, want 200 (the process runs)", code)
	}

	// NATS comes back: ready again.
	testutil.RestartServer(t, e.Server)
	testutil.WaitFor(t, 10*time.Second, func() bool { c, _ := healthReadiness(t, h); return c == http.StatusOK }, "not ready after NATS came back")
	// Stop the replica while NATS runs: the restarted server's cleanup
	// would run first and leave the lease release waiting for it.
	if err := rep.Stop(); err != nil {
		t.Error(err)
	}
}

// TestHealthNotReadyWithoutBucket: while the token bucket is gone and
// cannot be created again (a stream that holds its subjects is in the
// way), /readyz fails naming the bucket; once the way is clear, the
// running refresher re-provisions the bucket and is ready again.
func TestHealthNotReadyWithoutBucket(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	rep := e.Start(e.Config(e.App("mp")))
	h := rep.R.HealthHandler()
	testutil.WaitFor(t, 5*time.Second, func() bool { c, _ := healthReadiness(t, h); return c == http.StatusOK }, "not ready")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Delete the bucket and take its subjects, before the refresher
	// re-creates it (if it was quicker, try again).
	testutil.WaitFor(t, 5*time.Second, func() bool {
		if err := e.JS.DeleteKeyValue(ctx, contract.DefaultBucket); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
			t.Logf("delete bucket: %v", err)
		}
		_, err := e.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "in-the-way", Subjects: []string{"$KV." + contract.DefaultBucket + ".>"}})
		return err == nil
	}, "could not put a stream in the bucket's way")
	testutil.WaitFor(t, 5*time.Second, func() bool {
		code, rd := healthReadiness(t, h)
		c, _ := findCheck(rd, refresher.CheckBucket, "")
		return code == http.StatusServiceUnavailable && !c.OK && strings.Contains(c.Reason, contract.DefaultBucket)
	}, "/readyz does not fail when the bucket is gone")

	if err := e.JS.DeleteStream(ctx, "in-the-way"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, func() bool { c, _ := healthReadiness(t, h); return c == http.StatusOK }, "not ready again after the bucket could be re-provisioned")
}
