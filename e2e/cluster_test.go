package e2e_test

import (
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// TestClusterNodeLoss: two replicas on a 3-node cluster with an R3
// bucket keep refreshing while the node leading the bucket's stream is
// down, and after it comes back.
func TestClusterNodeLoss(t *testing.T) {
	c := testutil.NewCluster(t, 3)
	e := harness.New(t, harness.Options{URL: c.URLs(), Sim: wechatsim.Options{ExpiresIn: 3 * time.Second, Grace: 2 * time.Second}})
	app := e.App("mp")
	cfg := writeConfig(t, c.URLs(), 2*time.Second, "", app)
	startProc(t, cfg, "a", app)
	startProc(t, cfg, "b", app)
	_, rev := e.WaitRecord(15*time.Second, "mp", func(contract.Record, uint64) bool { return true })

	node := c.StreamLeader("$G", "KV_"+contract.DefaultBucket)
	if node < 0 {
		t.Fatal("no stream leader for the bucket")
	}
	stopped := time.Now()
	c.StopNode(node)
	t.Logf("stopped node %d (leader of KV_tokens)", node)
	// Keep refreshing without it: several new tokens, each valid.
	for i := range 3 {
		var r contract.Record
		r, rev = e.WaitRecord(15*time.Second, "mp", func(_ contract.Record, v uint64) bool { return v > rev })
		if err := e.Sim.Check(r.AccessToken); err != nil {
			t.Fatalf("token %d after the node loss rejected upstream: %v", i, err)
		}
	}
	t.Logf("3 refreshes with a node down in %v", time.Since(stopped).Round(time.Millisecond))
	c.RestartNode(node)
	_, _ = e.WaitRecord(15*time.Second, "mp", func(_ contract.Record, v uint64) bool { return v > rev })
	if ok, rejected := e.Sim.BusinessCalls(); ok+rejected != 0 {
		t.Logf("business calls: %d ok, %d rejected", ok, rejected)
	}
}
