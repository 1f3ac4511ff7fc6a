package main

import (
	"context"
	"errors"
	"flag"

	"github.com/nats-io/nats.go/jetstream"
)

// getCommand is tokenctl get.
var getCommand = &command{
	name:    "get",
	args:    "APP",
	summary: "print APP's stored token record, the access token included",
	help: `
Reads APP's key from the token bucket and prints the record: app, appid
(the upstream app, in records written since v1.1), revision (the KV revision), source (startup, scheduled, passive or
manual), fetched_at, expires_at, the time to expiry (negative and EXPIRED
once expired), the token's fingerprint (first 8 hex digits of its
SHA-256, as in the refresher's logs and in watch) and the access_token
itself. The token is a live credential: do not paste it into tickets.

With --json it prints the stored JSON object, every field kept, plus
"revision", on one line.

Fails (exit 1) when the bucket does not exist ("bucket tokens not found:
is a refresher running against this NATS?") or no token is stored for APP.

Examples:
  tokenctl get mp-main
  tokenctl --nats nats://nats-1:4222 --creds ops.creds get mp-main --json`,
	nargs: 1,
	flags: func(*flag.FlagSet) any { return nil },
	run:   runGet,
}

// runGet is tokenctl get APP.
func runGet(ctx context.Context, c *cli, args []string, _ any) error {
	app := args[0]
	s, err := c.connect(ctx, nil)
	if err != nil {
		return err
	}
	defer s.close()
	kv, err := c.openBucket(ctx, s)
	if err != nil {
		return err
	}
	rctx, cancel := c.withTimeout(ctx)
	defer cancel()
	e, err := kv.Get(rctx, app)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return missingApp(app, c.g.bucket)
	}
	if err != nil {
		return c.requestError(s, "read app "+app, err)
	}
	rec, err := parseRecord(app, e.Revision(), e.Value())
	if err != nil {
		return err
	}
	return printRecord(c.stdout, e.Value(), rec, e.Revision(), c.g.json)
}

// missingApp is the error of an app without a record.
func missingApp(app, bucket string) error {
	return errors.New("no token stored for app " + app + " in bucket " + bucket)
}
