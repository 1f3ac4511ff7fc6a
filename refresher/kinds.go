package refresher

import (
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// Kinds of app (the apps[].kind key), as contract names them.
const (
	KindWeChat       = contract.KindWeChat       // GET /cgi-bin/token
	KindWeChatStable = contract.KindWeChatStable // POST /cgi-bin/stable_token
	KindWeCom        = contract.KindWeCom        // 企业微信 GET /cgi-bin/gettoken, per app
	KindFeishu       = contract.KindFeishu       // tenant_access_token/internal
	KindOAuth2       = contract.KindOAuth2       // RFC 6749 §4.4 client_credentials
	// KindWeChatComponent is an Open Platform third-party platform
	// (component.go): component token, authorizers, callback.
	KindWeChatComponent = contract.KindWeChatComponent
)

// rotation is how an upstream hands out new credentials; the planner
// schedules by it.
type rotation int

const (
	// rotateOnFetch: every fetch issues a new credential and the previous
	// one stays valid for an overlap (WeChat token and tickets, OAuth2).
	// Refresh at RefreshAt (2/3 of the lifetime).
	rotateOnFetch rotation = iota
	// sameUntilExpiry: a fetch inside the validity returns the same
	// credential; a new one exists only after expiry (WeCom token and
	// tickets). The first known expires_at of a credential is kept, and
	// the next attempt is made at expiry, never in a loop before it.
	sameUntilExpiry
	// sameUntilWindow: the same credential while more than a window of it
	// remains, a new one (the old still valid) after (Feishu, stable_token
	// in normal mode). Refresh at RefreshAt; a fetch that hands back the
	// same credential is checked again later inside the remaining life.
	sameUntilWindow
)

func (r rotation) String() string {
	switch r {
	case sameUntilExpiry:
		return "same-until-expiry"
	case sameUntilWindow:
		return "same-until-window"
	}
	return "rotate-on-fetch"
}

// kindSpec is what the refresher knows of one kind: the provider boundary.
// How to fetch is in the upstream clients (wechat.Client for the WeChat
// family and Feishu, oauth2Fetch for OAuth2); which errcodes mean what is
// in the wechat package's sentinels (retryable / permanent / rejected /
// quota); the rest is here.
type kindSpec struct {
	// id is the config key naming the upstream identity: appid, corpid or
	// client_id. Records carry it as "appid".
	id string
	// keys are the kind-specific config keys the kind accepts besides
	// name, kind, secret_env/secret_file, daily_quota and proxy.
	keys []string
	// tickets are the ticket types the kind can keep.
	tickets []string
	// rotation of tokens, and of tickets.
	rotation, ticketRotation rotation
	// hourlyTicketLimit is the upstream's hourly limit of ticket calls
	// per ticket type (0: none; WeChat's tickets count by day).
	hourlyTicketLimit map[string]int
	// corpTickets are the ticket types that belong to the corp, not to
	// the app: fetched once per corp and written under each of its apps.
	corpTickets []string
}

// kindSpecs is every kind the refresher keeps.
var kindSpecs = map[string]kindSpec{
	KindWeChat: {id: "appid", keys: []string{"appid", "api_base", "tickets"},
		tickets: []string{contract.TicketJSAPI, contract.TicketWXCard}},
	KindWeChatStable: {id: "appid", keys: []string{"appid", "api_base", "tickets"},
		tickets:  []string{contract.TicketJSAPI, contract.TicketWXCard},
		rotation: sameUntilWindow},
	KindWeCom: {id: "corpid", keys: []string{"corpid", "agentid", "api_base", "tickets"},
		tickets:  []string{contract.TicketJSAPI, contract.TicketAgentConfig},
		rotation: sameUntilExpiry, ticketRotation: sameUntilExpiry,
		// WeCom: 400 jsapi tickets an hour per corp, 100 agent_config an
		// hour per app.
		hourlyTicketLimit: map[string]int{contract.TicketJSAPI: 400, contract.TicketAgentConfig: 100},
		corpTickets:       []string{contract.TicketJSAPI}},
	KindFeishu: {id: "appid", keys: []string{"appid", "api_base"},
		rotation: sameUntilWindow},
	KindOAuth2:          {id: "client_id", keys: []string{"client_id", "token_url", "scopes", "audience", "auth_style"}},
	KindWeChatComponent: {id: "appid", keys: []string{"appid", "api_base", "callback", "authorizer_tickets"}},
}

// kindNames lists the kinds in the order the docs give them.
var kindNames = []string{KindWeChat, KindWeChatStable, KindWeCom, KindFeishu, KindOAuth2, KindWeChatComponent}

// spec returns the kind's spec (the zero spec, rotate-on-fetch and no
// tickets, for an unknown kind, which Validate refuses).
func (a AppConfig) spec() kindSpec { return kindSpecs[a.Kind] }

// UpstreamID returns the app's identity at its upstream: the appid
// (wechat, wechat-stable, feishu), the corpid (wecom) or the client_id
// (oauth2). Records carry it as "appid".
func (a AppConfig) UpstreamID() string {
	switch a.Kind {
	case KindWeCom:
		return a.CorpID
	case KindOAuth2:
		return a.ClientID
	}
	return a.AppID
}

// refreshMoment is when a credential fetched at fetched and expiring at
// expires is next due under rotation rot: at RefreshAt, or for
// same-until-expiry at expiry (a fetch before it would return the same).
func (p *Policy) refreshMoment(rot rotation, fetched, expires time.Time, draw float64) time.Time {
	if rot == sameUntilExpiry {
		return expires
	}
	return p.RefreshAt(fetched, expires, draw)
}

// sameAgainPause is the least pause before asking a same-until-expiry
// upstream again after it handed back a credential with almost nothing
// left: the attempt at expiry can come a little early for the upstream's
// own clock.
const sameAgainPause = time.Second

// unchangedMoment is when to ask again after a fetch at fetched handed
// back the credential already stored, announcing lifetime left.
func (p *Policy) unchangedMoment(rot rotation, fetched time.Time, left time.Duration, draw float64) time.Time {
	if rot == sameUntilExpiry {
		return fetched.Add(max(left, sameAgainPause))
	}
	return p.RefreshAt(fetched, fetched.Add(left), draw)
}
