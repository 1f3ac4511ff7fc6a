package natsconf_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

// streamConfig returns the stream config behind a bucket.
func streamConfig(t *testing.T, kv jetstream.KeyValue) jetstream.StreamConfig {
	t.Helper()
	st, err := kv.Status(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config
}

func TestEnsureBucketIdempotentAndUpdates(t *testing.T) {
	c := connectEmbedded(t, natsconf.Options{Embedded: natsconf.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: t.TempDir()}})
	ctx := testCtx(t, 20*time.Second)
	cfg := natsconf.BucketConfig{Name: contract.DefaultBucket, Description: "tokens v1"}

	kv, err := natsconf.EnsureBucket(ctx, c.JS, cfg)
	if err != nil {
		t.Fatalf("first EnsureBucket: %v", err)
	}
	rev, err := kv.Put(ctx, "app", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	sc := streamConfig(t, kv)
	if sc.MaxMsgsPerSubject != 1 || sc.Replicas != 1 || sc.SubjectDeleteMarkerTTL != natsconf.DefaultLimitMarkerTTL || !sc.AllowMsgTTL {
		t.Fatalf("created with history %d, replicas %d, marker TTL %s, msg TTL %v",
			sc.MaxMsgsPerSubject, sc.Replicas, sc.SubjectDeleteMarkerTTL, sc.AllowMsgTTL)
	}

	// Again, unchanged: same bucket, same data, no error.
	kv2, err := natsconf.EnsureBucket(ctx, c.JS, cfg)
	if err != nil {
		t.Fatalf("second EnsureBucket: %v", err)
	}
	if e, err := kv2.Get(ctx, "app"); err != nil || string(e.Value()) != "v1" || e.Revision() != rev {
		t.Fatalf("after second EnsureBucket: %v, %v", e, err)
	}

	// Changed history and description: updated in place, data kept.
	cfg.History, cfg.Description = 5, "tokens v2"
	kv3, err := natsconf.EnsureBucket(ctx, c.JS, cfg)
	if err != nil {
		t.Fatalf("EnsureBucket with history 5: %v", err)
	}
	sc = streamConfig(t, kv3)
	if sc.MaxMsgsPerSubject != 5 || sc.Description != "tokens v2" {
		t.Fatalf("after update: history %d, description %q", sc.MaxMsgsPerSubject, sc.Description)
	}
	if e, err := kv3.Get(ctx, "app"); err != nil || string(e.Value()) != "v1" {
		t.Fatalf("value lost in update: %v", err)
	}

	// Per-key TTLs work (the limit marker TTL is on).
	if _, err := kv3.Create(ctx, "lease", []byte("me"), jetstream.KeyTTL(time.Minute)); err != nil {
		t.Fatalf("Create with KeyTTL: %v", err)
	}
}

func TestEnsureBucketLeaseBucket(t *testing.T) {
	s := testutil.RunServer(t)
	c := connect(t, natsconf.Options{URL: s.ClientURL()})
	ctx := testCtx(t, 10*time.Second)
	kv, err := natsconf.EnsureBucket(ctx, c.JS, natsconf.BucketConfig{Name: "leases", TTL: 10 * time.Second, LimitMarkerTTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	sc := streamConfig(t, kv)
	if sc.MaxAge != 10*time.Second || sc.SubjectDeleteMarkerTTL != 5*time.Second {
		t.Fatalf("max age %s, marker TTL %s", sc.MaxAge, sc.SubjectDeleteMarkerTTL)
	}
	// Without markers.
	kv, err = natsconf.EnsureBucket(ctx, c.JS, natsconf.BucketConfig{Name: "plain", LimitMarkerTTL: -1})
	if err != nil {
		t.Fatal(err)
	}
	if sc := streamConfig(t, kv); sc.AllowMsgTTL || sc.SubjectDeleteMarkerTTL != 0 {
		t.Fatalf("markers on although disabled: %+v", sc)
	}
}

func TestEnsureBucketReplicasOnCluster(t *testing.T) {
	cl := testutil.NewCluster(t, 3)
	c := connect(t, natsconf.Options{URL: cl.URLs()})
	ctx := testCtx(t, 30*time.Second)

	kv, err := natsconf.EnsureBucket(ctx, c.JS, natsconf.BucketConfig{Name: contract.DefaultBucket, Replicas: 3})
	if err != nil {
		t.Fatalf("R3 on a fresh cluster: %v", err)
	}
	if r := streamConfig(t, kv).Replicas; r != 3 {
		t.Fatalf("replicas %d, want 3", r)
	}
	// A new R3 stream elects its leader after it is created: a write
	// right away may meet "no response from stream" for a moment.
	var perr error
	if !testutil.Eventually(10*time.Second, func() bool {
		_, perr = kv.Put(ctx, "app", []byte("v1"))
		return perr == nil
	}) {
		t.Fatalf("write to the new R3 bucket: %v", perr)
	}

	// R1 bucket scaled up to R3, idempotently.
	cfg := natsconf.BucketConfig{Name: "scale", Replicas: 1}
	if _, err := natsconf.EnsureBucket(ctx, c.JS, cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Replicas = 3
	for i := range 2 {
		kv, err = natsconf.EnsureBucket(ctx, c.JS, cfg)
		if err != nil {
			t.Fatalf("EnsureBucket R3 #%d: %v", i+1, err)
		}
		if r := streamConfig(t, kv).Replicas; r != 3 {
			t.Fatalf("#%d: replicas %d, want 3", i+1, r)
		}
	}
}

func TestEnsureBucketNoJetStream(t *testing.T) {
	s := testutil.RunServer(t, func(o *server.Options) { o.JetStream = false })
	c := connect(t, natsconf.Options{URL: s.ClientURL()})
	start := time.Now()
	_, err := natsconf.EnsureBucket(testCtx(t, 20*time.Second), c.JS, natsconf.BucketConfig{Name: "x"})
	if !errors.Is(err, natsconf.ErrNoJetStream) {
		t.Fatalf("server without JetStream: %v, want ErrNoJetStream", err)
	}
	t.Logf("EnsureBucket error: %v", err)
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("ErrNoJetStream took %s; it must not be retried", el)
	}
}

func TestEnsureBucketAccountWithoutJetStream(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "server.conf")
	err := os.WriteFile(conf, []byte(`
listen: "127.0.0.1:-1"
jetstream: {store_dir: "`+filepath.ToSlash(t.TempDir())+`"}
accounts: {
  JS: {jetstream: enabled, users: [{user: js, password: js}]}
  NOJS: {users: [{user: nojs, password: nojs}]}
}
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	s := testutil.RunServer(t, func(o *server.Options) {
		o.JetStream, o.StoreDir = opts.JetStream, opts.StoreDir
		o.Accounts, o.Users = opts.Accounts, opts.Users
		o.JsAccDefaultDomain = opts.JsAccDefaultDomain
	})

	ok := connect(t, natsconf.Options{URL: s.ClientURL(), User: "js", Password: "js"})
	if _, err := natsconf.EnsureBucket(testCtx(t, 10*time.Second), ok.JS, natsconf.BucketConfig{Name: "x"}); err != nil {
		t.Fatalf("account with JetStream: %v", err)
	}
	no := connect(t, natsconf.Options{URL: s.ClientURL(), User: "nojs", Password: "nojs"})
	_, err = natsconf.EnsureBucket(testCtx(t, 10*time.Second), no.JS, natsconf.BucketConfig{Name: "x"})
	if !errors.Is(err, natsconf.ErrNoJetStream) || !errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		t.Fatalf("account without JetStream: %v", err)
	}
	t.Logf("EnsureBucket error: %v", err)
}

func TestEnsureBucketInvalidConfig(t *testing.T) {
	s := testutil.RunServer(t)
	c := connect(t, natsconf.Options{URL: s.ClientURL()})
	for _, cfg := range []natsconf.BucketConfig{
		{Name: ""},
		{Name: "has space"},
		{Name: "a.b"},
		{Name: "ok", Replicas: 6},
		{Name: "ok", History: 65},
		{Name: "ok", TTL: -time.Second},
		{Name: "ok", LimitMarkerTTL: 500 * time.Millisecond},
	} {
		if _, err := natsconf.EnsureBucket(testCtx(t, 5*time.Second), c.JS, cfg); !errors.Is(err, natsconf.ErrInvalidBucketConfig) {
			t.Errorf("%+v: %v, want ErrInvalidBucketConfig", cfg, err)
		}
	}
}

func TestServerVersionCheck(t *testing.T) {
	for v, tooOld := range map[string]bool{
		"2.10.22": true, "1.4.1": true, "2.9.0": true,
		"2.11.0": false, "2.11.0-RC.1": false, "2.15.2": false, "3.0.0": false, "v2.12.1": false,
		"": false, "garbage": false,
	} {
		err := natsconf.CheckServerVersion(v)
		if got := errors.Is(err, natsconf.ErrServerTooOld); got != tooOld {
			t.Errorf("%q: %v, want too old = %v", v, err, tooOld)
		}
	}
	// The real server passes.
	s := testutil.RunServer(t)
	c := connect(t, natsconf.Options{URL: s.ClientURL()})
	if err := natsconf.CheckServerVersion(c.NC.ConnectedServerVersion()); err != nil {
		t.Fatal(err)
	}
}

// Closing the connection makes EnsureBucket fail at once, not retry.
func TestEnsureBucketClosedConnection(t *testing.T) {
	s := testutil.RunServer(t)
	c := connect(t, natsconf.Options{URL: s.ClientURL()})
	c.Close()
	start := time.Now()
	_, err := natsconf.EnsureBucket(context.Background(), c.JS, natsconf.BucketConfig{Name: "x"})
	if !errors.Is(err, nats.ErrConnectionClosed) {
		t.Fatalf("closed connection: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("took %s", el)
	}
}
