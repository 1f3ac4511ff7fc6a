package refresher_test

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// TestUpstreamProxy: upstream.proxy sends every app's upstream calls
// through an HTTP proxy (for an egress IP on the allow list), an app's
// proxy: direct bypasses it; a proxy that refuses is an upstream failure
// like any other, the stored token kept.
func TestUpstreamProxy(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	var mu sync.Mutex
	seen := map[string]int{} // appid → token calls through the proxy
	proxy := httptest.NewServer(&httputil.ReverseProxy{Director: func(r *http.Request) {
		if r.URL.Path == wechatsim.PathToken {
			mu.Lock()
			seen[r.URL.Query().Get("appid")]++
			mu.Unlock()
		}
	}})
	defer proxy.Close()

	via, direct := e.App("via"), e.App("direct")
	direct.Proxy = refresher.ProxyDirect
	cfg := e.Config(via, direct)
	cfg.Upstream.Proxy = proxy.URL
	e.Start(cfg)
	e.WaitRecord(10*time.Second, "via", func(contract.Record, uint64) bool { return true })
	e.WaitRecord(10*time.Second, "direct", func(contract.Record, uint64) bool { return true })
	mu.Lock()
	defer mu.Unlock()
	if seen["wxvia"] != 1 || seen["wxdirect"] != 0 {
		t.Errorf("token calls through the proxy: %v; want wxvia once, wxdirect never", seen)
	}
	if strings.Contains(e.Logs.String(), harness.Secret("wxvia")) {
		t.Error("the secret of a proxied app appears in the logs")
	}
}
