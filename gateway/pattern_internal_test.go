package gateway

import "testing"

// TestPatternMatch: the pattern syntax of the package doc, as a table.
func TestPatternMatch(t *testing.T) {
	for _, c := range []struct {
		pattern string
		yes     []string
		no      []string
	}{
		{"mp-main", []string{"mp-main"}, []string{"mp-main.jsapi", "mp", "mp-main2", "MP-MAIN"}},
		{"mp-main.*", []string{"mp-main.jsapi", "mp-main.wx123", "mp-main.wx123.jsapi"}, []string{"mp-main", "mp-main2.jsapi", "other.jsapi"}},
		{"*", []string{"mp", "mp.jsapi", "c.wx1.jsapi"}, nil},
		{"*.jsapi", []string{"mp.jsapi", "other.jsapi"}, []string{"mp", "mp.wx_card", "c.wx1.jsapi"}},
		{"comp.*.jsapi", []string{"comp.wx1.jsapi"}, []string{"comp.wx1", "comp.wx1.wx_card", "other.wx1.jsapi"}},
		{"mp.jsapi", []string{"mp.jsapi"}, []string{"mp", "mp.jsapi.x"}},
	} {
		p, err := parsePattern(c.pattern)
		if err != nil {
			t.Fatalf("%s: %v", c.pattern, err)
		}
		for _, k := range c.yes {
			if !p.match(k) {
				t.Errorf("%s does not match %s", c.pattern, k)
			}
		}
		for _, k := range c.no {
			if p.match(k) {
				t.Errorf("%s matches %s", c.pattern, k)
			}
		}
	}
}

// TestPatternRefused: patterns that would mean more (or less) than they
// read are refused with a reason.
func TestPatternRefused(t *testing.T) {
	for _, s := range []string{"", "mp-*", "mp.>", ">", "a.b.c.d", "mp..jsapi", ".mp", "mp.", "mp main", "*mp"} {
		if _, err := parsePattern(s); err == nil {
			t.Errorf("pattern %q accepted", s)
		} else {
			t.Logf("%q: %v", s, err)
		}
	}
}
