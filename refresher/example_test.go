package refresher_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// A refresher for one app, against the WeChat emulator and an embedded
// NATS server: it fetches the first token, stores it in the tokens bucket
// and announces it; a service whose token was rejected asks for a newer
// one with the rejected token's revision. cmd/refresher does the same
// from a YAML file (LoadConfig).
func Example() {
	// A stand-in for https://api.weixin.qq.com that knows one app.
	sim, upstream := wechatsim.NewServer(wechatsim.Options{})
	defer upstream.Close()
	sim.AddApp("wx0123456789abcdef", "the-app-secret")

	dir, err := os.MkdirTemp("", "refresher-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	srv, err := natsconf.StartEmbedded(natsconf.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: dir})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := natsconf.Connect(ctx, natsconf.Options{URL: srv.ClientURL()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()

	// A config built in code carries its secrets (WithSecret); one from
	// YAML names them (secret_env, secret_file) and LoadConfig reads them.
	cfg := &refresher.Config{
		NATS: natsconf.Options{URL: srv.ClientURL()},
		Apps: []refresher.AppConfig{
			refresher.AppConfig{Name: "mp-main", AppID: "wx0123456789abcdef", APIBase: upstream.URL}.WithSecret("the-app-secret"),
		},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		fmt.Println(err)
		return
	}
	r, err := refresher.New(cfg, conn.NC, refresher.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		fmt.Println(err)
		return
	}

	// Every write is announced on token.updated.<app>, without the token.
	updates, err := conn.NC.SubscribeSync(contract.UpdatedSubject("mp-main"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer func() { _ = updates.Unsubscribe() }()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()

	msg, err := updates.NextMsg(30 * time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	var ev contract.Event
	_ = json.Unmarshal(msg.Data, &ev)
	fmt.Println("updated:", ev.App, ev.Source, ev.ExpiresAt.Sub(ev.FetchedAt))

	// Services read the record from the bucket (package subscriber
	// follows it for them); upstream accepts its token.
	kv, err := conn.JS.KeyValue(ctx, cfg.Bucket)
	if err != nil {
		fmt.Println(err)
		return
	}
	e, err := kv.Get(ctx, "mp-main")
	if err != nil {
		fmt.Println(err)
		return
	}
	var rec contract.Record
	_ = json.Unmarshal(e.Value(), &rec)
	fmt.Println("stored:", rec.App, rec.AppID, "accepted by upstream:", sim.Check(rec.AccessToken) == nil)

	// A business call was answered 40001 with that token: ask for a token
	// newer than its revision. Concurrent askers share one fetch.
	body, _ := json.Marshal(contract.RefreshRequest{StaleRevision: ptr(e.Revision())})
	reply, err := conn.NC.RequestWithContext(ctx, contract.RefreshSubject("mp-main"), body)
	if err != nil {
		fmt.Println(err)
		return
	}
	var rr contract.RefreshReply
	_ = json.Unmarshal(reply.Data, &rr)
	fmt.Println("refreshed:", rr.Source, "newer revision:", rr.Revision > e.Revision(), "new token:", rr.AccessToken != rec.AccessToken)

	for _, st := range r.Statuses() {
		fmt.Println("status:", st.App, "valid:", st.Valid, "upstream calls today:", st.CallsToday)
	}
	stop()
	fmt.Println("stopped:", <-done)
	// Output:
	// updated: mp-main startup 2h0m0s
	// stored: mp-main wx0123456789abcdef accepted by upstream: true
	// refreshed: passive newer revision: true new token: true
	// status: mp-main valid: true upstream calls today: 2
	// stopped: <nil>
}

func ptr[T any](v T) *T { return &v }
