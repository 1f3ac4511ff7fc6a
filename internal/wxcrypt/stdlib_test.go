package wxcrypt_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestStdlibOnly: the callback crypto is the standard library's, nothing
// else (issue 12), and so is the sealing of secrets.
func TestStdlibOnly(t *testing.T) {
	for _, pkg := range []string{"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt", "github.com/tokenkeeper/tokenkeeper/internal/seal"} {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps: %v\n%s", err, out)
		}
		for _, d := range strings.Fields(string(out)) {
			if d != pkg {
				t.Errorf("%s depends on %s", pkg, d)
			}
		}
	}
}
