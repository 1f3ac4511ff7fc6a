package natsconf_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

// TestLeafNodeOptionsValidation: every mistake in jetstream_domain,
// leafnodes and the leaf role is named by its key, all at once, and the
// remote's password never appears.
func TestLeafNodeOptionsValidation(t *testing.T) {
	t.Setenv("LEAF_PW", "leaf-password-never-shown")
	cases := []struct {
		name string
		o    natsconf.EmbeddedOptions
		want []string
	}{
		{"listen without domain nor leaf user", natsconf.EmbeddedOptions{LeafNodes: natsconf.LeafNodeOptions{Listen: "127.0.0.1:7422"}},
			[]string{"nats.embedded.jetstream_domain: required with nats.embedded.leafnodes", "nats.embedded.leafnodes.listen: needs a user of role leaf"}},
		{"bad domain and listen", natsconf.EmbeddedOptions{JetStreamDomain: "prod.eu", LeafNodes: natsconf.LeafNodeOptions{Listen: "7422"},
			Users: []natsconf.EmbeddedUser{{User: "staging", Role: natsconf.RoleLeaf, PasswordEnv: "LEAF_PW"}}},
			[]string{`nats.embedded.jetstream_domain: "prod.eu" is not a valid domain`, "nats.embedded.leafnodes.listen: \"7422\" is not host:port"}},
		{"leaf user without listener", natsconf.EmbeddedOptions{Users: []natsconf.EmbeddedUser{{User: "staging", Role: natsconf.RoleLeaf, PasswordEnv: "LEAF_PW"}}},
			[]string{"nats.embedded.users[0].role: leaf needs nats.embedded.leafnodes.listen"}},
		{"remotes", natsconf.EmbeddedOptions{JetStreamDomain: "staging", LeafNodes: natsconf.LeafNodeOptions{Remotes: []natsconf.LeafRemote{
			{URL: "nats-leaf://staging:leaf-password-never-shown@prod:7422", User: "staging", PasswordEnv: "LEAF_PW"},
			{URL: "http://prod:7422"},
			{URL: "", User: "x", PasswordEnv: "LEAF_PW", PasswordFile: "/nope"},
			{URL: "nats-leaf://prod:7422", User: "x", PasswordEnv: "UNSET_LEAF_PW_VAR"},
		}}}, []string{
			"nats.embedded.leafnodes.remotes[0].url: must not carry credentials",
			`nats.embedded.leafnodes.remotes[1].url: scheme "http" is not supported`,
			"nats.embedded.leafnodes.remotes[1].user: required",
			"nats.embedded.leafnodes.remotes[1]: needs password_env or password_file",
			"nats.embedded.leafnodes.remotes[2].url: required",
			"nats.embedded.leafnodes.remotes[2].password_file: cannot be combined with password_env",
			"nats.embedded.leafnodes.remotes[3].password_env: environment variable UNSET_LEAF_PW_VAR is not set",
		}},
		{"unknown role", natsconf.EmbeddedOptions{Users: []natsconf.EmbeddedUser{{User: "x", Role: "hub", PasswordEnv: "LEAF_PW"}}},
			[]string{`nats.embedded.users[0].role: "hub" is not a role: refresher, service, operator or leaf`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := (natsconf.Options{Embedded: c.o}).Validate()
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), "leaf-password-never-shown") {
				t.Errorf("the error shows the password: %v", err)
			}
			probs := natsconf.Problems(err)
			if len(probs) != len(c.want) {
				t.Errorf("%d problems, want %d:\n%v", len(probs), len(c.want), err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
			for _, p := range probs {
				if !errors.Is(p, natsconf.ErrInvalidOptions) {
					t.Errorf("%v does not match ErrInvalidOptions", p)
				}
			}
		})
	}
	// The valid pair passes.
	hub := natsconf.EmbeddedOptions{JetStreamDomain: "prod", LeafNodes: natsconf.LeafNodeOptions{Listen: "0.0.0.0:7422"},
		Users: []natsconf.EmbeddedUser{{User: "staging", Role: natsconf.RoleLeaf, PasswordEnv: "LEAF_PW"}}}
	leaf := natsconf.EmbeddedOptions{JetStreamDomain: "staging", LeafNodes: natsconf.LeafNodeOptions{Remotes: []natsconf.LeafRemote{{URL: "nats-leaf://prod:7422", User: "staging", PasswordEnv: "LEAF_PW"}}}}
	for _, o := range []natsconf.EmbeddedOptions{hub, leaf} {
		if err := (natsconf.Options{Embedded: o}).Validate(); err != nil {
			t.Errorf("valid options refused: %v", err)
		}
	}
}

// syncLog is a slog handler target safe for concurrent writers.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *syncLog) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// hubAndLeaf starts production (domain prod, a leafnode listener, users
// refresher and service, and staging of role leaf) and staging (domain
// staging, a remote to production as staging; anonymous on loopback),
// both with StartEmbedded, and waits for the link.
func hubAndLeaf(t *testing.T) (hub, leaf *server.Server, leafPort int) {
	t.Helper()
	t.Setenv("TK_REFRESHER_PW", "refresher-pw")
	t.Setenv("TK_SERVICE_PW", "service-pw")
	t.Setenv("TK_STAGING_PW", "staging-leaf-secret-pw")
	leafPort = freePort(t)
	hub, err := natsconf.StartEmbedded(natsconf.EmbeddedOptions{
		Listen: "127.0.0.1:0", StoreDir: t.TempDir(), ServerName: "prod-1", JetStreamDomain: "prod",
		LeafNodes: natsconf.LeafNodeOptions{Listen: fmt.Sprintf("127.0.0.1:%d", leafPort)},
		Users: []natsconf.EmbeddedUser{
			{User: "refresher", Role: natsconf.RoleRefresher, PasswordEnv: "TK_REFRESHER_PW"},
			{User: "service", Role: natsconf.RoleService, PasswordEnv: "TK_SERVICE_PW"},
			{User: "staging", Role: natsconf.RoleLeaf, PasswordEnv: "TK_STAGING_PW"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Shutdown(); hub.WaitForShutdown() })
	leaf, err = natsconf.StartEmbedded(natsconf.EmbeddedOptions{
		Listen: "127.0.0.1:0", StoreDir: t.TempDir(), ServerName: "staging-1", JetStreamDomain: "staging",
		LeafNodes: natsconf.LeafNodeOptions{Remotes: []natsconf.LeafRemote{
			{URL: fmt.Sprintf("nats-leaf://127.0.0.1:%d", leafPort), User: "staging", PasswordEnv: "TK_STAGING_PW"},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { leaf.Shutdown(); leaf.WaitForShutdown() })
	testutil.WaitFor(t, 10*time.Second, func() bool { return hub.NumLeafNodes() == 1 && leaf.NumLeafNodes() == 1 }, "staging did not connect to production as a leafnode")
	return hub, leaf, leafPort
}

// TestEmbeddedHubAndLeafMirror: two embedded servers configured with the
// new keys — production with a leafnode listener and a user of role
// leaf, staging with a remote — and a mirror made by EnsureMirror: a
// write in production is in staging's mirror within a second, with the
// same revision; the mirror takes no write; writes from staging never
// reach production's bucket; the staging user, used as a client of
// production, is refused writes and JetStream API calls with permission
// errors; a consumer staging creates cannot write production's
// buckets; the leaf password is in no log line.
func TestEmbeddedHubAndLeafMirror(t *testing.T) {
	logs := &syncLog{}
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() { slog.SetDefault(prev) })

	hub, leaf, _ := hubAndLeaf(t)
	ctx := testCtx(t, 30*time.Second)
	_, pjs := testutil.Connect(t, hub.ClientURL(), nats.UserInfo("refresher", "refresher-pw"))
	pkv, err := natsconf.EnsureBucket(ctx, pjs, natsconf.BucketConfig{Name: contract.DefaultBucket})
	if err != nil {
		t.Fatal(err)
	}
	rev1, err := pkv.Create(ctx, "mp-main", []byte(`{"v":1}`))
	if err != nil {
		t.Fatal(err)
	}

	// A staging client with every right on the staging server.
	snc, sjs := testutil.Connect(t, leaf.ClientURL(), nats.CustomInboxPrefix(contract.ServiceInboxPrefix("staging")))
	skv, err := natsconf.EnsureMirror(ctx, sjs, natsconf.MirrorConfig{Name: contract.DefaultBucket, Domain: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	// Idempotent.
	if _, err := natsconf.EnsureMirror(ctx, sjs, natsconf.MirrorConfig{Name: contract.DefaultBucket, Domain: "prod"}); err != nil {
		t.Fatalf("EnsureMirror again: %v", err)
	}
	mirrored := func(rev uint64, val string) bool {
		e, err := skv.Get(ctx, "mp-main")
		return err == nil && e.Revision() == rev && string(e.Value()) == val
	}
	testutil.WaitFor(t, 10*time.Second, func() bool { return mirrored(rev1, `{"v":1}`) }, "the existing key did not reach the mirror")

	start := time.Now()
	rev2, err := pkv.Update(ctx, "mp-main", []byte(`{"v":2}`), rev1)
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, time.Second, func() bool { return mirrored(rev2, `{"v":2}`) }, "a write in production was not in staging's mirror within 1s")
	t.Logf("production write visible in staging after %s", time.Since(start))

	// Writes from staging, with every right on the staging server.
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		t.Cleanup(cancel)
		return c
	}
	if _, err := skv.Put(short(), "mp-main", []byte(`{"v":"staging"}`)); err == nil {
		t.Error("kv.Put on the mirror succeeded")
	}
	if err := snc.Publish("$KV.tokens.mp-main", []byte(`{"v":"raw"}`)); err != nil {
		t.Fatal(err)
	}
	if err := snc.Publish("$JS.prod.API.$KV.tokens.mp-main", []byte(`{"v":"api"}`)); err != nil {
		t.Fatal(err)
	}
	for _, subj := range []string{"$JS.prod.API.STREAM.DELETE.KV_tokens", "$JS.prod.API.STREAM.PURGE.KV_tokens", "$JS.prod.API.DIRECT.GET.KV_tokens_lease.$KV.tokens_lease.leader"} {
		if m, err := snc.Request(subj, nil, 300*time.Millisecond); err == nil {
			t.Errorf("%s from staging was answered: %s", subj, m.Data)
		}
	}
	// The one JetStream call staging may make, consumer create on
	// KV_tokens, with a deliver subject in production: into the bucket
	// itself (the server refuses the cycle), into the lease bucket (a KV
	// stream's wildcard subscription is no delivery interest for a push
	// consumer: nothing is delivered), onto an event subject.
	lkv, err := natsconf.EnsureBucket(ctx, pjs, natsconf.BucketConfig{Name: contract.LeaseBucket(contract.DefaultBucket)})
	if err != nil {
		t.Fatal(err)
	}
	leaseRev, err := lkv.Create(ctx, contract.LeaseKey, []byte(`{"id":"prod-1"}`))
	if err != nil {
		t.Fatal(err)
	}
	svc, _ := testutil.Connect(t, hub.ClientURL(), nats.UserInfo("service", "service-pw"), nats.CustomInboxPrefix(contract.ServiceInboxPrefix("service")))
	events, err := svc.SubscribeSync(contract.UpdatedSubject("mp-main"))
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, deliver := range []string{"$KV.tokens.mp-main", "$KV.tokens_lease.leader", contract.UpdatedSubject("mp-main")} {
		req := fmt.Sprintf(`{"stream_name":"KV_tokens","config":{"deliver_subject":%q,"deliver_policy":"all","ack_policy":"none"}}`, deliver)
		m, err := snc.Request("$JS.prod.API.CONSUMER.CREATE.KV_tokens", []byte(req), 2*time.Second)
		t.Logf("consumer delivering to %s, created from staging: %v %.120s", deliver, err, func() []byte {
			if m == nil {
				return nil
			}
			return m.Data
		}())
	}
	if err := snc.Flush(); err != nil {
		t.Fatal(err)
	}
	// A write that would have crossed lands within milliseconds, and the
	// consumers above deliver with the mirror: once the mirror has a
	// write made after all of them, check production.
	probe, err := pkv.Put(ctx, "probe", []byte("after"))
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, func() bool {
		e, err := skv.Get(ctx, "probe")
		return err == nil && e.Revision() == probe
	}, "the probe write did not reach the mirror")
	if e, err := lkv.Get(ctx, contract.LeaseKey); err != nil || e.Revision() != leaseRev {
		t.Errorf("production's lease bucket changed after staging's consumers: %v", err)
	}
	// Known limitation (docs/operations.md, "What the leaf user may"):
	// such a consumer does deliver to a subject production clients
	// subscribe to literally, as here; nothing may trust those subjects.
	if n, _, _ := events.Pending(); n != 0 {
		t.Logf("known limitation: a literal subscriber to %s in production received %d messages from a consumer staging created", contract.UpdatedSubject("mp-main"), n)
	}
	hist, err := pkv.History(ctx, "mp-main")
	if err != nil {
		t.Fatal(err)
	}
	if last := hist[len(hist)-1]; last.Revision() != rev2 || string(last.Value()) != `{"v":2}` {
		t.Errorf("production's mp-main is now rev %d %q: staging wrote into production", last.Revision(), last.Value())
	}
	if st, err := pjs.Stream(ctx, "KV_tokens"); err != nil || st.CachedInfo().State.Msgs != 2 {
		t.Errorf("production's stream: %v (want 2 messages: mp-main, probe)", err)
	}

	// The staging credentials used as a client of production: the same
	// permissions, enforced by production, with permission errors.
	var hubErrs []error
	var hubMu sync.Mutex
	hnc, _ := testutil.Connect(t, hub.ClientURL(), nats.UserInfo("staging", "staging-leaf-secret-pw"), nats.CustomInboxPrefix("_INBOX_staging"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			hubMu.Lock()
			hubErrs = append(hubErrs, err)
			hubMu.Unlock()
		}))
	for _, subj := range []string{"$JS.prod.API.STREAM.INFO.KV_tokens", "$JS.prod.API.STREAM.DELETE.KV_tokens", "$JS.prod.API.$KV.tokens.mp-main"} {
		if m, err := hnc.Request(subj, []byte(`{"v":"x"}`), 300*time.Millisecond); err == nil {
			t.Errorf("%s as user staging was answered: %s", subj, m.Data)
		}
	}
	for _, subj := range []string{"$KV.tokens.mp-main", "$JS.API.STREAM.DELETE.KV_tokens", "$JS.API.CONSUMER.DELETE.KV_tokens.x", "token.updated.mp-main"} {
		if err := hnc.Publish(subj, []byte("x")); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, 5*time.Second, func() bool {
			hubMu.Lock()
			defer hubMu.Unlock()
			for _, e := range hubErrs {
				if errors.Is(e, nats.ErrPermissionViolation) && strings.Contains(e.Error(), subj) {
					return true
				}
			}
			return false
		}, "no permissions violation for a publish to %s as user staging", subj)
	}

	if _, err := pjs.Stream(ctx, "KV_tokens"); err != nil {
		t.Errorf("production's stream after staging's delete attempts: %v", err)
	}
	if e, err := pkv.Get(ctx, "mp-main"); err != nil || e.Revision() != rev2 {
		t.Errorf("production's mp-main after staging's attempts: %v", err)
	}
	if logs.String() == "" {
		t.Error("no server log captured: the leak check below proves nothing")
	}
	if strings.Contains(logs.String(), "staging-leaf-secret-pw") {
		t.Error("the leaf password is in the server's log")
	}
}

// TestEnsureMirrorRefusesOrdinaryBucket: a bucket written locally cannot
// become a mirror; EnsureMirror says so, and changes nothing.
func TestEnsureMirrorRefusesOrdinaryBucket(t *testing.T) {
	s := testutil.RunServer(t, func(o *server.Options) { o.JetStreamDomain = "staging" })
	_, js := testutil.Connect(t, s.ClientURL())
	ctx := testCtx(t, 10*time.Second)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "tokens"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	_, err = natsconf.EnsureMirror(ctx, js, natsconf.MirrorConfig{Name: "tokens", Domain: "prod"})
	if !errors.Is(err, natsconf.ErrNotMirror) || !strings.Contains(err.Error(), "nats kv del tokens") {
		t.Fatalf("EnsureMirror over an ordinary bucket: %v, want ErrNotMirror saying what to do", err)
	}
	if e, err := kv.Get(ctx, "k"); err != nil || string(e.Value()) != "v" {
		t.Errorf("the bucket changed: %v", err)
	}
	if _, err := natsconf.EnsureMirror(ctx, js, natsconf.MirrorConfig{Name: "tokens", Domain: "no.dots"}); !errors.Is(err, natsconf.ErrInvalidBucketConfig) {
		t.Errorf("bad domain: %v, want ErrInvalidBucketConfig", err)
	}
}
