package gateway

import (
	"fmt"
	"strings"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// A key pattern says which keys of the tokens bucket a client may read.
// Keys are dot-separated segments (contract.ValidKey: mp-main,
// mp-main.jsapi, comp.wxAuthorizer.jsapi); a pattern is the same, where
// any whole segment may be "*":
//
//   - "*" as the last segment matches one or more segments: the rest of
//     the key. So "*" alone matches every key, and "mp-main.*" matches
//     mp-main.jsapi and mp-main.wx123.jsapi but not mp-main itself.
//   - "*" elsewhere matches exactly one segment: "*.jsapi" matches the
//     jsapi ticket of every app (two-segment keys only).
//   - any other segment matches itself, case-sensitively.
//
// A "*" inside a segment ("mp-*") and NATS's ">" are refused, so that a
// pattern never means more than it reads.
type pattern []string

// parsePattern checks s and splits it into segments.
func parsePattern(s string) (pattern, error) {
	if s == "" {
		return nil, fmt.Errorf("empty pattern")
	}
	segs := strings.Split(s, ".")
	if len(segs) > contract.MaxKeySegments {
		return nil, fmt.Errorf("%q has more than %d segments and can match no key", s, contract.MaxKeySegments)
	}
	for _, seg := range segs {
		switch {
		case seg == "*":
		case seg == ">":
			return nil, fmt.Errorf("%q: use * as the last segment for the rest of a key, not >", s)
		case strings.Contains(seg, "*"):
			return nil, fmt.Errorf("%q: * must be a whole segment (mp-main.* or *), not part of one", s)
		case !contract.ValidAppName(seg):
			return nil, fmt.Errorf("%q: segment %q is not 1-%d characters of A-Z a-z 0-9 _ - (or *)", s, seg, contract.MaxAppName)
		}
	}
	return pattern(segs), nil
}

// match reports whether key (a valid key) matches p.
func (p pattern) match(key string) bool {
	segs := strings.Split(key, ".")
	for i, ps := range p {
		if i >= len(segs) {
			return false
		}
		if ps == "*" {
			if i == len(p)-1 {
				return true // the rest of the key, one segment or more
			}
			continue
		}
		if ps != segs[i] {
			return false
		}
	}
	return len(segs) == len(p)
}

// String is the pattern as configured.
func (p pattern) String() string { return strings.Join(p, ".") }
