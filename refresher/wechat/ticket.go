package wechat

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// ticketPath is WeChat's ticket endpoint, below the base URL.
const ticketPath = "/cgi-bin/ticket/getticket"

// Ticket is a JS-SDK or card ticket fetched by [Client.FetchTicket]. Its
// formatting shows only the length of Value, as [Token]'s does.
type Ticket struct {
	// Type is the ticket type asked for (contract.TicketJSAPI or
	// contract.TicketWXCard).
	Type string
	// Value is the ticket exactly as the upstream sent it.
	Value string
	// ExpiresIn is the lifetime the upstream announced. Always positive.
	ExpiresIn time.Duration
}

// String returns the ticket with Value replaced by its length.
func (t Ticket) String() string {
	return "{" + t.Type + " <" + strconv.Itoa(len(t.Value)) + " chars> " + t.ExpiresIn.String() + "}"
}

// GoString returns what String does.
func (t Ticket) GoString() string { return "wechat.Ticket" + t.String() }

// Format implements [fmt.Formatter] so that no verb prints Value.
func (t Ticket) Format(f fmt.State, verb rune) {
	if verb == 'q' {
		_, _ = io.WriteString(f, strconv.Quote(t.String()))
		return
	}
	_, _ = io.WriteString(f, t.String())
}

// FetchTicket fetches a new ticket of type typ (contract.TicketJSAPI or
// contract.TicketWXCard) with accessToken: GET
// {base}/cgi-bin/ticket/getticket?access_token=…&type=…. A non-empty base
// overrides the client's base URL; gate is as for FetchGated (nil: none).
// Each successful call makes upstream issue a new ticket.
//
// Retries, timeouts and ctx are handled as by Fetch. An answer rejecting
// the access token (40001, 40014, 42001) is an [*Error] matching
// [ErrTokenRejected]: fetch a new token, then the ticket. The access token
// is a credential: no error contains it.
func (c *Client) FetchTicket(ctx context.Context, base, accessToken, typ string, gate Gate) (Ticket, error) {
	return c.FetchTicketOf(ctx, KindClassic, base, accessToken, typ, gate)
}

// WeCom's ticket endpoints, below the base URL.
const (
	wecomJSAPIPath = "/cgi-bin/get_jsapi_ticket" // the corp's jsapi ticket
	wecomAgentPath = "/cgi-bin/ticket/get"       // ?type=agent_config: the app's
)

// FetchTicketOf is FetchTicket for the tickets of kind: for the WeChat
// kinds as FetchTicket; for [KindWeCom] the corp's jsapi ticket (GET
// {base}/cgi-bin/get_jsapi_ticket?access_token=…) or the app's
// agent_config ticket (GET {base}/cgi-bin/ticket/get?access_token=…
// &type=agent_config). WeCom hands back the same ticket until it expires.
func (c *Client) FetchTicketOf(ctx context.Context, kind, base, accessToken, typ string, gate Gate) (Ticket, error) {
	sc := newScrubber(accessToken)
	what := typ + " ticket"
	path, query := ticketPath, "&type="+url.QueryEscape(typ)
	switch {
	case (kind == KindClassic || kind == KindStable) && (typ == contract.TicketJSAPI || typ == contract.TicketWXCard):
	case kind == KindWeCom && typ == contract.TicketJSAPI:
		path, query = wecomJSAPIPath, ""
	case kind == KindWeCom && typ == contract.TicketAgentConfig:
		path = wecomAgentPath
	default:
		return Ticket{}, newFetchError(sc, fmt.Sprintf("fetch ticket: kind %q keeps no ticket of type %q", kind, typ), ErrInvalidArgument)
	}
	if accessToken == "" {
		return Ticket{}, newFetchError(sc, "fetch "+what+": empty access token", ErrInvalidArgument)
	}
	if base == "" {
		base = c.baseFor(kind)
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return Ticket{}, newFetchError(sc, "fetch "+what+": base URL is not an absolute http(s) URL without query or fragment", ErrInvalidArgument)
	}
	u.Path = strings.TrimRight(u.Path, "/") + path
	u.RawPath = ""
	q := func(tok string) string { return "access_token=" + url.QueryEscape(tok) + query }
	u.RawQuery = q(redacted)
	red := sc.scrub(u.Redacted())
	u.RawQuery = q(accessToken)
	req := request{method: http.MethodGet, url: u.String(), redactedURL: red}

	var t Ticket
	err = c.run(ctx, what, typ, u.Path, sc, gate, func(actx context.Context) error {
		data, ct, err := c.roundTrip(actx, req, sc)
		if err == nil {
			t, err = parseTicket(data, ct, typ, sc)
		}
		return err
	})
	return t, err
}

// ticketBody is the answer of the ticket endpoint.
type ticketBody struct {
	errcodeBody
	Ticket    string      `json:"ticket"`
	ExpiresIn json.Number `json:"expires_in"`
}

// parseTicket turns a 200 response body into a Ticket, an *Error or an
// error wrapping ErrBadResponse.
func parseTicket(body []byte, contentType, typ string, sc scrubber) (Ticket, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return Ticket{}, fmt.Errorf("%w: empty body", ErrBadResponse)
	}
	var b ticketBody
	if err := json.Unmarshal(body, &b); err != nil {
		return Ticket{}, fmt.Errorf("%w: body is not a JSON ticket answer (%s, %d bytes)",
			ErrBadResponse, describeType(contentType, sc), len(body))
	}
	if b.Errcode != nil {
		code, err := strconv.Atoi(b.Errcode.String())
		if err != nil {
			return Ticket{}, fmt.Errorf("%w: errcode is not an integer", ErrBadResponse)
		}
		if code != 0 {
			return Ticket{}, &Error{Code: code, Msg: sc.cleanMsg(b.Errmsg)}
		}
	}
	if b.Ticket == "" {
		return Ticket{}, fmt.Errorf("%w: neither ticket nor errcode in the answer", ErrBadResponse)
	}
	secs, err := b.ExpiresIn.Float64()
	if b.ExpiresIn == "" || err != nil || !(secs > 0) || secs > math.MaxInt64/float64(time.Second) {
		return Ticket{}, fmt.Errorf("%w: expires_in missing, not a number or not positive", ErrBadResponse)
	}
	return Ticket{Type: typ, Value: b.Ticket, ExpiresIn: time.Duration(secs * float64(time.Second))}, nil
}
