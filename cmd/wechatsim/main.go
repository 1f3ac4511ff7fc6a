// Command wechatsim serves an emulator of the WeChat access_token API
// (/cgi-bin/token, /cgi-bin/stable_token, tickets and the business call
// /cgi-bin/getcallbackip) with WeChat's real semantics: a new classic token
// invalidates the previous one after a grace period, tokens expire, the
// token endpoints share a daily quota that resets at midnight Asia/Shanghai,
// and stable_token force refreshes are limited. The same server emulates
// WeCom (/cgi-bin/gettoken, its tickets and /cgi-bin/agent/get), Feishu
// (/open-apis/auth/v3/tenant_access_token/internal, /open-apis/bot/v3/info)
// and an OAuth2 client_credentials server (/oauth2/token,
// /oauth2/resource), each with its own semantics. It is meant for demos,
// docker-compose and load tests; see package testutil/wechatsim.
//
// Usage:
//
//	wechatsim --listen 127.0.0.1:9100 --app wx0123456789abcdef:SECRET \
//	    [--app id2:secret2] [--wecom corpid:agentid:secret] \
//	    [--feishu appid:secret] [--oauth2 client_id:secret] \
//	    [--oauth2-scopes 'client_id=scope1 scope2'] [--expires-in 7200s] \
//	    [--grace 300s] [--quota 2000] [--latency 0]
//
// At least one app of any kind is needed. Each kind can also come from the
// environment, comma-separated, in the flag's syntax (preferred:
// command-line arguments are visible to every local user):
// WECHATSIM_APPS="id:secret,id2:secret2", WECHATSIM_WECOM_APPS,
// WECHATSIM_FEISHU_APPS, WECHATSIM_OAUTH2_CLIENTS. In every syntax the
// secret is everything after the separator before it, so it may contain
// ':'. OAuth2 scopes are not secret and come only from --oauth2-scopes.
//
// Every call is logged to stderr, one line each, with its path, appid,
// HTTP status and errcode; secrets are never logged and tokens only as a
// short fingerprint. GET /healthz answers "ok". SIGINT or SIGTERM shuts the
// server down gracefully.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr, nil); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "wechatsim:", err)
		os.Exit(2)
	}
}

type app struct{ id, secret string }

// parseApp parses "appid:secret"; the error never contains the secret.
func parseApp(s string) (app, error) { return parseCredential("app", "appid", s) }

// parseCredential parses "<idName>:secret" of a what; the error never
// contains the secret.
func parseCredential(what, idName, s string) (app, error) {
	id, secret, ok := strings.Cut(strings.TrimSpace(s), ":")
	switch {
	case !ok:
		return app{}, fmt.Errorf("%s must be %s:secret (got %d characters without ':')", what, idName, len(s))
	case id == "" || secret == "":
		return app{}, fmt.Errorf("%s must be %s:secret, both non-empty (%s %q)", what, idName, idName, id)
	}
	return app{id, secret}, nil
}

type wecomApp struct {
	corpid  string
	agentid int
	secret  string
}

// parseWeComApp parses "corpid:agentid:secret"; the error never contains
// the secret (nor the agentid part, which a forgotten field makes the
// secret).
func parseWeComApp(s string) (wecomApp, error) {
	corpid, rest, ok1 := strings.Cut(strings.TrimSpace(s), ":")
	agent, secret, ok2 := strings.Cut(rest, ":")
	if !ok1 || !ok2 || corpid == "" || secret == "" {
		return wecomApp{}, errors.New("wecom app must be corpid:agentid:secret, all non-empty")
	}
	id, err := strconv.Atoi(agent)
	if err != nil {
		return wecomApp{}, fmt.Errorf("wecom app of corp %q: agentid must be an integer", corpid)
	}
	return wecomApp{corpid, id, secret}, nil
}

type oauthClient struct {
	id, secret string
	scopes     []string
}

type config struct {
	listen string
	apps   []app
	wecom  []wecomApp
	feishu []app
	oauth2 []oauthClient
	opts   wechatsim.Options
	lat    time.Duration
}

// listFlag registers a repeatable flag and its environment variable, both
// parsed by parse; errors are kept (flag would print the raw value) and
// reported after Parse.
type listFlag[T any] struct {
	name, env, usage string
	parse            func(string) (T, error)
	into             *[]T
}

func (l listFlag[T]) register(fs *flag.FlagSet, errp *error) {
	fs.Func(l.name, l.usage+" (repeatable; also env "+l.env+", comma-separated)", func(s string) error {
		v, err := l.parse(s)
		if err != nil {
			*errp = cmp.Or(*errp, fmt.Errorf("--%s: %w", l.name, err))
			return nil
		}
		*l.into = append(*l.into, v)
		return nil
	})
}

func (l listFlag[T]) fromEnv(getenv func(string) string) error {
	for _, s := range strings.Split(getenv(l.env), ",") {
		if strings.TrimSpace(s) == "" {
			continue
		}
		v, err := l.parse(s)
		if err != nil {
			return fmt.Errorf("%s: %w", l.env, err)
		}
		*l.into = append(*l.into, v)
	}
	return nil
}

func parseConfig(args []string, getenv func(string) string, out io.Writer) (config, error) {
	var (
		c      config
		appErr error // reported after Parse: flag would print the raw value
	)
	fs := flag.NewFlagSet("wechatsim", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:9100", "address to listen on")
	parseFeishu := func(s string) (app, error) { return parseCredential("feishu app", "appid", s) }
	parseOAuth := func(s string) (oauthClient, error) {
		a, err := parseCredential("oauth2 client", "client_id", s)
		return oauthClient{id: a.id, secret: a.secret}, err
	}
	wechatApps := listFlag[app]{"app", "WECHATSIM_APPS", "appid:secret of a WeChat app", parseApp, &c.apps}
	wecomApps := listFlag[wecomApp]{"wecom", "WECHATSIM_WECOM_APPS", "corpid:agentid:secret of a WeCom app", parseWeComApp, &c.wecom}
	feishuApps := listFlag[app]{"feishu", "WECHATSIM_FEISHU_APPS", "appid:secret of a Feishu app", parseFeishu, &c.feishu}
	oauthClients := listFlag[oauthClient]{"oauth2", "WECHATSIM_OAUTH2_CLIENTS", "client_id:secret of an OAuth2 client", parseOAuth, &c.oauth2}
	wechatApps.register(fs, &appErr)
	wecomApps.register(fs, &appErr)
	feishuApps.register(fs, &appErr)
	oauthClients.register(fs, &appErr)
	scopes := map[string][]string{}
	fs.Func("oauth2-scopes", "'client_id=scope1 scope2': the scopes an OAuth2 client may request (repeatable)", func(s string) error {
		id, list, ok := strings.Cut(s, "=")
		if !ok || id == "" {
			return errors.New("want client_id=scope1 scope2")
		}
		scopes[id] = append(scopes[id], strings.Fields(list)...)
		return nil
	})
	fs.DurationVar(&c.opts.ExpiresIn, "expires-in", 7200*time.Second, "token lifetime (expires_in)")
	fs.DurationVar(&c.opts.Grace, "grace", 300*time.Second, "how long the previous token stays valid after a new one (negative: none)")
	fs.IntVar(&c.opts.DailyQuota, "quota", 2000, "token calls per app and day, classic and stable together (negative: unlimited)")
	fs.IntVar(&c.opts.StableForceDaily, "stable-force-daily", 20, "stable_token force refreshes per app and day (negative: unlimited)")
	fs.DurationVar(&c.opts.StableForceInterval, "stable-force-interval", 30*time.Second, "minimum gap between force refreshes (negative: none)")
	fs.IntVar(&c.opts.TokenLength, "token-length", 136, "length of issued tokens")
	fs.DurationVar(&c.lat, "latency", 0, "latency added to every token call")
	fs.IntVar(&c.opts.WeComTicketCorpHourly, "wecom-ticket-corp-hourly", 400, "WeCom jsapi ticket fetches per corp and clock hour (negative: unlimited)")
	fs.IntVar(&c.opts.WeComTicketAppHourly, "wecom-ticket-app-hourly", 100, "WeCom jsapi ticket fetches per app and clock hour (negative: unlimited)")
	fs.DurationVar(&c.opts.FeishuRenewWindow, "feishu-renew-window", 30*time.Minute, "Feishu returns a new token when less than this remains (negative: only after expiry)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if appErr != nil {
		return c, appErr
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	for _, l := range []func(func(string) string) error{wechatApps.fromEnv, wecomApps.fromEnv, feishuApps.fromEnv, oauthClients.fromEnv} {
		if err := l(getenv); err != nil {
			return c, err
		}
	}
	if len(c.apps)+len(c.wecom)+len(c.feishu)+len(c.oauth2) == 0 {
		return c, errors.New("no apps: give --app appid:secret (or --wecom, --feishu, --oauth2) or their environment variables")
	}
	for id, sc := range scopes {
		i := slices.IndexFunc(c.oauth2, func(o oauthClient) bool { return o.id == id })
		if i < 0 {
			return c, fmt.Errorf("--oauth2-scopes: no OAuth2 client %q", id)
		}
		c.oauth2[i].scopes = sc
	}
	if c.opts.ExpiresIn <= 0 {
		return c, errors.New("--expires-in must be positive")
	}
	if c.lat < 0 {
		return c, errors.New("--latency must not be negative")
	}
	// Zero means "default" to wechatsim.Options; the flags mean "none".
	if c.opts.Grace == 0 {
		c.opts.Grace = -1
	}
	if c.opts.DailyQuota == 0 {
		c.opts.DailyQuota = -1
	}
	if c.opts.StableForceDaily == 0 {
		c.opts.StableForceDaily = -1
	}
	if c.opts.StableForceInterval == 0 {
		c.opts.StableForceInterval = -1
	}
	if c.opts.WeComTicketCorpHourly == 0 {
		c.opts.WeComTicketCorpHourly = -1
	}
	if c.opts.WeComTicketAppHourly == 0 {
		c.opts.WeComTicketAppHourly = -1
	}
	if c.opts.FeishuRenewWindow == 0 {
		c.opts.FeishuRenewWindow = -1
	}
	return c, nil
}

// run serves until ctx ends. If ready is not nil, it receives the listening
// address once the server accepts connections.
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer, ready chan<- string) error {
	c, err := parseConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	c.opts.OnCall = func(call wechatsim.Call) {
		attrs := []any{"path", call.Path, "appid", call.AppID, "status", call.Status, "errcode", call.Errcode,
			"duration", call.Duration.Round(time.Microsecond)}
		if call.Token != "" {
			attrs = append(attrs, "token", call.Token)
		}
		if call.Fault != "" {
			attrs = append(attrs, "fault", call.Fault)
		}
		if call.Canceled {
			attrs = append(attrs, "canceled", true)
		}
		log.Info("call", attrs...)
	}
	sim := wechatsim.New(c.opts)
	ids := make([]string, 0, len(c.apps))
	for _, a := range c.apps {
		sim.AddApp(a.id, a.secret)
		ids = append(ids, a.id)
	}
	for _, a := range c.wecom {
		sim.AddWeComApp(a.corpid, a.agentid, a.secret)
		ids = append(ids, "wecom:"+wechatsim.WeComKey(a.corpid, a.agentid))
	}
	for _, a := range c.feishu {
		sim.AddFeishuApp(a.id, a.secret)
		ids = append(ids, "feishu:"+a.id)
	}
	for _, o := range c.oauth2 {
		sim.AddOAuth2Client(o.id, o.secret, o.scopes...)
		ids = append(ids, "oauth2:"+o.id)
	}
	if c.lat > 0 {
		sim.SetFault(wechatsim.Fault{Latency: c.lat})
	}

	mux := http.NewServeMux()
	mux.Handle("/", sim.Handler()) // every upstream's paths; unknown ones 404
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })

	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return err
	}
	// Request contexts end at shutdown, so calls waiting out --latency return.
	baseCtx, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
	}
	log.Info("listening", "addr", ln.Addr().String(), "apps", strings.Join(ids, ","),
		"expires_in", c.opts.ExpiresIn, "grace", c.opts.Grace, "quota", c.opts.DailyQuota, "latency", c.lat)
	if ready != nil {
		ready <- ln.Addr().String()
	}

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	cancelBase()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
