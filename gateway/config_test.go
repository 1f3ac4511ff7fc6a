package gateway_test

import (
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/gateway"
	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// TestConfigProblems: every problem of a gateway section is reported at
// once, naming the client and the key; a pasted token is never echoed.
func TestConfigProblems(t *testing.T) {
	pasted := "plaintext-token-pasted-by-mistake"
	cfg := gateway.Config{
		Listen:      "127.0.0.1:8443",
		TLSCertFile: "cert.pem",
		Clients: []gateway.ClientConfig{
			{Name: "php", TokenSHA256: pasted, Keys: []string{"mp-*", "mp"}},
			{Name: "php", TokenSHA256: hash("a"), Keys: nil, RatePerSecond: -1, Burst: -2},
			{Name: "bad name", TokenSHA256: hash("a"), Keys: []string{"mp.>"}},
			{TokenSHA256: strings.Repeat("zz", 32), Keys: []string{"*"}},
		},
	}
	got := strings.Join(cfg.Problems(), "\n")
	for _, want := range []string{
		"gateway.tls_cert_file/tls_key_file: set both",
		"gateway.clients[0] (php).token_sha256: not a SHA-256",
		"gateway.clients[0] (php).keys[0]: \"mp-*\": * must be a whole segment",
		"gateway.clients[1] (php).name: duplicate of gateway.clients[0]",
		"gateway.clients[1] (php).keys: no key patterns",
		"gateway.clients[1] (php).rate_per_second: -1",
		"gateway.clients[1] (php).burst: -2 is negative",
		"gateway.clients[2] (bad name).name: \"bad name\" is not",
		"gateway.clients[2] (bad name).token_sha256: the same token as gateway.clients[1]",
		"gateway.clients[2] (bad name).keys[0]: \"mp.>\": use * as the last segment",
		"gateway.clients[3].name: missing",
		"gateway.clients[3].token_sha256: not a SHA-256",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("problems lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, pasted) {
		t.Errorf("a problem echoes the configured token:\n%s", got)
	}
	if n := len(cfg.Problems()); n != 12 {
		t.Errorf("%d problems, want 12:\n%s", n, got)
	}

	off := gateway.Config{}
	if p := off.Problems(); len(p) != 0 || off.Enabled() {
		t.Errorf("absent section: %q, enabled %v", p, off.Enabled())
	}
	noListen := gateway.Config{Clients: []gateway.ClientConfig{{Name: "a", TokenSHA256: hash("a"), Keys: []string{"*"}}}}
	if p := noListen.Problems(); len(p) != 1 || !strings.HasPrefix(p[0], "gateway.listen: missing") {
		t.Errorf("clients without listen: %q", p)
	}
}

// TestRefresherConfigGateway: the refresher's YAML takes a gateway:
// section and reports its problems with the rest of the config's.
func TestRefresherConfigGateway(t *testing.T) {
	t.Setenv("GW_TEST_SECRET", "s")
	base := `
apps:
  - {name: mp, appid: wx1, secret_env: GW_TEST_SECRET}
gateway:
  listen: 127.0.0.1:8443
  clients:
    - name: php-shop
      token_sha256: ` + hash("tok") + `
      keys: [mp, "mp.*"]
      rate_per_second: 5
      burst: 10
`
	cfg, err := refresher.ParseConfig([]byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Gateway.Enabled() || len(cfg.Gateway.Clients) != 1 || cfg.Gateway.Clients[0].Burst != 10 {
		t.Fatalf("gateway section: %+v", cfg.Gateway)
	}
	bad := strings.Replace(base, "keys: [mp, \"mp.*\"]", "keys: [\"mp*\"]", 1) + "bucket: \"no good\"\n"
	_, err = refresher.ParseConfig([]byte(bad))
	if err == nil || !strings.Contains(err.Error(), `gateway.clients[0] (php-shop).keys[0]: "mp*"`) || !strings.Contains(err.Error(), "bucket:") {
		t.Fatalf("bad gateway section: %v", err)
	}
	if _, err := refresher.ParseConfig([]byte(base + "    - {name: x, token_sha256: abc, keys: [mp], extra: 1}\n")); err == nil || !strings.Contains(err.Error(), `unknown key "extra"`) {
		t.Fatalf("unknown key in a client: %v", err)
	}
}
