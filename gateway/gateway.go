package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// Limits and timeouts of the gateway's HTTP server.
const (
	// MaxBodyBytes is the largest request body accepted (413 above).
	MaxBodyBytes = 4 << 10
	// MaxHeaderBytes bounds the request line and headers.
	MaxHeaderBytes = 16 << 10
	// DefaultReadTimeout bounds reading a whole request, body included,
	// so a client that sends its body slowly (slow-loris) holds a
	// connection and a handler no longer than this.
	DefaultReadTimeout = 10 * time.Second
	// ReadHeaderTimeout bounds reading the request line and headers
	// (at most the read timeout).
	ReadHeaderTimeout = 5 * time.Second
	// IdleTimeout closes keep-alive connections idle this long.
	IdleTimeout = 60 * time.Second
	// DefaultRequestTimeout bounds one NATS request (token.refresh,
	// token.sign) and one bucket read; the server's write timeout is this
	// plus 5 s.
	DefaultRequestTimeout = 10 * time.Second
	// shutdownGrace is how long Serve lets requests in flight finish.
	shutdownGrace = 5 * time.Second
)

// Option configures a Gateway.
type Option func(*Gateway)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(g *Gateway) { g.log = l } }

// WithBucket sets the tokens bucket (default contract.DefaultBucket); it
// must be the refresher's bucket:.
func WithBucket(name string) Option { return func(g *Gateway) { g.bucket = name } }

// WithRequestTimeout bounds each NATS request and bucket read (default
// DefaultRequestTimeout).
func WithRequestTimeout(d time.Duration) Option { return func(g *Gateway) { g.reqTimeout = d } }

// WithReadTimeout sets the server's read timeout (default
// DefaultReadTimeout); the header timeout is the smaller of it and
// ReadHeaderTimeout.
func WithReadTimeout(d time.Duration) Option { return func(g *Gateway) { g.readTimeout = d } }

// Gateway serves the HTTP API of the package doc. Make it with New, run it
// with Serve; it is an http.Handler too.
type Gateway struct {
	cfg         Config
	nc          *nats.Conn
	js          jetstream.JetStream
	log         *slog.Logger
	bucket      string
	reqTimeout  time.Duration
	readTimeout time.Duration
	tls         *tls.Config

	clients atomic.Pointer[clientSet]
	kvMu    sync.Mutex
	kv      jetstream.KeyValue // looked up on first use
	// inflight counts handlers running (tests check none is held).
	inflight atomic.Int64
}

// client is one configured client, with its limiter.
type client struct {
	name     string
	hash     [sha256.Size]byte
	patterns []pattern
	rps      float64
	burst    int
	lim      *rate.Limiter
}

// allowed reports whether the client may read key.
func (c *client) allowed(key string) bool {
	for _, p := range c.patterns {
		if p.match(key) {
			return true
		}
	}
	return false
}

// clientSet is the immutable set of clients in force.
type clientSet struct{ list []*client }

// lookup returns the client whose token hashes to the hash of token, or
// nil. It compares against every client, in constant time each.
func (s *clientSet) lookup(token string) *client {
	sum := sha256.Sum256([]byte(token))
	var found *client
	for _, c := range s.list {
		if subtle.ConstantTimeCompare(sum[:], c.hash[:]) == 1 {
			found = c
		}
	}
	return found
}

// New returns a Gateway for cfg over nc. It validates cfg (every problem
// at once) and reads the TLS certificate and key if configured; it does
// not listen (Serve does). Options: WithLogger, WithBucket,
// WithRequestTimeout, WithReadTimeout.
func New(cfg Config, nc *nats.Conn, opts ...Option) (*Gateway, error) {
	if nc == nil {
		return nil, errors.New("gateway: nil NATS connection")
	}
	if !cfg.Enabled() {
		return nil, errors.New("gateway: gateway.listen is empty (the gateway is off)")
	}
	if p := cfg.Problems(); len(p) > 0 {
		return nil, &ConfigError{Problems: p}
	}
	g := &Gateway{
		cfg: cfg, nc: nc, log: slog.Default(), bucket: contract.DefaultBucket,
		reqTimeout: DefaultRequestTimeout, readTimeout: DefaultReadTimeout,
	}
	for _, o := range opts {
		if o != nil {
			o(g)
		}
	}
	if g.log == nil || g.reqTimeout <= 0 || g.readTimeout <= 0 || !contract.ValidAppName(g.bucket) {
		return nil, errors.New("gateway: invalid option: nil logger, non-positive timeout or bad bucket name")
	}
	g.log = g.log.With("component", "tokenkeeper-gateway")
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("gateway: jetstream: %w", err)
	}
	g.js = js
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("gateway.tls_cert_file/tls_key_file: %w", err)
		}
		g.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	g.clients.Store(buildClients(cfg.Clients, nil))
	return g, nil
}

// ConfigError lists every problem of a gateway config.
type ConfigError struct{ Problems []string }

func (e *ConfigError) Error() string {
	if len(e.Problems) == 1 {
		return "gateway config: " + e.Problems[0]
	}
	s := fmt.Sprintf("gateway config: %d problems:", len(e.Problems))
	for _, p := range e.Problems {
		s += "\n  " + p
	}
	return s
}

// buildClients makes the client set of cfgs; a client of old with the
// same name, token hash and limits keeps its limiter, so that a reload
// does not refill everyone's bucket.
func buildClients(cfgs []ClientConfig, old *clientSet) *clientSet {
	prev := map[string]*client{}
	if old != nil {
		for _, c := range old.list {
			prev[c.name] = c
		}
	}
	s := &clientSet{}
	for i := range cfgs {
		cc := &cfgs[i]
		h, _ := decodeHash(cc.TokenSHA256) // validated
		c := &client{name: cc.Name}
		copy(c.hash[:], h)
		for _, k := range cc.Keys {
			p, _ := parsePattern(k) // validated
			c.patterns = append(c.patterns, p)
		}
		c.rps, c.burst = cc.limits()
		if o := prev[c.name]; o != nil && o.hash == c.hash && o.rps == c.rps && o.burst == c.burst {
			c.lim = o.lim
		} else {
			c.lim = rate.NewLimiter(rate.Limit(c.rps), c.burst)
		}
		s.list = append(s.list, c)
	}
	return s
}

// SetClients replaces the clients (a config reload): requests from then
// on are checked against them. The listener and TLS settings of cfg must
// be those the Gateway was made with (they need a restart); a config with
// problems changes nothing.
func (g *Gateway) SetClients(cfg Config) error {
	if cfg.Listen != g.cfg.Listen || cfg.TLSCertFile != g.cfg.TLSCertFile || cfg.TLSKeyFile != g.cfg.TLSKeyFile {
		return errors.New("gateway: listen, tls_cert_file and tls_key_file change only with a restart")
	}
	if p := cfg.Problems(); len(p) > 0 {
		return &ConfigError{Problems: p}
	}
	g.clients.Store(buildClients(cfg.Clients, g.clients.Load()))
	return nil
}

// server returns the http.Server the gateway runs: its handler, timeouts
// and TLS config.
func (g *Gateway) server() *http.Server {
	return &http.Server{
		Handler:           g,
		ReadHeaderTimeout: min(ReadHeaderTimeout, g.readTimeout),
		ReadTimeout:       g.readTimeout,
		WriteTimeout:      g.reqTimeout + 5*time.Second,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		TLSConfig:         g.tls,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelWarn),
	}
}

// Serve serves the gateway on ln (HTTPS when TLS is configured) until ctx
// ends, then shuts down, letting requests in flight finish for up to 5 s.
// It returns nil after a shutdown by ctx, or the server's error.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error {
	srv := g.server()
	errc := make(chan error, 1)
	go func() {
		if g.tls != nil {
			errc <- srv.ServeTLS(ln, "", "")
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	g.log.Info("gateway serving", "addr", ln.Addr().String(), "tls", g.tls != nil, "clients", len(g.clients.Load().list))
	select {
	case err := <-errc:
		return fmt.Errorf("gateway: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	err := srv.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = srv.Close()
	}
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && serr != nil {
		return fmt.Errorf("gateway: %w", serr)
	}
	return err
}

// bucketKV returns the tokens bucket, looked up on first use.
func (g *Gateway) bucketKV(ctx context.Context) (jetstream.KeyValue, error) {
	g.kvMu.Lock()
	defer g.kvMu.Unlock()
	if g.kv != nil {
		return g.kv, nil
	}
	kv, err := g.js.KeyValue(ctx, g.bucket)
	if err != nil {
		return nil, err
	}
	g.kv = kv
	return kv, nil
}
