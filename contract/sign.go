package contract

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"
)

// JSSDKSignature is the signature of a JS-SDK config (wx.config, and
// WeCom's wx.agentConfig with the agent_config ticket): the lowercase hex
// SHA-1 of
//
//	jsapi_ticket=<ticket>&noncestr=<nonceStr>&timestamp=<timestamp>&url=<url>
//
// with url cut at its first '#' (WeChat signs the page URL without the
// fragment) and nothing URL-escaped. timestamp is in Unix seconds and must
// be the one the page passes to wx.config, as must nonceStr.
func JSSDKSignature(ticket, nonceStr string, timestamp int64, url string) string {
	url, _, _ = strings.Cut(url, "#")
	var b strings.Builder
	b.Grow(len("jsapi_ticket=&noncestr=&timestamp=&url=") + len(ticket) + len(nonceStr) + 20 + len(url))
	b.WriteString("jsapi_ticket=")
	b.WriteString(ticket)
	b.WriteString("&noncestr=")
	b.WriteString(nonceStr)
	b.WriteString("&timestamp=")
	b.WriteString(strconv.FormatInt(timestamp, 10))
	b.WriteString("&url=")
	b.WriteString(url)
	sum := sha1.Sum([]byte(b.String()))
	return hex.EncodeToString(sum[:])
}

// SignRequest is the body of a token.sign.<app> request (v2): the page
// URL to sign and, optionally, which ticket signs it (TicketJSAPI when
// empty; TicketAgentConfig for WeCom's wx.agentConfig). The fragment of
// URL is ignored.
type SignRequest struct {
	URL    string `json:"url"`
	Ticket string `json:"ticket,omitempty"`
}

// SignReply is the successful reply to a token.sign.<app> request: what a
// page passes to wx.config (or wx.agentConfig). AppID is the appid (the
// corpid for WeCom); Timestamp is in Unix seconds; AgentID is set only for
// the agent_config ticket. Failures are error replies as for
// token.refresh (ErrorReply and the micro error headers).
type SignReply struct {
	AppID     string `json:"appId"`
	Timestamp int64  `json:"timestamp"`
	NonceStr  string `json:"nonceStr"`
	Signature string `json:"signature"`
	AgentID   int64  `json:"agentId,omitempty"`
}

// Limits of a token.sign request (v2).
const (
	// MaxSignURL is the longest page URL a token.sign request may ask to
	// sign, in bytes.
	MaxSignURL = 4 << 10
	// MaxSignRequestBody is the largest token.sign request body accepted.
	MaxSignRequestBody = MaxSignURL + 1024
)

// CheckSignURL reports what is wrong with a page URL to sign: empty,
// over MaxSignURL bytes, not valid UTF-8, not an absolute http(s) URL
// with a host, or not parseable. The error quotes at most 64 bytes of it.
func CheckSignURL(u string) error {
	switch {
	case u == "":
		return errors.New("url is missing (want the absolute http(s) URL of the page, without its #fragment)")
	case len(u) > MaxSignURL:
		return fmt.Errorf("url of %d bytes is over the limit of %d", len(u), MaxSignURL)
	case !utf8.ValidString(u):
		return errors.New("url is not valid UTF-8")
	}
	p, err := url.Parse(u)
	if err != nil {
		return fmt.Errorf("url %s does not parse", quoteShort(u))
	}
	if (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
		return fmt.Errorf("url %s is not an absolute http(s) URL with a host", quoteShort(u))
	}
	return nil
}
