package refresher_test

import (
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// TestComponentConfig: a wechat-component's keys are read and checked,
// every problem named with its key, never with a secret's value.
func TestComponentConfig(t *testing.T) {
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	aes := strings.TrimRight(base64.StdEncoding.EncodeToString(raw), "=")
	key := base64.StdEncoding.EncodeToString(raw)
	t.Setenv("CS", "component-secret-value")
	t.Setenv("CBT", "cbtoken-value")
	t.Setenv("CBA", aes)
	t.Setenv("BADAES", "not-a-key-VALUE")
	t.Setenv("TKK", key)

	good := `
secrets_key_env: TKK
callback: {listen: "127.0.0.1:0"}
apps:
  - name: comp
    kind: wechat-component
    appid: wxcomp
    secret_env: CS
    callback: {token_env: CBT, aes_key_env: CBA}
    authorizer_tickets: [jsapi, wx_card]
`
	cfg, err := refresher.ParseConfig([]byte(good))
	if err != nil {
		t.Fatalf("valid component config refused: %v", err)
	}
	if got := strings.Join(cfg.Apps[0].AuthorizerTickets, ","); got != "jsapi,wx_card" {
		t.Fatalf("authorizer_tickets parsed as %q", got)
	}
	if cfg.Callback.Listen != "127.0.0.1:0" || cfg.Apps[0].Callback.TokenEnv != "CBT" {
		t.Fatalf("parsed %+v", cfg.Callback)
	}

	bad := `
http: {listen: "127.0.0.1:9000"}
callback: {listen: "127.0.0.1:9000"}
apps:
  - name: c1
    kind: wechat-component
    secret_env: CS
    authorizer_tickets: [jsapi, agent_config, jsapi]
    max_calls_per_second: -1
  - name: c2
    kind: wechat-component
    appid: wxc2
    secret_env: CS
    callback: {token_env: CBT, aes_key_env: BADAES}
  - name: mp
    appid: wxmp
    secret_env: CS
    callback: {token_env: CBT, aes_key_env: CBA}
    authorizer_tickets: [jsapi]
    max_calls_per_second: 10
`
	_, err = refresher.ParseConfig([]byte(bad))
	if err == nil {
		t.Fatal("config accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		`apps[0] (c1).appid: missing`,
		`apps[0] (c1).callback.token_env: missing`,
		`apps[0] (c1).callback.aes_key_env: missing`,
		`apps[0] (c1).authorizer_tickets[1]: "agent_config" is not a ticket of an authorizer`,
		`apps[0] (c1).authorizer_tickets[2]: "jsapi" is listed twice`,
		`apps[1] (c2).callback: `,
		`apps[2] (mp).callback: not a key of kind wechat`,
		`apps[2] (mp).authorizer_tickets: not a key of kind wechat`,
		`apps[0] (c1).max_calls_per_second: -1 is out of range`,
		`apps[2] (mp).max_calls_per_second: not a key of kind wechat`,
		`callback.listen: must differ from http.listen`,
		`secrets_key_env/secrets_key_file`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing problem %q", want)
		}
	}
	for _, secret := range []string{"component-secret-value", "cbtoken-value", "not-a-key-VALUE", aes} {
		if strings.Contains(msg, secret) {
			t.Errorf("the error quotes a secret")
		}
	}
	if t.Failed() {
		t.Log(msg)
	}
}
