package refresher_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// TestRefreshServiceBadRequests: every bad request gets a clear micro
// error reply (headers and JSON body), never a crash, never a fetch.
func TestRefreshServiceBadRequests(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	e.Start(e.Config(app))
	_, rev := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	calls := e.Sim.Calls(app.AppID)

	cases := []struct {
		name, subject, body string
		code                int
		says                string
	}{
		{"not json", "mp", `{stale_revision: 1`, 400, "not a JSON object"},
		{"a string", "mp", `{"stale_revision": "abc"}`, 400, "non-negative integer"},
		{"negative", "mp", `{"stale_revision": -1}`, 400, "non-negative integer"},
		{"fraction", "mp", `{"stale_revision": 1.5}`, 400, "non-negative integer"},
		{"an array", "mp", `[1,2]`, 400, "not a JSON object"},
		{"oversized", "mp", `{"stale_revision": 1, "pad": "` + strings.Repeat("x", 2000) + `"}`, 400, "over the limit"},
		{"unknown app", "nope", `{"stale_revision": 1}`, 404, `unknown app "nope"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := e.NC.Request(contract.RefreshSubject(c.subject), []byte(c.body), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.Header.Get(micro.ErrorCodeHeader); got != itoa(c.code) {
				t.Errorf("error code header %q, want %d", got, c.code)
			}
			if !strings.Contains(m.Header.Get(micro.ErrorHeader), c.says) {
				t.Errorf("error header %q does not say %q", m.Header.Get(micro.ErrorHeader), c.says)
			}
			var er contract.ErrorReply
			if err := json.Unmarshal(m.Data, &er); err != nil || er.Error.Code != c.code || !strings.Contains(er.Error.Message, c.says) {
				t.Errorf("error body %s", m.Data)
			}
		})
	}
	if n := e.Sim.Calls(app.AppID); n != calls {
		t.Fatalf("bad requests caused %d upstream calls", n-calls)
	}

	// Still serving: an older revision and an empty body are answered
	// with the stored record, without a fetch; so are unknown fields.
	for _, body := range []string{`{"stale_revision": 0}`, ``, `null`, `{}`, `{"stale_revision": null, "extra": true}`} {
		m, err := e.NC.Request(contract.RefreshSubject("mp"), []byte(body), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var rep contract.RefreshReply
		if err := json.Unmarshal(m.Data, &rep); err != nil || rep.Revision != rev || rep.AccessToken == "" {
			t.Errorf("body %q: reply %s", body, m.Data)
		}
	}
	if n := e.Sim.Calls(app.AppID); n != calls {
		t.Fatalf("requests answered from the store caused %d upstream calls", n-calls)
	}
}

// TestRefreshServiceDiscovery: the endpoint is a micro service named
// tokenkeeper, found by $SRV.PING.
func TestRefreshServiceDiscovery(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	rep := e.Start(e.Config(e.App("mp")))
	e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	m, err := e.NC.Request("$SRV.INFO."+contract.ServiceName, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(m.Data, &info); err != nil {
		t.Fatal(err)
	}
	if info.Name != contract.ServiceName || len(info.Endpoints) != 1 || info.Endpoints[0].Subject != contract.RefreshPrefix+">" {
		t.Fatalf("service info %+v", info)
	}
	if info.Metadata["replica"] != rep.R.ID() {
		t.Errorf("service metadata %v does not name the replica", info.Metadata)
	}
}

func FuzzParseRefreshRequest(f *testing.F) {
	for _, s := range []string{"", "null", "{}", `{"stale_revision":1}`, `{"stale_revision":"1"}`, `{"stale_revision":-1}`, `[`, `{"stale_revision":18446744073709551615}`, `{"stale_revision":18446744073709551616}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		stale, err := refresher.ParseRefreshRequest(body) // must not panic
		if err != nil && stale != nil {
			t.Fatal("both a revision and an error")
		}
		if len(body) > contract.MaxRequestBody && err == nil {
			t.Fatal("an oversized body was accepted")
		}
		if err == nil && stale != nil {
			// What was understood round-trips through the contract's type.
			b, _ := json.Marshal(contract.RefreshRequest{StaleRevision: stale})
			again, err := refresher.ParseRefreshRequest(b)
			if err != nil || again == nil || *again != *stale {
				t.Fatalf("%s parsed to %d, its encoding %s to %v, %v", body, *stale, b, again, err)
			}
		}
	})
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
