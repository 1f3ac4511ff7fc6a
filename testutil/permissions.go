package testutil

import (
	"slices"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// ComparePermissions fails t, naming who, where got and want differ: the
// publish and subscribe allow and deny lists (in any order) and whether
// responses are allowed.
func ComparePermissions(t testing.TB, who string, got, want *server.Permissions) {
	t.Helper()
	if got == nil || want == nil {
		t.Errorf("%s: permissions %v, want %v", who, got, want)
		return
	}
	list := func(p *server.SubjectPermission, deny bool) []string {
		if p == nil {
			return nil
		}
		l := p.Allow
		if deny {
			l = p.Deny
		}
		l = slices.Clone(l)
		slices.Sort(l)
		return l
	}
	for _, c := range []struct {
		what      string
		got, want *server.SubjectPermission
	}{{"publish", got.Publish, want.Publish}, {"subscribe", got.Subscribe, want.Subscribe}} {
		for _, deny := range []bool{false, true} {
			if g, w := list(c.got, deny), list(c.want, deny); !slices.Equal(g, w) {
				t.Errorf("%s: %s (deny %v):\n got  %q\n want %q", who, c.what, deny, g, w)
			}
		}
	}
	if (got.Response == nil) != (want.Response == nil) {
		t.Errorf("%s: allow_responses %v, want %v", who, got.Response != nil, want.Response != nil)
	}
}
