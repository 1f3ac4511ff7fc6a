package contract_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

func TestValidAppName(t *testing.T) {
	for name, want := range map[string]bool{
		"mp-main": true, "A_z-09": true, strings.Repeat("a", 64): true,
		"": false, strings.Repeat("a", 65): false, "mp.main": false, "mp main": false,
		"mp*": false, "mp>": false, "mp/x": false, "é": false,
	} {
		if got := contract.ValidAppName(name); got != want {
			t.Errorf("ValidAppName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestParseKey(t *testing.T) {
	for _, tc := range []struct{ key, app, rest string }{
		{"mp-main", "mp-main", ""},
		{"mp-main.jsapi", "mp-main", "jsapi"},
		{"comp.wx0123456789abcdef", "comp", "wx0123456789abcdef"},
		{"comp.wx0123456789abcdef.jsapi", "comp", "wx0123456789abcdef.jsapi"},
	} {
		app, rest, err := contract.ParseKey(tc.key)
		if err != nil || app != tc.app || rest != tc.rest {
			t.Errorf("ParseKey(%q) = %q, %q, %v; want %q, %q", tc.key, app, rest, err, tc.app, tc.rest)
		}
		if !contract.ValidKey(tc.key) {
			t.Errorf("ValidKey(%q) = false", tc.key)
		}
		if got := contract.Key(strings.Split(tc.key, ".")[0], strings.Split(tc.key, ".")[1:]...); got != tc.key {
			t.Errorf("Key of the segments of %q = %q", tc.key, got)
		}
	}
	for _, key := range []string{"", ".", "mp.", ".jsapi", "mp..jsapi", "a.b.c.d", "mp.*", "mp.>", "mp.js api", "mp." + strings.Repeat("x", 65)} {
		if _, _, err := contract.ParseKey(key); !errors.Is(err, contract.ErrInvalidKey) {
			t.Errorf("ParseKey(%q) = %v, want ErrInvalidKey", key, err)
		}
		if contract.ValidKey(key) {
			t.Errorf("ValidKey(%q) = true", key)
		}
	}
}

func TestSubjects(t *testing.T) {
	for got, want := range map[string]string{
		contract.UpdatedSubject("mp"):                  "token.updated.mp",
		contract.RefreshSubject("mp.jsapi"):            "token.refresh.mp.jsapi",
		contract.SignSubject("comp.wx01"):              "token.sign.comp.wx01",
		contract.AuditSubject("mp"):                    "token.audit.mp",
		contract.LeaseBucket(contract.DefaultBucket):   "tokens_lease",
		contract.StateBucket(contract.DefaultBucket):   "tokens_state",
		contract.SecretsBucket(contract.DefaultBucket): "tokens_secrets",
		contract.KVStream(contract.DefaultBucket):      "KV_tokens",
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

func TestFingerprint(t *testing.T) {
	// The first 4 bytes of SHA-256("TOKEN"), in hex: what the refresher
	// has always logged, so old and new log lines still correlate.
	if got := contract.Fingerprint("TOKEN"); got != "f98103e9" {
		t.Errorf("Fingerprint = %q", got)
	}
	if got := contract.Fingerprint(""); got != "" {
		t.Errorf("Fingerprint of no token = %q, want empty", got)
	}
}

func TestRejectedTokenCode(t *testing.T) {
	for code, want := range map[int]bool{40001: true, 40014: true, 42001: true, 0: false, -1: false, 40013: false, 40125: false, 45009: false} {
		if got := contract.RejectedTokenCode(code); got != want {
			t.Errorf("RejectedTokenCode(%d) = %v, want %v", code, got, want)
		}
	}
}
