package e2e_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/seal"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// TestPermissionsSecretsBucket runs a refresher with a wechat-component
// as user refresher against examples/nats-server.conf: it provisions the
// secrets bucket and stores a pushed verify ticket without a permissions
// problem, and the service user can neither look at the secrets bucket's
// stream, nor read a key of it, nor watch it, nor ask the operator
// requests (token.admin.>).
func TestPermissionsSecretsBucket(t *testing.T) {
	url, refresherPW, servicePW := startExampleServer(t)
	sim, hs := wechatsim.NewServer(wechatsim.Options{ExpiresIn: time.Hour})
	t.Cleanup(hs.Close)
	const compAppID, cbToken = "wxcomppermissions", "cbtoken0123"
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	aesKey := strings.TrimRight(base64.StdEncoding.EncodeToString(raw), "=")
	sim.AddComponent(compAppID, harness.Secret(compAppID), cbToken, aesKey)
	key := make([]byte, seal.KeySize)
	_, _ = rand.Read(key)
	ring, err := seal.NewKeyring(key)
	if err != nil {
		t.Fatal(err)
	}
	zero := time.Duration(0)
	cfg := &refresher.Config{
		NATS:     natsconf.Options{URL: url, User: "refresher", Password: refresherPW},
		Schedule: "@every 1s", LeaseTTL: 2 * time.Second, PassiveMinInterval: &zero,
		Apps: []refresher.AppConfig{refresher.AppConfig{Name: "comp", Kind: refresher.KindWeChatComponent, AppID: compAppID, APIBase: hs.URL}.
			WithSecret(harness.Secret(compAppID)).WithCallbackSecrets(cbToken, aesKey)},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.WithKeyring(ring)
	refresherErrs := make(asyncErrors, 64)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := natsconf.Connect(ctx, cfg.NATS, nats.ErrorHandler(refresherErrs.handler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	logs := &harness.SyncBuffer{}
	r, err := refresher.New(cfg, conn.NC, refresher.WithUpstream(harness.Client()),
		refresher.WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		<-done
		for len(refresherErrs) > 0 {
			t.Errorf("refresher: async error: %v", <-refresherErrs)
		}
		if logs.Contains("ermission") {
			t.Errorf("refresher logged a permissions problem:\n%s", logs)
		}
	})
	select {
	case <-r.Ready():
	case err := <-done:
		t.Fatalf("refresher stopped before ready: %v", err)
	case <-ctx.Done():
		t.Fatal("refresher not ready")
	}
	srv := httptest.NewServer(r.CallbackHandler())
	t.Cleanup(srv.Close)
	if err := sim.PushVerifyTicket(ctx, compAppID, srv.URL+refresher.CallbackPathPrefix+"comp"); err != nil {
		t.Fatalf("push as user refresher: %v", err)
	}

	serviceErrs := make(asyncErrors, 64)
	snc, sjs := testutil.Connect(t, url, nats.UserInfo("service", servicePW),
		nats.CustomInboxPrefix(serviceInboxPrefix), nats.ErrorHandler(serviceErrs.handler))
	secrets := contract.SecretsBucket(contract.DefaultBucket)
	short := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 300*time.Millisecond)
	}
	c1, cl1 := short()
	defer cl1()
	if _, err := sjs.KeyValue(c1, secrets); err == nil {
		t.Fatal("service: bound the secrets bucket")
	}
	serviceErrs.expectViolation(t, `Publish to "$JS.API.STREAM.INFO.KV_`+secrets+`"`)
	// A direct get of the verify ticket's key, as a raw request.
	if _, err := snc.Request("$JS.API.DIRECT.GET.KV_"+secrets+".$KV."+secrets+".comp.verify_ticket", nil, 300*time.Millisecond); err == nil {
		t.Fatal("service: a direct get of the secrets bucket was answered")
	}
	serviceErrs.expectViolation(t, `Publish to "$JS.API.DIRECT.GET.KV_`+secrets)
	if _, err := snc.Request("$JS.API.CONSUMER.CREATE.KV_"+secrets+".x.>", []byte(`{}`), 300*time.Millisecond); err == nil {
		t.Fatal("service: a consumer on the secrets bucket was created")
	}
	serviceErrs.expectViolation(t, `Publish to "$JS.API.CONSUMER.CREATE.KV_`+secrets)

	// The operator requests (tokenctl authorizers), which the leader now
	// serves as user refresher without a permissions problem: refused to
	// the service user by the server, unanswered.
	testutil.WaitFor(t, 10*time.Second, r.Leader, "the refresher does not lead")
	for _, op := range []string{contract.AuthorizersExport, contract.AuthorizersList, contract.AuthorizersImport} {
		subj := contract.AuthorizersSubject(op, "comp")
		if m, err := snc.Request(subj, []byte(`{"include_refresh_tokens":true}`), 300*time.Millisecond); err == nil {
			t.Fatalf("service: %s was answered: %q", subj, m.Data)
		}
		serviceErrs.expectViolation(t, `Publish to "`+subj+`"`)
	}
}
