package main

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// TestExampleService runs the example against a real refresher and the
// emulator, with the token revoked upstream before the calls: the
// RoundTripper absorbs the rejection, every call the example makes
// succeeds, and it never logs the token.
func TestExampleService(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	e.Start(e.Config(app))
	rec, _ := e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	if !e.Sim.Revoke(rec.AccessToken) {
		t.Fatal("could not revoke the token")
	}
	logs := &harness.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, []string{"--nats", e.URL, "--app", "mp", "--api-base", e.SimURL, "--interval", "10ms", "--count", "5"}, log)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, logs)
	}
	if n := strings.Count(logs.String(), "business call ok"); n != 5 {
		t.Fatalf("%d of 5 business calls succeeded:\n%s", n, logs)
	}
	ok, rejected := e.Sim.BusinessCalls()
	if ok != 5 || rejected != 1 {
		t.Fatalf("upstream saw %d ok and %d rejected calls, want 5 and 1 (the revoked token, absorbed)", ok, rejected)
	}
	if strings.Contains(logs.String(), rec.AccessToken) {
		t.Fatal("the example logged a token")
	}
}
