package refresher

import (
	"time"

	"github.com/nats-io/nats.go"
)

// SignDirect runs the token.sign handler on a request made of subject
// and body, as the micro service would after receiving it (without the
// transport, so that any bytes can be tried), and returns the first
// reply, or nil if none came within timeout.
func (r *Refresher) SignDirect(subject string, body []byte, timeout time.Duration) *nats.Msg {
	q := &directRequest{subject: subject, data: body, replies: make(chan *nats.Msg, 4)}
	r.sign(q, func(m *nats.Msg) error { return q.send(m, nil) })
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case m := <-q.replies:
		return m
	case <-t.C:
		return nil
	}
}
