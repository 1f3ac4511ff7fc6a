package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestFollowMode runs the daemon with a staging config in mode follow —
// its embedded server in domain staging, a leafnode remote to a
// production server (domain prod, a user of role leaf) — and reads what
// it serves: production's record in /status (revision, no token),
// tokenkeeper_follow_* in /metrics, /readyz 200; then stops it.
func TestFollowMode(t *testing.T) {
	t.Setenv("TK_LEAF_PW", "leaf-pw")
	leafAddr := freeAddr(t)
	_, leafPort, _ := net.SplitHostPort(leafAddr)
	hub := testutil.RunServer(t, func(o *server.Options) {
		o.JetStreamDomain = "prod"
		o.LeafNode.Host = "127.0.0.1"
		fmt.Sscan(leafPort, &o.LeafNode.Port)
		o.Users = []*server.User{
			{Username: "admin", Password: "admin-pw"},
			{Username: "staging", Password: "leaf-pw", Permissions: natsconf.LeafPermissions(contract.DefaultBucket, "staging", "prod")},
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, js := testutil.Connect(t, strings.Replace(hub.ClientURL(), "nats://", "nats://admin:admin-pw@", 1))
	kv, err := natsconf.EnsureBucket(ctx, js, natsconf.BucketConfig{Name: contract.DefaultBucket})
	if err != nil {
		t.Fatal(err)
	}
	rec := contract.Record{App: "mp-main", AccessToken: "TOKEN-never-in-status", FetchedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour), Source: "startup"}
	val, _ := json.Marshal(rec)
	rev, err := kv.Create(ctx, "mp-main", val)
	if err != nil {
		t.Fatal(err)
	}

	httpAddr := freeAddr(t)
	cfg := fmt.Sprintf(`mode: follow
follow: {domain: prod}
nats:
  embedded:
    listen: 127.0.0.1:0
    store_dir: %q
    jetstream_domain: staging
    leafnodes: {remotes: [{url: "nats-leaf://%s", user: staging, password_env: TK_LEAF_PW}]}
http: {listen: %q}
apps: [{name: mp-main}]
`, filepath.Join(t.TempDir(), "store"), leafAddr, httpAddr)
	path := filepath.Join(t.TempDir(), "staging.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(runCtx, []string{"--config", path}) }()

	get := func(p string) (int, string) {
		resp, err := http.Get("http://" + httpAddr + p)
		if err != nil {
			return 0, ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	var st refresher.FollowReport
	testutil.WaitFor(t, 45*time.Second, func() bool {
		code, body := get("/status")
		if code != http.StatusOK || json.Unmarshal([]byte(body), &st) != nil {
			return false
		}
		return len(st.Keys) == 1 && st.Keys[0].Revision == rev
	}, "the follower's /status does not show production's mp-main at revision %d: %+v", rev, st)
	if code, body := get("/status"); strings.Contains(body, rec.AccessToken) || code != http.StatusOK {
		t.Errorf("/status %d carries the token: %s", code, body)
	}
	testutil.WaitFor(t, 10*time.Second, func() bool { code, _ := get("/readyz"); return code == http.StatusOK }, "/readyz not 200")
	if _, body := get("/metrics"); !strings.Contains(body, fmt.Sprintf(`tokenkeeper_follow_token_revision{key="mp-main"} %d`, rev)) ||
		!strings.Contains(body, "tokenkeeper_follow_mirror_last_contact_seconds") {
		t.Errorf("/metrics lacks the follower's metrics:\n%s", body)
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after its ctx ended")
	}
}
