package natsconf_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

// TestFollowExampleConfigs parses examples/follow/prod.conf and
// examples/follow/staging.conf, checks their users against the roles
// (staging's leaf user against LeafPermissions for domain prod), boots
// both (random ports, temporary stores, the passwords and the leaf URL
// from the environment as the files expect), creates the mirror as the
// follower does, and shows it working: a write in production, as user
// refresher, is read in staging, as user staging, at the same revision.
func TestFollowExampleConfigs(t *testing.T) {
	leafPort := freePort(t)
	t.Setenv("TOKENKEEPER_REFRESHER_PASSWORD", "refresher-pw")
	t.Setenv("TOKENKEEPER_SERVICE_PASSWORD", "service-pw")
	t.Setenv("TOKENKEEPER_STAGING_PASSWORD", "staging-pw")
	t.Setenv("TOKENKEEPER_PROD_LEAF_URL", fmt.Sprintf("nats-leaf://staging:staging-pw@127.0.0.1:%d", leafPort))

	prodOpts, err := server.ProcessConfigFile("../examples/follow/prod.conf")
	if err != nil {
		t.Fatal(err)
	}
	stagingOpts, err := server.ProcessConfigFile("../examples/follow/staging.conf")
	if err != nil {
		t.Fatal(err)
	}
	if prodOpts.JetStreamDomain != "prod" || stagingOpts.JetStreamDomain != "staging" {
		t.Fatalf("domains %q and %q, want prod and staging", prodOpts.JetStreamDomain, stagingOpts.JetStreamDomain)
	}
	if len(prodOpts.Users) != 3 || len(stagingOpts.Users) != 2 {
		t.Fatalf("users: production %d, staging %d; want 3 and 2", len(prodOpts.Users), len(stagingOpts.Users))
	}
	for _, u := range prodOpts.Users {
		want := natsconf.RolePermissions(natsconf.Role(u.Username), contract.DefaultBucket, u.Username)
		if u.Username == "staging" {
			want = natsconf.LeafPermissions(contract.DefaultBucket, "staging", "prod")
		}
		testutil.ComparePermissions(t, "examples/follow/prod.conf user "+u.Username, u.Permissions, want)
	}
	for _, u := range stagingOpts.Users {
		role := natsconf.RoleRefresher
		if u.Username == "staging" {
			role = natsconf.RoleService
		}
		testutil.ComparePermissions(t, "examples/follow/staging.conf user "+u.Username, u.Permissions,
			natsconf.RolePermissions(role, contract.DefaultBucket, u.Username))
	}
	if r := stagingOpts.LeafNode.Remotes; len(r) != 1 || len(r[0].URLs) != 1 || !r[0].IgnoreDiscoveredServers {
		t.Fatalf("staging's remotes: %+v, want one, to TOKENKEEPER_PROD_LEAF_URL, ignoring discovered servers", r)
	}

	// Boot them where the test can.
	prodOpts.Host, prodOpts.Port, prodOpts.StoreDir, prodOpts.NoSigs = "127.0.0.1", server.RANDOM_PORT, t.TempDir(), true
	prodOpts.LeafNode.Host, prodOpts.LeafNode.Port = "127.0.0.1", leafPort
	stagingOpts.Host, stagingOpts.Port, stagingOpts.StoreDir, stagingOpts.NoSigs = "127.0.0.1", server.RANDOM_PORT, t.TempDir(), true
	prod := startOpts(t, prodOpts)
	staging := startOpts(t, stagingOpts)
	testutil.WaitFor(t, 10*time.Second, func() bool { return prod.NumLeafNodes() == 1 }, "staging did not connect to production")

	ctx := testCtx(t, 30*time.Second)
	_, pjs := testutil.Connect(t, prod.ClientURL(), nats.UserInfo("refresher", "refresher-pw"))
	pkv, err := natsconf.EnsureBucket(ctx, pjs, natsconf.BucketConfig{Name: contract.DefaultBucket})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := pkv.Create(ctx, "mp-main", []byte(`{"app":"mp-main"}`))
	if err != nil {
		t.Fatal(err)
	}
	_, fjs := testutil.Connect(t, staging.ClientURL(), nats.UserInfo("refresher", "refresher-pw"))
	if _, err := natsconf.EnsureMirror(ctx, fjs, natsconf.MirrorConfig{Name: contract.DefaultBucket, Domain: "prod"}); err != nil {
		t.Fatal(err)
	}
	_, sjs := testutil.Connect(t, staging.ClientURL(), nats.UserInfo("staging", "staging-pw"), nats.CustomInboxPrefix(contract.ServiceInboxPrefix("staging")))
	skv, err := sjs.KeyValue(ctx, contract.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, func() bool {
		e, err := skv.Get(ctx, "mp-main")
		return err == nil && e.Revision() == rev
	}, "production's record is not readable in staging")
}

// startOpts starts a server with o (a parsed config) and registers its
// shutdown.
func startOpts(t *testing.T, o *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	return s
}
