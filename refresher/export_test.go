package refresher

// Test-only access to unexported knobs of the request path, for the
// external tests in package refresher_test.

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// WithMaxPendingRequests sets the bound on token.refresh requests in
// progress (DefaultMaxPendingRequests otherwise).
var WithMaxPendingRequests = withMaxPendingRequests

// WithRequestHook runs h at each stage of the request path (StageReceive,
// StageSlow, StageParked) with the request's subject; a panic in h is a
// panic in the handler.
var WithRequestHook = withRequestHook

// Stages of the request path, for WithRequestHook.
const (
	StageReceive = stageReceive
	StageSlow    = stageSlow
	StageParked  = stageParked
)

// Sanitize is sanitize.
var Sanitize = sanitize

// MaxLoggedSubject is how many bytes of a subject a log line keeps.
const MaxLoggedSubject = maxLoggedSubject

// HandleDirect runs the token.refresh handler on a request made of
// subject, hdr and body, as the micro service would after receiving it
// (without the transport, so that any bytes can be tried), and returns
// the first reply: data and, for an error reply, the micro error
// headers. It returns nil if no reply came within timeout.
func (r *Refresher) HandleDirect(subject string, hdr nats.Header, body []byte, timeout time.Duration) *nats.Msg {
	q := &directRequest{subject: subject, hdr: hdr, data: body, replies: make(chan *nats.Msg, 4)}
	r.handle(q, func(m *nats.Msg) error { return q.send(m, nil) })
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case m := <-q.replies:
		return m
	case <-t.C:
		return nil
	}
}

// directRequest is a micro.Request that hands its replies to a channel.
type directRequest struct {
	subject string
	hdr     nats.Header
	data    []byte
	replies chan *nats.Msg
}

func (q *directRequest) send(m *nats.Msg, opts []micro.RespondOpt) error {
	for _, o := range opts {
		o(m)
	}
	select {
	case q.replies <- m:
	default: // more replies than anyone reads: a bug the caller sees as a missing reply
	}
	return nil
}

func (q *directRequest) Respond(b []byte, opts ...micro.RespondOpt) error {
	return q.send(&nats.Msg{Subject: q.Reply(), Data: b}, opts)
}

func (q *directRequest) RespondJSON(v any, opts ...micro.RespondOpt) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return q.Respond(b, opts...)
}

func (q *directRequest) Error(code, description string, data []byte, opts ...micro.RespondOpt) error {
	return q.send(&nats.Msg{Subject: q.Reply(), Data: data, Header: nats.Header{
		micro.ErrorHeader: {description}, micro.ErrorCodeHeader: {code},
	}}, opts)
}

func (q *directRequest) Data() []byte           { return q.data }
func (q *directRequest) Headers() micro.Headers { return micro.Headers(q.hdr) }
func (q *directRequest) Subject() string        { return q.subject }
func (q *directRequest) Reply() string          { return "_INBOX.direct" }

// RefreshTicketNow fetches a new ticket for key (<app>.<ticket>) at once,
// as a due refresh would, whatever its schedule says, and returns the
// refresh's error.
func (r *Refresher) RefreshTicketNow(ctx context.Context, key string) error {
	t := r.ticketByKey(key)
	if t == nil {
		return ErrUnknownApp
	}
	_, rev := t.current()
	_, _, err := r.refreshTicket(ctx, t, "manual", &rev)
	return err
}
