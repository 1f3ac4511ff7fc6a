package contract_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestStdlibOnly: the contract imports only the standard library, so that
// importing it costs a client nothing.
func TestStdlibOnly(t *testing.T) {
	const pkg = "github.com/tokenkeeper/tokenkeeper/contract"
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, d := range strings.Fields(string(out)) {
		if d != pkg {
			t.Errorf("contract depends on %s", d)
		}
	}
}
