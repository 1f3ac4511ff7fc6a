package main

import (
	"context"
	"errors"
	"flag"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// getCommand is tokenctl get.
var getCommand = &command{
	name:    "get",
	args:    "KEY",
	summary: "print the record stored under KEY (APP or APP.TICKET), the token or ticket included",
	help: `
Reads KEY from the token bucket and prints the record. KEY is an app
(its access token record) or APP.TICKET such as mp.jsapi (the ticket
record v2 keeps, with key, ticket_type and ticket instead of
access_token); for an authorizer of an Open Platform component,
COMPONENT.AUTHORIZER (its token record, with key and authorizer_appid;
app and appid are the component's) or COMPONENT.AUTHORIZER.TICKET (its
ticket record). The record: app, appid
(the upstream app, in records written since v1.1), revision (the KV revision), source (startup, scheduled, passive or
manual), fetched_at, expires_at, the time to expiry (negative and EXPIRED
once expired), the token's fingerprint (first 8 hex digits of its
SHA-256, as in the refresher's logs and in watch) and the access_token
itself. The token is a live credential: do not paste it into tickets.

With --json it prints the stored JSON object, every field kept, plus
"revision", on one line.

Fails (exit 1) when the bucket does not exist ("bucket tokens not found:
is a refresher running against this NATS?") or nothing is stored under KEY.

Examples:
  tokenctl get mp-main
  tokenctl get mp-main.jsapi
  tokenctl get comp.wx1234567890abcdef.jsapi
  tokenctl --nats nats://nats-1:4222 --creds ops.creds get mp-main --json`,
	nargs:  1,
	anyKey: true,
	flags:  func(*flag.FlagSet) any { return nil },
	run:    runGet,
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

// missingApp is the error of a key without a record.
func missingApp(app, bucket string) error {
	if strings.Contains(app, ".") {
		return errors.New("nothing stored under " + app + " in bucket " + bucket)
	}
	return errors.New("no token stored for app " + app + " in bucket " + bucket)
}
