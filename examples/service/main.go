// Command service is an example of a service that uses tokenkeeper: it
// follows its app's token with a subscriber.Source and calls a WeChat
// business API (getcallbackip) through the Source's RoundTripper, which
// adds access_token to every request and, when WeChat rejects the token,
// asks the refresher for a new one and retries once.
//
//	service --nats nats://127.0.0.1:4222 --app demo-mp --api-base http://127.0.0.1:9100
//
// Against a server with users (examples/nats-server.conf, deploy/nats.conf)
// it connects as --user (default $NATS_USER) with the password in
// $NATS_PASSWORD, and with the inbox prefix _INBOX_<user> that the
// service role requires (--inbox-prefix to change it).
//
// Against the demo (go run ./cmd/refresher) the emulator's address is
// printed in the demo's log; docker-compose.yml runs this service against
// its own emulator.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, os.Args[1:], log); err != nil {
		fmt.Fprintln(os.Stderr, "service:", err)
		os.Exit(1)
	}
}

// passwordEnv holds the password of --user.
const passwordEnv = "NATS_PASSWORD"

func run(ctx context.Context, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("service", flag.ContinueOnError)
	url := fs.String("nats", "nats://127.0.0.1:4222", "NATS URL(s), comma-separated")
	app := fs.String("app", "demo-mp", "app whose token to use")
	apiBase := fs.String("api-base", "https://api.weixin.qq.com", "WeChat API base URL")
	every := fs.Duration("interval", 5*time.Second, "time between business calls")
	count := fs.Int("count", 0, "stop after this many calls (0: run until stopped)")
	user := fs.String("user", os.Getenv("NATS_USER"), "NATS user (default $NATS_USER); its password is read from $"+passwordEnv)
	inbox := fs.String("inbox-prefix", "", "inbox prefix of the replies (default with --user: _INBOX_<user>, the service role's private inbox)")
	if err := fs.Parse(args); err != nil {
		return err
	}

	// A service needs nats.go and the subscriber, nothing else: no
	// embedded server, no configuration package (see docs/benchmarks.md,
	// "Binary size of a service").
	opts := []nats.Option{nats.Name("tokenkeeper-example-service"), nats.MaxReconnects(-1)}
	if *user != "" {
		pass := os.Getenv(passwordEnv)
		if pass == "" {
			return fmt.Errorf("--user %s: set its password in $%s", *user, passwordEnv)
		}
		opts = append(opts, nats.UserInfo(*user, pass))
		if *inbox == "" {
			*inbox = contract.ServiceInboxPrefix(*user)
		}
	}
	if *inbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(*inbox))
	}
	connectCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	nc, err := connect(connectCtx, *url, opts)
	cancel()
	if err != nil {
		return err
	}
	defer nc.Close()

	// NewSource blocks until the first token; bound that wait.
	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	src, err := subscriber.NewSource(waitCtx, nc, *app, subscriber.WithLogger(log))
	cancel()
	if err != nil {
		return err
	}
	defer src.Close()
	log.Info("following token", "app", *app, "revision", src.Revision(), "expires_at", src.ExpiresAt())

	client := &http.Client{Transport: src.RoundTripper(nil), Timeout: 10 * time.Second}
	for n := 1; *count == 0 || n <= *count; n++ {
		ips, err := callbackIPs(ctx, client, *apiBase)
		if err != nil {
			log.Error("business call failed", "err", err)
		} else {
			log.Info("business call ok", "ip_list", ips, "token_revision", src.Revision())
		}
		if *count != 0 && n == *count {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*every):
		}
	}
	return nil
}

// connect connects to url, trying again every second while no server
// answers (a service may start before NATS), until ctx is done.
func connect(ctx context.Context, url string, opts []nats.Option) (*nats.Conn, error) {
	for {
		nc, err := nats.Connect(url, opts...)
		if err == nil || !errors.Is(err, nats.ErrNoServers) {
			return nc, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to NATS: %w", err)
		case <-time.After(time.Second):
		}
	}
}

// callbackIPs calls GET /cgi-bin/getcallbackip; the transport adds the
// token.
func callbackIPs(ctx context.Context, client *http.Client, base string) ([]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/cgi-bin/getcallbackip", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	var out struct {
		IPList  []string `json:"ip_list"`
		Errcode int      `json:"errcode"`
		Errmsg  string   `json:"errmsg"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("answer is not JSON: %w", err)
	}
	if out.Errcode != 0 {
		return nil, fmt.Errorf("errcode %d: %s", out.Errcode, out.Errmsg)
	}
	if len(out.IPList) == 0 {
		return nil, errors.New("empty ip_list")
	}
	return out.IPList, nil
}
