package refresher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/follow"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
)

// The modes of the mode: key.
const (
	// ModeLead is the refresher proper: it fetches upstream, holds the
	// lease, writes the bucket and serves token.refresh. The default.
	ModeLead = "lead"
	// ModeFollow is a follower environment's refresher (staging, a
	// second region): it keeps the bucket as a read-only mirror of a
	// lead environment's, and only reports on it. See Follower.
	ModeFollow = "follow"
)

// DefaultFollowMaxLag is the default of follow.max_lag.
const DefaultFollowMaxLag = 30 * time.Second

// mirrorCheckInterval is how often a Follower asks its mirror's stream
// for its state (lag, last contact with the origin).
const mirrorCheckInterval = time.Second

// CheckMirror names the readiness check of a Follower's mirror: the
// mirror heard from its origin within follow.max_lag.
const CheckMirror = "mirror"

// FollowConfig is the follow: section, used with mode: follow.
type FollowConfig struct {
	// Domain is the JetStream domain of the lead environment whose
	// bucket (of the same name, the bucket: key) is mirrored here:
	// production's nats.embedded.jetstream_domain or its server's
	// jetstream { domain }. Required in mode follow.
	Domain string `yaml:"domain"`
	// MaxLag is how long the mirror may go without hearing from its
	// origin before /readyz fails (default DefaultFollowMaxLag). The
	// origin's heartbeats reach a connected mirror every second or so.
	MaxLag time.Duration `yaml:"max_lag"`
}

// maxLag is MaxLag with its default.
func (f FollowConfig) maxLag() time.Duration {
	if f.MaxLag <= 0 {
		return DefaultFollowMaxLag
	}
	return f.MaxLag
}

// validateFollow is Validate for a config in mode follow, or with a
// follow: section or an unknown mode.
//
// A follower holds no secrets: an app with secret_env or secret_file is
// refused (the AppSecret stays with the lead environment; a copy in
// staging is the leak follower environments exist to avoid). apps is
// optional: each entry names a key the follower's /readyz requires to
// hold a valid record; its other keys (kind, appid, api_base, tickets)
// are not used, so production's apps: can be copied without secrets.
// schedule, lease_ttl, passive_min_interval and refresh: are not used.
func (c *Config) validateFollow() error {
	var p []string
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }
	switch c.Mode {
	case ModeFollow:
	case "", ModeLead:
		lead := *c
		lead.Follow = FollowConfig{}
		add("follow: only used with mode: follow")
		var ce *ConfigError
		if errors.As(lead.Validate(), &ce) {
			p = append(p, ce.Problems...)
		}
		return &ConfigError{Problems: p}
	default:
		add("mode: %q is not %s or %s", c.Mode, ModeLead, ModeFollow)
		return &ConfigError{Problems: p}
	}
	for _, err := range natsconf.Problems(c.NATS.ValidateKeys()) {
		add("%v", err)
	}
	embedded := strings.TrimSpace(c.NATS.URL) == ""
	switch d := c.Follow.Domain; {
	case d == "":
		add("follow.domain: required in mode follow: the JetStream domain of production (its jetstream_domain)")
	case !natsconf.ValidDomain(d):
		add("follow.domain: %q is not a JetStream domain (1-64 of A-Z a-z 0-9 _ -)", d)
	case embedded && d == c.NATS.Embedded.JetStreamDomain:
		add("follow.domain: %q is this server's own domain (nats.embedded.jetstream_domain); name production's", d)
	}
	if embedded && len(c.NATS.Embedded.LeafNodes.Remotes) == 0 {
		add("nats.embedded.leafnodes.remotes: mode follow with the embedded server needs a remote to production's leafnode listener, or the mirror never fills")
	}
	if c.Follow.MaxLag < 0 {
		add("follow.max_lag: %s is negative", c.Follow.MaxLag)
	}
	c.bucketProblems(add)
	c.logProblems(add)
	seen := map[string]int{}
	for i := range c.Apps {
		a := &c.Apps[i]
		where := a.where(i)
		switch {
		case !contract.ValidAppName(a.Name):
			add("%s.name: %q is not a valid app name (1-64 of A-Z a-z 0-9 _ -)", where, a.Name)
		default:
			if j, dup := seen[a.Name]; dup {
				add("%s.name: duplicate of apps[%d]", where, j)
			} else {
				seen[a.Name] = i
			}
		}
		for _, kv := range []struct{ key, val string }{{"secret_env", a.SecretEnv}, {"secret_file", a.SecretFile}, {"secret", a.secret}} {
			if kv.val != "" {
				add("%s.%s: mode follow holds no secrets; remove it (the AppSecret stays with production's refresher)", where, kv.key)
			}
		}
	}
	if len(p) > 0 {
		return &ConfigError{Problems: p}
	}
	return nil
}

// Follower is the refresher of a follower environment (mode: follow):
// it keeps the bucket as a read-only mirror of the lead environment's
// (natsconf.EnsureMirror, from follow.domain over the leafnode link),
// follows every key of it, and reports: /status, /readyz and metrics of
// the mirrored records (revision, age, expiry) and of the mirror (lag,
// last contact with the origin). It makes no upstream call, holds no
// secret, takes no lease, writes nothing and does not serve
// token.refresh: the follower's services read the mirror, and their
// token.refresh requests reach the lead's refresher over the leafnode.
// Create it with NewFollower, run it with Run.
type Follower struct {
	cfg *Config
	nc  *nats.Conn
	js  jetstream.JetStream
	log *slog.Logger
	id  string

	ready     chan struct{}
	readyOnce sync.Once

	mu      sync.Mutex
	state   runState
	records map[string]followedRecord
	mirror  MirrorStatus
}

type runState int

const (
	notStarted runState = iota
	running
	stopped
)

// followedRecord is what a Follower keeps of a record: never the
// credential.
type followedRecord struct {
	rev       uint64
	app       string
	source    string
	fetchedAt time.Time
	expiresAt time.Time
	invalid   bool
}

// FollowedKey describes one key of a Follower's mirror. It carries no
// credential.
type FollowedKey struct {
	Key       string    `json:"key"`
	App       string    `json:"app,omitempty"`
	Revision  uint64    `json:"revision"`
	Source    string    `json:"source,omitempty"`
	FetchedAt time.Time `json:"fetched_at,omitzero"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// Valid: the record parses and has not expired.
	Valid bool `json:"valid"`
	// Invalid: the value is not a record (it is never served as one).
	Invalid bool `json:"invalid,omitempty"`
}

// MirrorStatus is the state of a Follower's mirror, as its stream last
// reported it.
type MirrorStatus struct {
	// Domain is the origin's JetStream domain, Stream the stream
	// mirrored there.
	Domain string `json:"domain"`
	Stream string `json:"stream"`
	// Lag is how many messages the mirror is behind its origin, as the
	// origin last told it.
	Lag uint64 `json:"lag"`
	// LastContact is how long before CheckedAt the mirror last heard
	// from its origin; negative when it never has.
	LastContact time.Duration `json:"last_contact"`
	// Error is the mirror's own error, or why its state could not be
	// read.
	Error     string    `json:"error,omitempty"`
	CheckedAt time.Time `json:"checked_at,omitzero"`
}

// FollowReport is the JSON body of a Follower's /status. It carries no
// credential.
type FollowReport struct {
	Mode    string        `json:"mode"`
	Replica string        `json:"replica"`
	Bucket  string        `json:"bucket"`
	Mirror  MirrorStatus  `json:"mirror"`
	Keys    []FollowedKey `json:"keys"`
}

// NewFollower returns a Follower for cfg (mode follow, defaulted and
// validated, as LoadConfig returns it) on nc; log nil means
// slog.Default(). It does no I/O.
func NewFollower(cfg *Config, nc *nats.Conn, log *slog.Logger) (*Follower, error) {
	if cfg == nil || nc == nil {
		return nil, errors.New("refresher: NewFollower needs a config and a NATS connection")
	}
	if cfg.Mode != ModeFollow {
		return nil, fmt.Errorf("refresher: NewFollower needs mode: %s (mode is %q; use New)", ModeFollow, cfg.Mode)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("refresher: jetstream: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	host, _ := os.Hostname()
	return &Follower{
		cfg: cfg, nc: nc, js: js, log: log,
		id:      fmt.Sprintf("%s-%d-follow", host, os.Getpid()),
		ready:   make(chan struct{}),
		records: map[string]followedRecord{},
		mirror:  MirrorStatus{Domain: cfg.Follow.Domain, Stream: contract.KVStream(cfg.Bucket), LastContact: -1},
	}, nil
}

// Ready is closed once Run has ensured the mirror and read what it
// holds.
func (f *Follower) Ready() <-chan struct{} { return f.ready }

// Run ensures the mirror (creating it on first start; an ordinary bucket
// of that name is refused with natsconf.ErrNotMirror), then follows it
// and checks its state every second until ctx is done. Run may be
// called once.
func (f *Follower) Run(ctx context.Context) error {
	f.mu.Lock()
	if f.state != notStarted {
		f.mu.Unlock()
		return errors.New("refresher: Run called twice")
	}
	f.state = running
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.state = stopped
		f.mu.Unlock()
	}()

	kv, err := natsconf.EnsureMirror(ctx, f.js, natsconf.MirrorConfig{
		Name: f.cfg.Bucket, Domain: f.cfg.Follow.Domain, Replicas: f.cfg.Replicas,
		Description: fmt.Sprintf("tokenkeeper: read-only mirror of %s in domain %s", f.cfg.Bucket, f.cfg.Follow.Domain),
	})
	if err != nil {
		return fmt.Errorf("refresher: follow: %w", err)
	}
	fw, err := follow.Start(f.nc, follow.Config{Open: func(context.Context) (jetstream.KeyValue, error) { return kv, nil }})
	if err != nil {
		return fmt.Errorf("refresher: follow: %w", err)
	}
	defer fw.Stop()
	f.checkMirror(ctx)
	f.log.Info("following", "mode", ModeFollow, "bucket", f.cfg.Bucket, "domain", f.cfg.Follow.Domain)
	tick := time.NewTicker(mirrorCheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			f.log.Info("follower stopped")
			return nil
		case <-tick.C:
			f.checkMirror(ctx)
		case ev, ok := <-fw.Events():
			if !ok {
				return fmt.Errorf("refresher: follow: %w", fw.Err())
			}
			switch ev.Kind {
			case follow.Entry:
				f.apply(ev.Entry)
			case follow.Current:
				f.readyOnce.Do(func() { close(f.ready) })
			case follow.Reset:
				f.mu.Lock()
				f.records = map[string]followedRecord{}
				f.mu.Unlock()
			case follow.Problem:
				f.log.Debug("mirror watch rebuilt", "err", ev.Err)
			}
		}
	}
}

// apply keeps what a mirrored entry says, without its credential.
func (f *Follower) apply(e jetstream.KeyValueEntry) {
	key := e.Key()
	if !contract.ValidKey(key) {
		return // not a tokenkeeper key: not reported (keeps labels bounded)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(f.records, key)
		return
	}
	var rec struct {
		App       string    `json:"app"`
		ExpiresAt time.Time `json:"expires_at"`
		FetchedAt time.Time `json:"fetched_at"`
		Source    string    `json:"source"`
	}
	r := followedRecord{rev: e.Revision()}
	if err := json.Unmarshal(e.Value(), &rec); err != nil || rec.ExpiresAt.IsZero() {
		r.invalid = true
	} else {
		r.app, r.source, r.fetchedAt, r.expiresAt = rec.App, rec.Source, rec.FetchedAt, rec.ExpiresAt
	}
	f.records[key] = r
}

// checkMirror reads the mirror's state from its stream.
func (f *Follower) checkMirror(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := f.js.Stream(ctx, contract.KVStream(f.cfg.Bucket))
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	m := &f.mirror
	m.CheckedAt = now
	switch {
	case err != nil:
		m.Error = "mirror state: " + err.Error()
	case st.CachedInfo().Mirror == nil:
		m.Error = "the stream is not a mirror"
	default:
		mi := st.CachedInfo().Mirror
		m.Lag, m.LastContact, m.Error = mi.Lag, mi.Active, ""
		if mi.Error != nil {
			m.Error = mi.Error.Error()
		}
	}
}

// Status returns the mirror's state and every mirrored key, sorted.
func (f *Follower) Status() FollowReport {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	rep := FollowReport{Mode: ModeFollow, Replica: f.id, Bucket: f.cfg.Bucket, Mirror: f.mirror, Keys: make([]FollowedKey, 0, len(f.records))}
	for k, r := range f.records {
		rep.Keys = append(rep.Keys, FollowedKey{Key: k, App: r.app, Revision: r.rev, Source: r.source,
			FetchedAt: r.fetchedAt, ExpiresAt: r.expiresAt, Valid: !r.invalid && r.expiresAt.After(now), Invalid: r.invalid})
	}
	sort.Slice(rep.Keys, func(i, j int) bool { return rep.Keys[i].Key < rep.Keys[j].Key })
	return rep
}

// mirrorCheck is the CheckMirror check of rep's mirror.
func (f *Follower) mirrorCheck(m MirrorStatus) Check {
	c := Check{Name: CheckMirror}
	switch {
	case m.CheckedAt.IsZero():
		c.Reason = "not checked yet"
	case m.Error != "":
		c.Reason = m.Error
	case m.LastContact < 0:
		c.Reason = fmt.Sprintf("the mirror has not heard from domain %s yet (is the leafnode link up?)", m.Domain)
	case m.LastContact > f.cfg.Follow.maxLag():
		c.Reason = fmt.Sprintf("the mirror last heard from domain %s %s ago (follow.max_lag %s)", m.Domain, m.LastContact.Round(time.Second), f.cfg.Follow.maxLag())
	default:
		c.OK = true
	}
	return c
}

// Readiness runs the checks of /readyz: running, nats, mirror, and one
// app check per configured app (its key holds a valid record).
func (f *Follower) Readiness() Readiness {
	rep := Readiness{Ready: true, Replica: f.id}
	add := func(c Check) {
		rep.Checks = append(rep.Checks, c)
		rep.Ready = rep.Ready && c.OK
	}
	f.mu.Lock()
	state := f.state
	f.mu.Unlock()
	switch state {
	case notStarted:
		add(Check{Name: CheckRunning, Reason: "not started"})
	case stopped:
		add(Check{Name: CheckRunning, Reason: "stopped"})
	default:
		select {
		case <-f.ready:
			add(Check{Name: CheckRunning, OK: true})
		default:
			add(Check{Name: CheckRunning, Reason: "starting: the mirror is not read yet"})
		}
	}
	if s := f.nc.Status(); s == nats.CONNECTED {
		add(Check{Name: CheckNATS, OK: true})
	} else {
		add(Check{Name: CheckNATS, Reason: "NATS connection is " + s.String()})
	}
	st := f.Status()
	add(f.mirrorCheck(st.Mirror))
	byKey := map[string]FollowedKey{}
	for _, k := range st.Keys {
		byKey[k.Key] = k
	}
	for _, a := range f.cfg.Apps {
		k, ok := byKey[a.Name]
		c := Check{Name: CheckApp, App: a.Name, OK: k.Valid}
		switch {
		case !ok:
			c.Reason = "no token mirrored yet"
		case k.Invalid:
			c.Reason = "the mirrored value is not a valid record"
		case !k.Valid:
			c.Reason = "token expired at " + k.ExpiresAt.UTC().Format(time.RFC3339)
		}
		add(c)
	}
	return rep
}

// HTTPHandler returns the Follower's HTTP endpoints: /metrics (g's
// metrics; nil g: none), /healthz, /readyz (the checks of Readiness:
// 200 or 503) and /status (FollowReport). No credential is ever served.
func (f *Follower) HTTPHandler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	if g != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		rep := f.Readiness()
		code := http.StatusOK
		if !rep.Ready {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, rep)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, f.Status()) })
	return mux
}

// The Follower's metrics (Describe and Collect make it a
// prometheus.Collector; register it next to the Go and process
// collectors):
//
//	tokenkeeper_follow_token_expiry_seconds{key}     seconds until the mirrored record expires (negative: expired)
//	tokenkeeper_follow_token_age_seconds{key}        seconds since production fetched it
//	tokenkeeper_follow_token_revision{key}           its revision (the same as production's)
//	tokenkeeper_follow_mirror_lag_messages           messages the mirror is behind its origin
//	tokenkeeper_follow_mirror_last_contact_seconds   seconds since the mirror last heard from its origin (-1: never)
var (
	followExpiryDesc = prometheus.NewDesc("tokenkeeper_follow_token_expiry_seconds",
		"Seconds until the mirrored record of the key expires; negative once expired.", []string{"key"}, nil)
	followAgeDesc = prometheus.NewDesc("tokenkeeper_follow_token_age_seconds",
		"Seconds since the lead environment fetched the mirrored record of the key.", []string{"key"}, nil)
	followRevDesc = prometheus.NewDesc("tokenkeeper_follow_token_revision",
		"Revision of the mirrored record of the key (the lead environment's revision).", []string{"key"}, nil)
	followLagDesc = prometheus.NewDesc("tokenkeeper_follow_mirror_lag_messages",
		"Messages the mirror is behind its origin, as last reported.", nil, nil)
	followContactDesc = prometheus.NewDesc("tokenkeeper_follow_mirror_last_contact_seconds",
		"Seconds since the mirror last heard from its origin, as last checked; -1 if it never has.", nil, nil)
)

// Describe implements prometheus.Collector.
func (f *Follower) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{followExpiryDesc, followAgeDesc, followRevDesc, followLagDesc, followContactDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. The key label is a valid
// tokenkeeper key (contract.ValidKey: ASCII) written by the lead.
func (f *Follower) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	st := f.Status()
	for _, k := range st.Keys {
		ch <- prometheus.MustNewConstMetric(followRevDesc, prometheus.GaugeValue, float64(k.Revision), k.Key)
		if k.Invalid {
			continue
		}
		ch <- prometheus.MustNewConstMetric(followExpiryDesc, prometheus.GaugeValue, k.ExpiresAt.Sub(now).Seconds(), k.Key)
		ch <- prometheus.MustNewConstMetric(followAgeDesc, prometheus.GaugeValue, now.Sub(k.FetchedAt).Seconds(), k.Key)
	}
	ch <- prometheus.MustNewConstMetric(followLagDesc, prometheus.GaugeValue, float64(st.Mirror.Lag))
	contact := -1.0
	if st.Mirror.LastContact >= 0 && !st.Mirror.CheckedAt.IsZero() {
		contact = (st.Mirror.LastContact + now.Sub(st.Mirror.CheckedAt)).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(followContactDesc, prometheus.GaugeValue, contact)
}
