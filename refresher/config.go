package refresher

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
	"go.yaml.in/yaml/v3"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/gateway"
	"github.com/tokenkeeper/tokenkeeper/internal/seal"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// Defaults of the configuration.
const (
	DefaultSchedule           = "@every 30s"
	DefaultLeaseTTL           = 10 * time.Second
	DefaultPassiveMinInterval = 30 * time.Second
	DefaultAPIBase            = "https://api.weixin.qq.com"
)

// Config is the refresher's YAML configuration. The key names are part of
// the wire contract (../shared/design.md); more keys may be added.
type Config struct {
	NATS     natsconf.Options `yaml:"nats"`
	Bucket   string           `yaml:"bucket"`
	Replicas int              `yaml:"replicas"`
	// Schedule is the cron spec of the check tick. Refreshes also fire at
	// each app's own refresh moment; the tick is the safety net.
	Schedule string `yaml:"schedule"`
	// LeaseTTL is how long a leader's lease lives without renewal.
	LeaseTTL time.Duration `yaml:"lease_ttl"`
	// PassiveMinInterval is the least time between two forced (passive)
	// refreshes of one app. Nil means the default; 0 is allowed.
	PassiveMinInterval *time.Duration `yaml:"passive_min_interval"`
	HTTP               HTTPConfig     `yaml:"http"`
	Upstream           UpstreamConfig `yaml:"upstream"`
	Audit              AuditConfig    `yaml:"audit"`
	Log                LogConfig      `yaml:"log"`
	Policy             PolicyConfig   `yaml:"refresh"`
	Apps               []AppConfig    `yaml:"apps"`
	// Gateway is the HTTP gateway for services without NATS (off unless
	// gateway.listen is set); cmd/refresher runs it.
	Gateway gateway.Config `yaml:"gateway"`
	// Mode is ModeLead (default, also when empty): fetch upstream, hold
	// the lease, serve token.refresh. ModeFollow: read a mirror of a lead
	// environment's bucket and report on it, nothing else; see Follower
	// and FollowConfig (follow.go).
	Mode   string       `yaml:"mode"`
	Follow FollowConfig `yaml:"follow"`
	// Secrets says where the key of the secrets bucket is
	// (secrets_key_env / secrets_key_file at the top level; see
	// seal.Config). Required with a wechat-component app.
	Secrets seal.Config `yaml:",inline"`
	// Callback is the public listener WeChat pushes to (v2; see
	// CallbackConfig).
	Callback CallbackConfig `yaml:"callback"`

	// keyring is read by ResolveSecrets from Secrets (config_component.go).
	keyring *seal.Keyring
}

// HTTPConfig is the http: section (metrics and health endpoints).
type HTTPConfig struct {
	// Listen is the address of /metrics, /healthz and /readyz; empty: off.
	Listen string `yaml:"listen"`
}

// UpstreamConfig is the upstream: section.
type UpstreamConfig struct {
	// Proxy is the HTTP CONNECT proxy (http://[user:password@]host:port)
	// of every upstream call, for fleets whose egress IP must be on the
	// upstream's allow list; an app's own proxy key overrides it. Empty:
	// the environment's HTTPS_PROXY/NO_PROXY.
	Proxy string `yaml:"proxy"`
}

// LogConfig is the log: section.
type LogConfig struct {
	Format string `yaml:"format"` // text (default) or json
	Level  string `yaml:"level"`  // debug, info (default), warn, error
}

// PolicyConfig is the refresh: section; it tunes RefreshAt.
type PolicyConfig struct {
	// At is the fraction of the lifetime after which a token is refreshed
	// (default 2/3).
	At float64 `yaml:"at"`
	// Jitter is the width of the random window around At, as a fraction
	// of the lifetime (default 0.1).
	Jitter *float64 `yaml:"jitter"`
	// MinLeft is the least lifetime left at the refresh moment
	// (default 60s; see Policy.MinLeft).
	MinLeft *time.Duration `yaml:"min_left"`
	// Retry is the first pause after a transient upstream failure
	// (default 1s; doubles up to 60×).
	Retry time.Duration `yaml:"retry"`
	// PermanentRetry is the first pause after a configuration or policy
	// error such as 40164 (default 1m; doubles up to 10×).
	PermanentRetry time.Duration `yaml:"permanent_retry"`
	// Concurrency is how many apps are fetched at once (default 16). With
	// many apps and a slow upstream, startup takes apps × latency ÷
	// concurrency.
	Concurrency int `yaml:"concurrency"`
}

// AppConfig is one entry of apps:.
type AppConfig struct {
	Name string `yaml:"name"`
	// Kind is wechat (default), wechat-stable, wecom, feishu or oauth2.
	Kind       string `yaml:"kind"`
	AppID      string `yaml:"appid"` // wechat, wechat-stable, feishu
	SecretEnv  string `yaml:"secret_env"`
	SecretFile string `yaml:"secret_file"`
	// APIBase is the upstream origin (wechat kinds: api.weixin.qq.com,
	// wecom: qyapi.weixin.qq.com, feishu: open.feishu.cn).
	APIBase string `yaml:"api_base"`

	// CorpID and AgentID identify a WeCom app: its token is per app
	// (corpid + the app's secret), never per corp.
	CorpID  string `yaml:"corpid"`
	AgentID int    `yaml:"agentid"`

	// OAuth2 client_credentials (RFC 6749 §4.4): the token endpoint, the
	// client, the scopes and audience asked for, and how the client
	// authenticates: header (HTTP Basic, default) or params (form body).
	TokenURL  string   `yaml:"token_url"`
	ClientID  string   `yaml:"client_id"`
	Scopes    []string `yaml:"scopes"`
	Audience  string   `yaml:"audience"`
	AuthStyle string   `yaml:"auth_style"`

	// Proxy is the HTTP CONNECT proxy of this app's upstream calls
	// (overrides upstream.proxy; "direct": none).
	Proxy string `yaml:"proxy"`
	// DailyQuota is the upstream's daily limit of token calls for this
	// app (default 2000, WeChat's).
	DailyQuota int `yaml:"daily_quota"`
	// Tickets are the tickets kept for the app under <name>.<ticket> (v2):
	// jsapi and wx_card for kinds wechat and wechat-stable, each fetched
	// with the app's current token and refreshed before it expires.
	Tickets []string `yaml:"tickets"`

	// Callback (kind wechat-component) names where the callback's token
	// and EncodingAESKey are (config_component.go).
	Callback ComponentCallback `yaml:"callback"`
	// AuthorizerTickets (kind wechat-component) are the tickets kept for
	// each authorizer under <component>.<authorizer_appid>.<ticket>.
	AuthorizerTickets []string `yaml:"authorizer_tickets"`
	// MaxCallsPerSecond (kind wechat-component) limits the component's
	// upstream calls — api_component_token, api_query_auth,
	// api_authorizer_token and api_get_authorizer_list, retries included
	// — to this many a second (default DefaultMaxCallsPerSecond, 100).
	MaxCallsPerSecond float64 `yaml:"max_calls_per_second"`
	// cb holds the callback's token and AES key once read.
	cb callbackSecrets

	// secret is read by Config.ResolveSecrets (or set by WithSecret) and
	// never printed: AppConfig's String and GoString leave it out.
	secret string
}

// Secret returns the resolved AppSecret.
func (a AppConfig) Secret() string { return a.secret }

// WithSecret returns a copy of a that carries secret (for programs and
// tests that do not read secrets from the environment or a file).
func (a AppConfig) WithSecret(secret string) AppConfig { a.secret = secret; return a }

// String describes the app without its secret.
func (a AppConfig) String() string {
	return fmt.Sprintf("app %s (%s %s)", a.Name, a.Kind, a.UpstreamID())
}

// GoString describes the app without its secret.
func (a AppConfig) GoString() string { return a.String() }

// credentials returns the upstream credentials of a.
func (a AppConfig) credentials() wechat.Credentials {
	return wechat.Credentials{AppID: a.UpstreamID(), Secret: a.secret}
}

// ConfigError lists every problem found in a configuration. Like every
// error of tokenkeeper that carries several problems, it unwraps to one
// error per problem (Unwrap() []error, as errors.Join does), so
// natsconf.Problems lists them; it adds the file they were found in.
type ConfigError struct {
	File     string // the file, when loaded by LoadConfig
	Problems []string
}

func (e *ConfigError) Error() string {
	where := "config"
	if e.File != "" {
		where = "config " + e.File
	}
	if len(e.Problems) == 1 {
		return where + ": " + e.Problems[0]
	}
	return fmt.Sprintf("%s: %d problems:\n  %s", where, len(e.Problems), strings.Join(e.Problems, "\n  "))
}

// Unwrap returns one error per problem.
func (e *ConfigError) Unwrap() []error {
	errs := make([]error, len(e.Problems))
	for i, p := range e.Problems {
		errs[i] = errors.New(p)
	}
	return errs
}

// LoadConfig reads, defaults and validates the YAML file at path, and
// reads what the config names outside itself: every app's secret
// (secret_env, secret_file: Config.ResolveSecrets) and the files and
// variables of the nats: section (natsconf.Options.ValidateFiles). Every
// problem is reported at once in a *ConfigError. cmd/refresher calls it
// at start and on every SIGHUP, so a rotated secret is read again.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg, err := ParseConfig(data)
	var ce *ConfigError
	if errors.As(err, &ce) {
		ce.File = path
	}
	return cfg, err
}

// ParseConfig is LoadConfig for YAML already in memory (it too reads the
// secrets and checks the files the config names). Unknown keys are
// errors, so a typo does not silently fall back to a default.
func ParseConfig(data []byte) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, &ConfigError{Problems: yamlProblems(err)}
	}
	c.SetDefaults()
	// The three report disjoint problems: all of them at once.
	var p []string
	for _, err := range []error{c.Validate(), c.ResolveSecrets()} {
		var ce *ConfigError
		switch {
		case errors.As(err, &ce):
			p = append(p, ce.Problems...)
		case err != nil:
			p = append(p, err.Error())
		}
	}
	for _, err := range natsconf.Problems(c.NATS.ValidateFiles()) {
		p = append(p, err.Error())
	}
	if len(p) > 0 {
		return nil, &ConfigError{Problems: p}
	}
	return &c, nil
}

var unknownFieldRE = regexp.MustCompile(`field (\S+) not found in type \S+`)

// yamlProblems turns a YAML decoding error into the config's words, one
// problem a line: `line 3: unknown key "schedul"` instead of Go type
// names.
func yamlProblems(err error) []string {
	var te *yaml.TypeError
	msgs := []string{strings.TrimPrefix(err.Error(), "yaml: ")}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	for i, m := range msgs {
		msgs[i] = unknownFieldRE.ReplaceAllString(strings.TrimSpace(m), `unknown key "$1"`)
	}
	return msgs
}

// SetDefaults fills in every unset key with its default.
func (c *Config) SetDefaults() {
	if c.Bucket == "" {
		c.Bucket = contract.DefaultBucket
	}
	// The embedded server's roles grant the buckets of this config.
	c.NATS.Embedded.Bucket = c.Bucket
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Schedule == "" {
		c.Schedule = DefaultSchedule
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.PassiveMinInterval == nil {
		d := DefaultPassiveMinInterval
		c.PassiveMinInterval = &d
	}
	if c.Policy.At == 0 {
		c.Policy.At = DefaultPolicy.At
	}
	if c.Policy.Jitter == nil {
		j := DefaultPolicy.Jitter
		c.Policy.Jitter = &j
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	for i := range c.Apps {
		a := &c.Apps[i]
		if a.Kind == "" {
			a.Kind = wechat.KindClassic
		}
		if a.APIBase == "" && slices.Contains(a.spec().keys, "api_base") {
			a.APIBase = wechat.DefaultBase(a.Kind)
		}
		if a.Kind == KindOAuth2 && a.AuthStyle == "" {
			a.AuthStyle = AuthStyleHeader
		}
	}
}

// RefreshPolicy returns the policy of the refresh: section.
func (c *Config) RefreshPolicy() Policy {
	p := DefaultPolicy
	if c.Policy.At != 0 {
		p.At = c.Policy.At
	}
	if c.Policy.Jitter != nil {
		p.Jitter = *c.Policy.Jitter
	}
	if c.Policy.MinLeft != nil {
		p.MinLeft = *c.Policy.MinLeft
	}
	if c.Policy.Retry != 0 {
		p.RetryMin = c.Policy.Retry
	}
	if c.Policy.PermanentRetry != 0 {
		p.PermanentRetryMin = c.Policy.PermanentRetry
	}
	return p
}

// MinPassiveInterval returns passive_min_interval with its default applied.
func (c *Config) MinPassiveInterval() time.Duration {
	if c.PassiveMinInterval == nil {
		return DefaultPassiveMinInterval
	}
	return *c.PassiveMinInterval
}

// CronParser parses the schedule key: five fields, an optional leading
// seconds field, or a descriptor such as "@every 30s".
var CronParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Validate checks c and reports every problem at once, each naming its
// key (and app), in a *ConfigError. Call SetDefaults first. Validate has
// no side effects: it reads no file and no environment variable (so it
// does not check that secret_env is set or secret_file readable: that is
// ResolveSecrets), and changes nothing in c.
func (c *Config) Validate() error {
	if c.Mode != "" && c.Mode != ModeLead || c.Follow != (FollowConfig{}) {
		return c.validateFollow() // follow.go
	}
	var p []string
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }

	for _, err := range natsconf.Problems(c.NATS.ValidateKeys()) {
		add("%v", err)
	}
	c.bucketProblems(add)
	if _, err := CronParser.Parse(c.Schedule); err != nil {
		add("schedule: %q does not parse: %v", c.Schedule, err)
	}
	if c.LeaseTTL < time.Second {
		add("lease_ttl: %s is too short (at least 1s; TTLs are whole seconds)", c.LeaseTTL)
	} else if c.LeaseTTL%time.Second != 0 {
		add("lease_ttl: %s is not a whole number of seconds", c.LeaseTTL)
	}
	if d := c.MinPassiveInterval(); d < 0 {
		add("passive_min_interval: %s is negative", d)
	}
	if c.Policy.Concurrency < 0 || c.Policy.Concurrency > 256 {
		add("refresh.concurrency: %d is out of range (1 to 256)", c.Policy.Concurrency)
	}
	if err := c.RefreshPolicy().Validate(); err != nil {
		add("refresh: %v", err)
	}
	c.logProblems(add)
	if len(c.Apps) == 0 {
		add("apps: no apps configured")
	}
	if c.Audit.MaxAge < 0 {
		add("audit.max_age: %s is negative", c.Audit.MaxAge)
	}
	if c.Audit.MaxBytes < 0 {
		add("audit.max_bytes: %d is negative", c.Audit.MaxBytes)
	}
	p = append(p, c.callbackProblems()...)
	if c.Upstream.Proxy != "" {
		if err := checkProxyURL(c.Upstream.Proxy); err != nil {
			add("upstream.proxy: %v", err)
		}
	}
	for _, problem := range c.Gateway.Problems() {
		add("%s", problem)
	}
	seen := map[string]int{}
	for i := range c.Apps {
		a := &c.Apps[i]
		where := a.where(i)
		switch {
		case a.Name == "":
			add("%s.name: missing", where)
		case !contract.ValidAppName(a.Name):
			add("%s.name: %q is not a valid app name (1-64 of A-Z a-z 0-9 _ -)", where, a.Name)
		default:
			if j, dup := seen[a.Name]; dup {
				add("%s.name: duplicate of apps[%d]", where, j)
			} else {
				seen[a.Name] = i
			}
		}
		if _, ok := kindSpecs[a.Kind]; !ok {
			add("%s.kind: unknown kind %q (want one of %s)", where, a.Kind, strings.Join(kindNames, ", "))
		} else {
			for _, problem := range a.kindProblems() {
				add("%s.%s", where, problem)
			}
		}
		if a.DailyQuota < 0 {
			add("%s.daily_quota: %d is negative", where, a.DailyQuota)
		}
		for _, problem := range a.ticketProblems() {
			add("%s.%s", where, problem)
		}
		for _, problem := range a.componentProblems() {
			add("%s.%s", where, problem)
		}
		if a.Proxy != "" && a.Proxy != ProxyDirect {
			if err := checkProxyURL(a.Proxy); err != nil {
				add("%s.proxy: %v", where, err)
			}
		}
		switch {
		case a.SecretEnv != "" && a.SecretFile != "":
			add("%s.secret_env/secret_file: set only one", where)
		case a.SecretEnv == "" && a.SecretFile == "" && a.secret == "":
			add("%s.secret_env: missing (set secret_env or secret_file)", where)
		}
	}
	if len(p) > 0 {
		return &ConfigError{Problems: p}
	}
	return nil
}

// ResolveSecrets reads every app's secret from the environment variable
// its secret_env names or the file its secret_file names (surrounding
// white space removed), and reports every secret it cannot read, naming
// the app and the key, in a *ConfigError. An app with neither key keeps
// the secret given with WithSecret; an app with both is left to Validate.
// LoadConfig and ParseConfig call it; a program that builds a Config in
// code calls it before New, unless every app carries its secret
// (WithSecret). It is the only method of Config that reads the
// environment or files.
func (c *Config) ResolveSecrets() error {
	if c.Mode == ModeFollow {
		return nil // a follower holds no secrets (follow.go)
	}
	var p []string
	for i := range c.Apps {
		a := &c.Apps[i]
		if err := a.resolveSecret(); err != nil {
			p = append(p, fmt.Sprintf("%s.%v", a.where(i), err))
		}
		for _, problem := range a.resolveCallback() {
			p = append(p, fmt.Sprintf("%s.%s", a.where(i), problem))
		}
	}
	p = append(p, c.resolveKeyring()...)
	if len(p) > 0 {
		return &ConfigError{Problems: p}
	}
	return nil
}

// where names apps[i] in a problem: "apps[3] (mp-main)".
func (a *AppConfig) where(i int) string {
	if a.Name != "" {
		return fmt.Sprintf("apps[%d] (%s)", i, a.Name)
	}
	return fmt.Sprintf("apps[%d]", i)
}

// resolveSecret reads the secret from secret_env or secret_file (if
// exactly one is set).
func (a *AppConfig) resolveSecret() error {
	switch {
	case a.SecretEnv != "" && a.SecretFile != "":
		// Validate reports it.
	case a.SecretEnv != "":
		v, ok := os.LookupEnv(a.SecretEnv)
		if !ok || strings.TrimSpace(v) == "" {
			return fmt.Errorf("secret_env: environment variable %s is not set or empty", a.SecretEnv)
		}
		a.secret = strings.TrimSpace(v)
	case a.SecretFile != "":
		b, err := os.ReadFile(a.SecretFile)
		if err != nil {
			// The error names the file, never its contents.
			return fmt.Errorf("secret_file: %v", err)
		}
		s := strings.TrimSpace(string(b))
		if s == "" {
			return fmt.Errorf("secret_file: %s is empty", a.SecretFile)
		}
		a.secret = s
	}
	return nil
}

// checkResolved reports, without reading anything, every app whose
// secret has not been read (New and Reload need them).
func (c *Config) checkResolved() error {
	var p []string
	for i := range c.Apps {
		a := &c.Apps[i]
		if a.secret != "" {
			continue
		}
		key := "secret_env"
		if a.SecretFile != "" {
			key = "secret_file"
		}
		p = append(p, fmt.Sprintf("%s.%s: the secret has not been read; load the config with LoadConfig or call Config.ResolveSecrets", a.where(i), key))
	}
	p = append(p, c.componentUnresolved()...)
	if len(p) > 0 {
		return &ConfigError{Problems: p}
	}
	return nil
}

// ticketProblems reports what is wrong with a's tickets, each problem
// starting with the key (tickets[i]).
func (a *AppConfig) ticketProblems() []string {
	var p []string
	allowed := a.spec().tickets
	seen := map[string]int{}
	for i, t := range a.Tickets {
		switch j, dup := seen[t]; {
		case !slices.Contains(allowed, t):
			if len(allowed) == 0 {
				p = append(p, fmt.Sprintf("tickets[%d]: kind %q keeps no tickets", i, a.Kind))
			} else {
				p = append(p, fmt.Sprintf("tickets[%d]: %q is not a ticket of kind %s (want %s)", i, t, a.Kind, strings.Join(allowed, " or ")))
			}
		case dup:
			p = append(p, fmt.Sprintf("tickets[%d]: %s is a duplicate of tickets[%d]", i, t, j))
		case !ticketsFetched:
			// Accepting it would be a lie: nothing would fetch it.
			seen[t] = i
			p = append(p, fmt.Sprintf("tickets[%d]: %s: this version does not fetch tickets yet; remove the key", i, t))
		default:
			seen[t] = i
		}
	}
	return p
}

// ticketsFetched says that the refresher fetches tickets (issue 11,
// refresher/ticket.go); while it was false a config that asked for
// tickets was refused, not silently ignored.
const ticketsFetched = true

// logProblems reports what is wrong with the log: section (Validate and
// the follower's validation share it).
func (c *Config) logProblems(add func(format string, args ...any)) {
	switch c.Log.Format {
	case "text", "json":
	default:
		add("log.format: %q is not text or json", c.Log.Format)
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		add("log.level: %v", err)
	}
}

// bucketProblems reports what is wrong with bucket: and replicas:.
func (c *Config) bucketProblems(add func(format string, args ...any)) {
	if !contract.ValidAppName(c.Bucket) {
		add("bucket: %q is not a valid bucket name (1-64 of A-Z a-z 0-9 _ -)", c.Bucket)
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		add("replicas: %d is out of range (1 to 5)", c.Replicas)
	}
}
