package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// freeAddr returns a 127.0.0.1 address that was free a moment ago.

// TestGatewayFromConfig: refresher --config with a gateway: section
// serves the gateway on its own listener, on the refresher's own NATS
// connection — here the embedded server with users, so that connection
// has the refresher role: reading the bucket, forwarding token.refresh
// and token.sign (no sign service runs: 503 no responders, not a
// permission timeout) all work under it.
func TestGatewayFromConfig(t *testing.T) {
	sim, hs := wechatsim.NewServer(wechatsim.Options{ExpiresIn: time.Hour})
	defer hs.Close()
	sim.AddApp("wxgw", "gw-app-secret")
	t.Setenv("GW_APP_SECRET", "gw-app-secret")
	t.Setenv("GW_SERVICE_PASSWORD", "service-pw")
	const bearer = "gateway-test-bearer-token"
	sum := sha256.Sum256([]byte(bearer))
	gwAddr := freeAddr(t)
	cfgYAML := fmt.Sprintf(`
nats:
  embedded:
    listen: %s
    store_dir: %s
    users:
      - {user: service, role: service, password_env: GW_SERVICE_PASSWORD}
schedule: "@every 1s"
apps:
  - {name: mp, appid: wxgw, secret_env: GW_APP_SECRET, api_base: %s, tickets: [jsapi]}
gateway:
  listen: %s
  clients:
    - {name: php, token_sha256: %s, keys: ["mp", "mp.*"]}
`, freeAddr(t), t.TempDir(), hs.URL, gwAddr, hex.EncodeToString(sum[:]))
	path := filepath.Join(t.TempDir(), "refresher.yaml")
	if err := os.WriteFile(path, []byte(cfgYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"--config", path}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("refresher: %v", err)
		}
	}()

	call := func(method, p, body string) (int, []byte) {
		req, _ := http.NewRequest(method, "http://"+gwAddr+p, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+bearer)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	var rec contract.RefreshReply
	testutil.WaitFor(t, 20*time.Second, func() bool {
		code, b := call("GET", "/v1/tokens/mp", "")
		return code == 200 && json.Unmarshal(b, &rec) == nil && rec.AccessToken != ""
	}, "GET /v1/tokens/mp through the gateway never answered 200")
	if err := sim.Check(rec.AccessToken); err != nil {
		t.Errorf("the token read through the gateway: %v", err)
	}

	code, b := call("POST", "/v1/tokens/mp/refresh", "")
	if code != 200 || json.Unmarshal(b, &rec) != nil || rec.Revision == 0 {
		t.Fatalf("refresh through the gateway: %d %s", code, b)
	}
	// Signing end to end: gateway → token.sign.mp → the refresher's sign
	// service, over the jsapi ticket it keeps; WeChat accepts it.
	var sig contract.SignReply
	testutil.WaitFor(t, 20*time.Second, func() bool {
		code, b = call("POST", "/v1/sign/mp", `{"url":"https://shop.example/pay?id=7#top"}`)
		return code == 200 && json.Unmarshal(b, &sig) == nil && sig.Signature != ""
	}, "POST /v1/sign/mp never answered 200: %d %s", code, b)
	if sig.AppID != "wxgw" {
		t.Errorf("sign reply appId %q, want wxgw", sig.AppID)
	}
	if err := sim.CheckSignature("wxgw", "https://shop.example/pay?id=7", sig.NonceStr, sig.Timestamp, sig.Signature); err != nil {
		t.Errorf("the signature made through the gateway: %v", err)
	}
	if code, _ := call("GET", "/v1/tokens/other", ""); code != 403 {
		t.Errorf("a key outside the patterns: %d, want 403", code)
	}
}
