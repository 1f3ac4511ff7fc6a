package node_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
)

// npmCITimeout bounds "npm ci" (about 1 s here with a warm cache, a few
// seconds from a cold one).
const npmCITimeout = 5 * time.Minute

// Users of the test server. Connections without credentials (the harness,
// the refresher) are "admin", with every permission; the example connects
// as "reader", which may publish only on the subjects docs/protocol.md
// says the example uses (direct gets of the bucket, refresh and sign
// requests) and subscribe only on its private inbox prefix.
const (
	readerUser     = "reader"
	readerPassword = "reader-pw-7c1e"
	readerInbox    = "_INBOX_node"
)

// readerPermissions are the permissions docs/protocol.md ("Permissions")
// says the Node example needs: a subset of a reading service's.
func readerPermissions() *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			"$JS.API.DIRECT.GET.KV_tokens.>",
			"token.refresh.>",
			"token.sign.>",
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{readerInbox + ".>"}},
	}
}

func withUsers(o *server.Options) {
	o.Users = []*server.User{
		{Username: "admin", Password: "admin-pw-0a9d"},
		{Username: readerUser, Password: readerPassword, Permissions: readerPermissions()},
	}
	o.NoAuthUser = "admin"
}

// tool returns the path of name on PATH; a missing tool fails the test:
// CI must install it.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (not on PATH): this test runs the Node example of docs/protocol.md and needs "+
			"Node.js 18 or newer with npm; install them, e.g. apt-get install -y nodejs npm", name)
	}
	return p
}

// checkNodeVersion fails unless node is 18 or newer.
func checkNodeVersion(t *testing.T, node string) {
	t.Helper()
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", node, err)
	}
	v := strings.TrimSpace(string(out))
	m := regexp.MustCompile(`^v(\d+)\.`).FindStringSubmatch(v)
	if m == nil {
		t.Fatalf("node --version printed %q", v)
	}
	if major, _ := strconv.Atoi(m[1]); major < 18 {
		t.Fatalf("node %s is too old: the NATS clients need Node.js 18 or newer", v)
	}
	t.Logf("node %s", v)
}

// ensureModules runs "npm ci" when node_modules is missing or older than
// package-lock.json.
func ensureModules(t *testing.T, npm string) {
	t.Helper()
	lock, err := os.Stat("package-lock.json")
	if err != nil {
		t.Fatalf("package-lock.json: %v", err)
	}
	if installed, err := os.Stat(filepath.Join("node_modules", ".package-lock.json")); err == nil && !installed.ModTime().Before(lock.ModTime()) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), npmCITimeout)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		t.Fatalf("npm ci (needs the npm registry) failed after %s: %v\n%s", time.Since(start).Round(time.Millisecond), err, out.String())
	}
	t.Logf("npm ci took %s", time.Since(start).Round(time.Millisecond))
}

// runExample runs "node token.mjs args..." as the reader user and returns
// its exit code, stdout and stderr.
func runExample(t *testing.T, node string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, append([]string{"token.mjs"}, args...)...)
	cmd.Env = append(os.Environ(),
		"NATS_USER="+readerUser, "NATS_PASSWORD="+readerPassword, "NATS_INBOX_PREFIX="+readerInbox)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("node token.mjs %q did not finish within 60s\nstdout:\n%s\nstderr:\n%s", args, &stdout, &stderr)
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("node token.mjs: %v", err)
	}
	return code, stdout.String(), stderr.String()
}

func TestNodeExampleReadsAndRefreshes(t *testing.T) {
	node, npm := tool(t, "node"), tool(t, "npm")
	checkNodeVersion(t, node)
	ensureModules(t, npm)

	e := harness.New(t, harness.Options{NATS: []func(*server.Options){withUsers}})
	e.Start(e.Config(e.App("mp")))
	rec, rev := e.WaitRecord(10*time.Second, "mp", func(r contract.Record, _ uint64) bool { return r.AccessToken != "" })

	code, stdout, stderr := runExample(t, node, e.URL, "mp")
	if code != 0 {
		t.Fatalf("node token.mjs exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	var read struct {
		App            string `json:"app"`
		Revision       uint64 `json:"revision"`
		AccessTokenLen int    `json:"access_token_len"`
	}
	var refreshed struct {
		App               string `json:"app"`
		RefreshedRevision uint64 `json:"refreshed_revision"`
		Refreshed         bool   `json:"refreshed"`
		AccessTokenLen    int    `json:"access_token_len"`
	}
	sc := bufio.NewScanner(strings.NewReader(stdout))
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) != 2 || json.Unmarshal([]byte(lines[0]), &read) != nil || json.Unmarshal([]byte(lines[1]), &refreshed) != nil {
		t.Fatalf("want two JSON lines, got:\n%s\nstderr:\n%s", stdout, stderr)
	}
	if read.App != "mp" || read.Revision != rev || read.AccessTokenLen != len(rec.AccessToken) {
		t.Errorf("node read %+v, the bucket holds revision %d with a token of %d characters", read, rev, len(rec.AccessToken))
	}
	now, nowRev, ok := e.Record(contract.DefaultBucket, "mp")
	if !ok || refreshed.App != "mp" || !refreshed.Refreshed || refreshed.RefreshedRevision <= rev || refreshed.RefreshedRevision != nowRev ||
		refreshed.AccessTokenLen != len(now.AccessToken) || now.AccessToken == rec.AccessToken {
		t.Errorf("node refreshed %+v; before: revision %d; the bucket now holds revision %d (new token: %v)",
			refreshed, rev, nowRev, now.AccessToken != rec.AccessToken)
	}
	if strings.Contains(stdout+stderr, rec.AccessToken) || strings.Contains(stdout+stderr, now.AccessToken) {
		t.Error("the example printed a token")
	}
}

func TestNodeExampleErrors(t *testing.T) {
	node, npm := tool(t, "node"), tool(t, "npm")
	checkNodeVersion(t, node)
	ensureModules(t, npm)

	e := harness.New(t, harness.Options{NATS: []func(*server.Options){withUsers}})
	// No refresher yet: no bucket.
	code, _, stderr := runExample(t, node, e.URL, "mp")
	if code != 1 || !strings.Contains(stderr, "bucket tokens not found") {
		t.Errorf("without a bucket: exit %d, stderr:\n%s", code, stderr)
	}

	e.Start(e.Config(e.App("mp")))
	e.WaitRecord(10*time.Second, "mp", func(r contract.Record, _ uint64) bool { return r.AccessToken != "" })
	code, _, stderr = runExample(t, node, e.URL, "nope")
	if code != 1 || !strings.Contains(stderr, "no token stored for app nope in bucket tokens") {
		t.Errorf("unknown app: exit %d, stderr:\n%s", code, stderr)
	}
	code, _, stderr = runExample(t, node)
	if code != 2 || !strings.Contains(stderr, "usage: node token.mjs NATS_URL APP") {
		t.Errorf("no arguments: exit %d, stderr:\n%s", code, stderr)
	}
}

// TestNodeExampleSigns: for an app with a jsapi ticket the example also
// reads <app>.jsapi and gets a wx.config signature from token.sign.<app>,
// which it checks against the ticket it read, and which the emulator's
// JS-SDK check accepts; it prints neither the ticket nor the token.
func TestNodeExampleSigns(t *testing.T) {
	node, npm := tool(t, "node"), tool(t, "npm")
	checkNodeVersion(t, node)
	ensureModules(t, npm)

	e := harness.New(t, harness.Options{NATS: []func(*server.Options){withUsers}})
	app := e.App("mp")
	app.Tickets = []string{contract.TicketJSAPI}
	e.Start(e.Config(app))
	e.WaitRecord(10*time.Second, "mp", func(r contract.Record, _ uint64) bool { return r.AccessToken != "" })
	var ticket string
	var ticketRev uint64
	testutil.WaitFor(t, 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		kv, err := e.JS.KeyValue(ctx, contract.DefaultBucket)
		if err != nil {
			return false
		}
		ent, err := kv.Get(ctx, "mp.jsapi")
		if err != nil {
			return false
		}
		var rec contract.TicketRecord
		if json.Unmarshal(ent.Value(), &rec) != nil {
			return false
		}
		ticket, ticketRev = rec.Ticket, ent.Revision()
		return ticket != ""
	}, "no mp.jsapi ticket stored")

	const pageURL = "https://shop.example/p?id=42#top"
	t.Setenv("SIGN_URL", pageURL)
	code, stdout, stderr := runExample(t, node, e.URL, "mp")
	if code != 0 {
		t.Fatalf("node token.mjs exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	var read struct {
		Key       string `json:"key"`
		Revision  uint64 `json:"revision"`
		TicketLen int    `json:"ticket_len"`
	}
	var signed struct {
		contract.SignReply
		URL         string `json:"url"`
		SignatureOK bool   `json:"signature_ok"`
	}
	if len(lines) != 4 || json.Unmarshal([]byte(lines[2]), &read) != nil || json.Unmarshal([]byte(lines[3]), &signed) != nil {
		t.Fatalf("want four JSON lines, got:\n%s\nstderr:\n%s", stdout, stderr)
	}
	if read.Key != "mp.jsapi" || read.Revision != ticketRev || read.TicketLen != len(ticket) {
		t.Errorf("node read the ticket as %+v; the bucket holds revision %d, %d characters", read, ticketRev, len(ticket))
	}
	if !signed.SignatureOK || signed.URL != pageURL || signed.AppID != app.AppID {
		t.Errorf("node signed %+v: want signature_ok, url %s, appId %s", signed, pageURL, app.AppID)
	}
	if err := e.Sim.CheckSignature(app.AppID, "https://shop.example/p?id=42", signed.NonceStr, signed.Timestamp, signed.Signature); err != nil {
		t.Errorf("the signature node got is refused by the JS-SDK check: %v", err)
	}
	if strings.Contains(stdout+stderr, ticket) {
		t.Error("the example printed the ticket")
	}
}
