package refresher

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/seal"
	"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt"
)

// CallbackConfig is the top-level callback: section: the public listener
// WeChat POSTs a component's pushes to, at /wechat/component/<app>. It is
// separate from http.listen, which serves metrics and status and stays
// private. Empty: no listener (a program may serve CallbackHandler
// itself).
type CallbackConfig struct {
	Listen string `yaml:"listen"`
}

// ComponentCallback is an app's callback: section (kind
// wechat-component): the variables holding the token and the
// EncodingAESKey entered on the Open Platform console (消息校验Token,
// 消息加解密Key).
type ComponentCallback struct {
	TokenEnv  string `yaml:"token_env"`
	AESKeyEnv string `yaml:"aes_key_env"`
}

// callbackSecrets are a component's callback token and AES key, read by
// ResolveSecrets; never printed.
type callbackSecrets struct {
	token, aesKey string
}

// String hides the secrets.
func (callbackSecrets) String() string { return "callbackSecrets{REDACTED}" }

// GoString hides the secrets.
func (c callbackSecrets) GoString() string { return c.String() }

// WithCallbackSecrets returns a copy of a (kind wechat-component) that
// carries the callback's token and EncodingAESKey, for programs and
// tests that do not read them from the environment.
func (a AppConfig) WithCallbackSecrets(token, aesKey string) AppConfig {
	a.cb = callbackSecrets{token: token, aesKey: aesKey}
	return a
}

// WithKeyring sets the keyring of the secrets bucket, for programs and
// tests that do not read the key from the environment or a file.
func (c *Config) WithKeyring(k *seal.Keyring) { c.keyring = k }

// hasComponents reports whether any app is a wechat-component.
func (c *Config) hasComponents() bool {
	for _, a := range c.Apps {
		if a.Kind == KindWeChatComponent {
			return true
		}
	}
	return false
}

// callbackProblems reports what is wrong with callback.listen.
func (c *Config) callbackProblems() []string {
	if c.Callback.Listen == "" {
		return nil
	}
	var p []string
	if _, _, err := net.SplitHostPort(c.Callback.Listen); err != nil {
		p = append(p, fmt.Sprintf("callback.listen: %q is not host:port", c.Callback.Listen))
	}
	if c.HTTP.Listen != "" && c.HTTP.Listen == c.Callback.Listen {
		p = append(p, "callback.listen: must differ from http.listen (the callback is public, metrics and status are not)")
	}
	if !c.hasComponents() {
		p = append(p, "callback.listen: set, but no app is of kind wechat-component")
	}
	return p
}

// componentProblems reports the wechat-component keys of a that are
// missing or malformed, and those set on another kind.
func (a *AppConfig) componentProblems() []string {
	var p []string
	if a.Kind != KindWeChatComponent {
		if a.Callback != (ComponentCallback{}) {
			p = append(p, fmt.Sprintf("callback: not a key of kind %s", a.Kind))
		}
		if len(a.AuthorizerTickets) > 0 {
			p = append(p, fmt.Sprintf("authorizer_tickets: not a key of kind %s", a.Kind))
		}
		if a.MaxCallsPerSecond != 0 {
			p = append(p, fmt.Sprintf("max_calls_per_second: not a key of kind %s", a.Kind))
		}
		return p
	}
	if !(a.MaxCallsPerSecond >= 0 && a.MaxCallsPerSecond <= 100000) {
		p = append(p, fmt.Sprintf("max_calls_per_second: %v is out of range (0 for the default %d, up to 100000)", a.MaxCallsPerSecond, DefaultMaxCallsPerSecond))
	}
	if a.AppID == "" {
		p = append(p, "appid: missing (the component appid)")
	}
	if len(a.Tickets) > 0 {
		p = append(p, "tickets: a component keeps no tickets of its own; use authorizer_tickets")
	}
	if a.cb == (callbackSecrets{}) {
		if a.Callback.TokenEnv == "" {
			p = append(p, "callback.token_env: missing (the variable holding the callback token)")
		}
		if a.Callback.AESKeyEnv == "" {
			p = append(p, "callback.aes_key_env: missing (the variable holding the EncodingAESKey)")
		}
	}
	seen := map[string]bool{}
	for i, t := range a.AuthorizerTickets {
		switch {
		case t != contract.TicketJSAPI && t != contract.TicketWXCard:
			p = append(p, fmt.Sprintf("authorizer_tickets[%d]: %q is not a ticket of an authorizer (want %q or %q)", i, truncate(t, 32), contract.TicketJSAPI, contract.TicketWXCard))
		case seen[t]:
			p = append(p, fmt.Sprintf("authorizer_tickets[%d]: %q is listed twice", i, t))
		}
		seen[t] = true
	}
	return p
}

// resolveCallback reads a component's callback token and AES key from
// the environment and checks them with wxcrypt.
func (a *AppConfig) resolveCallback() []string {
	if a.Kind != KindWeChatComponent || a.Callback.TokenEnv == "" || a.Callback.AESKeyEnv == "" {
		return nil
	}
	var p []string
	read := func(key, name string) string {
		v := strings.TrimSpace(os.Getenv(name))
		if v == "" {
			p = append(p, fmt.Sprintf("%s: environment variable %s is not set or empty", key, name))
		}
		return v
	}
	cb := callbackSecrets{token: read("callback.token_env", a.Callback.TokenEnv), aesKey: read("callback.aes_key_env", a.Callback.AESKeyEnv)}
	if len(p) > 0 {
		return p
	}
	if _, err := wxcrypt.New(cb.token, cb.aesKey, a.AppID); err != nil {
		// wxcrypt names the setting, never its value.
		return []string{fmt.Sprintf("callback: %v", err)}
	}
	a.cb = cb
	return nil
}

// resolveKeyring loads the secrets bucket's keyring when a component is
// configured (or a key is), reporting every problem.
func (c *Config) resolveKeyring() []string {
	if !c.hasComponents() && !c.Secrets.Configured() {
		return nil
	}
	k, err := c.Secrets.Load()
	if err != nil {
		var p []string
		for _, e := range unjoin(err) {
			p = append(p, e.Error())
		}
		return p
	}
	c.keyring = k
	return nil
}

// unjoin splits an errors.Join error into its errors.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// componentUnresolved reports, without reading anything, a component
// whose callback secrets or the keyring have not been read.
func (c *Config) componentUnresolved() []string {
	var p []string
	for i := range c.Apps {
		a := &c.Apps[i]
		if a.Kind == KindWeChatComponent && a.cb == (callbackSecrets{}) {
			p = append(p, fmt.Sprintf("%s.callback: the token and AES key have not been read; load the config with LoadConfig or call Config.ResolveSecrets", a.where(i)))
		}
	}
	if c.hasComponents() && c.keyring == nil {
		p = append(p, "secrets_key_env: the secrets key has not been read (a wechat-component needs it); load the config with LoadConfig or call Config.ResolveSecrets")
	}
	return p
}

// errNoSecrets: a secrets operation on a refresher without a secrets
// bucket (no component configured).
var errNoSecrets = errors.New("refresher: no secrets bucket (no wechat-component configured)")

// componentsUnchanged refuses a Reload that adds, removes or re-keys a
// wechat-component: its callback crypto and the secrets bucket are set
// up at start.
func (r *Refresher) componentsUnchanged(cfg *Config) error {
	type cb struct {
		appid   string
		cb      callbackSecrets
		tickets string
	}
	of := func(c *Config) map[string]cb {
		m := map[string]cb{}
		for _, a := range c.Apps {
			if a.Kind == KindWeChatComponent {
				m[a.Name] = cb{a.AppID, a.cb, strings.Join(a.AuthorizerTickets, ",")}
			}
		}
		return m
	}
	r.mu.Lock()
	old := of(r.cfg)
	r.mu.Unlock()
	now := of(cfg)
	same := len(old) == len(now)
	for name, v := range now {
		same = same && old[name] == v
	}
	if !same {
		return &ConfigError{Problems: []string{"apps: adding, removing or changing the appid, callback or authorizer_tickets of a wechat-component needs a restart; nothing was changed"}}
	}
	return nil
}
