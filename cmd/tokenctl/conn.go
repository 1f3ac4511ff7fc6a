package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
)

// session is a connection of one command, with what the server reported
// asynchronously (permission violations show up only there: the request
// that was denied just times out).
type session struct {
	conn *natsconf.Conn
	nc   *nats.Conn
	js   jetstream.JetStream

	mu       sync.Mutex
	asyncErr error
}

// lastAsyncErr returns the last asynchronous error the server reported.
func (s *session) lastAsyncErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.asyncErr
}

// close closes the connection at once: a CLI has nothing to drain.
func (s *session) close() {
	s.nc.Close()
	s.conn.Close()
}

// connect connects with the global flags, waiting at most --timeout for a
// server. extra options are applied after tokenctl's own. onAsync, if not
// nil, also receives every asynchronous error (from a NATS goroutine: it
// must not block).
func (c *cli) connect(ctx context.Context, onAsync func(error), extra ...nats.Option) (*session, error) {
	s := &session{}
	opts := []nats.Option{
		// Replace nats.go's default handler, which writes to os.Stderr.
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			s.mu.Lock()
			s.asyncErr = err
			s.mu.Unlock()
			if onAsync != nil {
				onAsync(err)
			}
		}),
	}
	cctx, cancel := context.WithTimeout(ctx, c.g.timeout)
	defer cancel()
	o := c.options()
	conn, err := natsconf.Connect(cctx, o, append(opts, extra...)...)
	if err != nil {
		return nil, c.connectError(o.URL, err)
	}
	s.conn, s.nc, s.js = conn, conn.NC, conn.JS
	return s, nil
}

// connectError turns natsconf.Connect's error into "cannot connect to NATS
// at URL: why", with passwords and tokens removed from the URL and the
// config keys of natsconf's hints written as tokenctl's flags.
func (c *cli) connectError(servers string, err error) error {
	where := natsconf.RedactURLs(servers)
	var why string
	switch {
	case errors.Is(err, natsconf.ErrInvalidOptions):
		return usagef("%s", flagNames.Replace(err.Error()))
	case errors.Is(err, context.DeadlineExceeded):
		why = fmt.Sprintf("no server answered within %s", c.g.timeout)
		if errors.Is(err, nats.ErrNoServers) {
			why += " (connection refused or unreachable; check --nats)"
		}
	case errors.Is(err, context.Canceled):
		why = "interrupted"
	default:
		// natsconf's message is already redacted; drop its own prefix.
		msg := err.Error()
		for _, prefix := range []string{
			natsconf.ErrConnect.Error() + " at " + where + ": ",
			natsconf.ErrConnect.Error() + ": ",
		} {
			if strings.HasPrefix(msg, prefix) {
				msg = strings.TrimPrefix(msg, prefix)
				break
			}
		}
		why = flagNames.Replace(msg)
	}
	return fmt.Errorf("cannot connect to NATS at %s: %s", where, why)
}

// withTimeout bounds one request by --timeout.
func (c *cli) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.g.timeout)
}

// requestError explains a failed JetStream or core request; a timeout
// that follows a permissions violation names the violation.
func (c *cli) requestError(s *session, what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoHeartbeat) {
		msg := fmt.Sprintf("%s: no answer within %s", what, c.g.timeout)
		if ae := s.lastAsyncErr(); ae != nil {
			msg += fmt.Sprintf(" (the server reported: %v)", ae)
		}
		return errors.New(msg)
	}
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return fmt.Errorf("%s: JetStream is not enabled for this server or account (%v)", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// openBucket opens the token bucket, or explains why it cannot.
func (c *cli) openBucket(ctx context.Context, s *session) (jetstream.KeyValue, error) {
	rctx, cancel := c.withTimeout(ctx)
	defer cancel()
	kv, err := s.js.KeyValue(rctx, c.g.bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("bucket %s not found: is a refresher running against this NATS?", c.g.bucket)
	}
	if err != nil {
		return nil, c.requestError(s, "open bucket "+c.g.bucket, err)
	}
	return kv, nil
}

// readLeader returns the current lease, or nil and why there is none.
func (c *cli) readLeader(ctx context.Context, s *session) (*contract.LeaseRecord, string, error) {
	rctx, cancel := c.withTimeout(ctx)
	defer cancel()
	name := contract.LeaseBucket(c.g.bucket)
	kv, err := s.js.KeyValue(rctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, "no lease bucket " + name, nil
	}
	if err != nil {
		return nil, "", c.requestError(s, "open bucket "+name, err)
	}
	e, err := kv.Get(rctx, contract.LeaseKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, "no replica holds the lease", nil
	}
	if err != nil {
		return nil, "", c.requestError(s, "read the lease", err)
	}
	var l contract.LeaseRecord
	if err := json.Unmarshal(e.Value(), &l); err != nil {
		return nil, "", fmt.Errorf("lease in %s is not valid JSON: %v", name, err)
	}
	return &l, "", nil
}
