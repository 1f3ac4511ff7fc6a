package subscriber_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
)

// A service gets its app's token from the tokens bucket. Here an embedded
// nats-server stands in for the cluster and the record is written by hand
// (the refresher's job).
func Example() {
	dir, err := os.MkdirTemp("", "tokenkeeper-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	srv, err := natsconf.StartEmbedded(natsconf.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: dir})
	if err != nil {
		panic(err)
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		panic(err)
	}
	defer nc.Close()

	// What the refresher does: store the app's record.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, _ := jetstream.New(nc)
	kv, err := natsconf.EnsureBucket(ctx, js, natsconf.BucketConfig{Name: contract.DefaultBucket})
	if err != nil {
		panic(err)
	}
	rec, _ := json.Marshal(contract.Record{
		App: "mp-main", AccessToken: "ACCESS_TOKEN_FROM_WECHAT", Source: contract.SourceManual,
		FetchedAt: time.Now(), ExpiresAt: time.Now().Add(2 * time.Hour),
	})
	if _, err := kv.Put(ctx, "mp-main", rec); err != nil {
		panic(err)
	}

	// What a service does: one Source per app, for the life of the process.
	src, err := subscriber.NewSource(ctx, nc, "mp-main")
	if err != nil {
		panic(err)
	}
	defer src.Close()

	tok, err := src.Token()
	if err != nil {
		panic(err)
	}
	fmt.Println("app:", tok.App, "revision:", tok.Revision, "valid:", tok.Valid())
	// Never print the token itself; its fingerprint identifies it in logs.
	fmt.Println("fingerprint:", contract.Fingerprint(tok.AccessToken))
	// Output:
	// app: mp-main revision: 1 valid: true
	// fingerprint: 246f7066
}

// WeChat API clients send every request through the Source's
// RoundTripper: it sets access_token and retries once, with a refreshed
// token, when WeChat answers 40001, 40014 or 42001.
func ExampleSource_RoundTripper() {
	var src *subscriber.Source // from NewSource
	if src == nil {
		return
	}
	client := &http.Client{Transport: src.RoundTripper(http.DefaultTransport), Timeout: 10 * time.Second}
	resp, err := client.Get("https://api.weixin.qq.com/cgi-bin/getcallbackip")
	if err != nil {
		return
	}
	defer resp.Body.Close()
}

// Refresh after upstream rejected a token, when not using the
// RoundTripper: pass the revision of the token that was rejected.
// Concurrent callers share one request, and a token that is already newer
// is returned at once.
func ExampleSource_Refresh() {
	var src *subscriber.Source // from NewSource
	if src == nil {
		return
	}
	tok, _ := src.Token()
	// ... upstream answered errcode 40001 for tok ...
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fresh, err := src.Refresh(ctx, tok.Revision)
	if err != nil {
		return
	}
	_ = fresh.AccessToken
}

// Follow every update, e.g. to warm a cache.
func ExampleSource_Listen() {
	var src *subscriber.Source // from NewSource
	if src == nil {
		return
	}
	l := src.Listen()
	for {
		tok, err := l.Next(context.Background())
		if err != nil {
			return // subscriber.ErrClosed after Close
		}
		fmt.Println("new token", tok) // prints app, revision, fingerprint
	}
}

// A service's HTTP client tested without NATS: the Transport takes any
// TokenSource, and StaticAccessToken is one with a fixed token.
func ExampleStaticAccessToken() {
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"errcode":0,"token_seen":%q}`, r.URL.Query().Get("access_token"))
	})
	srv := httptest.NewServer(upstream)
	defer srv.Close()

	client := &http.Client{Transport: &subscriber.Transport{Source: subscriber.StaticAccessToken("mp-main", "TEST-TOKEN")}}
	resp, err := client.Get(srv.URL + "/cgi-bin/getcallbackip")
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	var body struct {
		TokenSeen string `json:"token_seen"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	fmt.Println(body.TokenSeen)
	// Output: TEST-TOKEN
}

// One Client per process follows every key the process needs (apps and
// their tickets) over one watch: one consumer on the bucket's stream.
func ExampleClient() {
	dir, err := os.MkdirTemp("", "tokenkeeper-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	srv, err := natsconf.StartEmbedded(natsconf.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: dir})
	if err != nil {
		panic(err)
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		panic(err)
	}
	defer nc.Close()

	// What the refresher does: store the records.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, _ := jetstream.New(nc)
	kv, err := natsconf.EnsureBucket(ctx, js, natsconf.BucketConfig{Name: contract.DefaultBucket, History: 1})
	if err != nil {
		panic(err)
	}
	for _, key := range []string{"mp-main", "mini-shop"} {
		rec, _ := json.Marshal(contract.Record{App: key, AccessToken: "TOKEN-OF-" + key, FetchedAt: time.Now().UTC(), ExpiresAt: time.Now().Add(2 * time.Hour).UTC(), Source: contract.SourceStartup})
		if _, err := kv.Put(ctx, key, rec); err != nil {
			panic(err)
		}
	}

	client, err := subscriber.NewClient(nc)
	if err != nil {
		panic(err)
	}
	defer client.Close()
	for _, key := range []string{"mp-main", "mini-shop"} {
		src, err := client.Source(ctx, key) // blocks until the first token
		if err != nil {
			panic(err)
		}
		tok, _ := src.AccessToken()
		fmt.Println(key, tok)
	}
	// Output:
	// mp-main TOKEN-OF-mp-main
	// mini-shop TOKEN-OF-mini-shop
}

// A web handler gets the wx.config of a page from the refresher
// (token.sign.<app>): the service needs no ticket and no read of the
// bucket. Here a stand-in answers token.sign.mp-main with WeChat's own
// documented example (a real refresher draws the nonce and uses the time
// of the request and its current jsapi ticket).
func ExampleClient_Sign() {
	dir, err := os.MkdirTemp("", "tokenkeeper-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	srv, err := natsconf.StartEmbedded(natsconf.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: dir})
	if err != nil {
		panic(err)
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		panic(err)
	}
	defer nc.Close()

	// What a refresher replica does.
	const ticket = "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg"
	sub, err := nc.Subscribe(contract.SignSubject("mp-main"), func(m *nats.Msg) {
		var req contract.SignRequest
		_ = json.Unmarshal(m.Data, &req)
		const nonce, ts = "Wm3WZYTPz0wzccnW", 1414587457
		rep, _ := json.Marshal(contract.SignReply{AppID: "wx0123456789abcdef", Timestamp: ts, NonceStr: nonce,
			Signature: contract.JSSDKSignature(ticket, nonce, ts, req.URL)})
		_ = m.Respond(rep)
	})
	if err != nil {
		panic(err)
	}
	defer sub.Unsubscribe()

	// What a service does, for each page it renders.
	c, err := subscriber.NewClient(nc)
	if err != nil {
		panic(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg, err := c.Sign(ctx, "mp-main", "http://mp.weixin.qq.com?params=value")
	if err != nil {
		panic(err)
	}
	out, _ := json.Marshal(cfg) // what the page passes to wx.config
	fmt.Println(string(out))
	// Output:
	// {"appId":"wx0123456789abcdef","timestamp":1414587457,"nonceStr":"Wm3WZYTPz0wzccnW","signature":"0f9de62fce790f9a083d5c99e95740ceb90c27ed"}
}
