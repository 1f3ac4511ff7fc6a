package natsconf_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

// TestEmbeddedRefusesOpenNonLoopback: an embedded server that would listen
// beyond loopback without users does not start — nothing listens, no store
// is created — and says which key to set. Loopback without users and the
// explicit allow_anonymous switch still start.
func TestEmbeddedRefusesOpenNonLoopback(t *testing.T) {
	port := freePort(t)
	for _, listen := range []string{"0.0.0.0:0", fmt.Sprintf("0.0.0.0:%d", port), fmt.Sprintf(":%d", port), "[::]:0", "tokenkeeper.example:0"} {
		store := filepath.Join(t.TempDir(), "store")
		o := natsconf.EmbeddedOptions{Listen: listen, StoreDir: store}
		s, err := natsconf.StartEmbedded(o)
		if err == nil {
			s.Shutdown()
			s.WaitForShutdown()
			t.Fatalf("listen %s without users: the embedded server started", listen)
		}
		t.Logf("listen %s: %v", listen, err)
		if !errors.Is(err, natsconf.ErrInvalidOptions) || errors.Is(err, natsconf.ErrEmbeddedStart) {
			t.Errorf("listen %s: %v, want ErrInvalidOptions (refused before starting)", listen, err)
		}
		for _, want := range []string{"nats.embedded.listen: " + listen, "beyond this host", "nats.embedded.users", "nats.embedded.allow_anonymous: true"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("listen %s: error %q does not say %q", listen, err, want)
			}
		}
		if _, err := os.Stat(store); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("listen %s: the store directory was created (%v)", listen, err)
		}
		// ConnectEmbedded and Validate refuse the same.
		if errs := natsconf.Problems((natsconf.Options{Embedded: o}).Validate()); len(errs) != 1 || !strings.Contains(errs[0].Error(), "nats.embedded.listen") {
			t.Errorf("listen %s: Validate: %v", listen, errs)
		}
		if c, err := natsconf.ConnectEmbedded(testCtx(t, 5*time.Second), natsconf.Options{Embedded: o}); err == nil {
			c.Close()
			t.Errorf("listen %s: ConnectEmbedded started an open embedded server", listen)
		}
	}
	// Nothing listens on the port that was asked for.
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
		c.Close()
		t.Errorf("something listens on port %d after the refusals", port)
	}

	// Loopback without users: the demo's setting, still allowed.
	for _, listen := range []string{"127.0.0.1:0", "localhost:0", "127.0.0.2:4222", "[::1]:4222"} {
		if errs := (natsconf.Options{Embedded: natsconf.EmbeddedOptions{Listen: listen}}).Validate(); errs != nil {
			t.Errorf("listen %s without users: %v", listen, errs)
		}
	}
	s, err := natsconf.StartEmbedded(natsconf.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("loopback without users: %v", err)
	}
	s.Shutdown()
	s.WaitForShutdown()

	// The explicit switch: open, anonymous, with a warning in the log.
	logs := captureLog(t)
	c := connectEmbedded(t, natsconf.Options{Embedded: natsconf.EmbeddedOptions{Listen: "0.0.0.0:0", StoreDir: t.TempDir(), AllowAnonymous: true}})
	anon, err := nats.Connect(c.Server.ClientURL())
	if err != nil {
		t.Fatalf("allow_anonymous: anonymous connection refused: %v", err)
	}
	anon.Close()
	if !strings.Contains(logs.String(), "accepts anonymous connections beyond loopback") {
		t.Errorf("allow_anonymous beyond loopback logged no warning:\n%s", logs)
	}
}

// TestEmbeddedUsersValidate: every problem of nats.embedded.users is
// reported at once, naming its key, never echoing a secret.
func TestEmbeddedUsersValidate(t *testing.T) {
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	t.Setenv("TK_TEST_EMBEDDED_PW", "pw-in-env-0d1")
	empty := writeFile(t, "empty", []byte(" \n"))
	missing := filepath.Join(t.TempDir(), "missing")
	o := natsconf.Options{
		User: "refresher", Password: "client-pw-5a2",
		Embedded: natsconf.EmbeddedOptions{Listen: "0.0.0.0:4222", AllowAnonymous: true, Users: []natsconf.EmbeddedUser{
			{User: "ok", Role: natsconf.RoleService, PasswordEnv: "TK_TEST_EMBEDDED_PW"},
			{User: "ok", Role: natsconf.RoleOperator, NKey: pub},
			{User: "no role", PasswordEnv: "TK_TEST_EMBEDDED_PW"},
			{User: "r", Role: "admin", PasswordFile: missing},
			{User: "e", Role: natsconf.RoleService, PasswordFile: empty},
			{Role: natsconf.RoleService, PasswordEnv: "TK_TEST_SURELY_UNSET_VAR"},
			{User: "two", Role: natsconf.RoleService, PasswordEnv: "TK_TEST_EMBEDDED_PW", NKey: pub},
			{User: "none", Role: natsconf.RoleService},
			{User: "seed", Role: natsconf.RoleService, NKey: string(seed)},
			{User: "pubagain", Role: natsconf.RoleService, NKey: pub},
			{User: "junk", Role: natsconf.RoleService, NKey: "UNOTAKEY"},
		}},
	}
	errs := natsconf.Problems(o.Validate())
	var msgs []string
	for _, err := range errs {
		if !errors.Is(err, natsconf.ErrInvalidOptions) {
			t.Errorf("%v does not match ErrInvalidOptions", err)
		}
		msgs = append(msgs, err.Error())
	}
	all := strings.Join(msgs, "\n")
	t.Logf("Validate:\n%s", all)
	for _, want := range []string{
		"nats.user: only used with nats.url",
		"nats.embedded.allow_anonymous: cannot be combined with nats.embedded.users",
		`nats.embedded.users[1].user: "ok" is already users[0]`,
		`nats.embedded.users[2].user: "no role" is not a valid user name`,
		"nats.embedded.users[2].role: required: refresher, service, operator or leaf",
		`nats.embedded.users[3].role: "admin" is not a role`,
		"nats.embedded.users[3].password_file: file " + missing + " does not exist",
		"nats.embedded.users[4].password_file: " + empty + " is empty",
		"nats.embedded.users[5].user: required",
		"nats.embedded.users[5].password_env: environment variable TK_TEST_SURELY_UNSET_VAR is not set",
		"nats.embedded.users[6].nkey: cannot be combined with password_env",
		"nats.embedded.users[7]: needs one of password_env, password_file or nkey",
		"nats.embedded.users[8].nkey: is a seed",
		"nats.embedded.users[9].nkey: is already the nkey of users[1]",
		"nats.embedded.users[10].nkey: is not a public user nkey",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("Validate misses %q", want)
		}
	}
	if len(errs) != 16 {
		t.Errorf("%d problems, want 16", len(errs))
	}
	for _, secret := range []string{string(seed), "pw-in-env-0d1", "client-pw-5a2"} {
		if strings.Contains(all, secret) {
			t.Errorf("a secret appears in the Validate messages")
		}
	}
	// StartEmbedded refuses the same before starting anything.
	if _, err := natsconf.StartEmbedded(o.Embedded); !errors.Is(err, natsconf.ErrInvalidOptions) {
		t.Errorf("StartEmbedded: %v, want ErrInvalidOptions", err)
	}
}

// asyncErrs collects a connection's asynchronous errors.
type asyncErrs chan error

func (ch asyncErrs) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	select {
	case ch <- err:
	default:
	}
}

// violation waits for the server's permissions violation about what.
func (ch asyncErrs) violation(t *testing.T, who, what string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case err := <-ch:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(strings.ToLower(err.Error()), strings.ToLower(what)) {
				return
			}
			t.Logf("%s: other async error while waiting for %q: %v", who, what, err)
		case <-timeout:
			t.Fatalf("%s: no permissions violation for %s within 5s", who, what)
		}
	}
}

// none fails when the connection met any asynchronous error.
func (ch asyncErrs) none(t *testing.T, who string) {
	t.Helper()
	for len(ch) > 0 {
		t.Errorf("%s: async error: %v", who, <-ch)
	}
}

// syncBuffer is a log destination safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// captureLog sends slog.Default() to a buffer (debug level) for the rest of
// the test.
func captureLog(t *testing.T) *syncBuffer {
	t.Helper()
	buf := &syncBuffer{}
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() { slog.SetDefault(prev) })
	return buf
}

// TestEmbeddedUsersLeastPrivilege runs the embedded server with one user
// of each role — refresher by password_env, service by password_file,
// operator by nkey — and checks what each may do: the refresher (its
// in-process connection and a TCP client) owns the buckets and events;
// the service reads and watches the tokens and writes nothing, reads
// neither lease nor state, publishes no event, cannot listen on other
// inboxes; the operator also reads the lease and writes nothing; nobody
// gets in anonymously or with a wrong password; no password is logged.
func TestEmbeddedUsersLeastPrivilege(t *testing.T) {
	refresherPW, servicePW := "refresher-pw-7c1e", "service-pw-2b9f"
	t.Setenv("TK_TEST_REFRESHER_PW", refresherPW)
	pwFile := writeFile(t, "service.pw", []byte(servicePW+"\n"))
	opKP, _ := nkeys.CreateUser()
	opPub, _ := opKP.PublicKey()
	opSeed, _ := opKP.Seed()
	seedFile := writeFile(t, "operator.nk", opSeed)

	logs := captureLog(t)
	selfErrs := make(asyncErrs, 64)
	c := connectEmbedded(t, natsconf.Options{Embedded: natsconf.EmbeddedOptions{
		Listen: "127.0.0.1:0", StoreDir: t.TempDir(),
		Users: []natsconf.EmbeddedUser{
			{User: "refresher", Role: natsconf.RoleRefresher, PasswordEnv: "TK_TEST_REFRESHER_PW"},
			{User: "service", Role: natsconf.RoleService, PasswordFile: pwFile},
			{User: "ops", Role: natsconf.RoleOperator, NKey: opPub},
		},
	}}, nats.ErrorHandler(selfErrs.handler))
	url := c.Server.ClientURL()
	ctx := testCtx(t, 60*time.Second)

	// Nobody without credentials, nobody with a wrong password.
	for name, opts := range map[string][]nats.Option{
		"anonymous":      nil,
		"wrong password": {nats.UserInfo("service", servicePW+"x")},
		"unknown user":   {nats.UserInfo("admin", refresherPW)},
	} {
		if nc, err := nats.Connect(url, opts...); err == nil {
			nc.Close()
			t.Errorf("%s: connection accepted", name)
		} else if !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("%s: %v, want an authorization error", name, err)
		}
	}

	// The refresher's own, in-process connection provisions the three
	// buckets, writes a token and the lease, publishes an event.
	for _, b := range []string{"tokens", "tokens_lease", "tokens_state"} {
		if _, err := natsconf.EnsureBucket(ctx, c.JS, natsconf.BucketConfig{Name: b}); err != nil {
			t.Fatalf("in-process refresher: ensure bucket %s: %v", b, err)
		}
	}
	tokens, _ := c.JS.KeyValue(ctx, "tokens")
	lease, _ := c.JS.KeyValue(ctx, "tokens_lease")
	rev, err := tokens.Create(ctx, "mp", []byte(`{"app":"mp","access_token":"T1"}`))
	if err != nil {
		t.Fatalf("in-process refresher: create token: %v", err)
	}
	if _, err := lease.Create(ctx, "leader", []byte(`{"id":"r1"}`)); err != nil {
		t.Fatalf("in-process refresher: create lease: %v", err)
	}

	// The refresher user over TCP: revision-checked update, event.
	rErrs := make(asyncErrs, 64)
	rnc, rjs := testutil.Connect(t, url, nats.UserInfo("refresher", refresherPW), nats.ErrorHandler(rErrs.handler))
	rtokens, err := rjs.KeyValue(ctx, "tokens")
	if err != nil {
		t.Fatalf("refresher user: bind tokens: %v", err)
	}
	if rev, err = rtokens.Update(ctx, "mp", []byte(`{"app":"mp","access_token":"T2"}`), rev); err != nil {
		t.Fatalf("refresher user: update token: %v", err)
	}

	// The service user: reads, watches, follows events.
	sErrs := make(asyncErrs, 64)
	snc, sjs := testutil.Connect(t, url, nats.UserInfo("service", servicePW),
		nats.CustomInboxPrefix(contract.ServiceInboxPrefix("service")), nats.ErrorHandler(sErrs.handler))
	events, err := snc.SubscribeSync(contract.UpdatedPrefix + ">")
	if err != nil {
		t.Fatal(err)
	}
	if err := snc.Flush(); err != nil {
		t.Fatal(err)
	}
	stokens, err := sjs.KeyValue(ctx, "tokens")
	if err != nil {
		t.Fatalf("service: bind tokens: %v", err)
	}
	if e, err := stokens.Get(ctx, "mp"); err != nil || e.Revision() != rev {
		t.Fatalf("service: get token: %v (want revision %d)", err, rev)
	}
	wctx, stopWatch := context.WithCancel(ctx)
	w, err := stokens.Watch(wctx, "mp")
	if err != nil {
		t.Fatalf("service: watch: %v", err)
	}
	select {
	case e := <-w.Updates():
		if e == nil || e.Revision() != rev {
			t.Fatalf("service: watch delivered %v, want revision %d", e, rev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("service: watch delivered nothing")
	}
	stopWatch()
	if err := rnc.Publish(contract.UpdatedSubject("mp"), []byte(`{"app":"mp"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := events.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("service: no event from the refresher user: %v", err)
	}

	// What the service must not do.
	denied := func(who string, errs asyncErrs, what string, call func(ctx context.Context) error) {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		if err := call(cctx); err == nil {
			t.Errorf("%s: %s succeeded", who, what)
		}
		errs.violation(t, who, what)
	}
	denied("service", sErrs, `Publish to "$KV.tokens.mp"`, func(ctx context.Context) error {
		_, err := stokens.Put(ctx, "mp", []byte(`{"app":"mp","access_token":"FORGED"}`))
		return err
	})
	denied("service", sErrs, `Publish to "$JS.API.STREAM.INFO.KV_tokens_lease"`, func(ctx context.Context) error {
		_, err := sjs.KeyValue(ctx, "tokens_lease")
		return err
	})
	denied("service", sErrs, `Publish to "$JS.API.DIRECT.GET.KV_tokens_state.`, func(ctx context.Context) error {
		_, err := snc.RequestWithContext(ctx, "$JS.API.DIRECT.GET.KV_tokens_state.$KV.tokens_state.mp", nil)
		return err
	})
	denied("service", sErrs, `Publish to "$JS.API.STREAM.DELETE.KV_tokens"`, func(ctx context.Context) error {
		return sjs.DeleteKeyValue(ctx, "tokens")
	})
	if err := snc.Publish(contract.UpdatedSubject("mp"), []byte(`{"app":"mp","forged":true}`)); err != nil {
		t.Fatal(err)
	}
	sErrs.violation(t, "service", `Publish to "token.updated.mp"`)
	if m, err := events.NextMsg(100 * time.Millisecond); err == nil {
		t.Errorf("service: a forged event was delivered: %s", m.Data)
	}
	if _, err := snc.SubscribeSync("_INBOX.>"); err != nil {
		t.Fatal(err)
	}
	sErrs.violation(t, "service", `Subscription to "_INBOX.>"`)

	// The operator (nkey): reads the lease, writes nothing.
	oErrs := make(asyncErrs, 64)
	opOpt, err := nats.NkeyOptionFromSeed(seedFile)
	if err != nil {
		t.Fatal(err)
	}
	_, ojs := testutil.Connect(t, url, opOpt, nats.ErrorHandler(oErrs.handler))
	olease, err := ojs.KeyValue(ctx, "tokens_lease")
	if err != nil {
		t.Fatalf("operator: bind lease: %v", err)
	}
	if _, err := olease.Get(ctx, "leader"); err != nil {
		t.Fatalf("operator: read lease: %v", err)
	}
	denied("operator", oErrs, `Publish to "$KV.tokens_lease.leader"`, func(ctx context.Context) error {
		_, err := olease.Put(ctx, "leader", []byte(`{"id":"evil"}`))
		return err
	})

	// The in-process refresher identity is a refresher, not an admin.
	denied("in-process refresher", selfErrs, `Publish to "$JS.API.STREAM.DELETE.KV_tokens"`, func(ctx context.Context) error {
		return c.JS.DeleteKeyValue(ctx, "tokens")
	})

	// The token is untouched; the refreshers met no refusal but those asked for.
	if e, err := stokens.Get(ctx, "mp"); err != nil || e.Revision() != rev {
		t.Errorf("after the refused writes: %v, revision %v, want %d", err, e, rev)
	}
	for _, nc := range []*nats.Conn{rnc, c.NC} {
		if err := nc.Flush(); err != nil {
			t.Error(err)
		}
	}
	rErrs.none(t, "refresher user")
	selfErrs.none(t, "in-process refresher")

	text := logs.String()
	if !strings.Contains(text, "requires authentication") || !strings.Contains(text, "service(service)") {
		t.Errorf("the start did not log its users:\n%s", text)
	}
	for _, secret := range []string{refresherPW, servicePW, string(opSeed)} {
		if strings.Contains(text, secret) {
			t.Errorf("a secret appears in the log")
		}
	}
}

// TestRolesMatchExampleConfig: the embedded server's roles grant exactly
// what the users of examples/nats-server.conf are granted.
func TestRolesMatchExampleConfig(t *testing.T) {
	t.Setenv("TOKENKEEPER_REFRESHER_PASSWORD", "x")
	t.Setenv("TOKENKEEPER_SERVICE_PASSWORD", "y")
	o, err := server.ProcessConfigFile("../examples/nats-server.conf")
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Users) != 2 {
		t.Fatalf("examples/nats-server.conf has %d users, want 2", len(o.Users))
	}
	for _, u := range o.Users {
		testutil.ComparePermissions(t, "examples/nats-server.conf user "+u.Username, u.Permissions,
			natsconf.RolePermissions(natsconf.Role(u.Username), contract.DefaultBucket, u.Username))
	}
}
