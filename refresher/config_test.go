package refresher_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

func TestParseConfigDefaults(t *testing.T) {
	t.Setenv("MP_SECRET", "  s3cret\n")
	cfg, err := refresher.ParseConfig([]byte(`
apps:
  - name: mp-main
    appid: wx0123456789abcdef
    secret_env: MP_SECRET
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Bucket != "tokens" || cfg.Replicas != 1 || cfg.Schedule != "@every 30s" || cfg.LeaseTTL != 10*time.Second ||
		cfg.MinPassiveInterval() != 30*time.Second || cfg.NATS.URL != "" {
		t.Errorf("defaults: %+v", cfg)
	}
	a := cfg.Apps[0]
	if a.Kind != "wechat" || a.APIBase != "https://api.weixin.qq.com" || a.Secret() != "s3cret" {
		t.Errorf("app defaults: kind %q base %q secret trimmed %v", a.Kind, a.APIBase, a.Secret() == "s3cret")
	}
	if p := cfg.RefreshPolicy(); p != refresher.DefaultPolicy {
		t.Errorf("policy %+v, want the default", p)
	}
}

func TestParseConfigZeroPassiveIntervalAllowed(t *testing.T) {
	t.Setenv("S", "x")
	cfg, err := refresher.ParseConfig([]byte("passive_min_interval: 0s\napps: [{name: a, appid: wx1, secret_env: S}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinPassiveInterval() != 0 {
		t.Fatalf("passive_min_interval 0 became %v", cfg.MinPassiveInterval())
	}
}

func TestParseConfigSecretFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := refresher.ParseConfig([]byte("apps: [{name: a, appid: wx1, secret_file: " + p + "}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Apps[0].Secret() != "from-file" {
		t.Fatal("secret_file not read")
	}
}

// TestConfigReportsEveryProblem: one bad config, every problem named with
// its app and key, in one error.
func TestConfigReportsEveryProblem(t *testing.T) {
	t.Setenv("SET", "x")
	_, err := refresher.ParseConfig([]byte(`
schedule: "every thirty seconds"
lease_ttl: 500ms
replicas: 9
log: {format: xml}
apps:
  - {name: mp-main, appid: wx1, secret_env: SET}
  - {name: mp-main, appid: wx2, secret_env: SET}
  - {name: "bad name!", appid: wx3, secret_env: SET}
  - {name: kindless, kind: alipay, appid: wx4, secret_env: SET}
  - {name: nosecret, appid: wx5}
  - {name: unsetenv, appid: wx6, secret_env: NOT_SET_ANYWHERE_42}
  - {name: both, appid: wx7, secret_env: SET, secret_file: /x}
  - {name: noappid, secret_env: SET}
  - {name: badbase, appid: wx8, secret_env: SET, api_base: "ftp://x"}
`))
	var ce *refresher.ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want a *ConfigError", err)
	}
	want := []string{
		`schedule: "every thirty seconds" does not parse`,
		"lease_ttl: 500ms is too short",
		"replicas: 9 is out of range",
		`log.format: "xml"`,
		"apps[1] (mp-main).name: duplicate of apps[0]",
		`apps[2] (bad name!).name: "bad name!" is not a valid app name`,
		`apps[3] (kindless).kind: unknown kind "alipay"`,
		"apps[4] (nosecret).secret_env: missing",
		"apps[5] (unsetenv).secret_env: environment variable NOT_SET_ANYWHERE_42 is not set",
		"apps[6] (both).secret_env/secret_file: set only one",
		"apps[7] (noappid).appid: missing",
		`apps[8] (badbase).api_base: "ftp://x" is not an http(s) URL`,
	}
	msg := err.Error()
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error does not say %q:\n%s", w, msg)
		}
	}
	if len(ce.Problems) != len(want) {
		t.Errorf("%d problems reported, want %d:\n%s", len(ce.Problems), len(want), msg)
	}
}

func TestConfigUnknownKeyNamed(t *testing.T) {
	_, err := refresher.ParseConfig([]byte("schedul: '@every 1s'\n"))
	if err == nil || !strings.Contains(err.Error(), `line 1: unknown key "schedul"`) {
		t.Fatalf("err = %v, want it to name the unknown key and its line", err)
	}
}

func TestConfigUnknownKeyAndBadYAML(t *testing.T) {
	for name, text := range map[string]string{
		"typo":      "schedul: '@every 1s'\n",
		"bad yaml":  "apps: [\n",
		"bad type":  "replicas: three\n",
		"bad dur":   "lease_ttl: ten\n",
		"no apps":   "bucket: tokens\n",
		"empty doc": "",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := refresher.ParseConfig([]byte(text)); err == nil {
				t.Fatalf("config %q accepted", text)
			}
		})
	}
}

func TestConfigNeverPrintsSecret(t *testing.T) {
	t.Setenv("S", "S3CR3T-value")
	cfg, err := refresher.ParseConfig([]byte("apps: [{name: a, appid: wx1, secret_env: S}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{cfg.Apps[0].String(), cfg.Apps[0].GoString()} {
		if strings.Contains(s, "S3CR3T") {
			t.Fatalf("AppConfig prints its secret: %s", s)
		}
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	_, err := refresher.LoadConfig(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("err = %v, want one naming the file", err)
	}
}

// TestValidateHasNoSideEffects: Validate reads no environment variable
// and no file and changes nothing; ResolveSecrets reads them, naming the
// app and key of every secret it cannot read.
func TestValidateHasNoSideEffects(t *testing.T) {
	t.Setenv("TK_VALIDATE_SECRET", "from-env")
	missing := filepath.Join(t.TempDir(), "missing")
	cfg := &refresher.Config{
		NATS: natsconf.Options{URL: "nats://127.0.0.1:4222", CredsFile: missing + ".creds"},
		Apps: []refresher.AppConfig{
			{Name: "env", AppID: "wx1", SecretEnv: "TK_VALIDATE_SECRET"},
			{Name: "file", AppID: "wx2", SecretFile: missing},
			{Name: "unset", AppID: "wx3", SecretEnv: "TK_SURELY_UNSET_42"},
		},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate read something: %v", err)
	}
	for _, a := range cfg.Apps {
		if a.Secret() != "" {
			t.Fatalf("Validate resolved the secret of %s", a.Name)
		}
	}
	err := cfg.ResolveSecrets()
	var ce *refresher.ConfigError
	if !errors.As(err, &ce) || len(ce.Problems) != 2 {
		t.Fatalf("ResolveSecrets: %v, want a *ConfigError with 2 problems", err)
	}
	for _, w := range []string{"apps[1] (file).secret_file: ", "apps[2] (unset).secret_env: environment variable TK_SURELY_UNSET_42 is not set"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("ResolveSecrets does not say %q:\n%v", w, err)
		}
	}
	if got := cfg.Apps[0].Secret(); got != "from-env" {
		t.Errorf("ResolveSecrets read %q for app env, want from-env", got)
	}

	// Loading reports all of it, and the nats: files, at once.
	_, err = refresher.ParseConfig([]byte("nats: {url: 'nats://127.0.0.1:4222', creds: " + missing + ".creds}\n" +
		"apps: [{name: env, appid: wx1, secret_env: TK_VALIDATE_SECRET}, {name: unset, appid: wx3, secret_env: TK_SURELY_UNSET_42}]\n"))
	for _, w := range []string{"nats.creds: ", "apps[1] (unset).secret_env: "} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("ParseConfig does not say %q: %v", w, err)
		}
	}
}

// TestNewAndReloadReadNoSecrets: New and Reload read neither the
// environment nor files; an app whose secret was not read is an error
// naming the app and the key.
func TestNewAndReloadReadNoSecrets(t *testing.T) {
	s := testutil.RunServer(t)
	nc, _ := testutil.Connect(t, s.ClientURL())
	t.Setenv("TK_NEW_SECRET", "from-env")
	unread := func() *refresher.Config {
		c := &refresher.Config{NATS: natsconf.Options{URL: s.ClientURL()}, Apps: []refresher.AppConfig{
			{Name: "given", AppID: "wx1"}, {Name: "env", AppID: "wx2", SecretEnv: "TK_NEW_SECRET"},
		}}
		c.Apps[0] = c.Apps[0].WithSecret("given-secret")
		c.SetDefaults()
		return c
	}
	const want = "apps[1] (env).secret_env: the secret has not been read"
	if _, err := refresher.New(unread(), nc); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("New with a secret not read: %v, want an error saying %q", err, want)
	}
	cfg := unread()
	if err := cfg.ResolveSecrets(); err != nil {
		t.Fatal(err)
	}
	r, err := refresher.New(cfg, nc)
	if err != nil {
		t.Fatalf("New after ResolveSecrets: %v", err)
	}
	if _, err := r.Reload(unread()); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Reload with a secret not read: %v, want an error saying %q", err, want)
	}
}

// TestConfigErrorUnwrapsToItsProblems: a ConfigError follows the one
// convention for errors with several problems (Unwrap() []error).
func TestConfigErrorUnwrapsToItsProblems(t *testing.T) {
	ce := &refresher.ConfigError{File: "x.yaml", Problems: []string{"bucket: bad", "apps[0].name: bad"}}
	ps := natsconf.Problems(ce)
	if len(ps) != 2 || ps[0].Error() != "bucket: bad" || ps[1].Error() != "apps[0].name: bad" {
		t.Fatalf("Problems(ConfigError) = %v", ps)
	}
}

// TestConfigTickets: tickets: is accepted for the kinds that keep tickets
// and every wrong entry is reported with its app and key.
func TestConfigTickets(t *testing.T) {
	t.Setenv("SET", "x")
	cfg, err := refresher.ParseConfig([]byte(`
apps:
  - {name: mp, appid: wx1, secret_env: SET, tickets: [jsapi, wx_card]}
  - {name: st, kind: wechat-stable, appid: wx2, secret_env: SET, tickets: [jsapi]}
  - {name: none, appid: wx3, secret_env: SET}
`))
	if err != nil {
		t.Fatalf("well-formed tickets: %v", err)
	}
	if got := cfg.Apps[0].Tickets; len(got) != 2 || got[0] != "jsapi" || got[1] != "wx_card" {
		t.Fatalf("tickets of mp = %v", got)
	}
	var ce *refresher.ConfigError
	_, err = refresher.ParseConfig([]byte(`
apps:
  - {name: mp, appid: wx1, secret_env: SET, tickets: [jsapi, agent_config, jsapi, ""]}
  - {name: odd, kind: alipay, appid: wx2, secret_env: SET, tickets: [jsapi]}
`))
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want a *ConfigError", err)
	}
	want := []string{
		`apps[0] (mp).tickets[1]: "agent_config" is not a ticket of kind wechat (want jsapi or wx_card)`,
		`apps[0] (mp).tickets[2]: jsapi is a duplicate of tickets[0]`,
		`apps[0] (mp).tickets[3]: "" is not a ticket of kind wechat`,
		`apps[1] (odd).kind: unknown kind "alipay"`,
		`apps[1] (odd).tickets[0]: kind "alipay" keeps no tickets`,
	}
	msg := err.Error()
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error does not say %q:\n%s", w, msg)
		}
	}
	if len(ce.Problems) != len(want) {
		t.Errorf("%d problems reported, want %d:\n%s", len(ce.Problems), len(want), msg)
	}
}
