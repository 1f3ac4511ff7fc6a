package refresher_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// readAudit returns every record of the audit stream, raw and parsed.
func readAudit(t *testing.T, js jetstream.JetStream) ([]contract.AuditRecord, []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, contract.AuditStream)
	if err != nil {
		t.Fatalf("audit stream: %v", err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var recs []contract.AuditRecord
	var raw []string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("audit message %d: %v", seq, err)
		}
		var rec contract.AuditRecord
		if err := json.Unmarshal(m.Data, &rec); err != nil {
			t.Fatalf("audit record %d does not parse: %v", seq, err)
		}
		if m.Subject != contract.AuditSubject(rec.Key) {
			t.Errorf("audit record of %s on subject %s", rec.Key, m.Subject)
		}
		recs = append(recs, rec)
		raw = append(raw, string(m.Data))
	}
	return recs, raw
}

// TestAuditOneRecordPerUpstreamCall: every upstream call — token and
// ticket endpoints, successes and failures, under a storm of passive
// refreshes and across a failover — is exactly one audit record, and no
// credential or secret appears in any record.
func TestAuditOneRecordPerUpstreamCall(t *testing.T) {
	var mu sync.Mutex
	upstream := 0
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: 3 * time.Second, Grace: time.Second,
		OnCall: func(c wechatsim.Call) {
			if c.Path == wechatsim.PathToken || c.Path == wechatsim.PathGetTicket {
				mu.Lock()
				upstream++
				mu.Unlock()
			}
		}}})
	app := ticketApp(e, "mp", contract.TicketJSAPI)
	cfg := e.Config(app)

	// Every value the bucket ever held, to look for in the audit trail.
	var seen sync.Map
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kv, err := e.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: contract.DefaultBucket})
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for ent := range w.Updates() {
			if ent == nil {
				continue
			}
			var v struct {
				AccessToken string `json:"access_token"`
				Ticket      string `json:"ticket"`
			}
			if json.Unmarshal(ent.Value(), &v) == nil {
				for _, s := range []string{v.AccessToken, v.Ticket} {
					if s != "" {
						seen.Store(s, true)
					}
				}
			}
		}
	}()

	r1 := e.Start(cfg)
	r2 := e.Start(cfg)
	_, rev := e.WaitRecord(10*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	waitTicket(t, e, 10*time.Second, "mp.jsapi", func(contract.TicketRecord, uint64) bool { return true })

	// A storm: 200 concurrent passive refreshes naming the stored
	// revision, from a named requester, three times.
	storm := func(stale uint64) {
		var wg sync.WaitGroup
		for range 200 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				msg := nats.NewMsg(contract.RefreshSubject("mp"))
				msg.Header.Set(contract.RequesterHeader, "storm-client")
				msg.Data, _ = json.Marshal(contract.RefreshRequest{StaleRevision: &stale})
				_, _ = e.NC.RequestMsg(msg, 10*time.Second)
			}()
		}
		wg.Wait()
	}
	for range 3 {
		storm(rev)
		_, rev = e.WaitRecord(10*time.Second, "mp", func(_ contract.Record, r uint64) bool { return r > rev })
	}
	// A failover: the leader stops, the other takes over and refreshes.
	leader, follower := r1, r2
	if !r1.R.Leader() {
		leader, follower = r2, r1
	}
	if err := leader.Stop(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, follower.R.Leader, "no takeover")
	_, rev, _ = e.Record(contract.DefaultBucket, "mp")
	// The new leader's first attempt fails (errcode -1) and is retried.
	e.Sim.SetFault(wechatsim.Fault{Busy: 1, HTTP5xx: 0})
	storm(rev)
	e.WaitRecord(10*time.Second, "mp", func(_ contract.Record, r uint64) bool { return r > rev })
	if err := follower.Stop(); err != nil {
		t.Fatal(err)
	}

	recs, raw := readAudit(t, e.JS)
	mu.Lock()
	calls := upstream
	mu.Unlock()
	if len(recs) != calls {
		t.Errorf("%d audit records for %d upstream calls, want one each", len(recs), calls)
	}
	byReason := map[string]int{}
	replicas := map[string]bool{}
	for _, rec := range recs {
		t.Logf("%s %s %s attempt %d ok %v %s", rec.Replica, rec.Key, rec.Reason, rec.Attempt, rec.OK, rec.Credential)
		byReason[rec.Reason]++
		replicas[rec.Replica] = true
		if rec.Endpoint != wechatsim.PathToken && rec.Endpoint != wechatsim.PathGetTicket {
			t.Errorf("audit endpoint %q is not a path", rec.Endpoint)
		}
		if rec.OK && rec.Credential == "" {
			t.Errorf("successful call without the credential's fingerprint: %+v", rec)
		}
		if rec.Reason == contract.SourcePassive && rec.Requester != "storm-client" {
			t.Errorf("passive call's requester %q, want storm-client", rec.Requester)
		}
	}
	failed := 0
	for _, rec := range recs {
		if !rec.OK && rec.Errcode == -1 {
			failed++
		}
	}
	if failed != 1 {
		t.Errorf("%d audit records of failed attempts (errcode -1), want 1", failed)
	}
	if byReason[contract.SourcePassive] == 0 || len(replicas) != 2 {
		t.Errorf("reasons %v, replicas %d: want passive calls and both replicas", byReason, len(replicas))
	}
	all := strings.Join(raw, "\n")
	if strings.Contains(all, app.Secret()) {
		t.Error("the AppSecret appears in the audit trail")
	}
	n := 0
	seen.Range(func(k, _ any) bool {
		n++
		if strings.Contains(all, k.(string)) {
			t.Errorf("a credential (%s) appears in the audit trail", contract.Fingerprint(k.(string)))
		}
		return true
	})
	if n < 4 {
		t.Errorf("only %d credentials seen in the bucket; the test looked at too little", n)
	}
	t.Logf("%d upstream calls, %d audit records, by reason %v, %d credentials checked", calls, len(recs), byReason, n)
}
