package subscriber

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/backoff"
)

// SignOption changes a token.sign request (Client.Sign, Source.Sign).
type SignOption func(*contract.SignRequest)

// SignWithTicket makes the request sign with ticket typ instead of
// contract.TicketJSAPI: contract.TicketAgentConfig for WeCom's
// wx.agentConfig (the reply then carries AgentID).
func SignWithTicket(typ string) SignOption {
	return func(r *contract.SignRequest) { r.Ticket = typ }
}

// Sign asks the refresher for a JS-SDK config signature of the page url
// for app (token.sign.<app>): what the page passes to wx.config (or
// wx.agentConfig with SignWithTicket(contract.TicketAgentConfig)). For an
// authorizer of an Open Platform component, app is
// <component>.<authorizer_appid> (token.sign.<component>.<authorizer_appid>):
// the reply's AppID is then the authorizer's appid. Any
// refresher replica answers, from the ticket it holds; the process
// needs no read of the tokens bucket, only publish on token.sign.>.
// The fragment of url (from '#') is not signed, as WeChat wants.
//
// "No responders", a timed-out attempt (WithRequestTimeout) and a 503
// reply (no valid ticket stored yet, overloaded) are retried with backoff
// until ctx ends. Errors: ErrInvalidArgument for an invalid app name
// (neither an app nor <component>.<authorizer_appid>: a ticket key such
// as <app>.jsapi, three segments) or URL (contract.CheckSignURL; nothing
// is sent); *RequestError for the refresher's other error replies (400
// bad request, 404 unknown app or authorizer, ticket not configured, a
// component signed for as itself; 429 upstream calls paused); when ctx ends, an
// error wrapping ctx.Err() and, if no refresher answered,
// ErrNoResponders; ErrBadReply for a reply without a signature; ErrClosed
// once the Client is closed. Safe for concurrent use.
func (c *Client) Sign(ctx context.Context, app, url string, opts ...SignOption) (contract.SignReply, error) {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return contract.SignReply{}, ErrClosed
	}
	return sign(ctx, c.nc, c.cfg, app, url, opts)
}

// Sign is Client.Sign for the Source's key. It needs a Source of an app
// or of an authorizer (<component>.<authorizer_appid>): ErrInvalidArgument
// for a Source of a ticket key.
func (s *Source) Sign(ctx context.Context, url string, opts ...SignOption) (contract.SignReply, error) {
	if s.state.Load().err == ErrClosed {
		return contract.SignReply{}, ErrClosed
	}
	return sign(ctx, s.nc, s.cfg, s.app, url, opts)
}

// sign sends token.sign.<app> requests until one is answered for good.
func sign(ctx context.Context, nc *nats.Conn, cfg config, app, url string, opts []SignOption) (contract.SignReply, error) {
	if err := checkSignKey(app); err != nil {
		return contract.SignReply{}, err
	}
	req := contract.SignRequest{URL: url}
	for _, o := range opts {
		if o != nil {
			o(&req)
		}
	}
	if err := contract.CheckSignURL(url); err != nil {
		return contract.SignReply{}, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return contract.SignReply{}, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	subject := contract.SignSubject(app)
	bo := backoff.New(cfg.backoffMin, cfg.backoffMax)
	for {
		rep, err := signOnce(ctx, nc, cfg.requestTimeout, subject, body)
		if err == nil || !retryable(err) {
			return rep, err
		}
		if ctx.Err() != nil {
			return contract.SignReply{}, err // wraps ctx.Err()
		}
		wait := bo.Next()
		var re *RequestError
		if errors.As(err, &re) && time.Until(re.RetryAt) > wait {
			wait = time.Until(re.RetryAt)
		}
		if !backoff.Sleep(ctx, wait) {
			if errors.Is(err, ErrNoResponders) {
				return contract.SignReply{}, fmt.Errorf("%w (%s): %w", ErrNoResponders, subject, ctx.Err())
			}
			return contract.SignReply{}, fmt.Errorf("subscriber: %s: %w (last attempt: %w)", subject, ctx.Err(), err)
		}
	}
}

// signOnce makes one token.sign request, bounded by timeout and ctx.
func signOnce(ctx context.Context, nc *nats.Conn, timeout time.Duration, subject string, body []byte) (contract.SignReply, error) {
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	m, err := nc.RequestWithContext(actx, subject, body)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return contract.SignReply{}, fmt.Errorf("%w (%w)", ErrNoResponders, err)
		}
		return contract.SignReply{}, fmt.Errorf("subscriber: %s: %w", subject, err)
	}
	if re := errorOf(m, "token.sign"); re != nil {
		return contract.SignReply{}, re
	}
	var rep contract.SignReply
	if err := json.Unmarshal(m.Data, &rep); err != nil {
		return contract.SignReply{}, fmt.Errorf("%w: %s: %v", ErrBadReply, subject, err)
	}
	if rep.Signature == "" || rep.NonceStr == "" || rep.Timestamp == 0 || rep.AppID == "" {
		return contract.SignReply{}, fmt.Errorf("%w: %s: no signature, nonceStr, timestamp or appId", ErrBadReply, subject)
	}
	return rep, nil
}

// checkSignKey says what is wrong with key as the key of a token.sign
// request: it must be an app name or <component>.<authorizer_appid>. A
// second segment that is a ticket type makes a ticket key (<app>.jsapi),
// which signs nothing: the ticket is chosen with SignWithTicket.
func checkSignKey(key string) error {
	app, rest, err := contract.ParseKey(key)
	switch {
	case err != nil:
		return fmt.Errorf("%w: %q is not an app name or <component>.<authorizer_appid>", ErrInvalidArgument, key)
	case strings.Contains(rest, "."):
		return fmt.Errorf("%w: %q has three segments: sign with an app name or <component>.<authorizer_appid>", ErrInvalidArgument, key)
	case contract.ValidTicketType(rest):
		return fmt.Errorf("%w: %q is a ticket key: sign with %q (SignWithTicket chooses the ticket)", ErrInvalidArgument, key, app)
	}
	return nil
}
