package wechat

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"
)

// Kinds of upstream token endpoint, as named in the refresher's config.
const (
	// KindClassic is GET /cgi-bin/token. Every call returns a new token and
	// invalidates the previous one after a short overlap.
	KindClassic = "wechat"
	// KindStable is POST /cgi-bin/stable_token. In normal mode it returns
	// the current token until its last minutes; with force_refresh it
	// issues a new one (limited to 20 a day, 30 s apart).
	KindStable = "wechat-stable"
	// KindWeCom is WeCom's (企业微信) GET /cgi-bin/gettoken?corpid=…&corpsecret=…
	// of one app: Credentials.AppID is the corpid, Secret that app's
	// secret. A fetch inside the validity returns the same token; a new
	// one exists only after expiry.
	KindWeCom = "wecom"
	// KindFeishu is Feishu's POST
	// /open-apis/auth/v3/tenant_access_token/internal with the JSON body
	// {"app_id","app_secret"}: the same token while at least 30 minutes
	// of it remain, a new one (the old one still valid) after.
	KindFeishu = "feishu"
)

// ValidKind reports whether kind is one of [KindClassic], [KindStable],
// [KindWeCom] and [KindFeishu].
func ValidKind(kind string) bool {
	switch kind {
	case KindClassic, KindStable, KindWeCom, KindFeishu:
		return true
	}
	return false
}

// DefaultBase returns the API origin of kind: [DefaultBaseURL] for the
// WeChat kinds, [DefaultWeComBaseURL] and [DefaultFeishuBaseURL].
func DefaultBase(kind string) string {
	switch kind {
	case KindWeCom:
		return DefaultWeComBaseURL
	case KindFeishu:
		return DefaultFeishuBaseURL
	}
	return DefaultBaseURL
}

// redacted replaces a secret in every formatting of this package.
const redacted = "REDACTED"

// Credentials identify one WeChat app to the token endpoint.
//
// Credentials never print their Secret: String, GoString, every fmt verb
// (%v, %+v, %#v, %s, %q), slog and encoding/json all show the AppID and
// "REDACTED" in its place (or nothing if the Secret is empty). A
// Credentials value therefore cannot be round-tripped through JSON; load
// secrets from their own source.
type Credentials struct {
	// AppID is the app's public identifier, e.g. wx0123456789abcdef.
	AppID string
	// Secret is the AppSecret. It is sent to the token endpoint only.
	Secret string
}

func (c Credentials) shownSecret() string {
	if c.Secret == "" {
		return ""
	}
	return redacted
}

// String returns the credentials with the secret redacted, in the shape
// of %v: {AppID REDACTED}.
func (c Credentials) String() string { return "{" + c.AppID + " " + c.shownSecret() + "}" }

// GoString returns the credentials with the secret redacted, in the shape
// of %#v.
func (c Credentials) GoString() string {
	return "wechat.Credentials{AppID:" + strconv.Quote(c.AppID) + ", Secret:" + strconv.Quote(c.shownSecret()) + "}"
}

// Format implements [fmt.Formatter] so that no verb or flag prints the
// secret.
func (c Credentials) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		_, _ = io.WriteString(f, c.GoString())
	case verb == 'v' && f.Flag('+'):
		_, _ = io.WriteString(f, "{AppID:"+c.AppID+" Secret:"+c.shownSecret()+"}")
	case verb == 'q':
		_, _ = io.WriteString(f, strconv.Quote(c.String()))
	default:
		_, _ = io.WriteString(f, c.String())
	}
}

// LogValue implements [slog.LogValuer]: the AppID and a redacted secret.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(slog.String("appid", c.AppID), slog.String("secret", c.shownSecret()))
}

// MarshalJSON implements [json.Marshaler] with the secret redacted.
func (c Credentials) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		AppID  string
		Secret string
	}{c.AppID, c.shownSecret()})
}

// Token is a successful answer of the token endpoint.
//
// Its formatting (fmt verbs, String, GoString) shows only the length of
// AccessToken, so that a logged Token is not a usable credential; read
// the field itself to use it.
type Token struct {
	// AccessToken is the token exactly as the upstream sent it (WeChat
	// asks for at least 512 characters of storage; no length is assumed).
	AccessToken string
	// ExpiresIn is the lifetime the upstream announced (expires_in),
	// counted from the moment of the answer. Always positive.
	ExpiresIn time.Duration
}

func (t Token) shownToken() string {
	return "<" + strconv.Itoa(len(t.AccessToken)) + " chars>"
}

// String returns the token with AccessToken replaced by its length.
func (t Token) String() string { return "{" + t.shownToken() + " " + t.ExpiresIn.String() + "}" }

// GoString returns the token, in the shape of %#v, with AccessToken
// replaced by its length.
func (t Token) GoString() string {
	return "wechat.Token{AccessToken:" + strconv.Quote(t.shownToken()) + ", ExpiresIn:" + strconv.FormatInt(int64(t.ExpiresIn), 10) + "}"
}

// Format implements [fmt.Formatter] so that no verb prints AccessToken.
func (t Token) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		_, _ = io.WriteString(f, t.GoString())
	case verb == 'v' && f.Flag('+'):
		_, _ = io.WriteString(f, "{AccessToken:"+t.shownToken()+" ExpiresIn:"+t.ExpiresIn.String()+"}")
	case verb == 'q':
		_, _ = io.WriteString(f, strconv.Quote(t.String()))
	default:
		_, _ = io.WriteString(f, t.String())
	}
}
