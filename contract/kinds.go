package contract

// Kinds of app, as the refresher's config (apps[].kind) and records
// (Record.Kind) name them.
const (
	KindWeChat       = "wechat"        // WeChat /cgi-bin/token
	KindWeChatStable = "wechat-stable" // WeChat /cgi-bin/stable_token
	KindWeCom        = "wecom"         // WeCom (企业微信) /cgi-bin/gettoken, per app
	KindFeishu       = "feishu"        // Feishu tenant_access_token/internal
	KindOAuth2       = "oauth2"        // RFC 6749 §4.4 client_credentials
	// KindWeChatComponent is an Open Platform third-party platform: its
	// component_access_token under <component>, each authorizer's token
	// under <component>.<authorizer_appid> (v2).
	KindWeChatComponent = "wechat-component"
)

// Placement is where a business request carries the credential.
type Placement int

const (
	// PlaceQuery: the access_token query parameter (WeChat, WeCom).
	PlaceQuery Placement = iota
	// PlaceBearer: the Authorization: Bearer header (Feishu, OAuth2;
	// RFC 6750).
	PlaceBearer
)

// PlacementOf returns where a token of kind goes; an empty or unknown
// kind is WeChat's (records written before v2 have no kind).
func PlacementOf(kind string) Placement {
	switch kind {
	case KindFeishu, KindOAuth2:
		return PlaceBearer
	}
	return PlaceQuery
}

// Answer is what a client found in a business API's answer, for
// RejectedAnswer: the HTTP status, and the JSON body's errcode (WeChat,
// WeCom) or code (Feishu) when it has one.
type Answer struct {
	Status  int
	Errcode int
	HasErr  bool // the body had an integer errcode
	Code    int
	HasCode bool // the body had an integer code
}

// RejectedAnswer reports whether a business answer says the token of
// kind it was given is invalid, not the latest or expired — so a refresh
// with that token's revision as stale_revision, and one retry, are in
// order:
//
//   - wechat, wechat-stable, wecom (and an empty kind): errcode 40001,
//     40014 or 42001 (RejectedTokenCode), whatever the status;
//   - feishu: code 99991663, 99991668, 99991671 or 99991677
//     (RejectedFeishuCode), whatever the status;
//   - oauth2: HTTP 401 (RFC 6750 §3.1 invalid_token).
func RejectedAnswer(kind string, a Answer) bool {
	switch kind {
	case KindFeishu:
		return a.HasCode && RejectedFeishuCode(a.Code)
	case KindOAuth2:
		return a.Status == 401 // Unauthorized
	}
	return a.HasErr && RejectedTokenCode(a.Errcode)
}

// RejectedFeishuCode reports whether a Feishu API's code says the tenant
// access token was rejected: 99991663 (invalid tenant access token),
// 99991668 (invalid access token), 99991671 (malformed token) or
// 99991677 (expired).
func RejectedFeishuCode(code int) bool {
	switch code {
	case 99991663, 99991668, 99991671, 99991677:
		return true
	}
	return false
}
