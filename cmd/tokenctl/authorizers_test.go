package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/seal"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
)

const (
	azComp    = "comp"
	azAppID   = "wxcomponent01"
	azCBToken = "cbtoken0123"
)

// compEnv is a running refresher with a wechat-component whose
// component token is stored (a verify ticket was pushed), leading.
type compEnv struct {
	e    *harness.Env
	cfg  *refresher.Config
	rep  *harness.Replica
	args []string // --nats URL (and credentials)
}

// newCompEnv starts it; natsURL, if set, is the URL the refresher uses
// (with its user), opts tune the embedded server.
func newCompEnv(t *testing.T, refresherURL func(e *harness.Env) string, nopts ...func(*server.Options)) *compEnv {
	t.Helper()
	e := harness.New(t, harness.Options{NATS: nopts})
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	aesKey := strings.TrimRight(base64.StdEncoding.EncodeToString(raw), "=")
	e.Sim.AddComponent(azAppID, harness.Secret(azAppID), azCBToken, aesKey)
	key := make([]byte, seal.KeySize)
	_, _ = rand.Read(key)
	ring, err := seal.NewKeyring(key)
	if err != nil {
		t.Fatal(err)
	}
	ac := refresher.AppConfig{Name: azComp, Kind: refresher.KindWeChatComponent, AppID: azAppID, APIBase: e.SimURL}.
		WithSecret(harness.Secret(azAppID)).WithCallbackSecrets(azCBToken, aesKey)
	cfg := e.Config(ac)
	if refresherURL != nil {
		cfg.NATS.URL = refresherURL(e)
	}
	cfg.WithKeyring(ring)
	rep := e.Start(cfg)
	srv := httptest.NewServer(rep.R.CallbackHandler())
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Sim.PushVerifyTicket(ctx, azAppID, srv.URL+refresher.CallbackPathPrefix+azComp); err != nil {
		t.Fatalf("push: %v", err)
	}
	e.WaitRecord(10*time.Second, azComp, func(contract.Record, uint64) bool { return true })
	testutil.WaitFor(t, 10*time.Second, rep.R.Leader, "the refresher does not lead")
	// The leader serves the operator requests once it has loaded the
	// components.
	testutil.WaitFor(t, 10*time.Second, func() bool {
		_, err := e.NC.Request("$SRV.PING."+contract.AdminServiceName, nil, time.Second)
		return err == nil
	}, "the leader does not serve %s", contract.AdminServiceName)
	return &compEnv{e: e, cfg: cfg, rep: rep, args: []string{"--nats", e.URL}}
}

// run runs tokenctl with the env's connection flags.
func (c *compEnv) run(t *testing.T, args ...string) result {
	t.Helper()
	return tokenctl(t, append(append([]string(nil), c.args...), args...)...)
}

// authorizerKeys counts the authorizer token records in the tokens
// bucket.
func (c *compEnv) authorizerKeys(t *testing.T) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := c.e.JS.KeyValue(ctx, contract.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	lister, err := kv.ListKeysFiltered(ctx, azComp+".*")
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for range lister.Keys() {
		n++
	}
	return n
}

// noneOf fails if out holds any of secrets.
func noneOf(t *testing.T, what, out string, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(out, s) {
			t.Fatalf("%s printed a secret (%s…):\n%s", what, s[:min(len(s), 20)], truncateOut(out))
		}
	}
}

// notImported returns the lines of import's output that are not an
// imported row.
func notImported(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) < 3 || f[2] != "imported" {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func truncateOut(s string) string {
	if len(s) > 4000 {
		return s[:4000] + "…"
	}
	return s
}

// outcomeOf returns the outcome column of LINE in import's table.
func outcomeOf(out string, line int) string {
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[0] == fmt.Sprint(line) {
			return f[2] + " " + strings.Join(f[3:], " ")
		}
	}
	return ""
}

// TestAuthorizersImportExportListShow: the migration of 1000 authorizers
// from an SDK's store (CSV, with bad rows and rows the store already
// has): each row's outcome with its line, every authorizer's token
// fetched by the refresher; export round-trips the import (JSON and
// CSV), leaves refresh tokens out without the flag and writes a 0600
// file it never overwrites without --force; list and show print no
// token; reconcile reports a recovered authorizer; the export is in the
// audit trail.
func TestAuthorizersImportExportListShow(t *testing.T) {
	c := newCompEnv(t, nil)
	sim := c.e.Sim
	auths := sim.BulkAuthorize(azAppID, 1000, "wxa")
	if len(auths) != 1000 {
		t.Fatal("BulkAuthorize")
	}
	var secrets []string // every refresh and access token
	for _, a := range auths {
		secrets = append(secrets, a.RefreshToken, a.AccessToken)
	}
	dir := t.TempDir()

	// Five are in the store already (an earlier import, JSON).
	first := filepath.Join(dir, "first.json")
	var fr []contract.AuthorizerRow
	for _, a := range auths[:5] {
		fr = append(fr, contract.AuthorizerRow{AuthorizerAppID: a.AuthorizerAppID, RefreshToken: a.RefreshToken})
	}
	b, _ := json.Marshal(fr)
	if err := os.WriteFile(first, b, 0o600); err != nil {
		t.Fatal(err)
	}
	r := c.run(t, "authorizers", "import", azComp, first)
	if r.code != 0 || !strings.Contains(r.stdout, "5 rows: imported 5,") {
		t.Fatalf("first import: %s", r)
	}
	noneOf(t, "import", r.stdout+r.stderr, secrets)

	// The SDK's dump: 1000 rows, the first five with the older refresh
	// tokens the SDK held, and five bad rows.
	var sb strings.Builder
	w := csv.NewWriter(&sb)
	_ = w.Write([]string{"authorizer_appid", "refresh_token"})
	for i, a := range auths {
		rt := a.RefreshToken
		if i < 5 {
			rt = "refreshtoken@@@older-one-from-redis-" + fmt.Sprint(i)
		}
		_ = w.Write([]string{a.AuthorizerAppID, rt})
	}
	w.Flush()
	sb.WriteString("refreshtoken@@@swapped,wxswapped\n")    // line 1002
	sb.WriteString("wxgood1,\n")                            // line 1003
	sb.WriteString("wxa007,refreshtoken@@@dup\n")           // line 1004
	sb.WriteString("wxonlyonefield\n")                      // line 1005
	sb.WriteString("wxspace,refreshtoken@@@has space in\n") // line 1006
	dump := filepath.Join(dir, "redis-dump.csv")
	if err := os.WriteFile(dump, []byte(sb.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	r = c.run(t, "authorizers", "import", azComp, dump)
	if r.code != 1 || !strings.Contains(r.stdout, "1005 rows: imported 995, unchanged 0, skipped 5, invalid 5, failed 0") {
		t.Fatalf("import: exit %d, rows not imported:\n%s\nstderr: %s", r.code, notImported(r.stdout), r.stderr)
	}
	noneOf(t, "import", r.stdout+r.stderr, append(secrets, "older-one-from-redis", "refreshtoken@@@dup", "has space in", "refreshtoken@@@swapped"))
	for line, want := range map[int]string{
		2:    "skipped exists",
		6:    "skipped exists",
		7:    "imported",
		1001: "imported",
		1002: "invalid authorizer_appid (22 bytes) is not",
		1003: "invalid refresh_token is empty",
		1004: "invalid duplicate of line 9",
		1005: "invalid 1 fields",
		1006: "invalid refresh_token has a character",
	} {
		if got := outcomeOf(r.stdout, line); !strings.HasPrefix(got, want) {
			t.Errorf("line %d: %q, want %q…", line, got, want)
		}
	}
	// The refresher fetches every imported authorizer's token.
	testutil.WaitFor(t, 90*time.Second, func() bool { return c.authorizerKeys(t) == 1000 },
		"not every authorizer has its token: %d of 1000", c.authorizerKeys(t))

	// --overwrite never replaces a refresh token stored after the file
	// was made; it does replace an older one (a merchant authorized
	// again while the SDK still ran).
	renewed := sim.AuthorizeDirect(azAppID, auths[3].AuthorizerAppID)
	secrets = append(secrets, renewed)
	ow := filepath.Join(dir, "overwrite.csv")
	_ = os.WriteFile(ow, []byte("authorizer_appid,refresh_token\n"+auths[2].AuthorizerAppID+",refreshtoken@@@from-an-old-file\n"), 0o600)
	r = c.run(t, "authorizers", "import", azComp, ow, "--overwrite", "--made-at", "2020-01-01T00:00:00Z")
	if r.code != 0 || !strings.HasPrefix(outcomeOf(r.stdout, 2), "skipped newer") {
		t.Fatalf("overwrite with an older file: %s", r)
	}
	_ = os.WriteFile(ow, []byte("authorizer_appid,refresh_token\n"+auths[3].AuthorizerAppID+","+renewed+"\n"), 0o600)
	r = c.run(t, "authorizers", "import", azComp, ow, "--overwrite")
	if r.code != 0 || !strings.HasPrefix(outcomeOf(r.stdout, 2), "imported") {
		t.Fatalf("overwrite with a newer file: %s", r)
	}
	want := map[string]string{}
	for _, a := range auths {
		want[a.AuthorizerAppID] = sim.AuthorizerRefreshToken(azAppID, a.AuthorizerAppID)
	}

	// Export with refresh tokens to a file: 0600, exactly the store.
	out := filepath.Join(dir, "backup.json")
	r = c.run(t, "authorizers", "export", azComp, "--include-refresh-tokens", "--out", out)
	if r.code != 0 {
		t.Fatalf("export: %s", r)
	}
	noneOf(t, "export --out", r.stdout+r.stderr, secrets)
	st, err := os.Stat(out)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("export file: %v, mode %v, want 0600", err, st.Mode())
	}
	data, _ := os.ReadFile(out)
	var rows []contract.AuthorizerRow
	if err := json.Unmarshal(data, &rows); err != nil || len(rows) != 1000 {
		t.Fatalf("export file: %d rows, %v", len(rows), err)
	}
	for _, row := range rows {
		if want[row.AuthorizerAppID] == "" || row.RefreshToken != want[row.AuthorizerAppID] {
			t.Fatalf("export row %s: not the refresh token WeChat holds", row.AuthorizerAppID)
		}
	}
	// Round trip: importing the backup changes nothing.
	r = c.run(t, "authorizers", "import", azComp, out)
	if r.code != 0 || !strings.Contains(r.stdout, "1000 rows: imported 0, unchanged 1000,") {
		t.Fatalf("re-import of the export: %s", truncateOut(r.String()))
	}
	// An existing file is refused without --force, replaced with it.
	_ = os.Chmod(out, 0o644)
	r = c.run(t, "authorizers", "export", azComp, "--include-refresh-tokens", "--out", out)
	if r.code != 1 || !strings.Contains(r.stderr, "refusing to overwrite") {
		t.Fatalf("export over an existing file: %s", r)
	}
	csvOut := filepath.Join(dir, "backup.csv")
	r = c.run(t, "authorizers", "export", azComp, "--include-refresh-tokens", "--out", csvOut)
	if r.code != 0 {
		t.Fatalf("export csv: %s", r)
	}
	data, _ = os.ReadFile(csvOut)
	pf, err := parseImport(formatCSV, data)
	if err != nil || len(pf.rows) != 1000 || len(pf.bad) != 0 || pf.rows[0].RefreshToken != want[pf.rows[0].AuthorizerAppID] {
		t.Fatalf("csv export does not parse back: %v", err)
	}
	r = c.run(t, "authorizers", "export", azComp, "--out", out, "--force")
	if st, err := os.Stat(out); r.code != 0 || err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("export --force: %s (mode %v)", r, st.Mode())
	}
	data, _ = os.ReadFile(out)
	noneOf(t, "export without --include-refresh-tokens (file)", string(data), secrets)

	// Export to stdout without the flag: appids only.
	for _, format := range []string{"json", "csv"} {
		r = c.run(t, "authorizers", "export", azComp, "--format", format)
		if r.code != 0 || strings.Count(r.stdout, "wxa") != 1000 || strings.Contains(r.stdout, "refresh_token") {
			t.Fatalf("export --format %s: %s", format, truncateOut(r.String()))
		}
		noneOf(t, "export without --include-refresh-tokens", r.stdout+r.stderr, secrets)
	}

	// list and show: every authorizer, its state; no token.
	for _, a := range auths {
		secrets = append(secrets, sim.LastAuthorizerToken(azAppID, a.AuthorizerAppID), want[a.AuthorizerAppID])
	}
	r = c.run(t, "authorizers", "list", azComp)
	if r.code != 0 || !strings.Contains(r.stdout, "1000 authorizers") || strings.Count(r.stdout, " active ") != 1000 {
		t.Fatalf("list: %s", truncateOut(r.String()))
	}
	noneOf(t, "list", r.stdout+r.stderr, secrets)
	if !strings.Contains(r.stdout, contract.Fingerprint(want["wxa500"])) {
		t.Fatal("list does not show the refresh token's fingerprint")
	}
	r = c.run(t, "authorizers", "--json", "list", azComp)
	noneOf(t, "list --json", r.stdout+r.stderr, secrets)
	r = c.run(t, "authorizers", "show", azComp, auths[3].AuthorizerAppID)
	if r.code != 0 || !regexp.MustCompile(`(?m)^state:\s+active$`).MatchString(r.stdout) ||
		!strings.Contains(r.stdout, contract.Fingerprint(renewed)) || !strings.Contains(r.stdout, contract.Fingerprint(auths[3].RefreshToken)) {
		t.Fatalf("show: %s", r)
	}
	noneOf(t, "show", r.stdout+r.stderr, secrets)
	if r = c.run(t, "authorizers", "show", azComp, "wxnosuch"); r.code != 1 || !strings.Contains(r.stderr, "404") {
		t.Fatalf("show of an unknown authorizer: %s", r)
	}

	// reconcile: an authorizer WeChat lists that the store lacks.
	recovered := sim.AuthorizeDirect(azAppID, "wxrecovered")
	r = reconcileRetry(t, append(append([]string(nil), c.args...), "authorizers", "reconcile", azComp))
	if r.code != 0 || !strings.Contains(r.stdout, "WeChat lists 1001 authorizers") ||
		!strings.Contains(r.stdout, "recovered (refresh token stored from WeChat's list): 1\n  wxrecovered\n") {
		t.Fatalf("reconcile: %s", r)
	}
	noneOf(t, "reconcile", r.stdout+r.stderr, []string{recovered})
	c.e.WaitRecord(20*time.Second, azComp+".wxrecovered", func(contract.Record, uint64) bool { return true })

	// The exports with refresh tokens are in the log and the audit trail.
	if !c.e.Logs.Contains("refresh tokens exported") {
		t.Error("the refresher did not log the export of refresh tokens")
	}
	testutil.WaitFor(t, 10*time.Second, func() bool {
		r = c.run(t, "audit", azComp)
		return strings.Count(r.stdout, " export ") == 2
	}, "the audit trail has not the two exports: %s", &r)
	noneOf(t, "refresher logs", c.e.Logs.String(), append(secrets, recovered))
}

// reconcileRetry runs tokenctl reconcile until it is not answered 503
// (the leader may not hold the component token in memory yet).
func reconcileRetry(t *testing.T, args []string) result {
	t.Helper()
	var r result
	testutil.WaitFor(t, 10*time.Second, func() bool {
		r = tokenctl(t, args...)
		return !strings.Contains(r.stderr, "failed: 503")
	}, "reconcile: %s", &r)
	return r
}

// TestAuthorizersPermissions: with the roles of natsconf.RolePermissions
// the operator lists the authorizers, and a service user's requests on
// token.admin are refused by the server (a permissions violation),
// unanswered.
func TestAuthorizersPermissions(t *testing.T) {
	const refPW, svcPW, opPW = "ref-pw-1", "svc-pw-2", "op-pw-3"
	users := func(o *server.Options) {
		bucket := contract.DefaultBucket
		o.Users = []*server.User{
			{Username: "admin", Password: "admin-pw-99f"},
			{Username: "refresher", Password: refPW, Permissions: natsconf.RolePermissions(natsconf.RoleRefresher, bucket, "refresher")},
			{Username: "web", Password: svcPW, Permissions: natsconf.RolePermissions(natsconf.RoleService, bucket, "web")},
			{Username: "ops", Password: opPW, Permissions: natsconf.RolePermissions(natsconf.RoleOperator, bucket, "ops")},
		}
		o.NoAuthUser = "admin"
	}
	c := newCompEnv(t, func(e *harness.Env) string {
		return strings.Replace(e.URL, "nats://", "nats://refresher:"+refPW+"@", 1)
	}, users)
	c.e.Sim.BulkAuthorize(azAppID, 3, "wxp")
	ops := []string{"--nats", c.e.URL, "--user", "ops", "--password", opPW}
	r := reconcileRetry(t, append(ops, "authorizers", "reconcile", azComp))
	if r.code != 0 || !strings.Contains(r.stdout, "recovered (refresh token stored from WeChat's list): 3") {
		t.Fatalf("reconcile as operator: %s", r)
	}
	if r = tokenctl(t, append(ops, "authorizers", "list", azComp)...); r.code != 0 || !strings.Contains(r.stdout, "3 authorizers") {
		t.Fatalf("list as operator: %s", r)
	}

	violations := make(chan error, 16)
	snc, _ := testutil.Connect(t, c.e.URL, nats.UserInfo("web", svcPW), nats.CustomInboxPrefix(contract.ServiceInboxPrefix("web")),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case violations <- err:
			default:
			}
		}))
	for _, op := range []string{contract.AuthorizersExport, contract.AuthorizersList, contract.AuthorizersImport, contract.AuthorizersReconcile} {
		subj := contract.AuthorizersSubject(op, azComp)
		if m, err := snc.Request(subj, []byte(`{"include_refresh_tokens":true}`), 500*time.Millisecond); err == nil {
			t.Fatalf("service: %s answered %q", subj, m.Data)
		}
		select {
		case err := <-violations:
			if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), subj) {
				t.Fatalf("service: %s: %v, want a permissions violation", subj, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("service: no permissions violation for %s", subj)
		}
	}
	if c.e.Logs.Contains("ermission") {
		t.Fatalf("the refresher met a permissions problem:\n%s", c.e.Logs)
	}
}

// TestAuthorizersErrors: an unknown component is a 404, a body that is
// not JSON a 400 that does not quote it, too many rows a 400; a second
// replica (a follower) does not serve the operator requests; usage
// errors exit 2.
func TestAuthorizersErrors(t *testing.T) {
	c := newCompEnv(t, nil)
	if r := c.run(t, "authorizers", "list", "nosuch"); r.code != 1 || !strings.Contains(r.stderr, "404") {
		t.Fatalf("list of an unknown component: %s", r)
	}
	const secret = "refreshtoken@@@must-not-be-echoed"
	m, err := c.e.NC.Request(contract.AuthorizersSubject(contract.AuthorizersImport, azComp), []byte(`{"rows":[{"refresh_token":"`+secret+`"`), 5*time.Second)
	if err != nil || m.Header.Get(contract.ErrorCodeHeader) != "400" || strings.Contains(string(m.Data)+m.Header.Get(contract.ErrorHeader), secret) {
		t.Fatalf("import with a broken body: %v %v %q", err, m.Header, m.Data)
	}
	rows := make([]contract.AuthorizerRow, contract.MaxAdminPage+1)
	body, _ := json.Marshal(contract.ImportRequest{Rows: rows})
	if m, err = c.e.NC.Request(contract.AuthorizersSubject(contract.AuthorizersImport, azComp), body, 5*time.Second); err != nil || m.Header.Get(contract.ErrorCodeHeader) != "400" {
		t.Fatalf("import of too many rows: %v %v", err, m.Header)
	}
	// A follower: still one instance of the service.
	c.e.Start(c.cfg)
	var n int
	sub, err := c.e.NC.SubscribeSync(nats.NewInbox())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.e.NC.PublishRequest("$SRV.PING."+contract.AdminServiceName, sub.Subject, nil); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := sub.NextMsg(time.Second); err != nil {
			break
		}
		n++
	}
	if n != 1 {
		t.Fatalf("%d instances of %s answer, want the leader's only", n, contract.AdminServiceName)
	}
	for _, args := range [][]string{
		{"authorizers", "list"},
		{"authorizers", "frobnicate", azComp},
		{"authorizers", "show", azComp},
		{"authorizers", "list", azComp, "--overwrite"},
		{"authorizers", "import", azComp, "x.csv", "--include-refresh-tokens"},
		{"authorizers", "export", azComp, "--format", "xml"},
	} {
		if r := c.run(t, args...); r.code != 2 {
			t.Errorf("%q: %s, want exit 2", args, r)
		}
	}
}
