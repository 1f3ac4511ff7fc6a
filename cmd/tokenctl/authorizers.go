package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// authorizersCommand is tokenctl authorizers.
var authorizersCommand = &command{
	name:    "authorizers",
	args:    "list|show|import|export|reconcile COMPONENT [AUTHORIZER|FILE]",
	summary: "Open Platform authorizers of a wechat-component: list, show, import, export refresh tokens, reconcile",
	help: `
Operator requests on the authorizers of a wechat-component app, answered
by the leading refresher (the micro service "tokenkeeper-admin" on
token.admin.authorizers.<op>.COMPONENT; the operator role may ask, a
service may not). Nothing here reads the secrets bucket itself: only the
refresher holds its key.

  authorizers list COMPONENT
      Every authorizer: appid, state (active, needs_reauthorization after
      61023, unauthorized: the tombstone), when its token expires, its last
      refresh, and the fingerprint of its refresh token. Never a token.
  authorizers show COMPONENT AUTHORIZER
      The same for one authorizer, plus the history of its refresh token
      (fingerprints, oldest first) from the secrets bucket's history, and
      the tickets the refresher keeps for it (authorizer_tickets: keys
      COMPONENT.AUTHORIZER.jsapi and .wx_card, read from the token bucket:
      revision, source, expiry and fingerprint, never the ticket). With
      --json the reply object gets "tickets":[{"key","ticket_type",
      "revision","source","fetched_at","expires_at","fingerprint"}].
  authorizers import COMPONENT FILE [--overwrite] [--made-at TIME]
      Stores refresh tokens from FILE ("-": standard input): a JSON array
      [{"authorizer_appid": "...", "refresh_token": "..."}, ...] or CSV with
      the header authorizer_appid,refresh_token (by extension, else by
      content) — the migration from an SDK's Redis store. Each row is
      reported with its line: imported, unchanged (the same refresh token
      is stored), skipped (exists, unauthorized, newer) or invalid (why).
      An authorizer the store already has is skipped unless --overwrite;
      even then a refresh token the refresher stored after the file was
      made (its modification time, or --made-at) is never replaced.
      Bad rows never stop the valid ones; the rows go in chunks of at most
      500 (under the server's max_payload). The refresher then fetches the
      new authorizers' tokens through its ordinary, paced refreshes.
  authorizers export COMPONENT [--include-refresh-tokens] [--out FILE] [--force]
      The authorized authorizers in the import format, for backup: without
      --include-refresh-tokens only the appids (no refresh_token column).
      To standard output, or to FILE, created with mode 0600 (an existing
      FILE is refused unless --force). The refresher logs every export
      with refresh tokens (requester, count) and appends it to the audit
      trail (reason "export").
  authorizers reconcile COMPONENT
      Runs a reconciliation with api_get_authorizer_list now and prints
      what changed: recovered refresh tokens, tombstoned authorizers WeChat
      still lists, authorizers WeChat does not list.

import and reconcile wait at least 60s for each answer (--timeout raises
it). Fails (exit 1) on an error reply (404 unknown component, 503 no
component token yet or not leading), when no refresher serves the
subject, and, for import, when any row was invalid or failed (after
reporting every row).

Examples:
  tokenctl authorizers list comp
  tokenctl authorizers import comp redis-dump.csv
  tokenctl authorizers export comp --include-refresh-tokens --out backup.json`,
	nargs:   3,
	optArgs: true,
	flags: func(fs *flag.FlagSet) any {
		f := &authorizersFlags{}
		fs.BoolVar(&f.overwrite, "overwrite", false, "import: replace stored refresh tokens older than the file")
		fs.StringVar(&f.madeAt, "made-at", "", "import: when the file was made, RFC 3339 `TIME` (default: its modification time; now for stdin)")
		fs.BoolVar(&f.tokens, "include-refresh-tokens", false, "export: include the refresh tokens (logged and audited by the refresher)")
		fs.StringVar(&f.out, "out", "", "export: write to `FILE` (mode 0600) instead of standard output")
		fs.BoolVar(&f.force, "force", false, "export: replace an existing --out FILE")
		fs.StringVar(&f.format, "format", "", "import/export: `FORMAT` json or csv (default: by the file's extension, else json)")
		return f
	},
	run: runAuthorizers,
}

// authorizersFlags are the flags of authorizers.
type authorizersFlags struct {
	overwrite bool
	madeAt    string
	tokens    bool
	out       string
	force     bool
	format    string
}

// importChunk is the most rows tokenctl sends in one import request.
const importChunk = 500

// slowFloor is the least time import and reconcile wait for an answer.
const slowFloor = 60 * time.Second

// runAuthorizers is tokenctl authorizers OP COMPONENT [ARG].
func runAuthorizers(ctx context.Context, c *cli, args []string, flags any) error {
	f := flags.(*authorizersFlags)
	if len(args) < 2 {
		return usagef("usage: tokenctl authorizers list|show|import|export|reconcile COMPONENT [AUTHORIZER|FILE]")
	}
	op, comp := args[0], args[1]
	if !contract.ValidAppName(comp) {
		return usagef("%q is not an app name (1-64 characters of A-Z a-z 0-9 _ -)", comp)
	}
	want := map[string]int{contract.AuthorizersList: 2, contract.AuthorizersShow: 3, contract.AuthorizersImport: 3,
		contract.AuthorizersExport: 2, contract.AuthorizersReconcile: 2}
	n, ok := want[op]
	if !ok {
		return usagef("authorizers: unknown operation %q (list, show, import, export, reconcile)", op)
	}
	if len(args) != n {
		return usagef("usage: tokenctl authorizers %s COMPONENT%s", op, map[int]string{2: "", 3: " " + map[string]string{"show": "AUTHORIZER", "import": "FILE"}[op]}[n])
	}
	if (f.overwrite || f.madeAt != "") && op != contract.AuthorizersImport {
		return usagef("authorizers %s: --overwrite and --made-at are import's", op)
	}
	if (f.tokens || f.out != "" || f.force) && op != contract.AuthorizersExport {
		return usagef("authorizers %s: --include-refresh-tokens, --out and --force are export's", op)
	}
	switch f.format {
	case "", formatJSON, formatCSV:
	default:
		return usagef("authorizers: --format %q: want json or csv", f.format)
	}
	if op == contract.AuthorizersShow && !contract.ValidAppName(args[2]) {
		return usagef("%q is not an authorizer appid (1-64 characters of A-Z a-z 0-9 _ -)", args[2])
	}
	a := &adminClient{c: c, comp: comp}
	switch op {
	case contract.AuthorizersList:
		return a.list(ctx)
	case contract.AuthorizersShow:
		return a.show(ctx, args[2])
	case contract.AuthorizersImport:
		return a.importFile(ctx, args[2], f)
	case contract.AuthorizersExport:
		return a.export(ctx, f)
	}
	return a.reconcile(ctx)
}

// adminClient sends the operator requests of one component.
type adminClient struct {
	c    *cli
	comp string
	s    *session
}

func (a *adminClient) connect(ctx context.Context) error {
	s, err := a.c.connect(ctx, nil)
	if err != nil {
		return err
	}
	a.s = s
	return nil
}

// request sends one request and decodes its reply into v, waiting at
// least floor (and --timeout).
func (a *adminClient) request(ctx context.Context, op string, body any, v any, floor time.Duration) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	subject := contract.AuthorizersSubject(op, a.comp)
	msg := nats.NewMsg(subject)
	msg.Data = data
	who := requester()
	if a.c.g.user != "" {
		who += " as NATS user " + a.c.g.user
	}
	msg.Header.Set(contract.RequesterHeader, who)
	rctx, cancel := context.WithTimeout(ctx, max(a.c.g.timeout, floor))
	defer cancel()
	reply, err := a.s.nc.RequestMsgWithContext(rctx, msg)
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("no refresher is serving %s (is the leading refresher running with wechat-component %s?)", subject, a.comp)
	}
	if err != nil {
		return a.c.requestError(a.s, "request "+subject, err)
	}
	if code := reply.Header.Get(contract.ErrorCodeHeader); code != "" {
		return a.c.replyFailed("authorizers "+op+" "+a.comp, code, reply)
	}
	if err := json.Unmarshal(reply.Data, v); err != nil {
		return fmt.Errorf("the reply on %s is not what was asked for: %v", subject, err)
	}
	return nil
}

// list prints every authorizer, page by page.
func (a *adminClient) list(ctx context.Context) error {
	if err := a.connect(ctx); err != nil {
		return err
	}
	defer a.s.close()
	var tw interface {
		io.Writer
		Flush() error
	}
	if !a.c.g.json {
		tw = newTable(a.c.stdout)
		fmt.Fprintln(tw, "AUTHORIZER\tSTATE\tEXPIRES_IN\tLAST_REFRESH\tREFRESH_TOKEN\tREFRESH_TOKEN_AT\tNOTE")
	}
	pr := contract.PageRequest{}
	for {
		var rep contract.ListReply
		if err := a.request(ctx, contract.AuthorizersList, pr, &rep, 0); err != nil {
			return err
		}
		for _, info := range rep.Authorizers {
			if a.c.g.json {
				b, _ := json.Marshal(info)
				fmt.Fprintf(a.c.stdout, "%s\n", b)
				continue
			}
			note := info.LastError
			if info.Why != "" {
				note = info.Why
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", info.AuthorizerAppID, info.State, fmtTTL(info.ExpiresAt), fmtTime(info.FetchedAt),
				orDash(info.RefreshToken), fmtTime(info.RefreshTokenAt), orDash(truncateNote(note)))
		}
		pr = contract.PageRequest{Cursor: rep.Cursor, Offset: rep.Offset + len(rep.Authorizers)}
		if len(rep.Authorizers) == 0 || pr.Offset >= rep.Total {
			if tw != nil {
				if err := tw.Flush(); err != nil {
					return err
				}
				fmt.Fprintf(a.c.stdout, "%d authorizers\n", rep.Total)
			}
			return nil
		}
	}
}

func truncateNote(s string) string {
	if len(s) > 100 {
		return s[:100] + "…"
	}
	return s
}

// show prints one authorizer and its refresh token's history.
func (a *adminClient) show(ctx context.Context, appid string) error {
	if err := a.connect(ctx); err != nil {
		return err
	}
	defer a.s.close()
	var rep contract.ShowReply
	if err := a.request(ctx, contract.AuthorizersShow, contract.ShowRequest{AuthorizerAppID: appid}, &rep, 0); err != nil {
		return err
	}
	tickets, terr := a.tickets(ctx, appid)
	if a.c.g.json {
		b, _ := json.Marshal(struct {
			contract.ShowReply
			Tickets []authorizerTicket `json:"tickets"`
		}{rep, tickets})
		if _, err := fmt.Fprintf(a.c.stdout, "%s\n", b); err != nil {
			return err
		}
		return terr
	}
	i := rep.Info
	tw := newTable(a.c.stdout)
	fmt.Fprintf(tw, "component:\t%s\n", rep.Component)
	fmt.Fprintf(tw, "authorizer:\t%s\n", i.AuthorizerAppID)
	fmt.Fprintf(tw, "key:\t%s\n", contract.Key(rep.Component, i.AuthorizerAppID))
	fmt.Fprintf(tw, "state:\t%s\n", i.State)
	fmt.Fprintf(tw, "expires_in:\t%s\n", fmtTTL(i.ExpiresAt))
	fmt.Fprintf(tw, "expires_at:\t%s\n", fmtTime(i.ExpiresAt))
	fmt.Fprintf(tw, "last_refresh:\t%s\n", fmtTime(i.FetchedAt))
	fmt.Fprintf(tw, "refresh_token:\t%s (fingerprint)\n", orDash(i.RefreshToken))
	fmt.Fprintf(tw, "refresh_token_at:\t%s (%s)\n", fmtTime(i.RefreshTokenAt), orDash(i.RefreshTokenSource))
	if i.Why != "" {
		fmt.Fprintf(tw, "why:\t%s\n", i.Why)
	}
	if i.LastError != "" {
		fmt.Fprintf(tw, "last_error:\t%s\n", i.LastError)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(a.c.stdout, "\nrefresh token history (oldest first):")
	tw = newTable(a.c.stdout)
	fmt.Fprintln(tw, "REVISION\tSTORED_AT\tSTATE\tSOURCE\tREFRESH_TOKEN")
	for _, v := range rep.History {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", v.Revision, fmtTime(v.StoredAt), v.State, orDash(v.Source), orDash(v.RefreshToken))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if terr != nil {
		return terr
	}
	if len(tickets) == 0 {
		_, err := fmt.Fprintln(a.c.stdout, "\ntickets: none stored (authorizer_tickets in the component's config)")
		return err
	}
	fmt.Fprintln(a.c.stdout, "\ntickets:")
	tw = newTable(a.c.stdout)
	fmt.Fprintln(tw, "KEY\tREVISION\tSOURCE\tFETCHED_AT\tEXPIRES_IN\tTICKET")
	for _, t := range tickets {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s (fingerprint)\n", t.Key, t.Revision, orDash(t.Source), fmtTime(t.FetchedAt), fmtTTL(t.ExpiresAt), t.Fingerprint)
	}
	return tw.Flush()
}

// authorizerTicket is one ticket record of an authorizer as show prints
// it: never the ticket, its fingerprint.
type authorizerTicket struct {
	Key         string    `json:"key"`
	TicketType  string    `json:"ticket_type"`
	Revision    uint64    `json:"revision"`
	Source      string    `json:"source,omitempty"`
	FetchedAt   time.Time `json:"fetched_at,omitzero"`
	ExpiresAt   time.Time `json:"expires_at,omitzero"`
	Fingerprint string    `json:"fingerprint"`
}

// authorizerTicketTypes are the tickets a component may keep for its
// authorizers (authorizer_tickets).
var authorizerTicketTypes = []string{contract.TicketJSAPI, contract.TicketWXCard}

// tickets reads the ticket records of authorizer appid from the token
// bucket (none stored: an empty list).
func (a *adminClient) tickets(ctx context.Context, appid string) ([]authorizerTicket, error) {
	kv, err := a.c.openBucket(ctx, a.s)
	if err != nil {
		return nil, fmt.Errorf("tickets of %s: %w", appid, err)
	}
	out := []authorizerTicket{}
	for _, typ := range authorizerTicketTypes {
		key := contract.Key(a.comp, appid, typ)
		rctx, cancel := a.c.withTimeout(ctx)
		e, err := kv.Get(rctx, key)
		cancel()
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, a.c.requestError(a.s, "read "+key, err)
		}
		rec, err := parseRecord(key, e.Revision(), e.Value())
		if err != nil {
			return nil, err
		}
		out = append(out, authorizerTicket{Key: key, TicketType: typ, Revision: e.Revision(), Source: rec.Source,
			FetchedAt: rec.FetchedAt, ExpiresAt: rec.ExpiresAt, Fingerprint: fingerprint(rec.secret())})
	}
	return out, nil
}

// importFile imports FILE in chunks and reports every row.
func (a *adminClient) importFile(ctx context.Context, path string, f *authorizersFlags) error {
	var (
		data   []byte
		err    error
		madeAt time.Time
	)
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(a.c.stdin, 256<<20))
		madeAt = time.Now()
	} else {
		var st os.FileInfo
		if st, err = os.Stat(path); err == nil {
			madeAt = st.ModTime()
			data, err = os.ReadFile(path)
		}
	}
	if err != nil {
		return fmt.Errorf("authorizers import: %v", err)
	}
	if f.madeAt != "" {
		if madeAt, err = time.Parse(time.RFC3339, f.madeAt); err != nil {
			return usagef("authorizers import: --made-at %q is not an RFC 3339 time such as 2026-05-01T08:00:00+08:00", f.madeAt)
		}
	}
	format := f.format
	if format == "" {
		format = formatOf(path, data)
	}
	pf, err := parseImport(format, data)
	if err != nil {
		return fmt.Errorf("authorizers import %s: %v", path, err)
	}
	if err := a.connect(ctx); err != nil {
		return err
	}
	defer a.s.close()
	// Chunks of at most importChunk rows and half the server's max_payload.
	limit := int(a.s.nc.MaxPayload()) / 2
	var results []contract.ImportResult
	for _, b := range pf.bad {
		results = append(results, contract.ImportResult{Line: b.line, AuthorizerAppID: b.appid, Outcome: contract.ImportInvalid, Reason: b.reason})
	}
	send := func(rows []contract.AuthorizerRow) error {
		var rep contract.ImportReply
		req := contract.ImportRequest{Rows: rows, Overwrite: f.overwrite, MadeAt: madeAt.UTC()}
		if err := a.request(ctx, contract.AuthorizersImport, req, &rep, slowFloor); err != nil {
			return err
		}
		if len(rep.Results) != len(rows) {
			return fmt.Errorf("the refresher answered %d results for %d rows", len(rep.Results), len(rows))
		}
		results = append(results, rep.Results...)
		return nil
	}
	var chunk []contract.AuthorizerRow
	size := 0
	for _, row := range pf.rows {
		n := len(row.AuthorizerAppID) + len(row.RefreshToken) + 80
		if len(chunk) > 0 && (len(chunk) >= importChunk || size+n > limit) {
			if err := send(chunk); err != nil {
				a.report(results)
				return err
			}
			chunk, size = nil, 0
		}
		chunk = append(chunk, row)
		size += n
	}
	if len(chunk) > 0 {
		if err := send(chunk); err != nil {
			a.report(results)
			return err
		}
	}
	counts := a.report(results)
	if n := counts[contract.ImportInvalid] + counts[contract.ImportFailed]; n > 0 {
		return fmt.Errorf("authorizers import: %d of %d rows not imported (invalid or failed; see above)", n, len(results))
	}
	return nil
}

// report prints the import results sorted by line, then a summary; it
// returns the count of each outcome.
func (a *adminClient) report(results []contract.ImportResult) map[string]int {
	sortResults(results)
	counts := map[string]int{}
	tw := newTable(a.c.stdout)
	if !a.c.g.json {
		fmt.Fprintln(tw, "LINE\tAUTHORIZER\tOUTCOME\tREASON")
	}
	for _, r := range results {
		counts[r.Outcome]++
		if a.c.g.json {
			b, _ := json.Marshal(r)
			fmt.Fprintf(a.c.stdout, "%s\n", b)
			continue
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", r.Line, orDash(r.AuthorizerAppID), r.Outcome, orDash(r.Reason))
	}
	_ = tw.Flush()
	if !a.c.g.json {
		var parts []string
		for _, o := range []string{contract.ImportImported, contract.ImportUnchanged, contract.ImportSkipped, contract.ImportInvalid, contract.ImportFailed} {
			parts = append(parts, fmt.Sprintf("%s %d", o, counts[o]))
		}
		fmt.Fprintf(a.c.stdout, "%d rows: %s\n", len(results), strings.Join(parts, ", "))
	}
	return counts
}

// sortResults orders results by line (stable).
func sortResults(rs []contract.ImportResult) {
	for i := 1; i < len(rs); i++ {
		for j := i; j > 0 && rs[j].Line < rs[j-1].Line; j-- {
			rs[j], rs[j-1] = rs[j-1], rs[j]
		}
	}
}

// export writes every authorized authorizer in the import format.
func (a *adminClient) export(ctx context.Context, f *authorizersFlags) error {
	format := f.format
	if format == "" {
		format = formatJSON
		if f.out != "" {
			format = formatOf(f.out, []byte("["))
		}
	}
	if f.out != "" && !f.force {
		if _, err := os.Lstat(f.out); err == nil {
			return fmt.Errorf("%s exists: refusing to overwrite it (--force replaces it)", f.out)
		}
	}
	if err := a.connect(ctx); err != nil {
		return err
	}
	defer a.s.close()
	total := 0
	write := func(w io.Writer) error {
		rw := newRowWriter(w, format, f.tokens)
		if err := rw.begin(); err != nil {
			return err
		}
		pr := contract.PageRequest{IncludeRefreshTokens: f.tokens}
		for {
			var rep contract.ExportReply
			if err := a.request(ctx, contract.AuthorizersExport, pr, &rep, 0); err != nil {
				return err
			}
			for _, row := range rep.Rows {
				if err := rw.row(row); err != nil {
					return err
				}
			}
			total = rep.Total
			pr = contract.PageRequest{Cursor: rep.Cursor, Offset: rep.Offset + len(rep.Rows), IncludeRefreshTokens: f.tokens}
			if len(rep.Rows) == 0 || pr.Offset >= rep.Total {
				return rw.end()
			}
		}
	}
	if f.out == "" {
		return write(a.c.stdout)
	}
	if err := createPrivate(f.out, f.force, write); err != nil {
		return fmt.Errorf("authorizers export: %v", err)
	}
	what := "appids only (no refresh tokens)"
	if f.tokens {
		what = "with refresh tokens: keep the file secret"
	}
	fmt.Fprintf(a.c.stderr, "exported %d authorizers of %s to %s (mode 0600, %s)\n", total, a.comp, f.out, what)
	return nil
}

// reconcile runs a reconciliation now and prints its report.
func (a *adminClient) reconcile(ctx context.Context) error {
	if err := a.connect(ctx); err != nil {
		return err
	}
	defer a.s.close()
	var rep struct {
		Component    string    `json:"component"`
		At           time.Time `json:"at"`
		Listed       int       `json:"listed"`
		Recovered    []string  `json:"recovered"`
		Unauthorized []string  `json:"unauthorized"`
		NotListed    []string  `json:"not_listed"`
	}
	if err := a.request(ctx, contract.AuthorizersReconcile, struct{}{}, &rep, slowFloor); err != nil {
		return err
	}
	if a.c.g.json {
		b, _ := json.Marshal(rep)
		_, err := fmt.Fprintf(a.c.stdout, "%s\n", b)
		return err
	}
	w := a.c.stdout
	fmt.Fprintf(w, "component %s reconciled at %s: WeChat lists %d authorizers\n", rep.Component, fmtTime(rep.At), rep.Listed)
	for _, l := range []struct {
		what string
		ids  []string
	}{
		{"recovered (refresh token stored from WeChat's list)", rep.Recovered},
		{"unauthorized here but listed by WeChat (left alone)", rep.Unauthorized},
		{"not listed by WeChat (flagged, nothing deleted)", rep.NotListed},
	} {
		fmt.Fprintf(w, "%s: %d\n", l.what, len(l.ids))
		for _, id := range l.ids {
			fmt.Fprintf(w, "  %s\n", id)
		}
	}
	if len(rep.Recovered)+len(rep.Unauthorized)+len(rep.NotListed) == 0 {
		fmt.Fprintln(w, "nothing changed")
	}
	return nil
}
