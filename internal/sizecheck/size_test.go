package sizecheck_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/sizecheck"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

// TestProgramsDoTheSame: both programs, run against a real server with a
// record in the bucket, print the same app, revision and fingerprint.
func TestProgramsDoTheSame(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries")
	}
	s := testutil.RunServer(t)
	_, js := testutil.Connect(t, s.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: contract.DefaultBucket})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	rec := contract.Record{App: "mp", AccessToken: "TOKEN", FetchedAt: now, ExpiresAt: now.Add(2 * time.Hour), Source: contract.SourceStartup}
	val, _ := json.Marshal(rec)
	rev, err := kv.Create(ctx, "mp", val)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("mp %d %s\n", rev, contract.Fingerprint(rec.AccessToken))
	dir := t.TempDir()
	for _, pkg := range []string{"plain", "subscriber"} {
		build(t, dir, pkg, nil)
		cmd := exec.CommandContext(ctx, filepath.Join(dir, pkg+"0"), "mp")
		cmd.Env = append(os.Environ(), "NATS_URL="+s.ClientURL())
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil || string(out) != want {
			t.Errorf("%s printed %q (%v; %s), want %q", pkg, out, err, stderr.String(), want)
		}
	}
}

// TestBinarySize builds the minimal subscriber program and the plain
// nats.go one, default and stripped (-ldflags=-s -w), and holds the
// subscriber's to MaxRatio of the plain one's.
func TestBinarySize(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries")
	}
	dir := t.TempDir()
	for _, flags := range [][]string{nil, {"-ldflags=-s -w"}} {
		name := "default"
		if flags != nil {
			name = "stripped"
		}
		t.Run(name, func(t *testing.T) {
			plain := build(t, dir, "plain", flags)
			sub := build(t, dir, "subscriber", flags)
			ratio := float64(sub) / float64(plain)
			t.Logf("plain nats.go %s, subscriber %s: %.3f×", mb(plain), mb(sub), ratio)
			if ratio > sizecheck.MaxRatio {
				t.Errorf("the subscriber program is %.3f× the plain nats.go one, over %.2f×", ratio, sizecheck.MaxRatio)
			}
		})
	}
}

// build builds ./<pkg> with flags and returns the binary's size.
func build(t *testing.T, dir, pkg string, flags []string) int64 {
	t.Helper()
	out := filepath.Join(dir, pkg+fmt.Sprint(len(flags)))
	args := append(append([]string{"build", "-o", out}, flags...), "./"+pkg)
	cmd := exec.Command("go", args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %v: %v\n%s", args, err, b)
	}
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func mb(n int64) string { return fmt.Sprintf("%.2f MB (%d bytes)", float64(n)/1e6, n) }
