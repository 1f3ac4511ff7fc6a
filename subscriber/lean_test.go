package subscriber_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLeanImports: what a service links by importing subscriber is
// nats.go, the contract and the standard library — no server, metrics,
// cron, YAML, and none of tokenkeeper's refresher-side packages.
func TestLeanImports(t *testing.T) {
	deps := goListDeps(t, "github.com/tokenkeeper/tokenkeeper/subscriber")
	forbidden := []string{
		"github.com/nats-io/nats-server",
		"github.com/nats-io/jwt",
		"github.com/minio/highwayhash",
		"github.com/prometheus/",
		"github.com/robfig/cron",
		"yaml",
		"github.com/tokenkeeper/tokenkeeper/natsconf",
		"github.com/tokenkeeper/tokenkeeper/refresher",
		"github.com/tokenkeeper/tokenkeeper/testutil",
	}
	for _, d := range deps {
		for _, f := range forbidden {
			if strings.Contains(d, f) {
				t.Errorf("subscriber depends on %s", d)
			}
		}
	}
	// And what it may import from this module: the contract and
	// stdlib-only internal packages.
	for _, d := range deps {
		if rest, ok := strings.CutPrefix(d, "github.com/tokenkeeper/tokenkeeper/"); ok {
			if rest != "subscriber" && rest != "contract" && !strings.HasPrefix(rest, "internal/") {
				t.Errorf("subscriber depends on %s", d)
			}
		}
	}
}

// goListDeps returns the non-standard packages that pkg depends on (not
// counting tests), as `go list -deps` reports them.
func goListDeps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, stderr)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatalf("go list -deps %s listed nothing", pkg)
	}
	return deps
}
