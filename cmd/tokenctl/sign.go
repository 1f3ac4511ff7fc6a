package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// signCommand is tokenctl sign.
var signCommand = &command{
	name:    "sign",
	args:    "APP URL [--ticket agent_config]",
	summary: "ask the refresher for the JS-SDK config (wx.config) signature of page URL",
	help: `
Sends a token.sign.APP request {"url": URL} to the refresher (the micro
service "tokenkeeper-sign", served by every replica) and prints the reply
JSON on one line: {"appId","timestamp","nonceStr","signature"}, what the
page passes to wx.config. The signature is over APP's current jsapi
ticket; the URL's #fragment is not signed. With --ticket agent_config the
WeCom agent_config ticket signs (wx.agentConfig) and the reply carries
"agentId" too.

URL must be the absolute http(s) URL of the page, at most 4096 bytes.

Fails (exit 1) on an error reply, printing its code and message:
  400 bad request, 404 unknown app or ticket not configured, 429 upstream
  calls paused, 503 no valid ticket stored yet
and when no refresher serves the subject. With --json an error reply's
JSON body is printed on stdout as well.

Examples:
  tokenctl sign mp-main 'https://shop.example/item?id=7'
  tokenctl sign wecom-app https://intranet.example/ --ticket agent_config`,
	nargs: 2,
	flags: func(fs *flag.FlagSet) any {
		f := &signFlags{}
		fs.StringVar(&f.ticket, "ticket", "", "the `TICKET` that signs: jsapi (default) or agent_config")
		return f
	},
	run: runSign,
}

// signFlags are the flags of sign.
type signFlags struct {
	ticket string
}

// runSign is tokenctl sign APP URL.
func runSign(ctx context.Context, c *cli, args []string, flags any) error {
	app, url := args[0], args[1]
	f := flags.(*signFlags)
	if err := contract.CheckSignURL(url); err != nil {
		return usagef("sign: %v", err)
	}
	switch f.ticket {
	case "", contract.TicketJSAPI, contract.TicketAgentConfig:
	default:
		return usagef("sign: --ticket %q: want %s or %s", f.ticket, contract.TicketJSAPI, contract.TicketAgentConfig)
	}
	body, err := json.Marshal(contract.SignRequest{URL: url, Ticket: f.ticket})
	if err != nil {
		return err
	}
	s, err := c.connect(ctx, nil)
	if err != nil {
		return err
	}
	defer s.close()

	subject := contract.SignSubject(app)
	rctx, cancel := c.withTimeout(ctx)
	defer cancel()
	msg, err := s.nc.RequestWithContext(rctx, subject, body)
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("no refresher is serving %s (is a refresher running and connected to this NATS?)", subject)
	}
	if err != nil {
		return c.requestError(s, "request "+subject, err)
	}
	if code := msg.Header.Get(contract.ErrorCodeHeader); code != "" {
		return c.replyFailed("signing for "+app, code, msg)
	}
	var rep contract.SignReply
	if err := json.Unmarshal(msg.Data, &rep); err != nil || rep.Signature == "" {
		return fmt.Errorf("the reply on %s is not a signature: %q", subject, msg.Data)
	}
	out, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.stdout, "%s\n", out)
	return err
}
