package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// auditCommand is tokenctl audit.
var auditCommand = &command{
	name:    "audit",
	args:    "[KEY] [--since D] [--follow]",
	summary: "show the audit trail: every upstream call, who made it and why",
	help: `
Prints the records of the audit stream (tokenkeeper_audit): one per
upstream call (HTTP attempt) the refresher made, success or failure,
oldest first: when, which replica, the key, why (startup, scheduled,
passive, manual, reconcile), who asked (for passive and manual
refreshes), the endpoint path, the result (errcode and errmsg, WeChat's
rid, an HTTP status) and the new credential's fingerprint. No record
holds a credential or a secret.

KEY limits the output to one key; an app name includes its tickets
(mp-main shows mp-main and mp-main.jsapi). --since D starts D ago
(default 24h). --follow keeps printing new records until interrupted.
--json prints each record as a JSON line.

Examples:
  tokenctl audit --since 1h
  tokenctl audit mp-main --follow`,
	nargs:   1,
	optArgs: true,
	anyKey:  true,
	flags: func(fs *flag.FlagSet) any {
		f := &auditFlags{}
		fs.DurationVar(&f.since, "since", 24*time.Hour, "start `D` ago")
		fs.BoolVar(&f.follow, "follow", false, "keep printing new records")
		return f
	},
	run: runAudit,
}

type auditFlags struct {
	since  time.Duration
	follow bool
}

// runAudit is tokenctl audit [KEY].
func runAudit(ctx context.Context, c *cli, args []string, flags any) error {
	f := flags.(*auditFlags)
	if f.since <= 0 {
		return usagef("audit: --since %s: want a positive duration", f.since)
	}
	filters := []string{contract.AuditPrefix + ">"}
	if len(args) == 1 {
		key := args[0]
		filters = []string{contract.AuditSubject(key)}
		if _, rest, _ := contract.ParseKey(key); rest == "" {
			filters = append(filters, contract.AuditSubject(key)+".>")
		}
	}
	s, err := c.connect(ctx, nil)
	if err != nil {
		return err
	}
	defer s.close()
	rctx, cancel := c.withTimeout(ctx)
	st, err := s.js.Stream(rctx, contract.AuditStream)
	cancel()
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("audit: no audit stream %s (the refresher creates it at start; audit.disabled?)", contract.AuditStream)
	}
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	start := now().Add(-f.since)
	rctx, cancel = c.withTimeout(ctx)
	cons, err := st.OrderedConsumer(rctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: filters, DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &start,
	})
	cancel()
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	// The consumer's info at creation (no CONSUMER.INFO permission needed).
	var pending uint64
	if info := cons.CachedInfo(); info != nil {
		pending = info.NumPending
	}
	tw := newTable(c.stdout)
	defer tw.Flush()
	if !c.g.json {
		fmt.Fprintln(tw, "TIME\tREPLICA\tKEY\tREASON\tREQUESTER\tENDPOINT\tTRY\tRESULT\tCREDENTIAL\tMS")
	}
	for f.follow || pending > 0 {
		batch, err := cons.Fetch(100, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		for m := range batch.Messages() {
			var rec contract.AuditRecord
			if err := json.Unmarshal(m.Data(), &rec); err != nil {
				fmt.Fprintf(c.stderr, "audit: a record on %s does not parse; skipped\n", m.Subject())
			} else if c.g.json {
				_ = json.NewEncoder(c.stdout).Encode(rec)
			} else {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\n", rec.Time.UTC().Format("2006-01-02T15:04:05.000Z"),
					rec.Replica, rec.Key, rec.Reason, orDash(rec.Requester), rec.Endpoint, rec.Attempt, auditResult(rec),
					orDash(rec.Credential), rec.DurationMS)
			}
			if md, err := m.Metadata(); err == nil {
				pending = md.NumPending
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("audit: %w", err)
		}
		tw.Flush()
		if ctx.Err() != nil {
			return nil
		}
	}
	return nil
}

// auditResult renders the outcome of an audited call.
func auditResult(r contract.AuditRecord) string {
	switch {
	case r.OK:
		return "ok"
	case r.Errcode != 0:
		s := fmt.Sprintf("errcode %d %s", r.Errcode, r.Errmsg)
		return strings.TrimSpace(s)
	case r.HTTPStatus != 0:
		return strings.TrimSpace(fmt.Sprintf("HTTP %d %s", r.HTTPStatus, r.Errmsg))
	}
	return "error " + r.Error
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
