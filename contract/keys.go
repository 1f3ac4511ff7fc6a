package contract

import (
	"errors"
	"fmt"
	"strings"
)

// MaxAppName is the longest app name (and the longest segment of a key).
const MaxAppName = 64

// MaxKeySegments is the number of segments of the longest key:
// <component>.<authorizer_appid>.<ticket>.
const MaxKeySegments = 3

// Ticket types: the last segment of a ticket key <app>.<ticket> (v2).
const (
	TicketJSAPI       = "jsapi"        // JS-SDK ticket (wechat, wechat-stable, wecom)
	TicketWXCard      = "wx_card"      // card ticket (wechat, wechat-stable)
	TicketAgentConfig = "agent_config" // wx.agentConfig ticket (wecom)
)

// ErrInvalidKey marks a key that ValidKey rejects.
var ErrInvalidKey = errors.New("invalid key")

// ValidAppName reports whether name is a legal app name: 1–64 characters
// of [A-Za-z0-9_-], so that it is one NATS subject token and one KV key.
func ValidAppName(name string) bool {
	if len(name) == 0 || len(name) > MaxAppName {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// ValidKey reports whether key is a legal key of the tokens bucket: an
// app name (v1), or an app name followed by one or two more segments of
// the same alphabet, joined by dots (v2): <app>.<ticket>,
// <component>.<authorizer_appid>, <component>.<authorizer_appid>.<ticket>.
// Whether the second segment is a ticket type or an authorizer appid
// depends on the kind of the configured app, which the key does not say.
func ValidKey(key string) bool {
	_, _, err := ParseKey(key)
	return err == nil
}

// ParseKey splits key into its app (the first segment, the configured
// app) and the rest after the first dot ("" for a v1 key). The error wraps
// ErrInvalidKey.
func ParseKey(key string) (app, rest string, err error) {
	app, rest, _ = strings.Cut(key, ".")
	segs := strings.Split(key, ".")
	if len(segs) > MaxKeySegments {
		return "", "", fmt.Errorf("%w %s: more than %d segments", ErrInvalidKey, quoteShort(key), MaxKeySegments)
	}
	for _, s := range segs {
		if !ValidAppName(s) {
			return "", "", fmt.Errorf("%w %s: each dot-separated segment must be 1–%d characters of [A-Za-z0-9_-]",
				ErrInvalidKey, quoteShort(key), MaxAppName)
		}
	}
	return app, rest, nil
}

// Key joins an app and further segments into a key: Key("mp", "jsapi")
// is "mp.jsapi". It does not validate; see ValidKey.
func Key(app string, rest ...string) string {
	if len(rest) == 0 {
		return app
	}
	return app + "." + strings.Join(rest, ".")
}
