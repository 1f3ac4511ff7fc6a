package e2e_test

import (
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// TestSIGHUPReload: the daemon re-reads its config on SIGHUP: a broken
// file is refused and changes nothing; a new app is added while the old
// one keeps its token.
func TestSIGHUPReload(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	a, b := e.App("first"), e.App("second")
	path := writeConfig(t, e.URL, 2*time.Second, "", a)
	p := startProc(t, path, "r1", a, b)
	_, revA := e.WaitRecord(10*time.Second, "first", func(contract.Record, uint64) bool { return true })

	if err := os.WriteFile(path, []byte("apps: [{name: 'bad name'}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(syscall.SIGHUP)
	testutil.WaitFor(t, 5*time.Second, func() bool { return p.out.Contains("SIGHUP: config not reloaded") }, "a broken config was not reported")
	if p.exited() {
		t.Fatal("a broken config on SIGHUP stopped the daemon")
	}

	good := writeConfig(t, e.URL, 2*time.Second, "", a, b)
	data, _ := os.ReadFile(good)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(syscall.SIGHUP)
	e.WaitRecord(10*time.Second, "second", func(contract.Record, uint64) bool { return true })
	if _, v, _ := e.Record(contract.DefaultBucket, "first"); v != revA {
		t.Fatalf("reload re-fetched the unchanged app: revision %d → %d", revA, v)
	}
	if e.Sim.Fetches(a.AppID) != 1 {
		t.Fatalf("unchanged app fetched %d times, want 1", e.Sim.Fetches(a.AppID))
	}
}
