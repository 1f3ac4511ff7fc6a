package refresher_test

// Hostile and bogus token.refresh requests (issue 9, "Keep the promise
// under faults"): whatever a service user publishes on token.refresh.>,
// the leader neither crashes, nor grows, nor calls WeChat for it.

import (
	"encoding/json"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// refreshRequest sends one token.refresh request on subject with body and
// optional headers (key, value pairs) and fails the test on a transport
// error.
func refreshRequest(t *testing.T, nc *nats.Conn, subject, body string, hdr ...string) *nats.Msg {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Data = []byte(body)
	for i := 0; i+1 < len(hdr); i += 2 {
		m.Header.Set(hdr[i], hdr[i+1])
	}
	rep, err := nc.RequestMsg(m, 10*time.Second)
	if err != nil {
		t.Fatalf("request on %q: %v", subject, err)
	}
	return rep
}

// okReply decodes a successful reply, failing the test on an error reply.
func okReply(t *testing.T, m *nats.Msg) natsconf.RefreshReply {
	t.Helper()
	if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
		t.Fatalf("error reply %s: %s (%s)", code, m.Header.Get(micro.ErrorHeader), m.Data)
	}
	var rep natsconf.RefreshReply
	if err := json.Unmarshal(m.Data, &rep); err != nil || rep.AccessToken == "" {
		t.Fatalf("reply %q: %v", m.Data, err)
	}
	return rep
}

// TestStaleRevisionFromTheFutureDoesNotFetch: a stale_revision greater
// than the stored revision names no token anyone holds; it is answered
// like an empty request, with the stored record and no upstream call, on
// the fast path (passive) and through Refresh (manual) alike. A request
// naming the stored revision still forces its one fetch.
func TestStaleRevisionFromTheFutureDoesNotFetch(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	e.Start(e.Config(app)) // passive_min_interval 0: nothing but the revision check stands between a request and a fetch
	rec, rev := e.WaitRecord(5*time.Second, "mp", func(natsconf.Record, uint64) bool { return true })
	calls := e.Sim.Calls(app.AppID)

	subj := natsconf.RefreshSubject("mp")
	for _, stale := range []uint64{rev + 1, rev + 1000, math.MaxUint64} {
		body := `{"stale_revision": ` + strconv.FormatUint(stale, 10) + `}`
		for _, hdr := range [][]string{nil, {natsconf.SourceHeader, natsconf.SourceManual}} {
			got := okReply(t, refreshRequest(t, e.NC, subj, body, hdr...))
			if got.Revision != rev || got.AccessToken != rec.AccessToken {
				t.Errorf("stale %d (headers %v): reply revision %d, want the stored %d", stale, hdr, got.Revision, rev)
			}
		}
	}
	if n := e.Sim.Calls(app.AppID) - calls; n != 0 {
		t.Fatalf("stale revisions from the future caused %d upstream calls, want 0", n)
	}

	// The stored revision itself was rejected: that one is refreshed.
	got := okReply(t, refreshRequest(t, e.NC, subj, `{"stale_revision": `+strconv.FormatUint(rev, 10)+`}`))
	if got.Revision <= rev {
		t.Fatalf("stale %d (the stored revision): reply revision %d, want a newer one", rev, got.Revision)
	}
	if n := e.Sim.Calls(app.AppID); n != calls+1 {
		t.Fatalf("%d upstream calls after rejecting the stored revision, want %d", n, calls+1)
	}
}
