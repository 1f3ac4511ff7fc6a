package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
)

// result is the outcome of one tokenctl run.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout:\n%s--- stderr:\n%s", r.code, r.stdout, r.stderr)
}

// tokenctl runs the CLI in-process with args.
func tokenctl(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb strings.Builder
	code := run(ctx, args, &out, &errb)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// world is a running tokenkeeper: embedded NATS, emulator, one refresher
// replica serving app "mp", whose first token is stored.
type world struct {
	e   *harness.Env
	rep *harness.Replica
	rec contract.Record
	rev uint64
}

func newWorld(t *testing.T, apps ...string) *world {
	t.Helper()
	if len(apps) == 0 {
		apps = []string{"mp"}
	}
	e := harness.New(t, harness.Options{})
	var cfgs []refresher.AppConfig
	for _, a := range apps {
		cfgs = append(cfgs, e.App(a))
	}
	rep := e.Start(e.Config(cfgs...))
	w := &world{e: e, rep: rep}
	for _, a := range apps {
		rec, rev := e.WaitRecord(10*time.Second, a, func(r contract.Record, _ uint64) bool { return r.AccessToken != "" })
		if a == apps[0] {
			w.rec, w.rev = rec, rev
		}
	}
	return w
}

// field parses the duration on the line of out that starts with name.
func field(out, name string) time.Duration {
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, name); ok {
			d, _ := time.ParseDuration(strings.TrimSpace(v))
			return d
		}
	}
	return 0
}

// aboutTwoHours reports whether s is a duration of a fresh token.
func aboutTwoHours(s string) bool {
	d, err := time.ParseDuration(s)
	return err == nil && d > time.Hour && d <= 2*time.Hour
}

// noSecrets fails if out holds an AppSecret of the harness.
func noSecrets(t *testing.T, r result, apps ...string) {
	t.Helper()
	for _, a := range apps {
		if s := harness.Secret("wx" + a); strings.Contains(r.stdout+r.stderr, s) {
			t.Fatalf("the AppSecret of %s was printed:\n%s", a, r)
		}
	}
}

func TestGetPrintsRecordAndToken(t *testing.T) {
	w := newWorld(t)
	r := tokenctl(t, "--nats", w.e.URL, "get", "mp")
	if r.code != 0 {
		t.Fatalf("get: %s", r)
	}
	for _, want := range []string{
		"app:           mp\n",
		"revision:      " + strconv.FormatUint(w.rev, 10) + "\n",
		"source:        startup\n",
		"access_token:  " + w.rec.AccessToken + "\n",
		"fingerprint:   " + contract.Fingerprint(w.rec.AccessToken) + "\n",
		"expires_at:    " + w.rec.ExpiresAt.UTC().Format(time.RFC3339) + "\n",
		"fetched_at:    " + w.rec.FetchedAt.UTC().Format(time.RFC3339) + "\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("get output lacks %q:\n%s", want, r)
		}
	}
	if d := field(r.stdout, "expires_in:"); d < time.Hour || d > 2*time.Hour {
		t.Errorf("expires_in %s, want about 2h:\n%s", d, r)
	}
	noSecrets(t, r, "mp")

	// --json after the app name: the stored JSON plus revision.
	r = tokenctl(t, "--nats", w.e.URL, "get", "mp", "--json")
	if r.code != 0 {
		t.Fatalf("get --json: %s", r)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("get --json is not JSON: %v\n%s", err, r)
	}
	if got["app"] != "mp" || got["access_token"] != w.rec.AccessToken || got["revision"] != float64(w.rev) ||
		got["source"] != "startup" || got["expires_at"] == nil || got["fetched_at"] == nil {
		t.Fatalf("get --json = %v, want the record of revision %d", got, w.rev)
	}
}

func TestGetMissingAppAndBucket(t *testing.T) {
	w := newWorld(t)
	r := tokenctl(t, "--nats", w.e.URL, "get", "nope")
	if r.code != 1 || !strings.Contains(r.stderr, "no token stored for app nope in bucket tokens") {
		t.Fatalf("get of a missing app: %s", r)
	}
	r = tokenctl(t, "--nats", w.e.URL, "--bucket", "other", "get", "mp")
	if r.code != 1 || !strings.Contains(r.stderr, "bucket other not found: is a refresher running against this NATS?") {
		t.Fatalf("get from a missing bucket: %s", r)
	}

	// No refresher ever ran: no bucket.
	e := harness.New(t, harness.Options{})
	r = tokenctl(t, "--nats", e.URL, "get", "mp")
	if r.code != 1 || !strings.Contains(r.stderr, "bucket tokens not found: is a refresher running against this NATS?") {
		t.Fatalf("get without a bucket: %s", r)
	}
}

func TestRefresh(t *testing.T) {
	w := newWorld(t)

	// Empty body: the stored, valid record, no fetch.
	r := tokenctl(t, "--nats", w.e.URL, "refresh", "mp")
	if r.code != 0 || !strings.Contains(r.stdout, "revision:      "+strconv.FormatUint(w.rev, 10)+"\n") ||
		!strings.Contains(r.stdout, "access_token:  "+w.rec.AccessToken+"\n") {
		t.Fatalf("refresh without --stale: want revision %d: %s", w.rev, r)
	}

	// --stale with the current revision: a new token at a newer revision.
	r = tokenctl(t, "--nats", w.e.URL, "--json", "refresh", "mp", "--stale", strconv.FormatUint(w.rev, 10))
	if r.code != 0 {
		t.Fatalf("refresh --stale: %s", r)
	}
	var rep contract.RefreshReply
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("refresh --json is not a reply: %v\n%s", err, r)
	}
	if rep.Revision <= w.rev || rep.AccessToken == w.rec.AccessToken || rep.Source != contract.SourceManual {
		t.Fatalf("refresh --stale %d answered revision %d source %q (token changed: %v), want a newer manual token",
			w.rev, rep.Revision, rep.Source, rep.AccessToken != w.rec.AccessToken)
	}
	stored, rev, ok := w.e.Record(contract.DefaultBucket, "mp")
	if !ok || rev != rep.Revision || stored.AccessToken != rep.AccessToken {
		t.Fatalf("the bucket holds revision %d, the reply said %d", rev, rep.Revision)
	}

	// An older stale revision: the current record, no new fetch.
	r = tokenctl(t, "--nats", w.e.URL, "refresh", "--stale", strconv.FormatUint(w.rev, 10), "mp")
	if r.code != 0 || !strings.Contains(r.stdout, "revision:      "+strconv.FormatUint(rep.Revision, 10)+"\n") {
		t.Fatalf("refresh with an older stale revision: want revision %d: %s", rep.Revision, r)
	}
	noSecrets(t, r, "mp")
}

func TestRefreshErrorReplyAndNoResponders(t *testing.T) {
	w := newWorld(t)
	r := tokenctl(t, "--nats", w.e.URL, "refresh", "ghost")
	if r.code != 1 || !strings.Contains(r.stderr, "refresh of ghost failed: 404 ") || !strings.Contains(r.stderr, "unknown app") {
		t.Fatalf("refresh of an unknown app: %s", r)
	}
	r = tokenctl(t, "--nats", w.e.URL, "--json", "refresh", "ghost")
	var er contract.ErrorReply
	if r.code != 1 || json.Unmarshal([]byte(r.stdout), &er) != nil || er.Error.Code != contract.CodeNotFound {
		t.Fatalf("refresh --json of an unknown app: want the error body on stdout: %s", r)
	}

	// Nobody serves token.refresh.
	e := harness.New(t, harness.Options{})
	r = tokenctl(t, "--nats", e.URL, "refresh", "mp")
	if r.code != 1 || !strings.Contains(r.stderr, "no refresher is serving token.refresh.mp") {
		t.Fatalf("refresh without a refresher: %s", r)
	}
}

func TestStatusListsAppsAndLeader(t *testing.T) {
	e := harness.New(t, harness.Options{})
	bad := e.App("bad").WithSecret("not-the-secret") // every fetch fails: no token, a last error
	e.Start(e.Config(e.App("mp"), e.App("oa"), bad))
	rec, rev := e.WaitRecord(10*time.Second, "mp", func(r contract.Record, _ uint64) bool { return r.AccessToken != "" })
	e.WaitRecord(10*time.Second, "oa", func(r contract.Record, _ uint64) bool { return r.AccessToken != "" })
	// A key that is not a record is listed, not skipped.
	kv, err := e.JS.KeyValue(context.Background(), contract.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(context.Background(), "junk", []byte("not json")); err != nil {
		t.Fatal(err)
	}

	var leader string
	var r result
	testutil.WaitFor(t, 10*time.Second, func() bool {
		r = tokenctl(t, "--nats", e.URL, "status")
		return r.code == 0 && strings.Contains(r.stdout, "leader: ") && !strings.Contains(r.stdout, "leader: none") &&
			strings.Contains(r.stdout, "NO TOKEN") && strings.Contains(r.stdout, "errcode 40001") &&
			// The calls of the day come from the state bucket, written
			// a moment after the token (off the refresh's path).
			strings.Count(r.stdout, " 1/2000 ") >= 2
	}, "status does not show a leader, the failing app and the day's calls: %s", &r)
	_, after, _ := strings.Cut(r.stdout, "leader: ")
	leader, _, _ = strings.Cut(after, " ")

	lines := strings.Split(r.stdout, "\n")
	var header string
	rows := map[string][]string{}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) > 0 && f[0] == "APP" {
			header = l
		}
		if len(f) > 0 && (f[0] == "mp" || f[0] == "oa" || f[0] == "junk" || f[0] == "bad") {
			rows[f[0]] = f
		}
	}
	if header == "" || len(rows) != 4 {
		t.Fatalf("status: want a table with mp, oa, bad and junk:\n%s", r)
	}
	if f := rows["mp"]; len(f) != 8 || f[1] != strconv.FormatUint(rev, 10) || f[2] != "startup" || !aboutTwoHours(f[5]) ||
		f[6] != "1/2000" || f[7] != "-" {
		t.Errorf("status row of mp = %q, want revision %d, startup, ~2h to expiry, 1/2000 calls, no error", f, rev)
	}
	if f := rows["junk"]; len(f) < 3 || f[2] != "INVALID" {
		t.Errorf("status row of junk = %q, want INVALID", f)
	}
	if l := lineOf(lines, "bad"); !strings.Contains(l, "NO TOKEN") || !strings.Contains(l, "/2000") ||
		!strings.Contains(l, "errcode 40001") || !strings.Contains(l, " ago") {
		t.Errorf("status row of bad = %q, want NO TOKEN, calls and the last error", l)
	}
	// Columns are aligned: every row's REVISION starts where the header's does.
	col := strings.Index(header, "REVISION")
	for _, app := range []string{"mp", "oa", "junk", "bad"} {
		l := lineOf(lines, app)
		if i := strings.IndexFunc(l[len(app):], func(r rune) bool { return r != ' ' }); i+len(app) != col {
			t.Errorf("row %q is not aligned with %q", l, header)
		}
	}
	if strings.Contains(r.stdout, rec.AccessToken) || strings.Contains(r.stdout, harness.Secret("wxbad")) {
		t.Errorf("status printed a token or a secret:\n%s", r)
	}

	r = tokenctl(t, "--nats", e.URL, "status", "--json")
	var rep statusReport
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &rep) != nil {
		t.Fatalf("status --json: %s", r)
	}
	if rep.Leader == nil || rep.Leader.ID != leader || rep.Bucket != "tokens" || len(rep.Apps) != 4 {
		t.Fatalf("status --json = %+v, want leader %s and 4 apps", rep, leader)
	}
	byName := map[string]appStatus{}
	for _, a := range rep.Apps {
		byName[a.App] = a
	}
	if a := byName["mp"]; a.Revision != rev || a.Expired || a.ExpiresInSeconds < 3600 || a.CallsToday == nil ||
		*a.CallsToday != 1 || a.DailyQuota != 2000 || a.LastError != "" {
		t.Errorf("status --json mp = %+v", a)
	}
	if a := byName["bad"]; !a.NoToken || a.LastErrcode != 40001 || a.LastError == "" || a.LastErrorAt.IsZero() || a.CallsToday == nil {
		t.Errorf("status --json bad = %+v", a)
	}
	if a := byName["junk"]; a.Invalid == "" {
		t.Errorf("status --json junk = %+v", a)
	}
}

// lineOf returns the first line whose first field is name.
func lineOf(lines []string, name string) string {
	for _, l := range lines {
		if f := strings.Fields(l); len(f) > 0 && f[0] == name {
			return l
		}
	}
	return ""
}

func TestStatusWithoutLeaderShowsExpired(t *testing.T) {
	e := harness.New(t, harness.Options{})
	kv, err := natsconf.EnsureBucket(context.Background(), e.JS, natsconf.BucketConfig{Name: "tokens"})
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-3 * time.Hour).UTC()
	val, _ := json.Marshal(contract.Record{App: "mp", AccessToken: "tok", FetchedAt: old, ExpiresAt: old.Add(2 * time.Hour), Source: "scheduled"})
	if _, err := kv.Put(context.Background(), "mp", val); err != nil {
		t.Fatal(err)
	}
	r := tokenctl(t, "--nats", e.URL, "status")
	if r.code != 0 || !strings.Contains(r.stdout, "leader: none (no lease bucket tokens_lease)") ||
		!strings.Contains(r.stdout, "no state bucket tokens_state") ||
		!strings.Contains(r.stdout, "-1h0m0s EXPIRED") {
		t.Fatalf("status of an expired token without a refresher: %s", r)
	}
	if _, err := natsconf.EnsureBucket(context.Background(), e.JS, natsconf.BucketConfig{Name: "tokens_lease", TTL: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}
	r = tokenctl(t, "--nats", e.URL, "--json", "status")
	var rep statusReport
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &rep) != nil || rep.Leader != nil ||
		len(rep.Apps) != 1 || !rep.Apps[0].Expired || rep.Apps[0].ExpiresInSeconds > -3599 {
		t.Fatalf("status --json without a lease: %s", r)
	}

	// An empty bucket is not an error.
	r = tokenctl(t, "--nats", e.URL, "--bucket", "tokens_lease", "status")
	if r.code != 0 || !strings.Contains(r.stdout, "no tokens stored in bucket tokens_lease yet") {
		t.Fatalf("status of an empty bucket: %s", r)
	}
}

// runWatch starts "tokenctl watch" in the background; stop cancels it and
// returns its exit status.
func startWatch(t *testing.T, args ...string) (stdout, stderr *harness.SyncBuffer, stop func() int) {
	t.Helper()
	stdout, stderr = &harness.SyncBuffer{}, &harness.SyncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, stdout, stderr) }()
	var once bool
	var code int
	stop = func() int {
		if once {
			return code
		}
		once = true
		cancel()
		select {
		case code = <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("watch did not stop within 10s of cancel\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
		}
		return code
	}
	t.Cleanup(func() { stop() })
	return stdout, stderr, stop
}

// forceRefresh asks for a new token over the stale revision rev and
// returns the reply, retrying while no refresher answers.
func forceRefresh(t *testing.T, url string, rev uint64) contract.RefreshReply {
	t.Helper()
	var rep contract.RefreshReply
	var r result
	testutil.WaitFor(t, 15*time.Second, func() bool {
		r = tokenctl(t, "--nats", url, "--json", "--timeout", "2s", "refresh", "mp", "--stale", strconv.FormatUint(rev, 10))
		return r.code == 0 && json.Unmarshal([]byte(r.stdout), &rep) == nil && rep.Revision > rev
	}, "refresh --stale %d did not succeed: %s", rev, &r)
	return rep
}

func watchLineFor(rev uint64, rec contract.Record) string {
	return fmt.Sprintf("revision=%d  source=%s  expires_at=%s", rev, rec.Source, rec.ExpiresAt.UTC().Format(time.RFC3339))
}

func TestWatchPrintsUpdatesUntilCancelled(t *testing.T) {
	w := newWorld(t)
	stdout, stderr, stop := startWatch(t, "--nats", w.e.URL, "watch", "mp")

	testutil.WaitFor(t, 5*time.Second, func() bool {
		return strings.Contains(stdout.String(), watchLineFor(w.rev, w.rec))
	}, "watch did not print the current revision %d:\n%s\n%s", w.rev, stdout, stderr)

	rep := forceRefresh(t, w.e.URL, w.rev)
	want := watchLineFor(rep.Revision, rep.Record) + "  expires_in="
	fp := "token=" + contract.Fingerprint(rep.AccessToken)
	testutil.WaitFor(t, 5*time.Second, func() bool {
		out := stdout.String()
		return strings.Contains(out, want) && strings.Contains(out, fp)
	}, "watch did not print revision %d with %s:\n%s\n%s", rep.Revision, fp, stdout, stderr)

	if code := stop(); code != 0 {
		t.Fatalf("watch exited %d after cancel\n%s", code, stderr)
	}
	out := stdout.String() + stderr.String()
	if strings.Contains(out, w.rec.AccessToken) || strings.Contains(out, rep.AccessToken) {
		t.Fatalf("watch printed a token:\n%s", out)
	}
	if n := strings.Count(stdout.String(), "\n"); n != 2 {
		t.Errorf("watch printed %d lines, want 2:\n%s", n, stdout)
	}
}

func TestWatchJSONAndWaitsForFirstToken(t *testing.T) {
	e := harness.New(t, harness.Options{})
	if _, err := natsconf.EnsureBucket(context.Background(), e.JS, natsconf.BucketConfig{Name: "tokens"}); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, stop := startWatch(t, "--nats", e.URL, "--json", "watch", "mp")
	testutil.WaitFor(t, 5*time.Second, func() bool {
		return strings.Contains(stderr.String(), "no token stored for app mp yet; waiting")
	}, "watch did not report the missing token:\n%s", stderr)

	rep := e.Start(e.Config(e.App("mp")))
	_ = rep
	rec, rev := e.WaitRecord(10*time.Second, "mp", func(r contract.Record, _ uint64) bool { return r.AccessToken != "" })
	var line watchLine
	testutil.WaitFor(t, 5*time.Second, func() bool {
		first, _, _ := strings.Cut(stdout.String(), "\n")
		return json.Unmarshal([]byte(first), &line) == nil
	}, "watch --json printed no JSON line:\n%s\n%s", stdout, stderr)
	if line.App != "mp" || line.Revision != rev || line.Operation != "PUT" || line.Source != "startup" ||
		line.Fingerprint != contract.Fingerprint(rec.AccessToken) || line.ExpiresInSeconds == nil || *line.ExpiresInSeconds < 3600 {
		t.Fatalf("watch --json line = %+v, want revision %d of mp", line, rev)
	}
	if stop() != 0 {
		t.Fatal("watch --json did not exit 0")
	}
}

func TestWatchSurvivesServerRestart(t *testing.T) {
	// Only what happens on reconnect (the rebuilt watch, and the read made
	// then) may deliver the update here: the periodic poll is off.
	watchPoll = time.Hour
	t.Cleanup(func() { watchPoll = 5 * time.Second })
	testWatchAcrossRestart(t)
}

// A watch that stalls with no error and no reconnect (its consumer is
// deleted on the server, as when the node holding it is lost): only the
// revision poll can find the next update.
func TestWatchPollCatchesAStalledWatch(t *testing.T) {
	watchPoll = 300 * time.Millisecond
	t.Cleanup(func() { watchPoll = 5 * time.Second })
	w := newWorld(t)
	stdout, stderr, stop := startWatch(t, "--nats", w.e.URL, "watch", "mp")
	testutil.WaitFor(t, 5*time.Second, func() bool {
		return strings.Contains(stdout.String(), watchLineFor(w.rev, w.rec))
	}, "watch did not print the current revision:\n%s\n%s", stdout, stderr)
	// tokenctl's consumer is the one filtered on mp's key alone (the
	// refresher's watches every key).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := w.e.JS.Stream(ctx, "KV_tokens")
	if err != nil {
		t.Fatal(err)
	}
	deleted := 0
	for ci := range st.ListConsumers(ctx).Info() {
		if ci.Config.FilterSubject == "$KV.tokens.mp" {
			if err := st.DeleteConsumer(ctx, ci.Name); err != nil {
				t.Fatal(err)
			}
			deleted++
		}
	}
	if deleted != 1 {
		t.Fatalf("deleted %d watch consumers of mp, want 1", deleted)
	}

	rep := forceRefresh(t, w.e.URL, w.rev)
	start := time.Now()
	testutil.WaitFor(t, 5*time.Second, func() bool {
		return strings.Contains(stdout.String(), fmt.Sprintf("revision=%d ", rep.Revision))
	}, "watch did not print revision %d after its watch stalled:\n%s\n%s", rep.Revision, stdout, stderr)
	t.Logf("update printed %s after the refresh", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(stderr.String(), fmt.Sprintf("revision %d is stored but the watch had not delivered it", rep.Revision)) {
		t.Errorf("watch did not report the missed revision:\n%s", stderr)
	}
	if code := stop(); code != 0 {
		t.Fatalf("watch exited %d", code)
	}
}

// testWatchAcrossRestart restarts the NATS server under a running watch;
// the next update must be printed well before a stalled KV watcher would
// recover by itself (~20 s).
func testWatchAcrossRestart(t *testing.T) {
	w := newWorld(t)
	stdout, stderr, stop := startWatch(t, "--nats", w.e.URL, "watch", "mp")
	testutil.WaitFor(t, 5*time.Second, func() bool {
		return strings.Contains(stdout.String(), watchLineFor(w.rev, w.rec))
	}, "watch did not print the current revision:\n%s\n%s", stdout, stderr)

	testutil.RestartServer(t, w.e.Server)
	testutil.WaitFor(t, 10*time.Second, func() bool {
		return strings.Contains(stderr.String(), "reconnected to")
	}, "watch did not report the reconnect:\n%s", stderr)

	rep := forceRefresh(t, w.e.URL, w.rev)
	start := time.Now()
	testutil.WaitFor(t, 8*time.Second, func() bool {
		return strings.Contains(stdout.String(), fmt.Sprintf("revision=%d ", rep.Revision))
	}, "after a server restart watch did not print revision %d within 8s (a stalled watcher takes ~20s):\n%s\n%s",
		rep.Revision, stdout, stderr)
	t.Logf("update seen %s after the refresh", time.Since(start).Round(time.Millisecond))
	if code := stop(); code != 0 {
		t.Fatalf("watch exited %d", code)
	}
	if !strings.Contains(stderr.String(), "disconnected from NATS") {
		t.Errorf("watch did not report the disconnect:\n%s", stderr)
	}
}

// closedPort returns a local port nobody listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

func TestUnreachableNATS(t *testing.T) {
	port := closedPort(t)
	for _, args := range [][]string{
		{"--nats", fmt.Sprintf("nats://ops:hunter2-pw@127.0.0.1:%d", port), "get", "mp"},
		{"--nats", fmt.Sprintf("nats://127.0.0.1:%d", port), "--user", "ops", "--password", "hunter2-pw", "status"},
		{"--nats", fmt.Sprintf("nats://127.0.0.1:%d", port), "--token", "hunter2-pw", "watch", "mp"},
	} {
		args = append([]string{"--timeout", "300ms"}, args...)
		start := time.Now()
		r := tokenctl(t, args...)
		if r.code != 1 || !strings.Contains(r.stderr, "cannot connect to NATS at nats://") ||
			!strings.Contains(r.stderr, fmt.Sprintf("127.0.0.1:%d: no server answered within 300ms", port)) {
			t.Errorf("%q: %s", args, r)
		}
		if strings.Contains(r.stdout+r.stderr, "hunter2") {
			t.Errorf("%q printed the password: %s", args, r)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%q took %s with --timeout 300ms", args, d)
		}
	}
}

func TestAuthentication(t *testing.T) {
	s := testutil.RunServer(t, func(o *server.Options) {
		o.Username, o.Password = "ops", "pw-5ecr3t-ops"
	})
	url := s.ClientURL()

	r := tokenctl(t, "--nats", url, "--timeout", "2s", "--user", "ops", "--password", "pw-wrong-guess", "get", "mp")
	if r.code != 1 || !strings.Contains(r.stderr, "cannot connect to NATS at "+url) ||
		!strings.Contains(strings.ToLower(r.stderr), "authorization violation") || !strings.Contains(r.stderr, "check --user and --password") {
		t.Fatalf("wrong password: %s", r)
	}
	if strings.Contains(r.stdout+r.stderr, "pw-wrong-guess") {
		t.Fatalf("the password was printed: %s", r)
	}

	// The password from the environment: the connection works (and there
	// is no bucket on this server).
	t.Setenv(envPassword, "pw-5ecr3t-ops")
	r = tokenctl(t, "--nats", url, "--user", "ops", "get", "mp")
	if r.code != 1 || !strings.Contains(r.stderr, "bucket tokens not found") {
		t.Fatalf("password from %s: %s", envPassword, r)
	}
	// Credentials in the URL are redacted in errors too.
	r = tokenctl(t, "--nats", strings.Replace(url, "nats://", "nats://ops:pw-wrong-guess@", 1), "--timeout", "2s", "status")
	if r.code != 1 || strings.Contains(r.stdout+r.stderr, "pw-wrong-guess") || !strings.Contains(r.stderr, "xxxxx@") {
		t.Fatalf("password in the URL: %s", r)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Setenv(envPassword, "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "Usage:"},
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"get"}, "usage: tokenctl get KEY"},
		{[]string{"get", "a", "b"}, "usage: tokenctl get KEY"},
		{[]string{"status", "x"}, "status takes no arguments"},
		{[]string{"get", "a.b.c.d"}, `"a.b.c.d" is not a key`},
		{[]string{"get", "a..b"}, `"a..b" is not a key`},
		{[]string{"sign", "a.jsapi", "https://x/"}, `"a.jsapi" is a ticket key, not an app name`},
		{[]string{"sign", "a.b.c", "https://x/"}, `"a.b.c" has three segments`},
		{[]string{"sign", "a"}, "usage: tokenctl sign APP|COMPONENT.AUTHORIZER URL"},
		{[]string{"refresh", "mp", "--stale", "-1"}, "want a non-negative integer"},
		{[]string{"--nope", "status"}, "flag provided but not defined: -nope"},
		{[]string{"status", "--timeout", "0s"}, "--timeout must be positive"},
		{[]string{"--bucket", "a.b", "status"}, `--bucket "a.b" is not a bucket name`},
		{[]string{"--user", "ops", "status"}, "--password: required with --user"},
		{[]string{"--creds", "/nonexistent/ops.creds", "status"}, "--creds: file /nonexistent/ops.creds does not exist"},
		{[]string{"--token", "t", "--user", "u", "--password", "p", "status"}, "cannot be combined with --user"},
		{[]string{"--nats", "http://127.0.0.1:4222", "status"}, `--nats: entry 1: scheme "http" is not supported`},
		{[]string{"help", "bogus"}, `unknown command "bogus"`},
	} {
		r := tokenctl(t, tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("tokenctl %q: want exit 2 and %q: %s", tc.args, tc.want, r)
		}
	}
}

func TestHelp(t *testing.T) {
	r := tokenctl(t, "--help")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("--help: %s", r)
	}
	for _, want := range []string{"get KEY", "watch KEY", "refresh KEY [--stale REV]", "sign APP|COMPONENT.AUTHORIZER URL [--ticket agent_config]", "status", "-nats URL", "-creds FILE",
		"-nkey FILE", "-user NAME", "-password PASSWORD", "-token TOKEN", "-tls-ca FILE", "-tls-cert FILE", "-tls-key FILE",
		`-bucket BUCKET`, `(default "tokens")`, "-timeout DURATION", "(default 5s)", "-json", "NATS_URL", "TOKENCTL_PASSWORD", "Exit status"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	for _, cmd := range []string{"get", "watch", "refresh", "sign", "status"} {
		for _, args := range [][]string{{cmd, "--help"}, {"help", cmd}, {cmd, "-h"}} {
			r := tokenctl(t, args...)
			if r.code != 0 || !strings.Contains(r.stdout, "Usage: tokenctl [global flags] "+cmd) || !strings.Contains(r.stdout, "-nats URL") {
				t.Errorf("tokenctl %q: %s", args, r)
			}
		}
	}
	r = tokenctl(t, "refresh", "--help")
	if !strings.Contains(r.stdout, "-stale REV") || !strings.Contains(r.stdout, "502") {
		t.Errorf("refresh --help lacks --stale or the error codes:\n%s", r.stdout)
	}
	// Help never echoes a password given on the command line.
	r = tokenctl(t, "--password", "pw-on-cmdline", "get", "--help")
	if strings.Contains(r.stdout, "pw-on-cmdline") {
		t.Errorf("help printed the password:\n%s", r.stdout)
	}
}

func TestServerURLDefaults(t *testing.T) {
	c := &cli{g: defaultGlobals()}
	t.Setenv(envURL, "")
	if got := c.serverURL(); got != defaultURL {
		t.Errorf("default URL %q, want %q", got, defaultURL)
	}
	t.Setenv(envURL, "nats://a:4222,nats://b:4222")
	if got := c.serverURL(); got != "nats://a:4222,nats://b:4222" {
		t.Errorf("URL from %s: %q", envURL, got)
	}
	c.g.url = "nats://c:4222"
	if got := c.serverURL(); got != "nats://c:4222" {
		t.Errorf("URL from --nats: %q", got)
	}
	c.g.url = " "
	if got := c.options().URL; got == "" {
		t.Error("an empty --nats must not select the embedded server")
	}
}

func TestRedactURLs(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                       "nats://127.0.0.1:4222",
		"nats://ops:pw@a:4222, tls://tok@b:4222":      "nats://xxxxx@a:4222,tls://xxxxx@b:4222",
		"ops:pw@c:4222":                               "nats://xxxxx@c:4222",
		"nats://ops:p%zz@d:4222":                      "<invalid url>",
		"nats://a:4222,nats://u:p@b:4222,nats://c:42": "nats://a:4222,nats://xxxxx@b:4222,nats://c:42",
	} {
		if got := natsconf.RedactURLs(in); got != want {
			t.Errorf("redactURLs(%q) = %q, want %q", in, got, want)
		}
	}
}
