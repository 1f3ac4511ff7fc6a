// Command refresher is the tokenkeeper daemon: it keeps each configured
// app's access token fresh in a JetStream KV bucket.
//
//	refresher --config refresher.yaml
//
// With no --config it runs a self-contained demo: an embedded NATS server
// on 127.0.0.1:4222, the WeChat emulator in-process as upstream, and two
// demo apps whose tokens live 30 seconds.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/nats-io/nats.go"
	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/seal"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tokenkeeper/tokenkeeper/gateway"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "refresher:", err)
		os.Exit(1)
	}
}

// run runs the daemon until ctx is done.
func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("refresher", flag.ContinueOnError)
	configPath := fs.String("config", "", "YAML config file (none: run the self-contained demo)")
	replicaID := fs.String("replica-id", os.Getenv("TOKENKEEPER_REPLICA_ID"), "name of this replica in the leader lease (default host-pid-random; env TOKENKEEPER_REPLICA_ID)")
	demoListen := fs.String("demo-listen", "127.0.0.1:4222", "demo only: address of the embedded NATS server")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (did you mean --config FILE?)", fs.Args())
	}

	var cfg *refresher.Config
	var cleanup func()
	var demoSim *wechatsim.Sim
	if *configPath == "" {
		c, clean, sim, err := demoConfig(*demoListen)
		if err != nil {
			return err
		}
		cfg, cleanup, demoSim = c, clean, sim
		defer cleanup()
	} else {
		c, err := refresher.LoadConfig(*configPath)
		if err != nil {
			return err
		}
		cfg = c
	}
	log := refresher.NewLogger(cfg.Log, os.Stderr)
	slog.SetDefault(log)

	// The config contract: an empty nats.url runs the embedded server.
	// The decision is made here, explicitly: natsconf.Connect never starts
	// a server.
	var (
		conn *natsconf.Conn
		err  error
	)
	if strings.TrimSpace(cfg.NATS.URL) == "" {
		conn, err = natsconf.ConnectEmbedded(ctx, cfg.NATS)
	} else {
		conn, err = natsconf.Connect(ctx, cfg.NATS)
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	if conn.Server != nil {
		log.Info("embedded NATS server running", "url", conn.Server.ClientURL(), "store_dir", cfg.NATS.Embedded.StoreDir)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if cfg.Mode == refresher.ModeFollow {
		return runFollower(ctx, cfg, conn, reg, log)
	}
	opts := []refresher.Option{refresher.WithLogger(log), refresher.WithObserver(refresher.NewMetrics(reg))}
	if *replicaID != "" {
		opts = append(opts, refresher.WithReplicaID(*replicaID))
	}
	r, err := refresher.New(cfg, conn.NC, opts...)
	if err != nil {
		return err
	}
	httpAddr := ""
	if cfg.HTTP.Listen != "" {
		// Listen before running, so that a taken port fails the start.
		ln, err := net.Listen("tcp", cfg.HTTP.Listen)
		if err != nil && *configPath == "" {
			// The demo must start anywhere: take any free port.
			ln, err = net.Listen("tcp", "127.0.0.1:0")
		}
		if err != nil {
			return fmt.Errorf("http.listen: %w", err)
		}
		srv := &http.Server{Handler: refresher.NewHTTPHandler(r, reg), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("http server stopped", "err", err)
			}
		}()
		httpAddr = ln.Addr().String()
		log.Info("serving /metrics /healthz /readyz /status", "addr", httpAddr)
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = srv.Shutdown(sctx)
			cancel()
		}()
	}
	var gw *gateway.Gateway
	if cfg.Gateway.Enabled() {
		g, stopGateway, err := startGateway(ctx, cfg, conn, log)
		if err != nil {
			return err
		}
		defer stopGateway()
		gw = g
	}
	if cfg.Callback.Listen != "" {
		// The public listener WeChat pushes to; metrics and status stay
		// on http.listen.
		ln, err := net.Listen("tcp", cfg.Callback.Listen)
		if err != nil {
			return fmt.Errorf("callback.listen: %w", err)
		}
		srv := &http.Server{Handler: r.CallbackHandler(), ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second, MaxHeaderBytes: 16 << 10}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("callback server stopped", "err", err)
			}
		}()
		log.Info("serving the component callback "+refresher.CallbackPathPrefix+"<app>", "addr", ln.Addr().String())
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = srv.Shutdown(sctx)
			cancel()
		}()
	}
	if *configPath != "" {
		go reloadOnHUP(ctx, r, gw, *configPath, log)
	} else {
		go func() {
			select {
			case <-r.Ready():
				printDemoHelp(cfg, conn.Server.ClientURL(), httpAddr)
				showDemoComponent(ctx, r, demoSim, log)
				showDemoSignature(ctx, conn.NC, demoSim)
			case <-ctx.Done():
			}
		}()
	}
	return r.Run(ctx)
}

// startGateway listens on gateway.listen (so that a taken port fails the
// start) and serves the HTTP gateway on the refresher's NATS connection
// until stop is called.
func startGateway(ctx context.Context, cfg *refresher.Config, conn *natsconf.Conn, log *slog.Logger) (*gateway.Gateway, func(), error) {
	g, err := gateway.New(cfg.Gateway, conn.NC, gateway.WithLogger(log), gateway.WithBucket(cfg.Bucket))
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", cfg.Gateway.Listen)
	if err != nil {
		return nil, nil, fmt.Errorf("gateway.listen: %w", err)
	}
	gctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := g.Serve(gctx, ln); err != nil {
			log.Error("gateway stopped", "err", err)
		}
	}()
	return g, func() { cancel(); <-done }, nil
}

// runFollower runs a refresher in mode follow (a follower environment):
// the mirror, its reports, no upstream. SIGHUP is not handled: a change
// of the config needs a restart.
func runFollower(ctx context.Context, cfg *refresher.Config, conn *natsconf.Conn, reg *prometheus.Registry, log *slog.Logger) error {
	f, err := refresher.NewFollower(cfg, conn.NC, log)
	if err != nil {
		return err
	}
	reg.MustRegister(f)
	if cfg.HTTP.Listen != "" {
		ln, err := net.Listen("tcp", cfg.HTTP.Listen)
		if err != nil {
			return fmt.Errorf("http.listen: %w", err)
		}
		srv := &http.Server{Handler: f.HTTPHandler(reg), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("http server stopped", "err", err)
			}
		}()
		log.Info("serving /metrics /healthz /readyz /status", "addr", ln.Addr().String(), "mode", refresher.ModeFollow)
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = srv.Shutdown(sctx)
			cancel()
		}()
	}
	return f.Run(ctx)
}

// reloadOnHUP re-reads the config file on every SIGHUP and applies it:
// apps added, removed, secrets rotated, without dropping tokens; the
// gateway's clients replaced. A config that does not load is reported and
// changes nothing.
func reloadOnHUP(ctx context.Context, r *refresher.Refresher, gw *gateway.Gateway, path string, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		cfg, err := refresher.LoadConfig(path)
		if err != nil {
			log.Error("SIGHUP: config not reloaded", "err", err)
			continue
		}
		if _, err := r.Reload(cfg); err != nil {
			log.Error("SIGHUP: config not reloaded", "err", err)
			continue
		}
		switch {
		case gw != nil:
			if err := gw.SetClients(cfg.Gateway); err != nil {
				log.Warn("SIGHUP: gateway clients not reloaded", "err", err)
			}
		case cfg.Gateway.Enabled():
			log.Warn("SIGHUP: the gateway section takes effect only with a restart")
		}
	}
}

// demoConfig starts the WeChat emulator in-process and returns a config
// for two demo apps against it and an embedded NATS server.
func demoConfig(listen string) (*refresher.Config, func(), *wechatsim.Sim, error) {
	sim := wechatsim.New(wechatsim.Options{ExpiresIn: 30 * time.Second, Grace: 10 * time.Second})
	sim.AddApp("wxdemo0000000001", "demo-secret-1")
	sim.AddApp("wxdemo0000000002", "demo-secret-2")
	sim.AddWeComApp("wwdemo0000000003", 1000002, "demo-secret-3")
	sim.AddFeishuApp("cli_demo00000004", "demo-secret-4")
	// An Open Platform component: its callback token and EncodingAESKey,
	// and the key that seals its secrets bucket, drawn for this run.
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, nil, nil, err
	}
	aesKey := strings.TrimRight(base64.StdEncoding.EncodeToString(raw), "=")
	sim.AddComponent(demoComponentAppID, "demo-secret-5", demoCallbackToken, aesKey)
	sealKey := make([]byte, seal.KeySize)
	if _, err := rand.Read(sealKey); err != nil {
		return nil, nil, nil, err
	}
	ring, err := seal.NewKeyring(sealKey)
	if err != nil {
		return nil, nil, nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, nil, err
	}
	srv := &http.Server{Handler: sim.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("emulator stopped", "err", err)
		}
	}()
	store, err := os.MkdirTemp("", "tokenkeeper-demo-")
	if err != nil {
		return nil, nil, nil, err
	}
	base := "http://" + ln.Addr().String()
	minLeft := time.Duration(0)
	passive := 5 * time.Second
	cfg := &refresher.Config{
		NATS:               natsconf.Options{Embedded: natsconf.EmbeddedOptions{Listen: listen, StoreDir: store}},
		Schedule:           "@every 5s",
		HTTP:               refresher.HTTPConfig{Listen: "127.0.0.1:8080"},
		LeaseTTL:           3 * time.Second,
		PassiveMinInterval: &passive,
		Policy:             refresher.PolicyConfig{MinLeft: &minLeft},
		Apps: []refresher.AppConfig{
			(refresher.AppConfig{Name: "demo-mp", Kind: "wechat", AppID: "wxdemo0000000001", APIBase: base,
				Tickets: []string{"jsapi"}}).WithSecret("demo-secret-1"),
			(refresher.AppConfig{Name: "demo-mini", Kind: "wechat-stable", AppID: "wxdemo0000000002", APIBase: base}).WithSecret("demo-secret-2"),
			(refresher.AppConfig{Name: "demo-wecom", Kind: "wecom", CorpID: "wwdemo0000000003", AgentID: 1000002, APIBase: base,
				Tickets: []string{"jsapi", "agent_config"}}).WithSecret("demo-secret-3"),
			(refresher.AppConfig{Name: "demo-feishu", Kind: "feishu", AppID: "cli_demo00000004", APIBase: base}).WithSecret("demo-secret-4"),
			(refresher.AppConfig{Name: "demo-comp", Kind: refresher.KindWeChatComponent, AppID: demoComponentAppID, APIBase: base,
				AuthorizerTickets: []string{"jsapi"}}).
				WithSecret("demo-secret-5").WithCallbackSecrets(demoCallbackToken, aesKey),
		},
	}
	cfg.WithKeyring(ring)
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, nil, nil, err
	}
	cleanup := func() {
		_ = srv.Close()
		_ = os.RemoveAll(store)
	}
	return cfg, cleanup, sim, nil
}

// The demo's Open Platform component.
const (
	demoComponentAppID = "wxdemocomp000005"
	demoCallbackToken  = "demo-callback-token"
)

// showDemoComponent serves the demo component's callback on a loopback
// port, has the emulator push a component_verify_ticket and authorize
// three accounts there, and says where their tokens are.
func showDemoComponent(ctx context.Context, r *refresher.Refresher, sim *wechatsim.Sim, log *slog.Logger) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Error("demo: callback listener", "err", err)
		return
	}
	srv := &http.Server{Handler: r.CallbackHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	cb := "http://" + ln.Addr().String() + refresher.CallbackPathPrefix + "demo-comp"
	if err := sim.PushVerifyTicket(ctx, demoComponentAppID, cb); err != nil {
		log.Error("demo: verify ticket push", "err", err)
		return
	}
	var keys []string
	for i := 1; i <= 3; i++ {
		authz := fmt.Sprintf("wxdemoauthz0000%d", i)
		if _, err := sim.Authorize(ctx, demoComponentAppID, authz, cb); err != nil {
			log.Error("demo: authorization push", "authorizer", authz, "err", err)
			return
		}
		keys = append(keys, "demo-comp."+authz)
	}
	fmt.Fprintf(os.Stderr, "Open Platform: the emulator pushed a verify ticket and authorized 3 accounts to %s;\n"+
		"demo-comp holds the component token, their tokens are under\n  %s\n(and each one's jsapi ticket under KEY.jsapi)\n\n", cb, strings.Join(keys, "\n  "))
}

func printDemoHelp(cfg *refresher.Config, url, httpAddr string) {
	fmt.Fprintf(os.Stderr, `
tokenkeeper demo: embedded NATS at %s, the upstream emulator.
Apps demo-mp (WeChat /cgi-bin/token, with its jsapi ticket), demo-mini
(stable_token), demo-wecom (WeCom, with its jsapi and agent_config
tickets), demo-feishu (Feishu) and demo-comp (an Open Platform component
and its authorizers, each with its jsapi ticket; its first token waits
for the emulator's verify ticket push, a moment after start) get
30-second credentials, refreshed after about two thirds of their life
(WeCom's at expiry).

Look at them from another terminal:
  go run ./cmd/tokenctl --nats %s status
  go run ./cmd/tokenctl --nats %s watch demo-mp
  go run ./cmd/tokenctl --nats %s get demo-mp.jsapi
  go run ./cmd/tokenctl --nats %s refresh demo-mp
  go run ./cmd/tokenctl --nats %s sign demo-mp https://demo.example/page
  go run ./cmd/tokenctl --nats %s sign demo-comp.wxdemoauthz00001 https://demo.example/page
  go run ./cmd/tokenctl --nats %s authorizers show demo-comp wxdemoauthz00001
  go run ./cmd/tokenctl --nats %s audit
or with the nats CLI:  nats --server %s kv get %s demo-mp
Metrics and health:    curl http://%s/status   (/metrics /readyz /healthz)

Ctrl-C stops it.

`, url, url, url, url, url, url, url, url, url, url, cfg.Bucket, httpAddr)
}

// demoSigners are the keys the demo signs for: an app, and an authorizer
// of the demo component (token.sign.<component>.<authorizer_appid>).
var demoSigners = []string{"demo-mp", "demo-comp.wxdemoauthz00001"}

// showDemoSignature asks the demo's sign service for a JS-SDK signature
// as each of demoSigners once its jsapi ticket is stored, and prints it
// with the emulator's verdict (WeChat's JS-SDK check for the reply's
// appId).
func showDemoSignature(ctx context.Context, nc *nats.Conn, sim *wechatsim.Sim) {
	const page = "https://demo.example/page"
	body, _ := json.Marshal(contract.SignRequest{URL: page})
	for _, key := range demoSigners {
		for i := 0; i < 40 && ctx.Err() == nil; i++ {
			msg, err := nc.Request(contract.SignSubject(key), body, 2*time.Second)
			if err == nil && msg.Header.Get(contract.ErrorCodeHeader) == "" {
				verdict := "accepted by the emulator's JS-SDK check"
				var rep contract.SignReply
				if err := json.Unmarshal(msg.Data, &rep); err != nil {
					verdict = "not a reply: " + err.Error()
				} else if err := sim.CheckSignature(rep.AppID, page, rep.NonceStr, rep.Timestamp, rep.Signature); err != nil {
					verdict = "REFUSED by the emulator's JS-SDK check: " + err.Error()
				}
				fmt.Fprintf(os.Stderr, "A JS-SDK signature of %s for wx.config (token.sign.%s), %s:\n  %s\n\n", page, key, verdict, msg.Data)
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(250 * time.Millisecond): // the ticket follows the token by a moment
			}
		}
	}
}
