package natsconf_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// connect connects with o and registers Close.
func connect(t *testing.T, o natsconf.Options, extra ...nats.Option) *natsconf.Conn {
	t.Helper()
	c, err := natsconf.Connect(testCtx(t, 10*time.Second), o, extra...)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// connectEmbedded starts the embedded server of o and connects to it
// in-process, registering Close.
func connectEmbedded(t *testing.T, o natsconf.Options, extra ...nats.Option) *natsconf.Conn {
	t.Helper()
	c, err := natsconf.ConnectEmbedded(testCtx(t, 10*time.Second), o, extra...)
	if err != nil {
		t.Fatalf("ConnectEmbedded: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestConnectWithoutURLFails: a client with no URL gets a clear error at
// once, and no server is started — not on the configured listen address,
// not in the configured store directory.
func TestConnectWithoutURLFails(t *testing.T) {
	port := freePort(t)
	store := filepath.Join(t.TempDir(), "store")
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	for _, o := range []natsconf.Options{
		{},
		{URL: "  "},
		{Name: "svc", Embedded: natsconf.EmbeddedOptions{Listen: listen, StoreDir: store}},
	} {
		start := time.Now()
		c, err := natsconf.Connect(testCtx(t, 10*time.Second), o)
		if err == nil {
			c.Close()
			t.Fatalf("Connect(%+v) succeeded without a URL", o)
		}
		if !errors.Is(err, natsconf.ErrNoURL) || !errors.Is(err, natsconf.ErrInvalidOptions) {
			t.Errorf("Connect without a URL: %v, want ErrNoURL (and ErrInvalidOptions)", err)
		}
		for _, want := range []string{"nats.url", "no NATS server URL", "never starts an embedded server"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("Connect took %s to refuse", el)
		}
	}
	if _, err := os.Stat(store); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the store directory was created (%v)", err)
	}
	if c, err := net.DialTimeout("tcp", listen, time.Second); err == nil {
		c.Close()
		t.Errorf("something listens on %s", listen)
	}

	// The embedded server is started only when asked for, and never
	// alongside a URL.
	if _, err := natsconf.ConnectEmbedded(testCtx(t, 5*time.Second), natsconf.Options{URL: "nats://127.0.0.1:4222"}); !errors.Is(err, natsconf.ErrInvalidOptions) {
		t.Errorf("ConnectEmbedded with a URL: %v, want ErrInvalidOptions", err)
	}
}

// mustWork checks the connection with a JetStream round trip.
func mustWork(t *testing.T, c *natsconf.Conn) {
	t.Helper()
	if _, err := c.JS.AccountInfo(testCtx(t, 5*time.Second)); err != nil {
		t.Fatalf("account info over the connection: %v", err)
	}
}

// connectErr expects Connect to fail and returns the error.
func connectErr(t *testing.T, o natsconf.Options) error {
	t.Helper()
	start := time.Now()
	c, err := natsconf.Connect(testCtx(t, 20*time.Second), o)
	if err == nil {
		c.Close()
		t.Fatal("Connect succeeded, want an error")
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Connect took %s to fail; a refused connection must not be retried", el)
	}
	t.Logf("Connect error: %v", err)
	return err
}

func TestEmbeddedConnectAndClose(t *testing.T) {
	store := filepath.Join(t.TempDir(), "not", "yet")
	c := connectEmbedded(t, natsconf.Options{
		Name:     "embedded-test",
		Embedded: natsconf.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: store, ServerName: "tk-embedded"},
	})
	if c.Server == nil || !c.Server.JetStreamEnabled() {
		t.Fatal("embedded server missing or without JetStream")
	}
	if c.Server.Name() != "tk-embedded" {
		t.Errorf("server name %q, want tk-embedded", c.Server.Name())
	}
	if fi, err := os.Stat(store); err != nil || !fi.IsDir() {
		t.Fatalf("store dir not created: %v", err)
	}
	mustWork(t, c)

	// The embedded server also listens on TCP for other processes.
	other, err := nats.Connect(c.Server.ClientURL())
	if err != nil {
		t.Fatalf("TCP connect to the embedded server: %v", err)
	}
	other.Close()

	c.Close()
	c.Close() // idempotent
	if !c.NC.IsClosed() {
		t.Error("connection not closed")
	}
	if c.Server.Running() {
		t.Error("embedded server still running after Close")
	}
	var nilConn *natsconf.Conn
	nilConn.Close()
}

func TestStartEmbeddedDefaults(t *testing.T) {
	// Port 0 picks a free port; the store dir is created.
	dir := filepath.Join(t.TempDir(), "store")
	s, err := natsconf.StartEmbedded(natsconf.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Shutdown(); s.WaitForShutdown() }()
	if !s.JetStreamEnabled() {
		t.Fatal("JetStream off")
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatal(err)
	}
}

func TestStartEmbeddedPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	addr := l.Addr().String()

	start := time.Now()
	s, err := natsconf.StartEmbedded(natsconf.EmbeddedOptions{Listen: addr, StoreDir: t.TempDir()})
	if err == nil {
		s.Shutdown()
		t.Fatal("StartEmbedded succeeded on a taken port")
	}
	if !errors.Is(err, natsconf.ErrAddressInUse) || !errors.Is(err, natsconf.ErrEmbeddedStart) {
		t.Fatalf("error %v does not match ErrAddressInUse and ErrEmbeddedStart", err)
	}
	for _, want := range []string{addr, "nats.embedded.listen"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("took %s to report a taken port", el)
	}

	// Through ConnectEmbedded as well.
	_, err = natsconf.ConnectEmbedded(testCtx(t, 10*time.Second), natsconf.Options{
		Embedded: natsconf.EmbeddedOptions{Listen: addr, StoreDir: t.TempDir()},
	})
	if !errors.Is(err, natsconf.ErrAddressInUse) {
		t.Fatalf("ConnectEmbedded: %v, want ErrAddressInUse", err)
	}
}

func TestConnectUserPassword(t *testing.T) {
	const user, pass = "svc", "correct-horse"
	s := testutil.RunServer(t, func(o *server.Options) { o.Username, o.Password = user, pass })
	url := s.ClientURL()

	mustWork(t, connect(t, natsconf.Options{URL: url, User: user, Password: pass}))

	t.Setenv("TK_TEST_NATS_PASSWORD", pass)
	mustWork(t, connect(t, natsconf.Options{URL: url, User: user, PasswordEnv: "TK_TEST_NATS_PASSWORD"}))

	const wrong = "wrong-battery-staple"
	err := connectErr(t, natsconf.Options{URL: url, User: user, Password: wrong})
	if !errors.Is(err, natsconf.ErrConnect) || !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("wrong password: %v, want ErrConnect wrapping nats.ErrAuthorization", err)
	}
	if !strings.Contains(err.Error(), "nats.password") || strings.Contains(err.Error(), wrong) {
		t.Errorf("wrong password: unclear or leaking message %q", err)
	}

	err = connectErr(t, natsconf.Options{URL: url})
	if !errors.Is(err, nats.ErrAuthorization) || !strings.Contains(err.Error(), "wants credentials") {
		t.Errorf("no credentials: %v", err)
	}

	// A password in the URL is not echoed either.
	err = connectErr(t, natsconf.Options{URL: strings.Replace(url, "nats://", "nats://svc:"+wrong+"@", 1)})
	if strings.Contains(err.Error(), wrong) {
		t.Errorf("URL password leaked: %q", err)
	}
}

func TestConnectToken(t *testing.T) {
	const token = "s3cr3t-token"
	s := testutil.RunServer(t, func(o *server.Options) { o.Authorization = token })
	mustWork(t, connect(t, natsconf.Options{URL: s.ClientURL(), Token: token}))

	err := connectErr(t, natsconf.Options{URL: s.ClientURL(), Token: "not-" + token})
	if !errors.Is(err, nats.ErrAuthorization) || !strings.Contains(err.Error(), "nats.token") {
		t.Fatalf("wrong token: %v", err)
	}
	if strings.Contains(err.Error(), token) {
		t.Errorf("token leaked: %q", err)
	}
}

func TestConnectNKey(t *testing.T) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	s := testutil.RunServer(t, func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} })

	mustWork(t, connect(t, natsconf.Options{URL: s.ClientURL(), NKeyFile: writeFile(t, "user.nk", seed)}))

	other, _ := nkeys.CreateUser()
	otherSeed, _ := other.Seed()
	err = connectErr(t, natsconf.Options{URL: s.ClientURL(), NKeyFile: writeFile(t, "other.nk", otherSeed)})
	if !errors.Is(err, nats.ErrAuthorization) || !strings.Contains(err.Error(), "nats.nkey") {
		t.Fatalf("unknown nkey: %v", err)
	}
	if strings.Contains(err.Error(), string(otherSeed)) {
		t.Error("seed leaked")
	}
}

// operatorServer runs a server in operator mode with one account (with
// JetStream) and returns it with a creds file of a user of that account.
func operatorServer(t *testing.T) (*server.Server, string) {
	t.Helper()
	okp, _ := nkeys.CreateOperator()
	opub, _ := okp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	oc.Name = "O"
	ojwt, err := oc.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	opClaims, err := jwt.DecodeOperatorClaims(ojwt)
	if err != nil {
		t.Fatal(err)
	}

	resolver := &server.MemAccResolver{}
	newAccount := func(name string, js bool) (nkeys.KeyPair, string) {
		akp, _ := nkeys.CreateAccount()
		apub, _ := akp.PublicKey()
		ac := jwt.NewAccountClaims(apub)
		ac.Name = name
		if js {
			ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		ajwt, err := ac.Encode(okp)
		if err != nil {
			t.Fatal(err)
		}
		if err := resolver.Store(apub, ajwt); err != nil {
			t.Fatal(err)
		}
		return akp, apub
	}
	_, sysPub := newAccount("SYS", false)
	akp, _ := newAccount("APP", true)

	ukp, _ := nkeys.CreateUser()
	upub, _ := ukp.PublicKey()
	useed, _ := ukp.Seed()
	uc := jwt.NewUserClaims(upub)
	uc.Name = "svc"
	ujwt, err := uc.Encode(akp)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := jwt.FormatUserConfig(ujwt, useed)
	if err != nil {
		t.Fatal(err)
	}
	s := testutil.RunServer(t, func(o *server.Options) {
		o.TrustedOperators = []*jwt.OperatorClaims{opClaims}
		o.AccountResolver = resolver
		o.SystemAccount = sysPub
	})
	return s, writeFile(t, "svc.creds", creds)
}

func TestConnectCreds(t *testing.T) {
	s, creds := operatorServer(t)
	c := connect(t, natsconf.Options{URL: s.ClientURL(), CredsFile: creds})
	mustWork(t, c)
	if _, err := natsconf.EnsureBucket(testCtx(t, 10*time.Second), c.JS, natsconf.BucketConfig{Name: contract.DefaultBucket}); err != nil {
		t.Fatalf("EnsureBucket over creds: %v", err)
	}

	err := connectErr(t, natsconf.Options{URL: s.ClientURL()})
	if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("no creds: %v", err)
	}
}

func TestConnectTLS(t *testing.T) {
	f := newTLSFiles(t)
	s := testutil.RunServer(t, func(o *server.Options) {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
			CertFile: f.ServerCert, KeyFile: f.ServerKey, CaFile: f.CA, Verify: true, Timeout: 2,
		})
		if err != nil {
			t.Fatalf("server TLS config: %v", err)
		}
		o.TLSConfig, o.TLS, o.TLSVerify, o.TLSTimeout = tc, true, true, 2
	})
	url := s.ClientURL()

	c := connect(t, natsconf.Options{URL: url, TLS: natsconf.TLSOptions{CAFile: f.CA, CertFile: f.ClientCert, KeyFile: f.ClientKey}})
	mustWork(t, c)
	if !c.NC.TLSRequired() {
		t.Error("connection not using TLS")
	}
	if _, err := natsconf.EnsureBucket(testCtx(t, 10*time.Second), c.JS, natsconf.BucketConfig{Name: "tls"}); err != nil {
		t.Fatalf("EnsureBucket over TLS: %v", err)
	}

	// The server verifies client certificates.
	if err := connectErr(t, natsconf.Options{URL: url, TLS: natsconf.TLSOptions{CAFile: f.CA}}); !errors.Is(err, natsconf.ErrConnect) || !strings.Contains(err.Error(), "nats.tls.cert") {
		t.Errorf("without a client certificate: %v", err)
	}

	// The client verifies the server: another CA is refused.
	dir := t.TempDir()
	otherCA, _, _ := newCA(t, dir, "other-ca")
	err := connectErr(t, natsconf.Options{URL: url, TLS: natsconf.TLSOptions{CAFile: otherCA, CertFile: f.ClientCert, KeyFile: f.ClientKey}})
	if !strings.Contains(err.Error(), "nats.tls.ca") {
		t.Errorf("unknown server CA: unclear error %q", err)
	}
}

func TestConnectURLListWithDeadURL(t *testing.T) {
	s := testutil.RunServer(t)
	dead := fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))
	list := dead + ", " + s.ClientURL()
	// DontRandomize: the dead URL is always tried first.
	c := connect(t, natsconf.Options{URL: list}, nats.DontRandomize())
	mustWork(t, c)
	if got := c.NC.ConnectedUrl(); got != s.ClientURL() {
		t.Errorf("connected to %s, want %s", got, s.ClientURL())
	}
}

func TestConnectWaitsForServer(t *testing.T) {
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)

	// Nothing listens: Connect gives up when ctx ends.
	start := time.Now()
	_, err := natsconf.Connect(testCtx(t, 300*time.Millisecond), natsconf.Options{URL: url})
	if !errors.Is(err, natsconf.ErrConnect) || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, nats.ErrNoServers) {
		t.Fatalf("no server: %v", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("Connect overran its ctx: %s", el)
	}

	// Connect keeps trying while no server listens, and connects once one
	// does. The dialer counts attempts, so the server starts only after
	// Connect has been refused at least twice.
	type result struct {
		c   *natsconf.Conn
		err error
	}
	dialer := &countingDialer{}
	done := make(chan result, 1)
	go func() {
		c, err := natsconf.Connect(testCtx(t, 20*time.Second), natsconf.Options{URL: url}, nats.SetCustomDialer(dialer))
		done <- result{c, err}
	}()
	testutil.WaitFor(t, 10*time.Second, func() bool { return dialer.n.Load() >= 2 }, "Connect did not retry")
	testutil.RunServer(t, func(o *server.Options) { o.Port = port })
	r := <-done
	if r.err != nil {
		t.Fatalf("Connect while the server starts: %v", r.err)
	}
	t.Cleanup(r.c.Close)
	mustWork(t, r.c)
	if r.c.Server != nil {
		t.Error("external connection has an embedded server")
	}
}

// countingDialer dials TCP and counts the attempts.
type countingDialer struct{ n atomic.Int64 }

func (d *countingDialer) Dial(network, address string) (net.Conn, error) {
	d.n.Add(1)
	return net.DialTimeout(network, address, 2*time.Second)
}

func TestValidate(t *testing.T) {
	if errs := (natsconf.Options{}).Validate(); errs != nil {
		t.Fatalf("zero options (embedded defaults): %v", errs)
	}
	f := newTLSFiles(t)
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	good := []natsconf.Options{
		{URL: "nats://a:4222, nats://b:4222,c:4223", User: "u", Password: "p"},
		{URL: "tls://a", Token: "t", TLS: natsconf.TLSOptions{CAFile: f.CA, CertFile: f.ClientCert, KeyFile: f.ClientKey}},
		{URL: "nats://a:4222", NKeyFile: writeFile(t, "u.nk", seed)},
		{Embedded: natsconf.EmbeddedOptions{Listen: ":4333", AllowAnonymous: true}},
		{Embedded: natsconf.EmbeddedOptions{Listen: "127.0.0.1:4333"}},
	}
	for i, o := range good {
		if errs := o.Validate(); errs != nil {
			t.Errorf("good[%d]: %v", i, errs)
		}
	}

	const password, token = "hunter2-password", "tok-very-secret"
	missing := filepath.Join(t.TempDir(), "missing")
	bad := natsconf.Options{
		URL:         "nats://127.0.0.1:4222,,http://x:1,nats://u:" + password + "@h:99999",
		User:        "svc",
		Password:    password,
		PasswordEnv: "TK_TEST_SURELY_UNSET_VAR",
		Token:       token,
		CredsFile:   missing + ".creds",
		NKeyFile:    writeFile(t, "garbage.nk", []byte("not a seed")),
		TLS:         natsconf.TLSOptions{CAFile: f.ClientKey, CertFile: missing + ".pem"},
	}
	errs := natsconf.Problems(bad.Validate())
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
		"nats.url: entry 2: empty",
		"nats.url: entry 3: scheme \"http\"",
		"nats.url: entry 4: port",
		"nats.token: cannot be combined with nats.user",
		"nats.creds: cannot be combined with nats.user",
		"nats.nkey: cannot be combined with nats.user",
		"nats.password_env: cannot be combined with nats.password",
		"nats.password_env: environment variable TK_TEST_SURELY_UNSET_VAR",
		"nats.creds: file " + missing + ".creds does not exist",
		"nats.nkey: ",
		"nats.tls.key: required when nats.tls.cert is set",
		"nats.tls.cert: file " + missing + ".pem does not exist",
		"nats.tls.ca: ",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("Validate misses %q", want)
		}
	}
	if strings.Contains(all, password) || strings.Contains(all, token) {
		t.Error("a secret appears in the Validate messages")
	}

	// Connect reports the same, all at once, before any network activity.
	_, err := natsconf.Connect(testCtx(t, 5*time.Second), bad)
	if !errors.Is(err, natsconf.ErrInvalidOptions) {
		t.Fatalf("Connect: %v, want ErrInvalidOptions", err)
	}
	if got := strings.Count(err.Error(), "\n") + 1; got != len(errs) {
		t.Errorf("Connect reported %d problems, Validate %d", got, len(errs))
	}

	// The embedded server has no TLS or auth: such settings are errors.
	emb := natsconf.Options{Token: token, TLS: natsconf.TLSOptions{CAFile: f.CA}, Embedded: natsconf.EmbeddedOptions{Listen: "nohost"}}
	all = fmt.Sprint(emb.Validate())
	for _, want := range []string{"nats.token: only used with nats.url", "nats.tls: only used with nats.url", "nats.embedded.listen:"} {
		if !strings.Contains(all, want) {
			t.Errorf("embedded: Validate misses %q in %s", want, all)
		}
	}
	// Key without cert, user without password.
	all = fmt.Sprint(natsconf.Options{URL: "nats://a", User: "u", TLS: natsconf.TLSOptions{KeyFile: f.ClientKey}}.Validate())
	for _, want := range []string{"nats.tls.cert: required when nats.tls.key is set", "nats.password: required with nats.user"} {
		if !strings.Contains(all, want) {
			t.Errorf("Validate misses %q in %s", want, all)
		}
	}
	// Cert and key that do not belong together.
	all = fmt.Sprint(natsconf.Options{URL: "nats://a", TLS: natsconf.TLSOptions{CertFile: f.ClientCert, KeyFile: f.ServerKey}}.Validate())
	if !strings.Contains(all, "nats.tls.cert: cannot load the certificate with nats.tls.key") {
		t.Errorf("mismatched pair not reported: %s", all)
	}
}

// TestValidateKeysAndFiles: ValidateKeys reads nothing, ValidateFiles
// reports only what reading finds, and together they are Validate.
func TestValidateKeysAndFiles(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	storeFile := writeFile(t, "store-is-a-file", []byte("x"))
	for name, o := range map[string]natsconf.Options{
		"client": {
			URL:         "nats://127.0.0.1:4222,,http://x:1",
			User:        "svc",
			PasswordEnv: "TK_TEST_SURELY_UNSET_VAR",
			Token:       "tok",
			CredsFile:   missing + ".creds",
			NKeyFile:    writeFile(t, "garbage.nk", []byte("not a seed")),
			TLS:         natsconf.TLSOptions{CAFile: missing + ".ca", CertFile: missing + ".pem"},
		},
		"embedded": {Embedded: natsconf.EmbeddedOptions{StoreDir: storeFile, Users: []natsconf.EmbeddedUser{
			{User: "a", Role: natsconf.RoleService, PasswordEnv: "TK_TEST_SURELY_UNSET_VAR"},
			{User: "b", Role: natsconf.RoleService, PasswordFile: missing + ".pw"},
			{User: "c", Role: "nobody", NKey: "SUAKEY"},
		}}},
	} {
		t.Run(name, func(t *testing.T) {
			all, keys, files := natsconf.Problems(o.Validate()), natsconf.Problems(o.ValidateKeys()), natsconf.Problems(o.ValidateFiles())
			if len(keys) == 0 || len(files) == 0 {
				t.Fatalf("keys %v, files %v: want problems in both", keys, files)
			}
			if len(all) != len(keys)+len(files) {
				t.Errorf("Validate reports %d problems, ValidateKeys %d and ValidateFiles %d", len(all), len(keys), len(files))
			}
			for _, err := range keys {
				if m := err.Error(); strings.Contains(m, "does not exist") || strings.Contains(m, "environment variable") ||
					strings.Contains(m, "not a directory") || strings.Contains(m, "does not hold") {
					t.Errorf("ValidateKeys reports what only reading finds: %s", m)
				}
			}
			for _, err := range files {
				if m := err.Error(); strings.Contains(m, "cannot be combined") || strings.Contains(m, "required") ||
					strings.Contains(m, "nats.url") || strings.Contains(m, ".role") || strings.Contains(m, "is a seed") {
					t.Errorf("ValidateFiles reports a problem of the keys: %s", m)
				}
			}
		})
	}
}
