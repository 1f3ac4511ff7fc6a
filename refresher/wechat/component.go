package wechat

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Paths of WeChat Open Platform's third-party platform ("component")
// endpoints, below the base URL. Each is a POST with a JSON body; all but
// api_component_token carry component_access_token in the query.
const (
	componentTokenPath = "/cgi-bin/component/api_component_token"
	queryAuthPath      = "/cgi-bin/component/api_query_auth"
	authorizerPath     = "/cgi-bin/component/api_authorizer_token"
	authorizerListPath = "/cgi-bin/component/api_get_authorizer_list"
)

// Errcodes of the component endpoints that callers act on.
const (
	// CodeTicketExpired (61005): the component_verify_ticket is expired;
	// wait for the next push.
	CodeTicketExpired = 61005
	// CodeTicketInvalid (61006): the component_verify_ticket is invalid;
	// wait for the next push.
	CodeTicketInvalid = 61006
	// CodeRefreshTokenInvalid (61023): the authorizer_refresh_token is
	// invalid; the merchant must authorize again.
	CodeRefreshTokenInvalid = 61023
)

// AuthorizerToken is what api_query_auth and api_authorizer_token hand
// back for one authorizer. Its formatting shows no credential.
type AuthorizerToken struct {
	AuthorizerAppID string
	AccessToken     string
	ExpiresIn       time.Duration
	// RefreshToken is the authorizer_refresh_token sent back; empty if the
	// answer had none (keep the one used).
	RefreshToken string
}

// String describes the token without its credentials.
func (t AuthorizerToken) String() string {
	return fmt.Sprintf("{authorizer %s <%d chars> %s refresh <%d chars>}", t.AuthorizerAppID, len(t.AccessToken), t.ExpiresIn, len(t.RefreshToken))
}

// GoString is String.
func (t AuthorizerToken) GoString() string { return t.String() }

// AuthorizerListEntry is one entry of api_get_authorizer_list. Its
// formatting shows no refresh token.
type AuthorizerListEntry struct {
	AuthorizerAppID string `json:"authorizer_appid"`
	RefreshToken    string `json:"refresh_token"`
	AuthTime        int64  `json:"auth_time"`
}

// String describes the entry without its refresh token.
func (e AuthorizerListEntry) String() string {
	return fmt.Sprintf("{authorizer %s refresh <%d chars> auth_time %d}", e.AuthorizerAppID, len(e.RefreshToken), e.AuthTime)
}

// GoString is String.
func (e AuthorizerListEntry) GoString() string { return e.String() }

// AuthorizerList is one page of api_get_authorizer_list.
type AuthorizerList struct {
	Total   int
	Entries []AuthorizerListEntry
}

// ComponentToken fetches a component_access_token: POST
// {base}/cgi-bin/component/api_component_token with
// {"component_appid","component_appsecret","component_verify_ticket"}.
// 61005/61006 come back as an [*Error] with that code: the verify ticket
// is expired or invalid. Retries, timeouts, gate and ctx are as for
// [Client.FetchGated]; no error contains the secret or the ticket.
func (c *Client) ComponentToken(ctx context.Context, base, appid, secret, verifyTicket string, gate Gate) (Token, error) {
	sc := scrubberOf(secret, verifyTicket)
	body := map[string]string{"component_appid": appid, "component_appsecret": secret, "component_verify_ticket": verifyTicket}
	var tok Token
	err := c.componentCall(ctx, base, componentTokenPath, "", body, "component token for appid "+appid, sc, gate, func(data []byte, ct string) error {
		var b struct {
			errcodeBody
			Token     string      `json:"component_access_token"`
			ExpiresIn json.Number `json:"expires_in"`
		}
		if err := decodeAnswer(data, ct, &b.errcodeBody, &b, sc); err != nil {
			return err
		}
		life, err := lifetime(b.ExpiresIn)
		if b.Token == "" || err != nil {
			return fmt.Errorf("%w: no component_access_token or expires_in in the answer", ErrBadResponse)
		}
		tok = Token{AccessToken: b.Token, ExpiresIn: life}
		return nil
	})
	return tok, err
}

// QueryAuth redeems an authorization code: POST
// {base}/cgi-bin/component/api_query_auth?component_access_token=… with
// {"component_appid","authorization_code"}.
func (c *Client) QueryAuth(ctx context.Context, base, componentToken, componentAppID, code string, gate Gate) (AuthorizerToken, error) {
	sc := scrubberOf(componentToken, code)
	body := map[string]string{"component_appid": componentAppID, "authorization_code": code}
	var out AuthorizerToken
	err := c.componentCall(ctx, base, queryAuthPath, componentToken, body, "api_query_auth of component "+componentAppID, sc, gate, func(data []byte, ct string) error {
		var b struct {
			errcodeBody
			Info struct {
				AppID        string      `json:"authorizer_appid"`
				AccessToken  string      `json:"authorizer_access_token"`
				ExpiresIn    json.Number `json:"expires_in"`
				RefreshToken string      `json:"authorizer_refresh_token"`
			} `json:"authorization_info"`
		}
		if err := decodeAnswer(data, ct, &b.errcodeBody, &b, sc); err != nil {
			return err
		}
		life, err := lifetime(b.Info.ExpiresIn)
		if b.Info.AppID == "" || b.Info.AccessToken == "" || b.Info.RefreshToken == "" || err != nil {
			return fmt.Errorf("%w: authorization_info lacks authorizer_appid, a token, expires_in or the refresh token", ErrBadResponse)
		}
		out = AuthorizerToken{AuthorizerAppID: b.Info.AppID, AccessToken: b.Info.AccessToken, ExpiresIn: life, RefreshToken: b.Info.RefreshToken}
		return nil
	})
	return out, err
}

// AuthorizerAccessToken refreshes an authorizer's token: POST
// {base}/cgi-bin/component/api_authorizer_token?component_access_token=…
// with {"component_appid","authorizer_appid","authorizer_refresh_token"}.
// The answer's authorizer_refresh_token, when present, replaces the one
// sent. 61023 (an [*Error]) means the refresh token is no longer valid.
func (c *Client) AuthorizerAccessToken(ctx context.Context, base, componentToken, componentAppID, authorizerAppID, refreshToken string, gate Gate) (AuthorizerToken, error) {
	sc := scrubberOf(componentToken, refreshToken)
	body := map[string]string{"component_appid": componentAppID, "authorizer_appid": authorizerAppID, "authorizer_refresh_token": refreshToken}
	var out AuthorizerToken
	err := c.componentCall(ctx, base, authorizerPath, componentToken, body, "authorizer token of "+authorizerAppID, sc, gate, func(data []byte, ct string) error {
		var b struct {
			errcodeBody
			AccessToken  string      `json:"authorizer_access_token"`
			ExpiresIn    json.Number `json:"expires_in"`
			RefreshToken string      `json:"authorizer_refresh_token"`
		}
		if err := decodeAnswer(data, ct, &b.errcodeBody, &b, sc); err != nil {
			return err
		}
		life, err := lifetime(b.ExpiresIn)
		if b.AccessToken == "" || err != nil {
			return fmt.Errorf("%w: no authorizer_access_token or expires_in in the answer", ErrBadResponse)
		}
		out = AuthorizerToken{AuthorizerAppID: authorizerAppID, AccessToken: b.AccessToken, ExpiresIn: life, RefreshToken: b.RefreshToken}
		return nil
	})
	return out, err
}

// MaxAuthorizerListPage is the largest count api_get_authorizer_list
// accepts.
const MaxAuthorizerListPage = 500

// authorizerListMaxBody is the largest answer of api_get_authorizer_list
// read (unless the client's limit is larger): 1 KiB per entry of a full
// page. An entry (appid, refresh token, auth_time) is about 130 bytes,
// so a full page is over DefaultMaxBody.
const authorizerListMaxBody = MaxAuthorizerListPage << 10

// AuthorizerListPage reads one page of the component's authorizers: POST
// {base}/cgi-bin/component/api_get_authorizer_list?component_access_token=…
// with {"component_appid","offset","count"}.
func (c *Client) AuthorizerListPage(ctx context.Context, base, componentToken, componentAppID string, offset, count int, gate Gate) (AuthorizerList, error) {
	sc := scrubberOf(componentToken)
	body := map[string]any{"component_appid": componentAppID, "offset": offset, "count": count}
	var out AuthorizerList
	err := c.componentCall(ctx, base, authorizerListPath, componentToken, body, "authorizer list of component "+componentAppID, sc, gate, func(data []byte, ct string) error {
		var b struct {
			errcodeBody
			Total *int                  `json:"total_count"`
			List  []AuthorizerListEntry `json:"list"`
		}
		if err := decodeAnswer(data, ct, &b.errcodeBody, &b, sc); err != nil {
			return err
		}
		if b.Total == nil {
			return fmt.Errorf("%w: no total_count in the authorizer list", ErrBadResponse)
		}
		out = AuthorizerList{Total: *b.Total, Entries: b.List}
		return nil
	})
	return out, err
}

// componentCall makes the attempts of one component endpoint call.
func (c *Client) componentCall(ctx context.Context, base, path, componentToken string, body any, what string, sc scrubber, gate Gate,
	parse func(data []byte, contentType string) error) error {
	var limit int64
	if path == authorizerListPath {
		limit = authorizerListMaxBody
	}
	if base == "" {
		base = c.baseFor(KindClassic)
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return newFetchError(sc, "fetch "+what+": base URL is not an absolute http(s) URL without query or fragment", ErrInvalidArgument)
	}
	u.Path = strings.TrimRight(u.Path, "/") + path
	u.RawPath = ""
	red := sc.scrub(u.Redacted())
	if componentToken != "" {
		u.RawQuery = "component_access_token=" + redacted
		red = sc.scrub(u.Redacted())
		u.RawQuery = "component_access_token=" + url.QueryEscape(componentToken)
	}
	data, err := json.Marshal(body)
	if err != nil {
		return newFetchError(sc, "fetch "+what+": encoding the request body", ErrInvalidArgument)
	}
	req := request{method: http.MethodPost, url: u.String(), redactedURL: red, body: data, maxBody: limit}
	return c.run(ctx, what, what, u.Path, sc, gate, func(actx context.Context) error {
		data, ct, err := c.roundTrip(actx, req, sc)
		if err != nil {
			return err
		}
		return parse(data, ct)
	})
}

// decodeAnswer decodes a 200 body into v and turns a non-zero errcode
// (read into eb, part of v) into an *Error.
func decodeAnswer(body []byte, contentType string, eb *errcodeBody, v any, sc scrubber) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return fmt.Errorf("%w: empty body", ErrBadResponse)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%w: body is not a JSON answer (%s, %d bytes)", ErrBadResponse, describeType(contentType, sc), len(body))
	}
	if eb.Errcode != nil {
		code, err := strconv.Atoi(eb.Errcode.String())
		if err != nil {
			return fmt.Errorf("%w: errcode is not an integer", ErrBadResponse)
		}
		if code != 0 {
			return &Error{Code: code, Msg: sc.cleanMsg(eb.Errmsg)}
		}
	}
	return nil
}

// lifetime parses a positive expires_in.
func lifetime(n json.Number) (time.Duration, error) {
	secs, err := n.Float64()
	if n == "" || err != nil || !(secs > 0) || secs > math.MaxInt64/float64(time.Second) {
		return 0, fmt.Errorf("%w: expires_in missing, not a number or not positive", ErrBadResponse)
	}
	return time.Duration(secs * float64(time.Second)), nil
}

// scrubberOf is a scrubber for several secrets at once.
func scrubberOf(secrets ...string) scrubber {
	var s scrubber
	for _, sec := range secrets {
		for _, f := range newScrubber(sec).forms {
			if !slices.Contains(s.forms, f) {
				s.forms = append(s.forms, f)
			}
		}
	}
	slices.SortStableFunc(s.forms, func(a, b string) int { return len(b) - len(a) })
	return s
}
