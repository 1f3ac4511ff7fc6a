package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"

	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// refreshCommand is tokenctl refresh.
var refreshCommand = &command{
	name:    "refresh",
	args:    "KEY [--stale REV]",
	summary: "ask the refresher for a valid token (or ticket), or for a new one with --stale REV",
	help: `
Sends a token.refresh.KEY request to the refresher (the micro service
"tokenkeeper", served by the leading replica) and prints the record of the
reply, as get does. KEY is an app or APP.TICKET such as mp.jsapi (a
ticket; the same rules apply, with the ticket's revision), or an Open
Platform authorizer's COMPONENT.AUTHORIZER (its token) or
COMPONENT.AUTHORIZER.TICKET (its ticket).

Without --stale the body is empty: "give me a valid token". The refresher
answers with the stored record if it has not expired, without calling the
upstream.

With --stale REV the body is {"stale_revision": REV}: "the token at
revision REV was rejected". If the stored revision is newer than REV the
refresher answers with it; otherwise it fetches a new token (one fetch for
all concurrent requests of APP) and answers with the new record, stored
with source "manual" (tokenctl sends the header Tokenkeeper-Source:
manual). Forced fetches of one app are limited to one per
passive_min_interval (default 30s): inside it the current record is the
answer. Once 90% of the app's daily upstream quota is used, forced
fetches are refused (429) to keep the rest for scheduled refreshes. To force a new token,
pass the current revision: tokenctl refresh APP --stale $(tokenctl get APP
--json | jq .revision).

The reply waits for an upstream fetch: raise --timeout if the upstream is
slow (the refresher gives up after 30s).

Fails (exit 1) on an error reply, printing its code and message:
  400 bad request, 404 unknown app, 429 quota exhausted or rate limited,
  502 the upstream fetch failed, 503 no leader / shutting down / no token yet
and when no refresher serves the subject ("no refresher is serving
token.refresh.APP"). With --json an error reply's JSON body
({"error":{"code","message"}}) is printed on stdout as well.`,
	nargs:  1,
	anyKey: true,
	flags: func(fs *flag.FlagSet) any {
		f := &refreshFlags{}
		fs.Var(&f.stale, "stale", "the `REV`ision of the token that was rejected: get a newer one")
		return f
	},
	run: runRefresh,
}

// refreshFlags are the flags of refresh.
type refreshFlags struct {
	stale optUint
}

// optUint is a uint64 flag that knows whether it was set.
type optUint struct {
	v   uint64
	set bool
}

func (o *optUint) String() string {
	if o == nil || !o.set {
		return ""
	}
	return strconv.FormatUint(o.v, 10)
}

func (o *optUint) Set(s string) error {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return errors.New("want a non-negative integer (a KV revision)")
	}
	o.v, o.set = v, true
	return nil
}

// runRefresh is tokenctl refresh APP [--stale REV].
func runRefresh(ctx context.Context, c *cli, args []string, flags any) error {
	app := args[0]
	f := flags.(*refreshFlags)
	var body []byte
	if f.stale.set {
		b, err := json.Marshal(contract.RefreshRequest{StaleRevision: &f.stale.v})
		if err != nil {
			return err
		}
		body = b
	}
	s, err := c.connect(ctx, nil)
	if err != nil {
		return err
	}
	defer s.close()

	subject := contract.RefreshSubject(app)
	rctx, cancel := c.withTimeout(ctx)
	defer cancel()
	req := nats.NewMsg(subject)
	req.Data = body
	// An operator's refresh: a new token is recorded as source "manual".
	req.Header.Set(contract.SourceHeader, contract.SourceManual)
	req.Header.Set(contract.RequesterHeader, requester())
	msg, err := s.nc.RequestMsgWithContext(rctx, req)
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("no refresher is serving %s (is a refresher running and connected to this NATS? a leader handover takes up to its lease_ttl)", subject)
	}
	if err != nil {
		return c.requestError(s, "request "+subject, err)
	}
	if code := msg.Header.Get(contract.ErrorCodeHeader); code != "" {
		return c.replyFailed("refresh of "+app, code, msg)
	}
	// A token's reply (contract.RefreshReply) or a ticket's: the record
	// plus "revision".
	var rep struct {
		storedRecord
		Revision uint64 `json:"revision"`
	}
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		return fmt.Errorf("the reply on %s is not a record: %v", subject, err)
	}
	return printRecord(c.stdout, msg.Data, rep.storedRecord, rep.Revision, c.g.json)
}

// replyFailed reports a micro error reply to what: the JSON body's code
// and message, or the headers' when the body does not parse.
func (c *cli) replyFailed(what, code string, msg *nats.Msg) error {
	detail := contract.ErrorDetail{Message: msg.Header.Get(contract.ErrorHeader)}
	detail.Code, _ = strconv.Atoi(code)
	var er contract.ErrorReply
	if json.Unmarshal(msg.Data, &er) == nil && er.Error.Code != 0 {
		detail = er.Error
	}
	if c.g.json {
		b, _ := json.Marshal(contract.ErrorReply{Error: detail})
		fmt.Fprintf(c.stdout, "%s\n", b)
	}
	return fmt.Errorf("%s failed: %d %s", what, detail.Code, detail.Message)
}

// requester names this tokenctl run for the refresher's audit trail:
// tokenctl, the OS user and the host.
func requester() string {
	who := "tokenctl"
	if u := os.Getenv("USER"); u != "" {
		who += " " + u
	}
	if h, err := os.Hostname(); err == nil {
		who += "@" + h
	}
	return who
}
