package wechat

import (
	"net/http"
	"net/url"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/backoff"
)

// Defaults of a [Client] made by [New].
const (
	// DefaultBaseURL is the WeChat API origin.
	DefaultBaseURL = "https://api.weixin.qq.com"
	// DefaultWeComBaseURL is the WeCom (企业微信) API origin.
	DefaultWeComBaseURL = "https://qyapi.weixin.qq.com"
	// DefaultFeishuBaseURL is the Feishu open platform origin.
	DefaultFeishuBaseURL = "https://open.feishu.cn"
	// DefaultTimeout bounds each HTTP attempt.
	DefaultTimeout = 10 * time.Second
	// DefaultMaxBody is the largest response body read (64 KiB).
	DefaultMaxBody = 64 << 10
	// DefaultAttempts is the default RetryPolicy.Attempts.
	DefaultAttempts = 4
	// DefaultBackoffBase is the default RetryPolicy.Base.
	DefaultBackoffBase = 200 * time.Millisecond
	// DefaultBackoffMax is the default RetryPolicy.Max.
	DefaultBackoffMax = 5 * time.Second
)

// Option configures a [Client] in [New]. A nil Option is ignored.
type Option func(*Client)

// RetryPolicy bounds the attempts of one Fetch. Before attempt n+1 Fetch
// waits a uniformly random time in [0, min(Max, Base·2^(n-1))) (full
// jitter). Zero or negative fields take their defaults ([DefaultAttempts],
// [DefaultBackoffBase], [DefaultBackoffMax]): 4 attempts, 200 ms, 5 s.
// Attempts 1 means no retry. A Max below Base is raised to Base.
type RetryPolicy struct {
	// Attempts is the most HTTP attempts one Fetch makes, the first included.
	Attempts int
	// Base is the backoff cap before the second attempt; it doubles per attempt.
	Base time.Duration
	// Max caps the backoff.
	Max time.Duration
}

// normalized fills zero fields with the defaults.
func (p RetryPolicy) normalized() RetryPolicy {
	if p.Attempts <= 0 {
		p.Attempts = DefaultAttempts
	}
	if p.Base <= 0 {
		p.Base = DefaultBackoffBase
	}
	if p.Max <= 0 {
		p.Max = DefaultBackoffMax
	}
	if p.Max < p.Base {
		p.Max = p.Base
	}
	return p
}

// backoff returns the wait before attempt n+1 after attempt n failed
// (n ≥ 1): full jitter, uniform in [0, min(p.Max, p.Base·2^(n-1))).
func (p RetryPolicy) backoff(n int) time.Duration {
	return backoff.Delay(n, p.Base, p.Max, backoff.Full)
}

// WithHTTPClient makes the client send its requests with hc (its
// Transport, proxy and TLS settings). Redirects are never followed, whatever
// hc.CheckRedirect says: a redirect would carry the secret elsewhere. A
// nil hc is ignored.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) {
		if hc != nil {
			c.hc = noRedirects(hc)
		}
	}
}

// WithBaseURL sets the origin (and optional path prefix) of the token
// endpoints, e.g. "http://127.0.0.1:8090/wechat"; default
// [DefaultBaseURL]. An empty string is ignored. The URL is checked by
// Fetch, which fails with [ErrInvalidArgument] if it is not an absolute
// http(s) URL. A non-empty base argument of Fetch overrides it.
func WithBaseURL(base string) Option {
	return func(c *Client) {
		if base != "" {
			c.base = base
		}
	}
}

// WithTimeout bounds each HTTP attempt, reading the body included; default
// [DefaultTimeout]. Zero or negative is ignored.
func WithTimeout(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.timeout = d
		}
	}
}

// WithRetry sets the retry policy; default: 4 attempts, 200 ms base, 5 s
// max. See [RetryPolicy] for how zero fields are filled.
func WithRetry(p RetryPolicy) Option {
	return func(c *Client) { c.retry = p.normalized() }
}

// WithMaxBody sets the largest response body read, in bytes; default
// [DefaultMaxBody]. A larger body fails the attempt with [ErrBadResponse].
// Zero or negative is ignored.
func WithMaxBody(n int64) Option {
	return func(c *Client) {
		if n > 0 {
			c.maxBody = n
		}
	}
}

// WithAttemptHook installs f, called synchronously after every HTTP
// attempt of Fetch with the AppID, the attempt number (1-based), the
// attempt's error (nil on success; already redacted, safe to log) and the
// attempt's duration. Use it for metrics and logs; it must not block.
// A nil f removes the hook.
func WithAttemptHook(f func(appid string, attempt int, err error, d time.Duration)) Option {
	return func(c *Client) { c.hook = f }
}

// Clone returns a copy of c with opts applied on top of c's settings (the
// refresher gives each upstream proxy its own client this way).
func (c *Client) Clone(opts ...Option) *Client {
	n := *c
	for _, o := range opts {
		if o != nil {
			o(&n)
		}
	}
	return &n
}

// ProxyHTTPClient returns an *http.Client like the default one (no
// redirects followed) whose requests go through the HTTP CONNECT proxy
// proxy (nil: straight to the upstream, ignoring HTTPS_PROXY).
func ProxyHTTPClient(proxy *url.URL) *http.Client {
	t := defaultTransport().(*http.Transport)
	t.Proxy = nil
	if proxy != nil {
		t.Proxy = http.ProxyURL(proxy)
	}
	return noRedirects(&http.Client{Transport: t})
}
