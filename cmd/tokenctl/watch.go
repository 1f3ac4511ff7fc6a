package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/backoff"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// watchCommand is tokenctl watch.
var watchCommand = &command{
	name:    "watch",
	args:    "APP",
	summary: "print every update of APP's record until Ctrl-C (token fingerprints only)",
	help: `
Follows APP's key in the token bucket and prints one line per update,
starting with the record stored now:

  WRITTEN_AT  APP  revision=N  source=S  expires_at=T  expires_in=D  token=FP

WRITTEN_AT is when the server stored the revision; FP is the token's
fingerprint (first 8 hex digits of its SHA-256, as in the refresher's
logs): watch never prints a token. A deleted or purged key prints
"DELETED" or "PURGED". With --json each update is one JSON object per
line: {"app","revision","operation","written_at","source","fetched_at",
"expires_at","expires_in_seconds","fingerprint"}.

watch survives NATS restarts and failovers: on every reconnect it
recreates the watch from the revision after the last one printed, every
5s it compares the stored revision with the last one printed and
rewatches if one was missed (a KV watcher can stall silently for ~20s
after a failover), and it rewatches with backoff when the watch ends.
Connection events are reported on stderr.

Stops with exit status 0 on Ctrl-C (SIGINT) or SIGTERM. Fails (exit 1)
when it cannot connect or the bucket does not exist; an app with no token
yet is waited for.`,
	nargs: 1,
	flags: func(*flag.FlagSet) any { return nil },
	run:   runWatch,
}

// watchPoll is how often watch compares the stored revision with the
// last one it printed.
var watchPoll = 5 * time.Second

// resumeOnReconnect makes watch recreate its watcher on every reconnect;
// tests turn it off to exercise the revision poll alone.
var resumeOnReconnect = true

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
	wl.run(ctx)
	return nil
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

// run watches until ctx is done.
func (wl *watchLoop) run(ctx context.Context) {
	bo := backoff.New(100*time.Millisecond, 5*time.Second)
	poll := time.NewTicker(watchPoll)
	defer poll.Stop()
	var lastErr string
	for ctx.Err() == nil {
		wctx, stop := context.WithCancel(ctx)
		var opts []jetstream.WatchOpt
		if wl.last > 0 {
			opts = append(opts, jetstream.ResumeFromRevision(wl.last+1))
		}
		w, err := wl.kv.Watch(wctx, wl.app, opts...)
		if err != nil {
			stop()
			if ctx.Err() != nil {
				return
			}
			if msg := err.Error(); msg != lastErr {
				fmt.Fprintf(wl.c.stderr, "tokenctl: cannot watch %s: %v; retrying\n", wl.app, err)
				lastErr = msg
			}
			if !backoff.Sleep(ctx, bo.Next()) {
				return
			}
			continue
		}
		lastErr = ""
		why, ended := wl.follow(ctx, w, poll.C)
		_ = w.Stop()
		stop()
		if ctx.Err() != nil {
			return
		}
		fmt.Fprintf(wl.c.stderr, "tokenctl: %s; resuming the watch after revision %d\n", why, wl.last)
		if !ended {
			bo.Reset()
		} else if !backoff.Sleep(ctx, bo.Next()) {
			return
		}
	}
}

// follow prints w's updates until ctx is done or the watch must be
// recreated; it returns why, and ended true when the watch itself ended
// (then the next one waits for a backoff).
func (wl *watchLoop) follow(ctx context.Context, w jetstream.KeyWatcher, poll <-chan time.Time) (why string, ended bool) {
	for {
		select {
		case <-ctx.Done():
			return "stopped", false
		case e, ok := <-w.Updates():
			if !ok {
				return "the watch ended", true
			}
			if e == nil {
				if wl.last == 0 && !wl.waiting {
					fmt.Fprintf(wl.c.stderr, "tokenctl: no token stored for app %s yet; waiting\n", wl.app)
					wl.waiting = true
				}
				continue
			}
			if e.Revision() <= wl.last {
				continue
			}
			wl.last = e.Revision()
			wl.print(e)
		case ev := <-wl.events:
			if ev.reconnected {
				if resumeOnReconnect {
					return "reconnected to " + ev.url, false
				}
				fmt.Fprintf(wl.c.stderr, "tokenctl: reconnected to %s\n", ev.url)
				continue
			}
			fmt.Fprintf(wl.c.stderr, "tokenctl: %v\n", ev.err)
		case <-poll:
			if rev := wl.storedRevision(ctx); rev > wl.last {
				return fmt.Sprintf("revision %d is stored but the watch has not delivered it", rev), false
			}
		}
	}
}

// storedRevision reads the key's current revision (0 if none or on error).
func (wl *watchLoop) storedRevision(ctx context.Context) uint64 {
	rctx, cancel := wl.c.withTimeout(ctx)
	defer cancel()
	e, err := wl.kv.Get(rctx, wl.app)
	if err != nil {
		return 0
	}
	return e.Revision()
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
			line.Fingerprint = fingerprint(rec.AccessToken)
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
