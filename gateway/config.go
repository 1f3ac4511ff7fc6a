package gateway

import (
	"encoding/hex"
	"fmt"
	"math"
	"strings"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// Defaults of a client's rate limit.
const (
	// DefaultRatePerSecond is a client's sustained request rate when
	// rate_per_second is not set.
	DefaultRatePerSecond = 10
	// defaultBurstFactor: an unset burst is twice the rate, at least 1.
	defaultBurstFactor = 2
)

// Config is the gateway: section of the refresher's YAML. The gateway is
// off while Listen is empty.
type Config struct {
	// Listen is the gateway's own address (host:port), never the private
	// http.listen of /metrics and /status. Empty: the gateway is off.
	Listen string `yaml:"listen"`
	// TLSCertFile and TLSKeyFile, both set, make the gateway serve HTTPS
	// with this PEM certificate (chain) and key; both empty: plain HTTP.
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
	// Clients are who may call the gateway.
	Clients []ClientConfig `yaml:"clients"`
}

// ClientConfig is one entry of gateway.clients.
type ClientConfig struct {
	// Name names the client in logs and errors: 1-64 of A-Z a-z 0-9 _ -.
	Name string `yaml:"name"`
	// TokenSHA256 is the lowercase or uppercase hex SHA-256 of the
	// client's bearer token (tokenctl hash-token prints it); the token
	// itself is never configured.
	TokenSHA256 string `yaml:"token_sha256"`
	// Keys are the key patterns the client may read (see the package
	// doc): "mp-main", "mp-main.*", "*".
	Keys []string `yaml:"keys"`
	// RatePerSecond is the client's sustained request rate (default
	// DefaultRatePerSecond); Burst the requests it may make at once
	// (default twice the rate, at least 1).
	RatePerSecond float64 `yaml:"rate_per_second"`
	Burst         int     `yaml:"burst"`
}

// Enabled reports whether the gateway is configured to run.
func (c *Config) Enabled() bool { return c.Listen != "" }

// Problems checks c and returns every problem found, each naming its key
// as in the YAML ("gateway.clients[1] (php-shop).keys[0]: ..."); none for
// a valid config or an absent section. It reads no file: the TLS files
// are read by New.
func (c *Config) Problems() []string {
	var p []string
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }
	if c.Listen == "" {
		if len(c.Clients) > 0 || c.TLSCertFile != "" || c.TLSKeyFile != "" {
			add("gateway.listen: missing (the gateway is configured but has no address; set listen or remove the section)")
		}
		return p
	}
	if !strings.Contains(c.Listen, ":") {
		add("gateway.listen: %q is not host:port", c.Listen)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		add("gateway.tls_cert_file/tls_key_file: set both for HTTPS, or neither")
	}
	if len(c.Clients) == 0 {
		add("gateway.clients: no clients configured (nobody could call the gateway)")
	}
	names := map[string]int{}
	hashes := map[string]int{}
	for i := range c.Clients {
		cl := &c.Clients[i]
		where := cl.where(i)
		switch {
		case cl.Name == "":
			add("%s.name: missing", where)
		case !contract.ValidAppName(cl.Name):
			add("%s.name: %q is not 1-64 of A-Z a-z 0-9 _ -", where, cl.Name)
		default:
			if j, dup := names[cl.Name]; dup {
				add("%s.name: duplicate of gateway.clients[%d]", where, j)
			} else {
				names[cl.Name] = i
			}
		}
		if h, err := decodeHash(cl.TokenSHA256); err != nil {
			add("%s.token_sha256: %v", where, err)
		} else if j, dup := hashes[string(h)]; dup {
			add("%s.token_sha256: the same token as gateway.clients[%d]; give each client its own token", where, j)
		} else {
			hashes[string(h)] = i
		}
		if len(cl.Keys) == 0 {
			add("%s.keys: no key patterns (the client could read nothing)", where)
		}
		for k, s := range cl.Keys {
			if _, err := parsePattern(s); err != nil {
				add("%s.keys[%d]: %v", where, k, err)
			}
		}
		if r := cl.RatePerSecond; r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
			add("%s.rate_per_second: %v is not a positive number", where, r)
		}
		if cl.Burst < 0 {
			add("%s.burst: %d is negative", where, cl.Burst)
		}
	}
	return p
}

// where names clients[i] in a problem: "gateway.clients[3] (php-shop)".
func (cl *ClientConfig) where(i int) string {
	if cl.Name != "" {
		return fmt.Sprintf("gateway.clients[%d] (%s)", i, cl.Name)
	}
	return fmt.Sprintf("gateway.clients[%d]", i)
}

// limits returns the client's rate and burst, defaults applied.
func (cl *ClientConfig) limits() (float64, int) {
	r := cl.RatePerSecond
	if r == 0 {
		r = DefaultRatePerSecond
	}
	b := cl.Burst
	if b == 0 {
		b = max(1, int(math.Ceil(r*defaultBurstFactor)))
	}
	return r, b
}

// decodeHash decodes a hex SHA-256. Its errors never quote the value:
// an operator may have pasted the token itself by mistake.
func decodeHash(s string) ([]byte, error) {
	switch {
	case s == "":
		return nil, fmt.Errorf("missing (the hex SHA-256 of the client's token: tokenctl hash-token)")
	case len(s) != 64:
		return nil, fmt.Errorf("not a SHA-256 (want 64 hex digits, got %d characters; is it the token itself? configure only its hash: tokenctl hash-token)", len(s))
	}
	h, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not a SHA-256 (want 64 hex digits; is it the token itself? configure only its hash: tokenctl hash-token)")
	}
	return h, nil
}
