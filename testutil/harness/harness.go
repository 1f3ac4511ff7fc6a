// Package harness runs tokenkeeper end to end in tests: an embedded
// nats-server (or a given URL), the WeChat emulator on an httptest server,
// and refresher replicas, with helpers to read and wait for records.
package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// Env is one test's tokenkeeper world.
type Env struct {
	T      testing.TB
	Server *server.Server // nil when URL was given
	URL    string
	Sim    *wechatsim.Sim
	SimURL string
	NC     *nats.Conn
	JS     jetstream.JetStream
	// Logs collects every refresher's log output (debug level); a test
	// that fails prints it.
	Logs *SyncBuffer
}

// Options tune New.
type Options struct {
	Sim  wechatsim.Options
	URL  string // NATS URL(s) to use instead of a new embedded server
	NATS []func(*server.Options)
}

// New starts an embedded nats-server (unless o.URL is set) and the
// emulator, and connects.
func New(t testing.TB, o Options) *Env {
	t.Helper()
	e := &Env{T: t, URL: o.URL, Logs: &SyncBuffer{}}
	if e.URL == "" {
		e.Server = testutil.RunServer(t, o.NATS...)
		e.URL = e.Server.ClientURL()
	}
	sim, hs := wechatsim.NewServer(o.Sim)
	t.Cleanup(hs.Close)
	e.Sim, e.SimURL = sim, hs.URL
	e.NC, e.JS = testutil.Connect(t, e.URL)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- refresher logs ---\n%s", e.Logs)
		}
	})
	return e
}

// Secret is the AppSecret the emulator knows for appid: distinctive, so
// that leak checks can grep for it.
func Secret(appid string) string { return "S3CR3T-" + appid + "-must-never-leak" }

// App registers an app with the emulator and returns its config.
func (e *Env) App(name string) refresher.AppConfig {
	appid := "wx" + name
	e.Sim.AddApp(appid, Secret(appid))
	return refresher.AppConfig{Name: name, Kind: wechat.KindClassic, AppID: appid, APIBase: e.SimURL}.WithSecret(Secret(appid))
}

// Config returns a refresher config for apps on this Env: fast schedule,
// 1 s lease, no passive limit, no minimum lifetime left.
func (e *Env) Config(apps ...refresher.AppConfig) *refresher.Config {
	zero := time.Duration(0)
	c := &refresher.Config{
		NATS:               natsconf.Options{URL: e.URL},
		Schedule:           "@every 1s",
		LeaseTTL:           2 * time.Second,
		PassiveMinInterval: &zero,
		Policy:             refresher.PolicyConfig{MinLeft: &zero},
		Apps:               apps,
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		e.T.Fatalf("harness: config: %v", err)
	}
	return c
}

// Replica is a running refresher.
type Replica struct {
	R      *refresher.Refresher
	NC     *nats.Conn
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// Client is the upstream client replicas use: fast retries for tests.
func Client() *wechat.Client {
	return wechat.New(wechat.WithRetry(wechat.RetryPolicy{Attempts: 2, Base: 10 * time.Millisecond, Max: 50 * time.Millisecond}),
		wechat.WithTimeout(2*time.Second))
}

// Start runs a refresher with cfg on its own connection and waits until it
// is ready (buckets provisioned, records loaded). It is stopped (SIGTERM
// semantics: lease released) in t.Cleanup, or earlier by Stop.
func (e *Env) Start(cfg *refresher.Config, opts ...refresher.Option) *Replica {
	e.T.Helper()
	nc, _ := testutil.Connect(e.T, cfg.NATS.URL)
	log := slog.New(slog.NewTextHandler(e.Logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	all := append([]refresher.Option{refresher.WithLogger(log), refresher.WithUpstream(Client())}, opts...)
	r, err := refresher.New(cfg, nc, all...)
	if err != nil {
		e.T.Fatalf("harness: refresher.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rep := &Replica{R: r, NC: nc, cancel: cancel, done: make(chan error, 1)}
	go func() { rep.done <- r.Run(ctx) }()
	select {
	case <-r.Ready():
	case err := <-rep.done:
		e.T.Fatalf("harness: refresher stopped before ready: %v", err)
	case <-time.After(10 * time.Second):
		e.T.Fatalf("harness: refresher not ready after 10s")
	}
	e.T.Cleanup(func() { rep.Stop() })
	return rep
}

// Stop stops the replica as SIGTERM would and returns Run's error.
func (r *Replica) Stop() error {
	var err error
	r.once.Do(func() {
		r.cancel()
		select {
		case err = <-r.done:
		case <-time.After(30 * time.Second):
			err = errors.New("harness: refresher did not stop within 30s")
		}
	})
	return err
}

// Kill stops the replica as SIGKILL would, as far as NATS can tell: its
// connection is closed at once, so it neither renews nor releases its
// lease, then its goroutines are stopped.
func (r *Replica) Kill() {
	r.NC.Close()
	_ = r.Stop()
}

// Record reads app's record from the bucket (ok false if there is none).
func (e *Env) Record(bucket, app string) (rec contract.Record, rev uint64, ok bool) {
	e.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	kv, err := e.JS.KeyValue(ctx, bucket)
	if err != nil {
		// Not there yet, or the cluster is electing a leader: not fatal,
		// callers poll.
		e.T.Logf("harness: bucket %s: %v", bucket, err)
		return rec, 0, false
	}
	var val []byte
	ent, err := kv.Get(ctx, app)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return rec, 0, false
	case err != nil:
		// Direct get can answer "no responders" for a while after a
		// cluster node is lost; ask the stream leader instead.
		e.T.Logf("harness: direct get %s: %v; asking the stream leader", app, err)
		st, serr := e.JS.Stream(ctx, "KV_"+bucket)
		if serr != nil {
			return rec, 0, false
		}
		m, merr := st.GetLastMsgForSubject(ctx, "$KV."+bucket+"."+app)
		if merr != nil || len(m.Data) == 0 {
			return rec, 0, false
		}
		val, rev = m.Data, m.Sequence
	default:
		val, rev = ent.Value(), ent.Revision()
	}
	if err := json.Unmarshal(val, &rec); err != nil {
		e.T.Fatalf("harness: record of %s does not parse: %v (%q)", app, err, val)
	}
	return rec, rev, true
}

// WaitRecord waits up to d for app's record to satisfy cond and returns it.
func (e *Env) WaitRecord(d time.Duration, app string, cond func(contract.Record, uint64) bool) (contract.Record, uint64) {
	e.T.Helper()
	var rec contract.Record
	var rev uint64
	testutil.WaitFor(e.T, d, func() bool {
		r, v, ok := e.Record(contract.DefaultBucket, app)
		if ok && cond(r, v) {
			rec, rev = r, v
			return true
		}
		return false
	}, "record of %s did not reach the expected state", app)
	return rec, rev
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Contains reports whether sub was written.
func (s *SyncBuffer) Contains(sub string) bool {
	return bytes.Contains([]byte(s.String()), []byte(sub))
}
