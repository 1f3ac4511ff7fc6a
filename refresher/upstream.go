package refresher

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// fetchToken makes the upstream token call of cfg's kind, each attempt
// passing gate: the WeChat family and Feishu through wechat.Client, OAuth2
// through golang.org/x/oauth2/clientcredentials (under the same client's
// retries, timeouts and gate).
func (r *Refresher) fetchToken(ctx context.Context, cfg AppConfig, force bool, gate wechat.Gate) (wechat.Token, error) {
	c := r.clientFor(cfg)
	if cfg.Kind == KindWeChatComponent {
		return r.fetchComponentToken(ctx, c, cfg, gate) // component.go
	}
	if cfg.Kind == KindOAuth2 {
		return fetchOAuth2(ctx, c, cfg, gate)
	}
	return c.FetchGated(ctx, cfg.Kind, cfg.APIBase, cfg.credentials(), force, gate)
}

// clientFor returns the upstream client of cfg: the refresher's own, or
// one that sends through the app's (or upstream.proxy's) proxy.
func (r *Refresher) clientFor(cfg AppConfig) *wechat.Client {
	proxy := cfg.Proxy
	if proxy == "" {
		r.mu.Lock()
		proxy = r.cfg.Upstream.Proxy
		r.mu.Unlock()
	}
	if proxy == "" {
		return r.client
	}
	r.proxyMu.Lock()
	defer r.proxyMu.Unlock()
	if c, ok := r.proxied[proxy]; ok {
		return c
	}
	var pu *url.URL
	if proxy != ProxyDirect {
		u, err := url.Parse(proxy)
		if err != nil { // Validate refused it; stay direct rather than fail open
			return r.client
		}
		pu = u
	}
	c := r.client.Clone(wechat.WithHTTPClient(wechat.ProxyHTTPClient(pu)))
	if r.proxied == nil {
		r.proxied = map[string]*wechat.Client{}
	}
	r.proxied[proxy] = c
	return c
}

// proxyClients is embedded in Refresher: one upstream client per proxy.
type proxyClients struct {
	proxyMu sync.Mutex
	proxied map[string]*wechat.Client
}

// OAuth2Error is an RFC 6749 §5.2 error answer of an OAuth2 token
// endpoint (or any other non-200 answer of it). It unwraps to a
// *wechat.HTTPError with the status, so wechat.IsRetryable classifies it:
// 5xx, 429 and 408 are retried, 400 and 401 (invalid_client,
// invalid_scope, …) are permanent.
type OAuth2Error struct {
	Status      int
	Code        string // "invalid_client", …; empty if the body had none
	Description string // sanitised error_description
}

func (e *OAuth2Error) Error() string {
	s := "oauth2: token endpoint answered HTTP " + strconv.Itoa(e.Status)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Description != "" {
		s += ": " + e.Description
	}
	return s
}

// Unwrap returns the HTTP status as a *wechat.HTTPError.
func (e *OAuth2Error) Unwrap() error { return &wechat.HTTPError{Status: e.Status} }

// defaultOAuth2Lifetime is the lifetime assumed for an OAuth2 token whose
// answer has no expires_in (RFC 6749 makes it only RECOMMENDED).
const defaultOAuth2Lifetime = time.Hour

// fetchOAuth2 fetches a client_credentials token for cfg.
func fetchOAuth2(ctx context.Context, c *wechat.Client, cfg AppConfig, gate wechat.Gate) (wechat.Token, error) {
	cc := clientcredentials.Config{
		ClientID:     cfg.ClientID,
		ClientSecret: cfg.Secret(),
		TokenURL:     cfg.TokenURL,
		Scopes:       cfg.Scopes,
		AuthStyle:    oauth2.AuthStyleInHeader,
	}
	if cfg.AuthStyle == AuthStyleParams {
		cc.AuthStyle = oauth2.AuthStyleInParams
	}
	if cfg.Audience != "" {
		cc.EndpointParams = url.Values{"audience": {cfg.Audience}}
	}
	var tok wechat.Token
	what := "oauth2 token for client " + cfg.ClientID
	err := c.Run(ctx, what, urlPathOf(cfg.TokenURL), cfg.Secret(), gate, func(actx context.Context) error {
		actx = context.WithValue(actx, oauth2.HTTPClient, c.HTTPClient())
		t, err := cc.Token(actx)
		if err != nil {
			return oauth2Err(err)
		}
		life := time.Duration(t.ExpiresIn) * time.Second
		if life <= 0 && !t.Expiry.IsZero() {
			life = time.Until(t.Expiry)
		}
		if life <= 0 {
			life = defaultOAuth2Lifetime
		}
		if t.AccessToken == "" {
			return fmt.Errorf("%w: no access_token in the answer", wechat.ErrBadResponse)
		}
		if tt := t.Type(); tt != "Bearer" {
			return fmt.Errorf("%w: token_type %q is not Bearer", wechat.ErrBadResponse, tt)
		}
		tok = wechat.Token{AccessToken: t.AccessToken, ExpiresIn: life}
		return nil
	})
	return tok, err
}

// oauth2Err turns an error of x/oauth2 into one that classifies like the
// other upstreams' and never carries the response body (it may echo the
// request).
func oauth2Err(err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		status := 0
		if re.Response != nil {
			status = re.Response.StatusCode
		}
		if status == http.StatusOK {
			// A 200 that did not parse as a token.
			return fmt.Errorf("%w: the token endpoint's answer is not a token", wechat.ErrBadResponse)
		}
		return &OAuth2Error{Status: cmp.Or(status, http.StatusBadGateway), Code: re.ErrorCode,
			Description: sanitize(re.ErrorDescription, 200)}
	}
	return err
}

// urlPathOf returns the path of a URL, for audit records ("" if it does
// not parse).
func urlPathOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Path
}
