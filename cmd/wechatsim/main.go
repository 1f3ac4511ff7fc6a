// Command wechatsim serves an emulator of the WeChat access_token API
// (/cgi-bin/token, /cgi-bin/stable_token, tickets and the business call
// /cgi-bin/getcallbackip) with WeChat's real semantics: a new classic token
// invalidates the previous one after a grace period, tokens expire, the
// token endpoints share a daily quota that resets at midnight Asia/Shanghai,
// and stable_token force refreshes are limited. The same server emulates
// WeCom (/cgi-bin/gettoken, its tickets and /cgi-bin/agent/get), Feishu
// (/open-apis/auth/v3/tenant_access_token/internal, /open-apis/bot/v3/info)
// and an OAuth2 client_credentials server (/oauth2/token,
// /oauth2/resource), each with its own semantics, and WeChat Open Platform
// third-party platforms ("components": /cgi-bin/component/api_component_token,
// api_query_auth, api_authorizer_token, api_get_authorizer_list) with a
// push driver for their encrypted callbacks. It is meant for demos,
// docker-compose and load tests; see package testutil/wechatsim.
//
// Usage:
//
//	wechatsim --listen 127.0.0.1:9100 --app wx0123456789abcdef:SECRET \
//	    [--app id2:secret2] [--wecom corpid:agentid:secret] \
//	    [--feishu appid:secret] [--oauth2 client_id:secret] \
//	    [--oauth2-scopes 'client_id=scope1 scope2'] [--expires-in 7200s] \
//	    [--grace 300s] [--quota 2000] [--latency 0] \
//	    [--component appid:secret:token:aeskey] \
//	    [--component-callback 'https://host/wechat/component/{appid}'] \
//	    [--push-every 10m] [--component-authorizers 3] [--rotate-refresh-tokens]
//
// A component is registered with its AppSecret and the message token and
// EncodingAESKey of its callback (授权事件接收 URL). With
// --component-callback, the emulator pushes each component an encrypted
// component_verify_ticket at start and every --push-every (WeChat: 10
// minutes), to the URL with {appid} replaced by the component's appid.
// --component-authorizers N authorizes N accounts per component at start,
// without pushes (wxauthorizer0 …; a refresher finds them through
// api_get_authorizer_list). Authorization events are pushed on demand:
//
//	POST /sim/component/authorize?component=…&authorizer=…
//	POST /sim/component/updateauthorize?component=…&authorizer=…
//	POST /sim/component/unauthorize?component=…&authorizer=…
//	POST /sim/component/push-ticket?component=…
//
// each answering {"ok":true} or {"ok":false,"error":"…"} (never a code or
// ticket); they need --component-callback.
//
// At least one app of any kind is needed. Each kind can also come from the
// environment, comma-separated, in the flag's syntax (preferred:
// command-line arguments are visible to every local user):
// WECHATSIM_APPS="id:secret,id2:secret2", WECHATSIM_WECOM_APPS,
// WECHATSIM_FEISHU_APPS, WECHATSIM_OAUTH2_CLIENTS, WECHATSIM_COMPONENTS.
// In every syntax the secret is everything after the separator before it,
// so it may contain ':' (a component's token and EncodingAESKey, which
// cannot, are its last two fields). OAuth2 scopes are not secret and come only from --oauth2-scopes.
//
// Every call is logged to stderr, one line each, with its path, appid,
// HTTP status and errcode; secrets are never logged and tokens only as a
// short fingerprint. GET /healthz answers "ok". SIGINT or SIGTERM shuts the
// server down gracefully.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt"
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

type componentConf struct{ id, secret, token, aesKey string }

// parseComponent parses "appid:secret:token:aeskey": the token and the
// EncodingAESKey are the last two fields, the secret what lies between.
// The error names no secret, token or key.
func parseComponent(s string) (componentConf, error) {
	id, rest, ok1 := strings.Cut(strings.TrimSpace(s), ":")
	i := strings.LastIndex(rest, ":")
	j := -1
	if i > 0 {
		j = strings.LastIndex(rest[:i], ":")
	}
	if !ok1 || j < 0 {
		return componentConf{}, errors.New("component must be appid:secret:token:aeskey")
	}
	c := componentConf{id: id, secret: rest[:j], token: rest[j+1 : i], aesKey: rest[i+1:]}
	if c.id == "" || c.secret == "" {
		return componentConf{}, fmt.Errorf("component must be appid:secret:token:aeskey, all non-empty (appid %q)", c.id)
	}
	if _, err := wxcrypt.New(c.token, c.aesKey, c.id); err != nil {
		return componentConf{}, fmt.Errorf("component %q: %w", c.id, err)
	}
	return c, nil
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

	components  []componentConf
	callback    string        // push target, {appid} replaced
	pushEvery   time.Duration // ticket pushes
	authorizers int           // per component, authorized at start
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
	components := listFlag[componentConf]{"component", "WECHATSIM_COMPONENTS",
		"appid:secret:token:aeskey of an Open Platform component (token and EncodingAESKey of its callback)", parseComponent, &c.components}
	components.register(fs, &appErr)
	fs.StringVar(&c.callback, "component-callback", "", "URL the components' pushes go to, {appid} replaced by the component's appid (none: no pushes)")
	fs.DurationVar(&c.pushEvery, "push-every", 10*time.Minute, "interval of component_verify_ticket pushes")
	fs.IntVar(&c.authorizers, "component-authorizers", 0, "accounts authorized per component at start, without pushes (wxauthorizer0 …)")
	fs.BoolVar(&c.opts.RotateRefreshTokens, "rotate-refresh-tokens", false, "api_authorizer_token returns a new refresh token every call (the old one valid for --grace)")
	fs.DurationVar(&c.opts.VerifyTicketTTL, "verify-ticket-ttl", 12*time.Hour, "how long a pushed component_verify_ticket is accepted")
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
	for _, l := range []func(func(string) string) error{wechatApps.fromEnv, wecomApps.fromEnv, feishuApps.fromEnv, oauthClients.fromEnv, components.fromEnv} {
		if err := l(getenv); err != nil {
			return c, err
		}
	}
	if len(c.apps)+len(c.wecom)+len(c.feishu)+len(c.oauth2)+len(c.components) == 0 {
		return c, errors.New("no apps: give --app appid:secret (or --wecom, --feishu, --oauth2, --component) or their environment variables")
	}
	if c.callback != "" {
		u, err := url.Parse(strings.ReplaceAll(c.callback, wechatsim.PlaceholderAppID, "x"))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return c, errors.New("--component-callback must be an absolute http(s) URL")
		}
	}
	if c.pushEvery <= 0 {
		return c, errors.New("--push-every must be positive")
	}
	if c.authorizers < 0 || c.authorizers > 1_000_000 {
		return c, errors.New("--component-authorizers must be 0 to 1000000")
	}
	if c.opts.VerifyTicketTTL <= 0 {
		return c, errors.New("--verify-ticket-ttl must be positive")
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
		if call.Push != "" {
			attrs = append(attrs, "push", call.Push)
		}
		if call.Err != "" {
			attrs = append(attrs, "error", call.Err)
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
	for _, cc := range c.components {
		sim.AddComponent(cc.id, cc.secret, cc.token, cc.aesKey)
		ids = append(ids, "component:"+cc.id)
		if c.authorizers > 0 {
			sim.BulkAuthorize(cc.id, c.authorizers, "wxauthorizer")
		}
	}
	if c.lat > 0 {
		sim.SetFault(wechatsim.Fault{Latency: c.lat})
	}

	mux := http.NewServeMux()
	mux.Handle("/", sim.Handler()) // every upstream's paths; unknown ones 404
	handleComponentEvents(mux, sim, c.callback)
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
	if c.callback != "" && len(c.components) > 0 {
		stopPushing := sim.StartPushing(c.callback, c.pushEvery)
		defer stopPushing()
	}
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

// handleComponentEvents serves the on-demand authorization events and
// ticket pushes: POST /sim/component/<event>?component=…&authorizer=….
// The answer never carries the authorization code or ticket.
func handleComponentEvents(mux *http.ServeMux, sim *wechatsim.Sim, callback string) {
	events := map[string]func(ctx context.Context, component, authorizer, url string) error{
		"authorize": func(ctx context.Context, c, a, u string) error {
			_, err := sim.Authorize(ctx, c, a, u)
			return err
		},
		"updateauthorize": func(ctx context.Context, c, a, u string) error {
			_, err := sim.UpdateAuthorize(ctx, c, a, u)
			return err
		},
		"unauthorize": sim.Unauthorize,
		"push-ticket": func(ctx context.Context, c, _, u string) error {
			return sim.PushVerifyTicket(ctx, c, u)
		},
	}
	mux.HandleFunc("POST /sim/component/{event}", func(w http.ResponseWriter, r *http.Request) {
		ev := events[r.PathValue("event")]
		if ev == nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		answer := func(status int, err error) {
			w.WriteHeader(status)
			if err != nil {
				_ = json.NewEncoder(w).Encode(map[string]any{"ok": false, "error": err.Error()})
				return
			}
			_, _ = io.WriteString(w, `{"ok":true}`+"\n")
		}
		if callback == "" {
			answer(http.StatusConflict, errors.New("no --component-callback: nowhere to push"))
			return
		}
		q := r.URL.Query()
		component := q.Get("component")
		err := ev(r.Context(), component, q.Get("authorizer"), strings.ReplaceAll(callback, wechatsim.PlaceholderAppID, component))
		if err != nil {
			answer(http.StatusBadGateway, err)
			return
		}
		answer(http.StatusOK, nil)
	})
}
