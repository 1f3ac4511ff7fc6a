package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/follow"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// watchCommand is tokenctl watch.
var watchCommand = &command{
	name:    "watch",
	args:    "KEY",
	summary: "print every update of KEY's record until Ctrl-C (fingerprints only)",
	help: `
Follows KEY (an app, APP.TICKET such as mp.jsapi, or an Open Platform
authorizer's COMPONENT.AUTHORIZER or COMPONENT.AUTHORIZER.TICKET) in the token bucket
and prints one line per update, starting with the record stored now
(APP below is KEY, and "token" the ticket's fingerprint for a ticket):

  WRITTEN_AT  APP  revision=N  source=S  expires_at=T  expires_in=D  token=FP

WRITTEN_AT is when the server stored the revision; FP is the token's
fingerprint (first 8 hex digits of its SHA-256, as in the refresher's
logs): watch never prints a token. A deleted or purged key prints
"DELETED" or "PURGED". With --json each update is one JSON object per
line: {"app","revision","operation","written_at","source","fetched_at",
"expires_at","expires_in_seconds","fingerprint"}.

watch survives NATS restarts and failovers: on every reconnect it
recreates the watch from the revision after the last one printed, every
5s it reads the key and prints a revision the watch missed (a KV watcher
can stall silently for ~20s after a failover), then rewatches, and it
rewatches with backoff when the watch ends. Connection events are
reported on stderr.

Stops with exit status 0 on Ctrl-C (SIGINT) or SIGTERM. Fails (exit 1)
when it cannot connect or the bucket does not exist; an app with no token
yet is waited for.`,
	nargs:  1,
	anyKey: true,
	flags:  func(*flag.FlagSet) any { return nil },
	run:    runWatch,
}

// watchPoll is how often watch reads the key and compares its revision
// with the last one printed.
var watchPoll = 5 * time.Second

// connEvent is a connection event, passed from the NATS client's
// goroutines to the watch loop (which alone writes the output).
type connEvent struct {
	reconnected bool
	url         string
	err         error // disconnect reason, or an asynchronous error
}

// runWatch is tokenctl watch APP.
func runWatch(ctx context.Context, c *cli, args []string, _ any) error {
	app := args[0]
	events := make(chan connEvent, 64)
	send := func(ev connEvent) {
		select {
		case events <- ev:
		default: // the loop is behind; it rewatches anyway
		}
	}
	s, err := c.connect(ctx,
		func(err error) { send(connEvent{err: fmt.Errorf("server: %w", err)}) },
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil {
				err = errors.New("connection lost")
			}
			send(connEvent{err: fmt.Errorf("disconnected from NATS: %w; reconnecting", err)})
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			send(connEvent{reconnected: true, url: nc.ConnectedUrlRedacted()})
		}),
	)
	if err != nil {
		return err
	}
	defer s.close()
	kv, err := c.openBucket(ctx, s)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "tokenctl: watching app %s in bucket %s on %s (Ctrl-C to stop)\n",
		app, c.g.bucket, s.nc.ConnectedUrlRedacted())

	wl := &watchLoop{c: c, s: s, kv: kv, app: app, events: events}
	return wl.run(ctx)
}

// watchLoop follows one key and prints its updates.
type watchLoop struct {
	c      *cli
	s      *session
	kv     jetstream.KeyValue
	app    string
	events <-chan connEvent

	last    uint64 // revision of the last update printed
	waiting bool   // "no token yet" was reported
}

// run prints the key's updates until ctx is done, following it with
// internal/follow (which rebuilds the watch on reconnect, when it ends,
// and when its poll found a revision the watch missed). This goroutine
// alone writes the output.
func (wl *watchLoop) run(ctx context.Context) error {
	f, err := follow.Start(wl.s.nc, follow.Config{
		Open:         func(context.Context) (jetstream.KeyValue, error) { return wl.kv, nil },
		Keys:         []string{wl.app},
		PollInterval: watchPoll,
		Timeout:      wl.c.g.timeout,
	})
	if err != nil {
		return err
	}
	defer f.Stop()
	var lastErr string // the last problem printed: repeats are not
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-wl.events:
			if ev.reconnected {
				fmt.Fprintf(wl.c.stderr, "tokenctl: reconnected to %s; resuming the watch after revision %d\n", ev.url, wl.last)
				continue
			}
			fmt.Fprintf(wl.c.stderr, "tokenctl: %v\n", ev.err)
		case ev, ok := <-f.Events():
			if !ok {
				return fmt.Errorf("watch %s: %w", wl.app, f.Err())
			}
			switch ev.Kind {
			case follow.Entry:
				lastErr = ""
				if ev.Polled {
					fmt.Fprintf(wl.c.stderr, "tokenctl: revision %d is stored but the watch had not delivered it; rewatching\n", ev.Entry.Revision())
				}
				wl.last = ev.Entry.Revision()
				wl.print(ev.Entry)
			case follow.Current:
				lastErr = ""
				if wl.last == 0 && !wl.waiting {
					fmt.Fprintf(wl.c.stderr, "tokenctl: no token stored for app %s yet; waiting\n", wl.app)
					wl.waiting = true
				}
			case follow.Reset:
				fmt.Fprintf(wl.c.stderr, "tokenctl: bucket %s was created anew; its revisions start over\n", wl.c.g.bucket)
			case follow.Problem:
				if msg := ev.Err.Error(); msg != lastErr && !errors.Is(ev.Err, follow.ErrReconnected) {
					fmt.Fprintf(wl.c.stderr, "tokenctl: %v; resuming the watch after revision %d\n", ev.Err, wl.last)
					lastErr = msg
				}
			}
		}
	}
}

// watchLine is one update in --json output.
type watchLine struct {
	App              string    `json:"app"`
	Revision         uint64    `json:"revision"`
	Operation        string    `json:"operation"`
	WrittenAt        time.Time `json:"written_at"`
	Source           string    `json:"source,omitempty"`
	FetchedAt        time.Time `json:"fetched_at,omitzero"`
	ExpiresAt        time.Time `json:"expires_at,omitzero"`
	ExpiresInSeconds *int64    `json:"expires_in_seconds,omitempty"`
	Fingerprint      string    `json:"fingerprint,omitempty"`
	Invalid          string    `json:"invalid,omitempty"`
}

// opName names a KV operation in watch output.
func opName(op jetstream.KeyValueOp) string {
	switch op {
	case jetstream.KeyValuePut:
		return "PUT"
	case jetstream.KeyValueDelete:
		return "DELETED"
	case jetstream.KeyValuePurge:
		return "PURGED"
	}
	return op.String()
}

// print writes one update; never the token itself.
func (wl *watchLoop) print(e jetstream.KeyValueEntry) {
	line := watchLine{App: wl.app, Revision: e.Revision(), Operation: opName(e.Operation()), WrittenAt: e.Created().UTC()}
	if e.Operation() == jetstream.KeyValuePut {
		rec, err := parseRecord(wl.app, e.Revision(), e.Value())
		if err != nil {
			line.Invalid = fmt.Sprintf("not a JSON record (%d bytes)", len(e.Value()))
		} else {
			line.Source, line.FetchedAt, line.ExpiresAt = rec.Source, rec.FetchedAt, rec.ExpiresAt
			secs := int64(ttl(rec.ExpiresAt) / time.Second)
			line.ExpiresInSeconds = &secs
			line.Fingerprint = fingerprint(rec.secret())
		}
	}
	writeWatchLine(wl.c.stdout, line, wl.c.g.json)
}

// writeWatchLine writes one update as text or JSON.
func writeWatchLine(w io.Writer, l watchLine, asJSON bool) {
	if asJSON {
		b, _ := json.Marshal(l)
		fmt.Fprintf(w, "%s\n", b)
		return
	}
	head := fmt.Sprintf("%s  %s  revision=%d", fmtTime(l.WrittenAt), l.App, l.Revision)
	switch {
	case l.Operation != "PUT":
		fmt.Fprintf(w, "%s  %s\n", head, l.Operation)
	case l.Invalid != "":
		fmt.Fprintf(w, "%s  INVALID %s\n", head, l.Invalid)
	default:
		fmt.Fprintf(w, "%s  source=%s  expires_at=%s  expires_in=%s  token=%s\n",
			head, l.Source, fmtTime(l.ExpiresAt), fmtTTL(l.ExpiresAt), l.Fingerprint)
	}
}
