package subscriber_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// world is a test's tokenkeeper: embedded NATS, the emulator, one app.
type world struct {
	*harness.Env
	app refresher.AppConfig
}

// newWorld starts NATS and the emulator (tokens living expiresIn) and
// registers app "mp-main"; no refresher yet.
func newWorld(t *testing.T, sim wechatsim.Options, o ...harness.Options) *world {
	t.Helper()
	var ho harness.Options
	if len(o) > 0 {
		ho = o[0]
	}
	ho.Sim = sim
	e := harness.New(t, ho)
	return &world{Env: e, app: e.App("mp-main")}
}

// start runs a refresher for the world's app.
func (w *world) start(mod ...func(*refresher.Config)) *harness.Replica {
	w.T.Helper()
	cfg := w.Config(w.app)
	for _, m := range mod {
		m(cfg)
	}
	return w.Start(cfg)
}

// logBuffer collects a Source's log (debug level) and prints it if the
// test fails.
func logBuffer(t *testing.T) (*slog.Logger, *harness.SyncBuffer) {
	t.Helper()
	buf := &harness.SyncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("subscriber log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// newSource makes a Source that is closed in t.Cleanup; NewSource gets 15s.
func newSource(t *testing.T, nc *nats.Conn, app string, opts ...subscriber.Option) *subscriber.Source {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	src, err := subscriber.NewSource(ctx, nc, app, opts...)
	if err != nil {
		t.Fatalf("NewSource: %v", err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

// bump makes the refresher write a new revision of app's record: it asks
// token.refresh with stale_revision = the revision stored now, and
// retries (no responders, 503, timeouts, a cluster that settles) until a
// reply carries a newer revision. It returns that revision and when its
// reply arrived: the refresher replies after the write, so the Source can
// have seen the revision at that instant at the earliest (give or take
// the reply's latency, microseconds).
func bump(t *testing.T, w *world, nc *nats.Conn) (rev uint64, written time.Time) {
	t.Helper()
	return bumpOver(t, w, nc, 0)
}

// bumpOver is bump with a floor for the stale revision (for a deleted key,
// the refresher still holds the revision it wrote last).
func bumpOver(t *testing.T, w *world, nc *nats.Conn, floor uint64) (rev uint64, written time.Time) {
	t.Helper()
	testutil.WaitFor(t, 30*time.Second, func() bool {
		cur, ok := storedRevision(w.JS, w.app.Name)
		if !ok {
			return false
		}
		cur = max(cur, floor)
		r, err := rawRefresh(nc, w.app.Name, &cur, 5*time.Second)
		if err != nil || r.Revision <= cur {
			return false
		}
		rev, written = r.Revision, time.Now()
		return true
	}, "the refresher did not write a new revision")
	return rev, written
}

// storedRevision reads the revision of app's record (0 if there is none);
// ok is false if the bucket could not be read.
func storedRevision(js jetstream.JetStream, app string) (uint64, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, contract.DefaultBucket)
	if err != nil {
		return 0, false
	}
	e, err := kv.Get(ctx, app)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return 0, true
	case err != nil:
		return 0, false
	}
	return e.Revision(), true
}

// rawRefresh is a token.refresh request made as a non-Go service would.
func rawRefresh(nc *nats.Conn, app string, stale *uint64, timeout time.Duration) (contract.RefreshReply, error) {
	var body []byte
	if stale != nil {
		body = fmt.Appendf(nil, `{"stale_revision":%d}`, *stale)
	}
	m, err := nc.Request(contract.RefreshSubject(app), body, timeout)
	if err != nil {
		return contract.RefreshReply{}, err
	}
	if code := m.Header.Get(contract.ErrorCodeHeader); code != "" {
		return contract.RefreshReply{}, fmt.Errorf("error reply %s: %s", code, m.Header.Get(contract.ErrorHeader))
	}
	var r contract.RefreshReply
	err = json.Unmarshal(m.Data, &r)
	return r, err
}

// staleFor waits until src reaches revision rev and returns how long
// after since (the write) that was: how long the Source was stale. It
// polls Revision every 5ms (testutil.WaitFor), so that is the resolution.
func staleFor(t *testing.T, src *subscriber.Source, rev uint64, since time.Time, limit time.Duration) time.Duration {
	t.Helper()
	testutil.WaitFor(t, limit, func() bool { return src.Revision() >= rev },
		"the Source stayed at revision %d, the bucket is at %d", src.Revision(), rev)
	return time.Since(since)
}

// staleForAll is staleFor for several Sources at once.
func staleForAll(t *testing.T, srcs []*subscriber.Source, rev uint64, since time.Time, limit time.Duration) []time.Duration {
	t.Helper()
	out := make([]time.Duration, len(srcs))
	testutil.WaitFor(t, limit, func() bool {
		all := true
		for i, src := range srcs {
			if out[i] == 0 && src.Revision() >= rev {
				out[i] = max(time.Since(since), time.Nanosecond)
			}
			all = all && out[i] != 0
		}
		return all
	}, "not every Source reached revision %d", rev)
	return out
}

// putRecord writes rec under app into the bucket directly (the refresher's
// job; tests that play the refresher use it) and returns the revision.
func putRecord(t *testing.T, kv jetstream.KeyValue, rec contract.Record) uint64 {
	t.Helper()
	val, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rev, err := kv.Put(ctx, rec.App, val)
	if err != nil {
		t.Fatalf("put %s: %v", rec.App, err)
	}
	return rev
}

// ensureBucket creates the tokens bucket as the refresher would.
func ensureBucket(t *testing.T, js jetstream.JetStream) jetstream.KeyValue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := natsconf.EnsureBucket(ctx, js, natsconf.BucketConfig{Name: contract.DefaultBucket, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// contains reports whether the log holds any of the secrets.
func leaked(log string, secrets ...string) string {
	for _, s := range secrets {
		if s != "" && strings.Contains(log, s) {
			return s
		}
	}
	return ""
}
