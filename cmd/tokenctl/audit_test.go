package main

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

// TestAudit: tokenctl audit lists the upstream calls of a key, names the
// requester of a manual refresh, filters by key, and prints JSON lines.
func TestAudit(t *testing.T) {
	w := newWorld(t, "mp", "other")
	r := tokenctl(t, "--nats", w.e.URL, "refresh", "mp", "--stale", strconv.FormatUint(w.rev, 10))
	if r.code != 0 {
		t.Fatalf("refresh: %s", r)
	}
	var recs []contract.AuditRecord
	testutil.WaitFor(t, 10*time.Second, func() bool {
		r = tokenctl(t, "--nats", w.e.URL, "--json", "audit", "mp")
		recs = recs[:0]
		for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			var rec contract.AuditRecord
			if json.Unmarshal([]byte(l), &rec) == nil {
				recs = append(recs, rec)
			}
		}
		return r.code == 0 && len(recs) == 2
	}, "audit mp: want the startup and the manual call: %s", r)
	if recs[0].Reason != contract.SourceStartup || recs[1].Reason != contract.SourceManual {
		t.Errorf("reasons %q, %q; want startup, manual", recs[0].Reason, recs[1].Reason)
	}
	if !strings.HasPrefix(recs[1].Requester, "tokenctl") {
		t.Errorf("manual call's requester %q, want tokenctl's", recs[1].Requester)
	}
	for _, rec := range recs {
		if rec.Key != "mp" {
			t.Errorf("audit mp printed a record of %s", rec.Key)
		}
	}
	// Text: a header and one line per call, of every key.
	r = tokenctl(t, "--nats", w.e.URL, "audit", "--since", "1h")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "TIME") || strings.Count(r.stdout, "\n") != 4 ||
		!strings.Contains(r.stdout, " other ") {
		t.Errorf("audit: want a header and 3 lines:\n%s", r)
	}
	if strings.Contains(r.stdout+r.stderr, w.rec.AccessToken) {
		t.Error("audit printed a token")
	}
	if r := tokenctl(t, "--nats", w.e.URL, "audit", "--since", "-1s"); r.code != 2 {
		t.Errorf("audit --since -1s: want a usage error: %s", r)
	}
}
