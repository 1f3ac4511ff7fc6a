package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
)

// The permission sets of docs/protocol.md ("Permissions") for bucket
// "tokens". This test holds the document to them: the refresher runs as
// "refresher", tokenctl get/watch/refresh as "reader", status as "ops",
// and the server must report no permissions violation.

// refresherPermissions is what the refresher needs.
func refresherPermissions() *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			"$JS.API.INFO",
			"$JS.API.STREAM.INFO.KV_tokens", "$JS.API.STREAM.CREATE.KV_tokens", "$JS.API.STREAM.UPDATE.KV_tokens",
			"$JS.API.STREAM.INFO.KV_tokens_lease", "$JS.API.STREAM.CREATE.KV_tokens_lease", "$JS.API.STREAM.UPDATE.KV_tokens_lease",
			"$JS.API.STREAM.INFO.KV_tokens_state", "$JS.API.STREAM.CREATE.KV_tokens_state", "$JS.API.STREAM.UPDATE.KV_tokens_state",
			"$JS.API.DIRECT.GET.KV_tokens.>", "$JS.API.DIRECT.GET.KV_tokens_lease.>", "$JS.API.DIRECT.GET.KV_tokens_state.>",
			"$JS.API.CONSUMER.CREATE.KV_tokens.>", "$JS.API.CONSUMER.CREATE.KV_tokens_lease.>", "$JS.API.CONSUMER.CREATE.KV_tokens_state.>",
			"$JS.API.CONSUMER.DELETE.KV_tokens.>", "$JS.API.CONSUMER.DELETE.KV_tokens_lease.>", "$JS.API.CONSUMER.DELETE.KV_tokens_state.>",
			"$JS.FC.KV_tokens.>", "$JS.FC.KV_tokens_lease.>", "$JS.FC.KV_tokens_state.>",
			"$KV.tokens.>", "$KV.tokens_lease.>", "$KV.tokens_state.>",
			"token.updated.>",
			"$JS.API.STREAM.CREATE.tokenkeeper_audit", "$JS.API.STREAM.UPDATE.tokenkeeper_audit",
			"$JS.API.STREAM.INFO.tokenkeeper_audit", "token.audit.>",
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{"token.refresh.>", "token.sign.>", "token.admin.>", "$SRV.>", "_INBOX.>"}},
		Response:  &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
	}
}

// readerPublish is what a reading service publishes to (its subscribe
// permission is its inbox: "_INBOX.>", or a private prefix).
var readerPublish = []string{
	"$JS.API.STREAM.INFO.KV_tokens",
	"$JS.API.DIRECT.GET.KV_tokens.>",
	"$JS.API.CONSUMER.CREATE.KV_tokens.>",
	"$JS.API.CONSUMER.DELETE.KV_tokens.>",
	"$JS.FC.KV_tokens.>",
	"token.refresh.>",
	"token.sign.>",
	"$SRV.>",
}

// opsPublish adds what tokenctl status needs: reading the lease and
// listing the state bucket.
var opsPublish = append(append([]string(nil), readerPublish...),
	"$JS.API.STREAM.INFO.KV_tokens_lease", "$JS.API.DIRECT.GET.KV_tokens_lease.>",
	"$JS.API.STREAM.INFO.KV_tokens_state", "$JS.API.CONSUMER.CREATE.KV_tokens_state.>",
	"$JS.API.CONSUMER.DELETE.KV_tokens_state.>", "$JS.FC.KV_tokens_state.>",
	// tokenctl audit
	"$JS.API.STREAM.INFO.tokenkeeper_audit", "$JS.API.CONSUMER.CREATE.tokenkeeper_audit.>",
	"$JS.API.CONSUMER.DELETE.tokenkeeper_audit.>", "$JS.API.CONSUMER.MSG.NEXT.tokenkeeper_audit.>",
	"$JS.FC.tokenkeeper_audit.>",
	// tokenctl authorizers
	"token.admin.>")

const (
	refresherPW = "refresher-pw-31d"
	readerPW    = "reader-pw-8e2"
	opsPW       = "ops-pw-c47"
)

func withPermissionedUsers(o *server.Options) {
	inbox := &server.SubjectPermission{Allow: []string{"_INBOX.>"}}
	o.Users = []*server.User{
		{Username: "admin", Password: "admin-pw-99f"},
		{Username: "refresher", Password: refresherPW, Permissions: refresherPermissions()},
		{Username: "reader", Password: readerPW, Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Allow: readerPublish}, Subscribe: inbox}},
		{Username: "ops", Password: opsPW, Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Allow: opsPublish}, Subscribe: inbox}},
	}
	// The harness's own connection has no credentials: it is admin.
	o.NoAuthUser = "admin"
}

// violationLog collects the server's permissions violations.
type violationLog struct {
	mu   sync.Mutex
	msgs []string
}

func (l *violationLog) record(format string, v ...any) {
	if msg := fmt.Sprintf(format, v...); strings.Contains(msg, "Violation") {
		l.mu.Lock()
		l.msgs = append(l.msgs, msg)
		l.mu.Unlock()
	}
}

func (l *violationLog) Noticef(f string, v ...any) { l.record(f, v...) }
func (l *violationLog) Warnf(f string, v ...any)   { l.record(f, v...) }
func (l *violationLog) Fatalf(f string, v ...any)  { l.record(f, v...) }
func (l *violationLog) Errorf(f string, v ...any)  { l.record(f, v...) }
func (l *violationLog) Debugf(f string, v ...any)  { l.record(f, v...) }
func (l *violationLog) Tracef(f string, v ...any)  { l.record(f, v...) }

func (l *violationLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.msgs...)
}

func TestPermissionsOfProtocolDoc(t *testing.T) {
	e := harness.New(t, harness.Options{NATS: []func(*server.Options){withPermissionedUsers}})
	violations := &violationLog{}
	e.Server.SetLogger(violations, false, false)
	withUser := func(user, pw string) string {
		return strings.Replace(e.URL, "nats://", "nats://"+user+":"+pw+"@", 1)
	}

	events := make(chan *nats.Msg, 16)
	sub, err := e.NC.ChanSubscribe(contract.UpdatedSubject("mp"), events)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := e.NC.Flush(); err != nil {
		t.Fatal(err)
	}

	cfg := e.Config(e.App("mp"))
	cfg.NATS.URL = withUser("refresher", refresherPW)
	rep := e.Start(cfg)
	rec, rev := e.WaitRecord(10*time.Second, "mp", func(r contract.Record, _ uint64) bool { return r.AccessToken != "" })
	select {
	case <-events:
	case <-time.After(5 * time.Second):
		t.Fatal("no token.updated event from the refresher user")
	}

	reader := []string{"--nats", e.URL, "--user", "reader", "--password", readerPW}
	if r := tokenctl(t, append(reader, "get", "mp")...); r.code != 0 || !strings.Contains(r.stdout, rec.AccessToken) {
		t.Fatalf("get as reader: %s", r)
	}
	stdout, stderr, stop := startWatch(t, append(reader, "watch", "mp")...)
	testutil.WaitFor(t, 5*time.Second, func() bool {
		return strings.Contains(stdout.String(), fmt.Sprintf("revision=%d ", rev))
	}, "watch as reader:\n%s\n%s", stdout, stderr)
	r := tokenctl(t, append(reader, "--json", "refresh", "mp", "--stale", strconv.FormatUint(rev, 10))...)
	var reply contract.RefreshReply
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &reply) != nil || reply.Revision <= rev {
		t.Fatalf("refresh as reader: %s", r)
	}
	testutil.WaitFor(t, 5*time.Second, func() bool {
		return strings.Contains(stdout.String(), fmt.Sprintf("revision=%d ", reply.Revision))
	}, "watch as reader did not see revision %d:\n%s\n%s", reply.Revision, stdout, stderr)
	if code := stop(); code != 0 {
		t.Fatalf("watch as reader exited %d:\n%s", code, stderr)
	}

	// token.sign as the reader: answered (mp keeps no ticket here: 404),
	// not refused by the server.
	if r := tokenctl(t, append(reader, "sign", "mp", "https://shop.example/")...); r.code != 1 || !strings.Contains(r.stderr, "404 app mp keeps no jsapi ticket") {
		t.Fatalf("sign as reader: %s", r)
	}

	// Service discovery, as the reader.
	rnc, _ := testutil.Connect(t, withUser("reader", readerPW))
	msg, err := rnc.Request("$SRV.INFO."+contract.ServiceName, nil, 2*time.Second)
	if err != nil {
		t.Fatalf("$SRV.INFO.%s as reader: %v", contract.ServiceName, err)
	}
	var info struct {
		Name      string `json:"name"`
		Endpoints []struct {
			Subject    string `json:"subject"`
			QueueGroup string `json:"queue_group"`
		} `json:"endpoints"`
		Metadata map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal(msg.Data, &info); err != nil || info.Name != contract.ServiceName ||
		len(info.Endpoints) != 1 || info.Endpoints[0].Subject != "token.refresh.>" || info.Metadata["replica"] != rep.R.ID() {
		t.Fatalf("$SRV.INFO reply: %s", msg.Data)
	}

	ops := []string{"--nats", e.URL, "--user", "ops", "--password", opsPW}
	testutil.WaitFor(t, 5*time.Second, func() bool {
		r = tokenctl(t, append(ops, "status")...)
		return r.code == 0 && strings.Contains(r.stdout, "leader: "+rep.R.ID())
	}, "status as ops: %s", &r)

	// ops reads the audit trail: the startup call at least.
	testutil.WaitFor(t, 5*time.Second, func() bool {
		r = tokenctl(t, append(ops, "audit")...)
		return r.code == 0 && strings.Contains(r.stdout, " startup ")
	}, "audit as ops: %s", &r)

	// The reader cannot read the lease: status fails, with the reason.
	r = tokenctl(t, append(reader, "--timeout", "1s", "status")...)
	if r.code != 1 || !strings.Contains(r.stderr, "Permissions Violation") {
		t.Errorf("status as reader: want a permissions error: %s", r)
	}

	// A graceful stop releases the lease (a delete in the lease bucket).
	if err := rep.Stop(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, func() bool {
		r = tokenctl(t, append(ops, "status")...)
		return r.code == 0 && strings.Contains(r.stdout, "leader: none")
	}, "status after the refresher stopped: %s", &r)

	var unexpected []string
	for _, v := range violations.all() {
		if !strings.Contains(v, "KV_tokens_lease") || !strings.Contains(v, "reader") {
			unexpected = append(unexpected, v)
		}
	}
	if len(unexpected) > 0 {
		t.Fatalf("permissions violations with the documented permissions:\n%s", strings.Join(unexpected, "\n"))
	}
	if len(violations.all()) == 0 {
		t.Fatal("the violation log saw nothing, not even the reader's status: is it wired to the server?")
	}

}
