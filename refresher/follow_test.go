package refresher_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	tu "github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
)

// followFreePort returns a TCP port that was free a moment ago.
func followFreePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// stagingYAML is a follower environment's refresher config: the embedded
// server in domain staging, a leafnode remote to production (through
// remote), a service user named like the leaf user (so its inbox prefix
// is the one production lets across), and the mirror of domain prod.
const stagingYAML = `
mode: follow
follow: {domain: prod, max_lag: 2s}
nats:
  embedded:
    listen: 127.0.0.1:0
    store_dir: %q
    server_name: staging-1
    jetstream_domain: staging
    leafnodes:
      remotes:
        - {url: %q, user: staging, password_env: TK_LEAF_PW}
    users:
      - {user: staging, role: service, password_env: TK_STAGING_SERVICE_PW}
apps:
  - {name: mp-main, kind: wechat, appid: wxmp-main}
`

// TestFollowerEnvironment runs production (an embedded server in domain
// prod with a leafnode listener, the real refresher, the WeChat
// emulator) and staging (the embedded server and a refresher in mode
// follow, from a YAML config, joined to production as a leafnode through
// a fault proxy), and a staging service with the stock subscriber:
//
//   - the staging service reads production's token from staging's mirror,
//     at production's revision;
//   - its refresh with a stale revision is served by production's
//     refresher (one upstream fetch), and the new record is in staging's
//     mirror within a second of production's write (measured);
//   - the follower made no upstream call: the emulator's count is
//     exactly production's;
//   - with the leafnode link cut, staging keeps serving the last
//     mirrored token, /readyz says the mirror lost its origin, and after
//     Restore the mirror catches up with what production wrote meanwhile;
//   - the follower's status and metrics carry revisions and times, never
//     the token.
func TestFollowerEnvironment(t *testing.T) {
	t.Setenv("TK_PROD_REFRESHER_PW", "prod-refresher-pw")
	t.Setenv("TK_PROD_SERVICE_PW", "prod-service-pw")
	t.Setenv("TK_LEAF_PW", "leaf-pw")
	t.Setenv("TK_STAGING_SERVICE_PW", "staging-service-pw")

	// Production.
	leafPort := followFreePort(t)
	hub, err := natsconf.StartEmbedded(natsconf.EmbeddedOptions{
		Listen: "127.0.0.1:0", StoreDir: t.TempDir(), ServerName: "prod-1", JetStreamDomain: "prod",
		LeafNodes: natsconf.LeafNodeOptions{Listen: fmt.Sprintf("127.0.0.1:%d", leafPort)},
		Users: []natsconf.EmbeddedUser{
			{User: "refresher", Role: natsconf.RoleRefresher, PasswordEnv: "TK_PROD_REFRESHER_PW"},
			{User: "service", Role: natsconf.RoleService, PasswordEnv: "TK_PROD_SERVICE_PW"},
			{User: "staging", Role: natsconf.RoleLeaf, PasswordEnv: "TK_LEAF_PW"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Shutdown(); hub.WaitForShutdown() })
	prodURL := strings.Replace(hub.ClientURL(), "nats://", "nats://refresher:prod-refresher-pw@", 1)
	env := harness.New(t, harness.Options{URL: prodURL})
	app := env.App("mp-main")
	app.Tickets = []string{contract.TicketJSAPI}
	prod := env.Start(env.Config(app))
	appid := app.AppID
	rec1, rev1 := env.WaitRecord(10*time.Second, "mp-main", func(contract.Record, uint64) bool { return true })

	// Staging, joined through a proxy that can cut the link.
	proxy := tu.NewProxy(t, fmt.Sprintf("127.0.0.1:%d", leafPort))
	yml := fmt.Sprintf(stagingYAML, filepath.Join(t.TempDir(), "store"), "nats-leaf://"+proxy.Addr())
	cfgPath := filepath.Join(t.TempDir(), "staging.yaml")
	if err := os.WriteFile(cfgPath, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := refresher.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := natsconf.ConnectEmbedded(ctx, cfg.NATS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	// As deployed, staging is linked before the follower first starts; a
	// mirror made while the link is down retries on the server's backoff
	// (10 s, growing to 2 min), which the cut below exercises.
	tu.WaitFor(t, 20*time.Second, func() bool { return conn.Server.NumLeafNodes() == 1 }, "staging did not connect to production as a leafnode")
	if _, err := refresher.New(cfg, conn.NC); err == nil {
		t.Fatal("refresher.New accepted a config in mode follow")
	}
	log := slog.New(slog.NewTextHandler(env.Logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f, err := refresher.NewFollower(cfg, conn.NC, log)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(f)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("follower Run: %v", err)
		}
	})
	select {
	case <-f.Ready():
	case err := <-done:
		t.Fatalf("follower stopped before ready: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("follower not ready after 20s")
	}
	ready := func(check string) bool {
		for _, c := range f.Readiness().Checks {
			if c.Name == check || c.App == check {
				return c.OK
			}
		}
		t.Fatalf("no readiness check %s", check)
		return false
	}
	tu.WaitFor(t, 30*time.Second, func() bool { return f.Readiness().Ready }, "the follower is not ready: %+v", f.Readiness())

	// A staging service, with the stock subscriber.
	snc, sjs := tu.Connect(t, conn.Server.ClientURL(), nats.UserInfo("staging", "staging-service-pw"),
		nats.CustomInboxPrefix(contract.ServiceInboxPrefix("staging")))
	sc, err := subscriber.NewClient(snc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sc.Close() })
	src, err := sc.Source(ctx, "mp-main")
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := src.Token()
	if tok.AccessToken != rec1.AccessToken || tok.Revision != rev1 {
		t.Fatalf("staging serves revision %d, want production's %d with its token", tok.Revision, rev1)
	}
	skv, err := sjs.KeyValue(ctx, contract.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	stagingRev := func() uint64 {
		e, err := skv.Get(ctx, "mp-main")
		if err != nil {
			return 0
		}
		return e.Revision()
	}

	// A staging refresh with the stale revision: production fetches once.
	callsBefore := env.Sim.Calls(appid)
	tok2, err := src.Refresh(ctx, rev1)
	if err != nil {
		t.Fatalf("staging refresh: %v", err)
	}
	if tok2.Revision <= rev1 || tok2.AccessToken == rec1.AccessToken {
		t.Fatalf("staging refresh answered revision %d, want a new token after %d", tok2.Revision, rev1)
	}
	if got := env.Sim.Calls(appid) - callsBefore; got != 1 {
		t.Errorf("the staging refresh cost %d upstream calls, want 1", got)
	}
	prodRec2, rev2 := env.WaitRecord(5*time.Second, "mp-main", func(_ contract.Record, rev uint64) bool { return rev >= tok2.Revision })
	tu.WaitFor(t, 5*time.Second, func() bool { return stagingRev() == rev2 }, "the refreshed record did not reach staging's mirror")
	if got, _ := src.Token(); got.Revision != rev2 {
		tu.WaitFor(t, 5*time.Second, func() bool { got, _ := src.Token(); return got.Revision == rev2 }, "the staging service did not take revision %d", rev2)
	}

	// A staging service signs a page through production's sign service
	// (over the leafnode), with the ticket production keeps.
	tu.WaitFor(t, 10*time.Second, func() bool {
		_, err := skv.Get(ctx, "mp-main.jsapi")
		return err == nil
	}, "mp-main.jsapi did not reach staging's mirror")
	sig, err := sc.Sign(ctx, "mp-main", "https://staging.example/page")
	if err != nil {
		t.Fatalf("staging sign: %v", err)
	}
	if err := env.Sim.CheckSignature(appid, "https://staging.example/page", sig.NonceStr, sig.Timestamp, sig.Signature); err != nil {
		t.Errorf("the signature staging got: %v", err)
	}

	// Propagation of a production write, measured.
	stale := rev2
	reply, err := prod.R.Refresh(ctx, "mp-main", &stale)
	if err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	tu.WaitFor(t, time.Second, func() bool { return stagingRev() == reply.Revision }, "a production write was not in staging within 1s")
	t.Logf("production write (revision %d) in staging's mirror after %s", reply.Revision, time.Since(written))
	rev3 := reply.Revision

	// Zero upstream calls from the follower: the emulator saw exactly
	// production's calls (startup, the staging refresh, the manual one).
	if got, want := env.Sim.Calls(appid), prod.R.Statuses()[0].CallsToday; got != want || got != 3 {
		t.Errorf("emulator counted %d calls, production made %d, want 3 and equal: the follower called upstream", got, want)
	}

	// Status and metrics: revisions and times, no token. The follower
	// sees the mirror through its own watch, a moment after the mirror.
	var st refresher.FollowReport
	var body []byte
	if !tu.Eventually(5*time.Second, func() bool {
		st = f.Status()
		body, _ = json.Marshal(st)
		return len(st.Keys) >= 1 && st.Keys[0].Revision == rev3
	}) {
		t.Fatalf("the follower's status did not reach revision %d: %s", rev3, body)
	}
	if st.Keys[0].Key != "mp-main" || !st.Keys[0].Valid {
		t.Errorf("follower status: %s", body)
	}
	if strings.Contains(string(body), reply.AccessToken) || strings.Contains(string(body), prodRec2.AccessToken) {
		t.Error("the follower's status carries a token")
	}
	if got := testutil.ToFloat64(constGauge(t, reg, "tokenkeeper_follow_token_revision", "mp-main")); got != float64(rev3) {
		t.Errorf("tokenkeeper_follow_token_revision = %v, want %d", got, rev3)
	}

	// Cut the leafnode link: staging keeps serving the last token.
	proxy.Cut()
	tu.WaitFor(t, 15*time.Second, func() bool { return !ready(refresher.CheckMirror) }, "/readyz did not notice the mirror lost its origin (max_lag 2s)")
	stale = rev3
	reply4, err := prod.R.Refresh(ctx, "mp-main", &stale)
	if err != nil {
		t.Fatal(err)
	}
	if got := stagingRev(); got != rev3 {
		t.Errorf("staging's mirror at revision %d during the cut, want %d", got, rev3)
	}
	if got, err := src.Token(); err != nil || got.Revision != rev3 || got.AccessToken != reply.AccessToken {
		t.Errorf("the staging service during the cut: revision %v, %v; want %d", got, err, rev3)
	}
	if !ready("mp-main") {
		t.Error("the mirrored token is valid, but the app check failed during the cut")
	}
	proxy.Restore()
	tu.WaitFor(t, 60*time.Second, func() bool { return stagingRev() == reply4.Revision }, "staging's mirror did not catch up after the link came back")
	tu.WaitFor(t, 10*time.Second, func() bool { got, _ := src.Token(); return got.Revision == reply4.Revision }, "the staging service did not catch up")
	tu.WaitFor(t, 10*time.Second, func() bool { return f.Readiness().Ready }, "the follower is not ready after Restore: %+v", f.Readiness())

	// The mirror takes no writes.
	wctx, wcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer wcancel()
	if _, err := skv.Put(wctx, "mp-main", []byte("x")); err == nil {
		t.Error("a staging service wrote the mirror")
	}
	if _, err := env.JS.KeyValue(ctx, contract.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	if _, rev, _ := env.Record(contract.DefaultBucket, "mp-main"); rev != reply4.Revision {
		t.Errorf("production's record moved to revision %d", rev)
	}
}

// constGauge returns the one metric named name gathered from reg, as a
// collector ToFloat64 can read.
func constGauge(t *testing.T, reg *prometheus.Registry, name, key string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == key && (l.GetName() == "key" || l.GetName() == "app") {
					return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: "copy"}, func() float64 { return m.GetGauge().GetValue() })
				}
			}
		}
	}
	t.Fatalf("metric %s{key=%q} not gathered", name, key)
	return nil
}
