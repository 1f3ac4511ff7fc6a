package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// signCommand is tokenctl sign.
var signCommand = &command{
	name:    "sign",
	args:    "APP|COMPONENT.AUTHORIZER URL [--ticket agent_config]",
	summary: "ask the refresher for the JS-SDK config (wx.config) signature of page URL",
	help: `
Sends a token.sign.APP request {"url": URL} to the refresher (the micro
service "tokenkeeper-sign", served by every replica) and prints the reply
JSON on one line: {"appId","timestamp","nonceStr","signature"}, what the
page passes to wx.config. The signature is over APP's current jsapi
ticket; the URL's #fragment is not signed. With --ticket agent_config the
WeCom agent_config ticket signs (wx.agentConfig) and the reply carries
"agentId" too.

For an authorizer of an Open Platform component (a wechat-component with
authorizer_tickets: [jsapi]) give COMPONENT.AUTHORIZER_APPID: the request
goes to token.sign.COMPONENT.AUTHORIZER_APPID, the authorizer's jsapi
ticket signs and "appId" is the authorizer's appid. A ticket key
(APP.jsapi) or a key of three segments is a usage error.

URL must be the absolute http(s) URL of the page, at most 4096 bytes.

Fails (exit 1) on an error reply, printing its code and message:
  400 bad request, 404 unknown app, component or authorizer, ticket not
  configured, a component signing as itself, 429 upstream calls paused,
  503 no valid ticket stored yet
and when no refresher serves the subject. With --json an error reply's
JSON body is printed on stdout as well.

Examples:
  tokenctl sign mp-main 'https://shop.example/item?id=7'
  tokenctl sign wecom-app https://intranet.example/ --ticket agent_config
  tokenctl sign comp.wx1234567890abcdef 'https://shop.example/pay'`,
	nargs:  2,
	anyKey: true,
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
	if first, rest, _ := contract.ParseKey(app); strings.Contains(rest, ".") {
		return usagef("sign: %q has three segments: sign with an app name or COMPONENT.AUTHORIZER", app)
	} else if contract.ValidTicketType(rest) {
		return usagef("sign: %q is a ticket key, not an app name or COMPONENT.AUTHORIZER: sign with %s (--ticket chooses the ticket)", app, first)
	}
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
