package e2e_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// exampleConf is the example server configuration under test.
const exampleConf = "../examples/nats-server.conf"

// serviceInboxPrefix is the inbox prefix the example config gives the
// service user.
const serviceInboxPrefix = "_INBOX_service"

// asyncErrors collects a connection's asynchronous errors.
type asyncErrors chan error

func (ch asyncErrors) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	select {
	case ch <- err:
	default:
	}
}

// expectViolation waits for the permissions violation whose message
// contains what (for example `Publish to "$KV.tokens.mp"`); other errors
// met on the way are logged and skipped.
func (ch asyncErrors) expectViolation(t *testing.T, what string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case err := <-ch:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(strings.ToLower(err.Error()), strings.ToLower(what)) {
				t.Logf("refused as expected: %v", err)
				return
			}
			t.Logf("other async error while waiting for %q: %v", what, err)
		case <-timeout:
			t.Fatalf("no permissions violation for %s reported within 5s", what)
		}
	}
}

func randomPassword(t *testing.T) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// startExampleServer starts a nats-server from examples/nats-server.conf
// on a random port with a temporary store, the passwords set in the
// environment: the refresher's in clear, the service's as a bcrypt hash
// (both forms the example documents).
func startExampleServer(t *testing.T) (url, refresherPW, servicePW string) {
	t.Helper()
	refresherPW, servicePW = randomPassword(t), randomPassword(t)
	hash, err := bcrypt.GenerateFromPassword([]byte(servicePW), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("TOKENKEEPER_REFRESHER_PASSWORD", refresherPW)
	t.Setenv("TOKENKEEPER_SERVICE_PASSWORD", string(hash))
	opts, err := server.ProcessConfigFile(exampleConf)
	if err != nil {
		t.Fatalf("%s does not load: %v", exampleConf, err)
	}
	opts.Port = server.RANDOM_PORT
	opts.StoreDir = t.TempDir()
	opts.NoSigs, opts.NoLog = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats-server from %s: %v", exampleConf, err)
	}
	go s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(testutil.StartTimeout) {
		t.Fatal("nats-server from the example config is not ready")
	}
	return s.ClientURL(), refresherPW, servicePW
}

// TestPermissionsExampleConfig runs a real refresher as user refresher and
// a service as user service against examples/nats-server.conf: everything
// each role needs works (the refresher meets no permission error at all),
// and every write the service tries is refused by the server.
func TestPermissionsExampleConfig(t *testing.T) {
	url, refresherPW, servicePW := startExampleServer(t)

	// Nobody gets in without the right password.
	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Fatal("an anonymous connection was accepted")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("anonymous connection: %v, want an authorization error", err)
	}

	if nc, err := nats.Connect(url, nats.UserInfo("service", servicePW+"x")); err == nil {
		nc.Close()
		t.Fatal("a wrong service password was accepted")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("wrong password: %v, want an authorization error", err)
	}

	// The upstream emulator and one app.
	sim, hs := wechatsim.NewServer(wechatsim.Options{ExpiresIn: time.Hour})
	t.Cleanup(hs.Close)
	const appName, appID = "mp", "wxpermissions"
	secret := harness.Secret(appID)
	sim.AddApp(appID, secret)

	// The refresher, in-process, connected as user refresher through
	// natsconf.Connect (as cmd/refresher connects).
	zero := time.Duration(0)
	cfg := &refresher.Config{
		NATS:               natsconf.Options{URL: url, User: "refresher", Password: refresherPW},
		Schedule:           "@every 1s",
		LeaseTTL:           2 * time.Second,
		PassiveMinInterval: &zero,
		Policy:             refresher.PolicyConfig{MinLeft: &zero},
		Apps: []refresher.AppConfig{
			refresher.AppConfig{Name: appName, Kind: wechat.KindClassic, AppID: appID, APIBase: hs.URL}.WithSecret(secret),
		},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	refresherErrs := make(asyncErrors, 64)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := natsconf.Connect(ctx, cfg.NATS, nats.ErrorHandler(refresherErrs.handler), nats.ReconnectWait(testutil.ReconnectWait))
	if err != nil {
		t.Fatalf("connect as refresher: %v", err)
	}
	t.Cleanup(conn.Close)
	logs := &harness.SyncBuffer{}
	r, err := refresher.New(cfg, conn.NC,
		refresher.WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))),
		refresher.WithUpstream(harness.Client()), refresher.WithReplicaID("perm-r1"))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-runDone; err != nil {
			t.Errorf("refresher Run: %v", err)
		}
		// The refresher was never refused anything: no async error, no
		// failed KV call (a denied one would time out and be logged), and
		// its lease release (a revision-checked delete) went through.
		if err := conn.NC.Flush(); err != nil {
			t.Errorf("refresher: flush: %v", err)
		}
		for len(refresherErrs) > 0 {
			t.Errorf("refresher: async error: %v", <-refresherErrs)
		}
		for _, bad := range []string{"ermission", "deadline exceeded", "timeout", "lease release failed"} {
			if logs.Contains(bad) {
				t.Errorf("refresher logged %q", bad)
			}
		}
		if !logs.Contains("released leadership") {
			t.Errorf("refresher did not release its lease")
		}
		if t.Failed() {
			t.Logf("--- refresher log ---\n%s", logs.String())
		}
	})
	select {
	case <-r.Ready():
	case err := <-runDone:
		t.Fatalf("refresher stopped before ready (cannot provision its buckets as user refresher?): %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("refresher not ready after 10s")
	}

	// The service.
	serviceErrs := make(asyncErrors, 64)
	snc, sjs := testutil.Connect(t, url, nats.UserInfo("service", servicePW),
		nats.CustomInboxPrefix(serviceInboxPrefix), nats.ErrorHandler(serviceErrs.handler))
	kv, err := sjs.KeyValue(ctx, contract.DefaultBucket)
	if err != nil {
		t.Fatalf("service: bind bucket %s: %v", contract.DefaultBucket, err)
	}
	events, err := snc.SubscribeSync(contract.UpdatedSubject(appName))
	if err != nil {
		t.Fatal(err)
	}

	// The service reads the token the refresher stored.
	var rev1 uint64
	var rec1 contract.Record
	testutil.WaitFor(t, 10*time.Second, func() bool {
		e, err := kv.Get(ctx, appName)
		if err != nil {
			return false
		}
		rev1 = e.Revision()
		return json.Unmarshal(e.Value(), &rec1) == nil
	}, "service: no token readable in the bucket")
	if classic, _ := sim.LastToken(appID); rec1.AccessToken == "" || rec1.AccessToken != classic {
		t.Fatalf("service read token %s, the emulator issued %s", contract.Fingerprint(rec1.AccessToken), contract.Fingerprint(classic))
	}

	// The service watches the key.
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	w, err := kv.Watch(watchCtx, appName)
	if err != nil {
		t.Fatalf("service: watch: %v", err)
	}
	nextEntry := func() jetstream.KeyValueEntry {
		t.Helper()
		for {
			select {
			case e := <-w.Updates():
				if e != nil {
					return e
				}
			case <-time.After(5 * time.Second):
				t.Fatal("service: watcher delivered nothing within 5s")
			}
		}
	}
	if e := nextEntry(); e.Revision() != rev1 {
		t.Fatalf("service: watcher started at revision %d, want %d", e.Revision(), rev1)
	}

	// The service discovers the refresh service and asks for a refresh.
	ping, err := snc.Request("$SRV.PING."+contract.ServiceName, nil, 2*time.Second)
	if err != nil {
		t.Fatalf("service: $SRV.PING.%s: %v", contract.ServiceName, err)
	}
	var pong struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(ping.Data, &pong); err != nil || pong.Name != contract.ServiceName {
		t.Fatalf("service: unexpected PING reply %s", ping.Data)
	}
	req, _ := json.Marshal(contract.RefreshRequest{StaleRevision: &rev1})
	msg, err := snc.Request(contract.RefreshSubject(appName), req, 5*time.Second)
	if err != nil {
		t.Fatalf("service: request %s: %v", contract.RefreshSubject(appName), err)
	}
	if code := msg.Header.Get("Nats-Service-Error-Code"); code != "" {
		t.Fatalf("service: refresh failed: %s %s: %s", code, msg.Header.Get("Nats-Service-Error"), msg.Data)
	}
	var reply contract.RefreshReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		t.Fatalf("service: refresh reply %q: %v", msg.Data, err)
	}
	if reply.Revision <= rev1 || reply.AccessToken == rec1.AccessToken {
		t.Fatalf("service: refresh answered revision %d (stale %d), new token: %v", reply.Revision, rev1, reply.AccessToken != rec1.AccessToken)
	}
	rev2 := reply.Revision
	if e := nextEntry(); e.Revision() != rev2 {
		t.Fatalf("service: watcher saw revision %d after the refresh, want %d", e.Revision(), rev2)
	}
	for {
		ev, err := events.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("service: no token.updated event of revision %d: %v", rev2, err)
		}
		var event contract.Event
		if err := json.Unmarshal(ev.Data, &event); err != nil {
			t.Fatalf("service: event %s: %v", ev.Data, err)
		}
		if event.Revision == rev2 {
			break
		}
	}

	// Every write the service tries is refused: the KV call fails (it
	// only times out: the server drops a denied publish) and the server
	// reports the violation asynchronously.
	forged := []byte(`{"app":"mp","access_token":"FORGED"}`)
	denied := func(name, what string, call func(ctx context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if err := call(ctx); err == nil {
			t.Fatalf("service: %s succeeded", name)
		} else {
			t.Logf("service: %s failed: %v", name, err)
		}
		serviceErrs.expectViolation(t, what)
	}
	kvSubject := "$KV." + contract.DefaultBucket + "." + appName
	denied("kv.Put", `Publish to "`+kvSubject+`"`, func(ctx context.Context) error {
		_, err := kv.Put(ctx, appName, forged)
		return err
	})
	denied("kv.Update", `Publish to "`+kvSubject+`"`, func(ctx context.Context) error {
		_, err := kv.Update(ctx, appName, forged, rev2)
		return err
	})
	denied("kv.Delete", `Publish to "`+kvSubject+`"`, func(ctx context.Context) error {
		return kv.Delete(ctx, appName)
	})
	denied("DeleteKeyValue", `Publish to "$JS.API.STREAM.DELETE.KV_`+contract.DefaultBucket+`"`, func(ctx context.Context) error {
		return sjs.DeleteKeyValue(ctx, contract.DefaultBucket)
	})

	// A forged event is refused too, and so not delivered, not even to
	// the service's own subscription.
	if err := snc.Publish(contract.UpdatedSubject(appName), forged); err != nil {
		t.Fatalf("service: publish: %v", err)
	}
	serviceErrs.expectViolation(t, `Publish to "`+contract.UpdatedSubject(appName)+`"`)
	if err := snc.Flush(); err != nil {
		t.Fatal(err)
	}
	if m, err := events.NextMsg(50 * time.Millisecond); err == nil {
		t.Fatalf("service: the forged event was delivered: %s", m.Data)
	}

	// The service cannot listen on the refresher's inboxes.
	if _, err := snc.SubscribeSync("_INBOX.>"); err != nil {
		t.Fatal(err)
	}
	serviceErrs.expectViolation(t, `Subscription to "_INBOX.>"`)

	// The token is untouched.
	e, err := kv.Get(ctx, appName)
	if err != nil {
		t.Fatal(err)
	}
	var rec contract.Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil || e.Revision() != rev2 || rec.AccessToken != reply.AccessToken {
		t.Fatalf("service: after the refused writes the bucket holds revision %d (want %d), token changed: %v", e.Revision(), rev2, rec.AccessToken != reply.AccessToken)
	}
}

// TestPermissionsEmbeddedUsers runs the real refresher binary with an
// embedded server that has users (nats.embedded.users): the refresher,
// connected in-process with the refresher role, provisions its buckets,
// stores a token and serves a refresh without one permissions problem,
// while a service user reads the token over TCP and writes nothing, and
// an anonymous client is refused. The password is never logged.
func TestPermissionsEmbeddedUsers(t *testing.T) {
	sim, hs := wechatsim.NewServer(wechatsim.Options{ExpiresIn: time.Hour})
	t.Cleanup(hs.Close)
	app := refresher.AppConfig{Name: "mp", Kind: wechat.KindClassic, AppID: "wxembedded", APIBase: hs.URL}.WithSecret(harness.Secret("wxembedded"))
	sim.AddApp(app.AppID, app.Secret())

	servicePW := randomPassword(t)
	t.Setenv("TK_E2E_SERVICE_PASSWORD", servicePW)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	extra := fmt.Sprintf(`nats:
  embedded:
    listen: %q
    store_dir: %q
    users:
      - {user: billing, role: service, password_env: TK_E2E_SERVICE_PASSWORD}
`, addr, t.TempDir())
	path := writeConfig(t, "", 2*time.Second, "", app)
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// writeConfig wrote nats: {url: ""}; replace that section.
	cfgText := strings.Replace(string(text), "nats:\n  url: \"\"\n", extra, 1)
	if cfgText == string(text) {
		t.Fatalf("unexpected config layout:\n%s", text)
	}
	if err := os.WriteFile(path, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, path, "emb-1", app)
	url := "nats://" + addr

	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Fatal("an anonymous connection was accepted")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("anonymous connection: %v, want an authorization error", err)
	}

	serviceErrs := make(asyncErrors, 64)
	snc, sjs := testutil.Connect(t, url, nats.UserInfo("billing", servicePW),
		nats.CustomInboxPrefix(contract.ServiceInboxPrefix("billing")), nats.ErrorHandler(serviceErrs.handler))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var kv jetstream.KeyValue
	var rev uint64
	testutil.WaitFor(t, 15*time.Second, func() bool {
		if kv == nil {
			if kv, err = sjs.KeyValue(ctx, contract.DefaultBucket); err != nil {
				kv = nil
				return false
			}
		}
		e, err := kv.Get(ctx, app.Name)
		if err != nil {
			return false
		}
		rev = e.Revision()
		return true
	}, "service: no token readable in the embedded server's bucket")
	req, _ := json.Marshal(contract.RefreshRequest{StaleRevision: &rev})
	msg, err := snc.Request(contract.RefreshSubject(app.Name), req, 5*time.Second)
	if err != nil {
		t.Fatalf("service: refresh: %v", err)
	}
	var reply contract.RefreshReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Revision <= rev {
		t.Fatalf("service: refresh reply %q", msg.Data)
	}
	if err := sim.Check(reply.AccessToken); err != nil {
		t.Fatalf("refreshed token rejected upstream: %v", err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer pcancel()
	if _, err := kv.Put(pctx, app.Name, []byte(`{"app":"mp","access_token":"FORGED"}`)); err == nil {
		t.Fatal("service: kv.Put succeeded")
	}
	serviceErrs.expectViolation(t, `Publish to "$KV.tokens.mp"`)

	// One more tick, then the refresher's log.
	time.Sleep(1500 * time.Millisecond)
	out := p.out.String()
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "user:billing") {
			continue // the server reports the service's refused write
		}
		for _, bad := range []string{"permission", "Violation", servicePW} {
			if strings.Contains(line, bad) {
				t.Errorf("refresher output contains %q: %s", bad, line)
			}
		}
	}
	if !strings.Contains(out, "requires authentication") {
		t.Errorf("refresher did not log that its embedded server requires authentication:\n%s", out)
	}
}
