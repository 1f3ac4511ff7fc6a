package refresher

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
)

// Values of apps[].auth_style (kind oauth2).
const (
	AuthStyleHeader = "header" // HTTP Basic with client_id and the secret
	AuthStyleParams = "params" // client_id and client_secret in the form body
)

// ProxyDirect as an app's proxy sends its upstream calls without the
// global upstream.proxy.
const ProxyDirect = "direct"

// kindProblems reports the kind-specific keys of a that are missing,
// malformed, or set although the kind does not use them, each problem
// starting with the key.
func (a *AppConfig) kindProblems() []string {
	var p []string
	spec := a.spec()
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }
	uses := func(key string) bool { return slices.Contains(spec.keys, key) }
	set := map[string]bool{
		"appid":      a.AppID != "",
		"corpid":     a.CorpID != "",
		"agentid":    a.AgentID != 0,
		"api_base":   a.APIBase != "" && !uses("api_base"),
		"token_url":  a.TokenURL != "",
		"client_id":  a.ClientID != "",
		"scopes":     len(a.Scopes) > 0,
		"audience":   a.Audience != "",
		"auth_style": a.AuthStyle != "",
	}
	for _, key := range []string{"appid", "corpid", "agentid", "api_base", "token_url", "client_id", "scopes", "audience", "auth_style"} {
		if set[key] && !uses(key) {
			add("%s: not a key of kind %s", key, a.Kind)
		}
	}
	missing := func(key string, empty bool) {
		if empty {
			add("%s: missing", key)
		}
	}
	switch a.Kind {
	case KindWeChat, KindWeChatStable, KindFeishu:
		missing("appid", a.AppID == "")
	case KindWeCom:
		missing("corpid", a.CorpID == "")
		switch {
		case a.AgentID == 0:
			add("agentid: missing (the app's AgentId, an integer; a token is per app, never per corp)")
		case a.AgentID < 0:
			add("agentid: %d is negative", a.AgentID)
		}
	case KindOAuth2:
		missing("client_id", a.ClientID == "")
		if a.TokenURL == "" {
			add("token_url: missing")
		} else if err := checkHTTPURL(a.TokenURL, true); err != nil {
			add("token_url: %v", err)
		}
		switch a.AuthStyle {
		case AuthStyleHeader, AuthStyleParams:
		default:
			add("auth_style: %q is not %s or %s", a.AuthStyle, AuthStyleHeader, AuthStyleParams)
		}
		for i, s := range a.Scopes {
			if s == "" || strings.ContainsAny(s, " \t\r\n\"\\") {
				add("scopes[%d]: %q is not a scope (no spaces, quotes or backslashes)", i, s)
			}
		}
	}
	if uses("api_base") {
		if err := checkHTTPURL(a.APIBase, false); err != nil {
			add("api_base: %v", err)
		}
	}
	return p
}

// checkHTTPURL reports whether raw is an absolute http(s) URL (with a
// query allowed only if query is true), without quoting credentials.
func checkHTTPURL(raw string, query bool) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an http(s) URL", redactURLUser(raw))
	}
	if u.User != nil {
		return fmt.Errorf("%q carries credentials; put them in secret_env or secret_file", redactURLUser(raw))
	}
	if u.Fragment != "" || (!query && u.RawQuery != "") {
		return fmt.Errorf("%q has a query or fragment", redactURLUser(raw))
	}
	return nil
}

// checkProxyURL reports whether raw is an http(s) proxy URL. A password in
// it is never quoted.
func checkProxyURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" && u.Path != "/" || u.RawQuery != "" {
		return fmt.Errorf("%q is not an http(s)://host:port proxy URL", redactURLUser(raw))
	}
	return nil
}

// redactURLUser returns raw with any password replaced, for messages.
func redactURLUser(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if i := strings.LastIndex(raw, "@"); i >= 0 {
			return "REDACTED@" + raw[i+1:]
		}
		return raw
	}
	return u.Redacted()
}
