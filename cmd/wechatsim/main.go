// Command wechatsim serves an emulator of the WeChat access_token API
// (/cgi-bin/token, /cgi-bin/stable_token and the business call
// /cgi-bin/getcallbackip) with WeChat's real semantics: a new classic token
// invalidates the previous one after a grace period, tokens expire, the
// token endpoints share a daily quota that resets at midnight Asia/Shanghai,
// and stable_token force refreshes are limited. It is meant for demos,
// docker-compose and load tests; see package testutil/wechatsim.
//
// Usage:
//
//	wechatsim --listen 127.0.0.1:9100 --app wx0123456789abcdef:SECRET \
//	    [--app id2:secret2] [--expires-in 7200s] [--grace 300s] \
//	    [--quota 2000] [--latency 0]
//
// Apps can also come from the environment: WECHATSIM_APPS="id:secret,id2:secret2"
// (preferred: command-line arguments are visible to every local user).
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
func parseApp(s string) (app, error) {
	id, secret, ok := strings.Cut(strings.TrimSpace(s), ":")
	switch {
	case !ok:
		return app{}, fmt.Errorf("app must be appid:secret (got %d characters without ':')", len(s))
	case id == "" || secret == "":
		return app{}, fmt.Errorf("app must be appid:secret, both non-empty (appid %q)", id)
	}
	return app{id, secret}, nil
}

type config struct {
	listen string
	apps   []app
	opts   wechatsim.Options
	lat    time.Duration
}

func parseConfig(args []string, getenv func(string) string, out io.Writer) (config, error) {
	var (
		c      config
		appErr error // reported after Parse: flag would print the raw value
	)
	fs := flag.NewFlagSet("wechatsim", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:9100", "address to listen on")
	fs.Func("app", "appid:secret of an app (repeatable; also env WECHATSIM_APPS=\"id:secret,id2:secret2\")", func(s string) error {
		a, err := parseApp(s)
		if err != nil {
			appErr = cmp.Or(appErr, fmt.Errorf("--app: %w", err))
			return nil
		}
		c.apps = append(c.apps, a)
		return nil
	})
	fs.DurationVar(&c.opts.ExpiresIn, "expires-in", 7200*time.Second, "token lifetime (expires_in)")
	fs.DurationVar(&c.opts.Grace, "grace", 300*time.Second, "how long the previous token stays valid after a new one (negative: none)")
	fs.IntVar(&c.opts.DailyQuota, "quota", 2000, "token calls per app and day, classic and stable together (negative: unlimited)")
	fs.IntVar(&c.opts.StableForceDaily, "stable-force-daily", 20, "stable_token force refreshes per app and day (negative: unlimited)")
	fs.DurationVar(&c.opts.StableForceInterval, "stable-force-interval", 30*time.Second, "minimum gap between force refreshes (negative: none)")
	fs.IntVar(&c.opts.TokenLength, "token-length", 136, "length of issued tokens")
	fs.DurationVar(&c.lat, "latency", 0, "latency added to every token call")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if appErr != nil {
		return c, appErr
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if env := getenv("WECHATSIM_APPS"); env != "" {
		for _, s := range strings.Split(env, ",") {
			if strings.TrimSpace(s) == "" {
				continue
			}
			a, err := parseApp(s)
			if err != nil {
				return c, fmt.Errorf("WECHATSIM_APPS: %w", err)
			}
			c.apps = append(c.apps, a)
		}
	}
	if len(c.apps) == 0 {
		return c, errors.New("no apps: give --app appid:secret or WECHATSIM_APPS")
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
	if c.lat > 0 {
		sim.SetFault(wechatsim.Fault{Latency: c.lat})
	}

	mux := http.NewServeMux()
	mux.Handle("/cgi-bin/", sim.Handler())
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
