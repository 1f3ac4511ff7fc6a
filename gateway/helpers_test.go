package gateway_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/gateway"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// Bearer tokens of the test clients: distinctive, so the log checks can
// grep for them.
const (
	tokShop   = "bearer-shop-0123456789-must-never-be-logged"
	tokAll    = "bearer-all-0123456789-must-never-be-logged"
	tokNarrow = "bearer-narrow-0123456789-must-never-be-logged"
	tokFlood  = "bearer-flood-0123456789-must-never-be-logged"
)

func hash(tok string) string {
	s := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(s[:])
}

// testClients are the clients of most tests: shop reads mp and its
// tickets, all reads everything, narrow reads other only, flood is
// limited to 1 request/s with a burst of 2.
func testClients() []gateway.ClientConfig {
	return []gateway.ClientConfig{
		{Name: "shop", TokenSHA256: hash(tokShop), Keys: []string{"mp", "mp.*"}, RatePerSecond: 1000, Burst: 1000},
		{Name: "all", TokenSHA256: strings.ToUpper(hash(tokAll)), Keys: []string{"*"}, RatePerSecond: 1000, Burst: 1000},
		{Name: "narrow", TokenSHA256: hash(tokNarrow), Keys: []string{"other"}},
		{Name: "flood", TokenSHA256: hash(tokFlood), Keys: []string{"*"}, RatePerSecond: 1, Burst: 2},
	}
}

// world is a running tokenkeeper with a gateway in front: embedded NATS,
// the WeChat emulator, one refresher keeping app mp (with its jsapi
// ticket) and app other, and the gateway on 127.0.0.1.
type world struct {
	e    *harness.Env
	g    *gateway.Gateway
	base string // http(s)://127.0.0.1:port
	hc   *http.Client
	logs *harness.SyncBuffer // the gateway's log
	keys []string            // more keys whose records checkLogs looks for
	more []string            // more secrets checkLogs looks for
}

// setup starts the world. tune may change the gateway config (TLS).
func setup(t *testing.T, tune func(*gateway.Config), opts ...gateway.Option) *world {
	t.Helper()
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	startApps(t, e)
	return serveGateway(t, e, tune, opts...)
}

// startApps starts the refresher of the usual world: apps mp (with its
// jsapi ticket) and other.
func startApps(t *testing.T, e *harness.Env) {
	t.Helper()
	mp := e.App("mp")
	mp.Tickets = []string{contract.TicketJSAPI}
	e.Start(e.Config(mp, e.App("other")))
	e.WaitRecord(10*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	e.WaitRecord(10*time.Second, "other", func(contract.Record, uint64) bool { return true })
	// mp's jsapi ticket follows its token.
	testutil.WaitFor(t, 10*time.Second, func() bool {
		kv, err := e.JS.KeyValue(context.Background(), contract.DefaultBucket)
		if err != nil {
			return false
		}
		_, err = kv.Get(context.Background(), "mp.jsapi")
		return err == nil
	}, "no mp.jsapi ticket stored")
}

// serveGateway runs a gateway in front of e's refresher; its log is
// checked for secrets when the test ends (checkLogs, also for the
// records stored under keys).
func serveGateway(t *testing.T, e *harness.Env, tune func(*gateway.Config), opts ...gateway.Option) *world {
	t.Helper()
	w := &world{e: e, logs: &harness.SyncBuffer{}, hc: &http.Client{Timeout: 30 * time.Second}}
	cfg := gateway.Config{Listen: "127.0.0.1:0", Clients: testClients()}
	if tune != nil {
		tune(&cfg)
	}
	log := slog.New(slog.NewTextHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	g, err := gateway.New(cfg, e.NC, append([]gateway.Option{gateway.WithLogger(log)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	w.g = g
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	scheme := "http"
	if cfg.TLSCertFile != "" {
		scheme = "https"
	}
	w.base = scheme + "://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		w.hc.CloseIdleConnections()
		w.checkLogs(t)
		if t.Failed() {
			t.Logf("--- gateway log ---\n%s", w.logs)
		}
	})
	return w
}

// checkLogs fails t if any bearer token, access token, ticket or secret
// appears in the gateway's or the refresher's log.
func (w *world) checkLogs(t *testing.T) {
	t.Helper()
	secrets := append([]string{tokShop, tokAll, tokNarrow, tokFlood, harness.Secret("wxmp"), harness.Secret("wxother")}, w.more...)
	for _, key := range append([]string{"mp", "other", "mp.jsapi"}, w.keys...) {
		if v, ok := w.stored(t, key); ok {
			var rec struct {
				AccessToken string `json:"access_token"`
				Ticket      string `json:"ticket"`
			}
			_ = json.Unmarshal(v, &rec)
			secrets = append(secrets, rec.AccessToken+rec.Ticket)
		}
	}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		if w.logs.Contains(s) {
			t.Errorf("the gateway log contains a secret (%.12s…)", s)
		}
		if w.e.Logs.Contains(s) {
			t.Errorf("the refresher log contains a secret (%.12s…)", s)
		}
	}
}

// stored returns the value stored under key.
func (w *world) stored(t *testing.T, key string) ([]byte, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	kv, err := w.e.JS.KeyValue(ctx, contract.DefaultBucket)
	if err != nil {
		return nil, false
	}
	e, err := kv.Get(ctx, key)
	if err != nil {
		return nil, false
	}
	return e.Value(), true
}

// response is one answer of the gateway, body read.
type response struct {
	status int
	header http.Header
	body   []byte
}

// errBody decodes a JSON error body.
func (r response) errBody(t *testing.T) contract.ErrorDetail {
	t.Helper()
	var er contract.ErrorReply
	if err := json.Unmarshal(r.body, &er); err != nil {
		t.Fatalf("error body %q is not JSON: %v", r.body, err)
	}
	if er.Error.Code != r.status || er.Error.Message == "" {
		t.Fatalf("error body %s: want code %d and a message", r.body, r.status)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error Content-Type %q", ct)
	}
	return er.Error
}

// do sends a request with bearer token tok ("" for none).
func (w *world) do(t *testing.T, method, path, tok string, body string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, w.base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := w.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// mustStatus fails t unless r has status want.
func mustStatus(t *testing.T, what string, r response, want int) {
	t.Helper()
	if r.status != want {
		t.Fatalf("%s: status %d, want %d; body %s", what, r.status, want, bytes.TrimSpace(r.body))
	}
}

// tlsClient trusts only pool.
func tlsClient(pool *tls.Config) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: pool}}
}

var _ = testutil.WaitFor

// doHeader sends a request with this Authorization header.
func (w *world) doHeader(t *testing.T, method, path, auth string) response {
	t.Helper()
	req, err := http.NewRequest(method, w.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", auth)
	return w.send(t, req)
}

// doChunked POSTs body with chunked transfer encoding (no Content-Length).
func (w *world) doChunked(t *testing.T, path, tok, body string) response {
	t.Helper()
	req, err := http.NewRequest("POST", w.base+path, io.MultiReader(strings.NewReader(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	req.Header.Set("Authorization", "Bearer "+tok)
	return w.send(t, req)
}

// send sends req and reads the answer.
func (w *world) send(t *testing.T, req *http.Request) response {
	t.Helper()
	resp, err := w.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", req.Method, req.URL.Path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}
