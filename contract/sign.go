package contract

import (
	"crypto/sha1"
	"encoding/hex"
	"strconv"
	"strings"
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
