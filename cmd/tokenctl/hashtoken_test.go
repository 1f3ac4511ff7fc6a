package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// tokenctlIn runs the CLI in-process with stdin.
func tokenctlIn(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb strings.Builder
	code := runIO(ctx, args, strings.NewReader(stdin), &out, &errb)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// TestHashToken: hash-token prints the SHA-256 of the token on stdin
// (final newline and surrounding space removed, as the gateway trims the
// bearer token), refuses empty or multi-word input without echoing it,
// and --new makes a token whose printed hash is its SHA-256.
func TestHashToken(t *testing.T) {
	const tok = "php-shop-bearer-0123456789"
	for _, in := range []string{tok, tok + "\n", "  " + tok + "\r\n"} {
		r := tokenctlIn(t, in, "hash-token")
		if r.code != 0 || r.stdout != sha(tok)+"\n" {
			t.Errorf("hash-token of %q: %v", in, r)
		}
	}
	r := tokenctlIn(t, tok, "hash-token", "--json")
	var j map[string]string
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &j) != nil || j["token_sha256"] != sha(tok) || j["token"] != "" {
		t.Errorf("hash-token --json: %v", r)
	}
	for _, in := range []string{"", "  \n", tok + "\n" + tok + "2\n", strings.Repeat("x", 5000)} {
		r := tokenctlIn(t, in, "hash-token")
		if r.code != exitRuntime || r.stdout != "" {
			t.Errorf("hash-token of bad input %.20q: %v", in, r)
		}
		if strings.Contains(r.stderr, tok) {
			t.Errorf("hash-token echoes the token: %s", r.stderr)
		}
	}
	if r := tokenctlIn(t, "", "hash-token", "extra"); r.code != exitUsage {
		t.Errorf("hash-token with an argument: %v", r)
	}

	r = tokenctlIn(t, "", "hash-token", "--new", "--json")
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &j) != nil || len(j["token"]) < 40 || j["token_sha256"] != sha(j["token"]) {
		t.Fatalf("hash-token --new --json: %v", r)
	}
	first := j["token"]
	r = tokenctlIn(t, "", "hash-token", "--new")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 2 {
		t.Fatalf("hash-token --new: %v", r)
	}
	newTok := strings.TrimSpace(strings.TrimPrefix(lines[0], "token:"))
	if newTok == first || strings.TrimSpace(strings.TrimPrefix(lines[1], "token_sha256:")) != sha(newTok) {
		t.Errorf("hash-token --new: %v", r)
	}
}
