package refresher

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// Defaults of the audit: section.
const (
	DefaultAuditMaxAge   = 90 * 24 * time.Hour
	DefaultAuditMaxBytes = 256 << 20
)

// AuditConfig is the audit: section: the stream every upstream call is
// appended to (contract.AuditStream, on token.audit.<key>), with the
// bucket's replicas.
type AuditConfig struct {
	// Disabled turns the audit trail off.
	Disabled bool `yaml:"disabled"`
	// MaxAge is how long records are kept (default 90 days).
	MaxAge time.Duration `yaml:"max_age"`
	// MaxBytes bounds the stream's size; the oldest records go first
	// (default 256 MiB).
	MaxBytes int64 `yaml:"max_bytes"`
}

// AlertAuditLost is logged (and counted) when audit records could not be
// appended to the stream: the upstream calls happened, their records are
// lost.
const AlertAuditLost = "audit_lost"

// auditQueue bounds the records waiting to be appended; past it new
// records are dropped (and counted) rather than slowing the refreshes.
const auditQueue = 8192

// auditor appends audit records to the stream from one goroutine, in
// order, never on a refresh's path.
type auditor struct {
	js      jetstream.JetStream
	cfg     jetstream.StreamConfig
	log     func(msg string, args ...any)
	obs     Observer
	ch      chan contract.AuditRecord
	done    chan struct{}
	dropped atomic.Int64
	mu      sync.Mutex
	closed  bool
}

// auditStreamConfig is the stream of the audit trail for c.
func auditStreamConfig(c *Config) jetstream.StreamConfig {
	age, size := c.Audit.MaxAge, c.Audit.MaxBytes
	if age == 0 {
		age = DefaultAuditMaxAge
	}
	if size == 0 {
		size = DefaultAuditMaxBytes
	}
	return jetstream.StreamConfig{
		Name:        contract.AuditStream,
		Description: "tokenkeeper audit trail: one record per upstream call, never a credential",
		Subjects:    []string{contract.AuditPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      age,
		MaxBytes:    size,
		Replicas:    c.Replicas,
		Storage:     jetstream.FileStorage,
	}
}

// startAudit provisions the audit stream and starts the appender (none if
// the audit is disabled). A stream that cannot be created is retried on
// every append.
func (r *Refresher) startAudit(ctx context.Context) {
	if r.cfg.Audit.Disabled {
		return
	}
	au := &auditor{js: r.js, cfg: auditStreamConfig(r.cfg), log: r.log.Error, obs: r.obs,
		ch: make(chan contract.AuditRecord, auditQueue), done: make(chan struct{})}
	r.audit = au
	go func() {
		// Off the start's path: a server that refuses the stream (old
		// permissions) must not delay the refresher.
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := r.js.CreateOrUpdateStream(cctx, au.cfg); err != nil {
			r.log.Warn("audit stream not provisioned yet; retrying with each record", "stream", au.cfg.Name, "err", err)
		}
		cancel()
		au.run()
	}()
}

// stopAudit appends what is queued (bounded by d) and stops the appender.
func (au *auditor) stop(d time.Duration) {
	if au == nil {
		return
	}
	au.mu.Lock()
	if !au.closed {
		au.closed = true
		close(au.ch)
	}
	au.mu.Unlock()
	select {
	case <-au.done:
	case <-time.After(d):
	}
}

// add queues rec; a full queue drops it (counted and logged).
func (au *auditor) add(rec contract.AuditRecord) {
	au.mu.Lock()
	defer au.mu.Unlock()
	if au.closed {
		au.lost(rec, errors.New("refresher stopped"))
		return
	}
	select {
	case au.ch <- rec:
	default:
		au.lost(rec, errors.New("audit queue full"))
	}
}

func (au *auditor) lost(rec contract.AuditRecord, err error) {
	au.dropped.Add(1)
	au.obs.Alert(rec.App, AlertAuditLost)
	au.log("ALERT audit_lost: an upstream call's audit record could not be appended",
		"alert", AlertAuditLost, "key", rec.Key, "endpoint", rec.Endpoint, "time", rec.Time.Format(time.RFC3339Nano), "err", err)
}

func (au *auditor) run() {
	defer close(au.done)
	for rec := range au.ch {
		au.append(rec)
	}
}

// append publishes rec and waits for the stream's ack, re-creating a
// missing stream; it gives up after a few attempts.
func (au *auditor) append(rec contract.AuditRecord) {
	data, err := json.Marshal(rec)
	if err != nil {
		au.lost(rec, err)
		return
	}
	msg := &nats.Msg{Subject: contract.AuditSubject(rec.Key), Data: data, Header: nats.Header{}}
	// One record once, even if an ack is lost and the publish repeated.
	msg.Header.Set(jetstream.MsgIDHeader, rec.Replica+"|"+rec.Key+"|"+rec.Time.Format(time.RFC3339Nano)+"|"+strconv.Itoa(rec.Attempt))
	var last error
	for attempt := range 4 {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 250 * time.Millisecond) // backoff between appends of one record
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := au.js.PublishMsg(ctx, msg)
		if err != nil && (errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrStreamNotFound)) {
			_, _ = au.js.CreateOrUpdateStream(ctx, au.cfg)
		}
		cancel()
		if err == nil {
			return
		}
		last = err
	}
	au.lost(rec, last)
}

// requesterKey carries who asked for a passive or manual refresh.
type requesterKey struct{}

// withRequester returns ctx carrying who (empty: ctx unchanged).
func withRequester(ctx context.Context, who string) context.Context {
	if who == "" {
		return ctx
	}
	return context.WithValue(ctx, requesterKey{}, who)
}

// requesterFrom returns who asked, as withRequester put it.
func requesterFrom(ctx context.Context) string {
	who, _ := ctx.Value(requesterKey{}).(string)
	return who
}

// requesterOf returns who sent a token.refresh request: the user and
// account NATS states in Nats-Request-Info (service imports that share
// it), else the request's own Tokenkeeper-Requester header; sanitised.
func requesterOf(h nats.Header) string {
	if info := h.Get("Nats-Request-Info"); info != "" {
		var ci struct {
			Account string `json:"acc"`
			User    string `json:"user"`
			Name    string `json:"name"`
		}
		if json.Unmarshal([]byte(info), &ci) == nil && (ci.User != "" || ci.Name != "") {
			who := ci.User
			if ci.Name != "" {
				who = strings.TrimSpace(who + " " + ci.Name)
			}
			if ci.Account != "" {
				who += "@" + ci.Account
			}
			return sanitize(who, 128)
		}
	}
	return sanitize(h.Get(contract.RequesterHeader), 128)
}

// attempts collects the attempts of one upstream call (the observer runs
// on the call's goroutine).
type attempts []wechat.Attempt

func (at *attempts) observe(ctx context.Context) context.Context {
	return wechat.WithAttemptObserver(ctx, func(a wechat.Attempt) { *at = append(*at, a) })
}

// auditCall appends one audit record per attempt of an upstream call for
// key (of app, kind), made for reason; the successful attempt carries the
// fingerprint of the credential it got.
func (r *Refresher) auditCall(ctx context.Context, app, key, kind, reason string, at attempts, credential string) {
	if r.audit == nil {
		return
	}
	who := requesterFrom(ctx)
	for _, a := range at {
		rec := contract.AuditRecord{
			Time: a.Start.UTC(), DurationMS: a.Duration.Milliseconds(), Replica: r.id,
			App: app, Key: key, Kind: kind, Endpoint: a.Path, Attempt: a.Number, Reason: reason,
			OK: a.Err == nil,
		}
		if reason == contract.SourcePassive || reason == contract.SourceManual {
			rec.Requester = who
		}
		if a.Err == nil {
			rec.Credential = credential
		} else {
			describeFailure(&rec, a.Err)
		}
		r.audit.add(rec)
	}
}

// describeFailure fills the failure fields of rec from err (whose text
// never carries a secret: the upstream clients scrub it).
func describeFailure(rec *contract.AuditRecord, err error) {
	var we *wechat.Error
	var oe *OAuth2Error
	var he *wechat.HTTPError
	switch {
	case errors.As(err, &we):
		rec.Errcode, rec.Errmsg, rec.RID = we.Code, we.Msg, wechat.RID(we.Msg)
	case errors.As(err, &oe):
		rec.HTTPStatus, rec.Errmsg = oe.Status, strings.TrimSpace(oe.Code+" "+oe.Description)
	case errors.As(err, &he):
		rec.HTTPStatus = he.Status
	default:
		rec.Error = sanitize(err.Error(), 300)
	}
}
