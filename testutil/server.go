// Package testutil holds helpers for tests across tokenkeeper: embedded
// JetStream servers (single and clustered), connections to them, and
// polling with a deadline (the project rule: no sleeps as
// synchronisation).
package testutil

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StartTimeout bounds how long a test server may take to accept
// connections.
const StartTimeout = 10 * time.Second

// started remembers the options each server was started with (ports
// resolved), so that RestartServer can start it again.
var started sync.Map // *server.Server -> *server.Options

// RunServer starts an embedded JetStream nats-server on 127.0.0.1, a random
// port, a t.TempDir() store, no signal handlers and no logging. Each opts
// function may change the options before the start (auth, TLS, JetStream
// off …). The server is shut down in t.Cleanup.
func RunServer(t testing.TB, opts ...func(*server.Options)) *server.Server {
	t.Helper()
	o := &server.Options{
		Host:      "127.0.0.1",
		Port:      server.RANDOM_PORT,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoSigs:    true,
		NoLog:     true,
	}
	for _, f := range opts {
		f(o)
	}
	return startServer(t, o)
}

// startServer starts a server with o, waits until it is ready and
// registers its shutdown with t.Cleanup.
func startServer(t testing.TB, o *server.Options) *server.Server {
	t.Helper()
	keep := o.Clone()
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatalf("testutil: new nats-server: %v", err)
	}
	go s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	if !s.ReadyForConnections(StartTimeout) {
		t.Fatalf("testutil: nats-server %s not ready for connections after %s", s.Name(), StartTimeout)
	}
	// Keep the actual ports, so a restart listens where clients expect.
	if addr, ok := s.Addr().(*net.TCPAddr); ok && keep.Port <= 0 {
		keep.Port = addr.Port
	}
	if keep.Cluster.Port < 0 {
		if addr := s.ClusterAddr(); addr != nil {
			keep.Cluster.Port = addr.Port
		}
	}
	started.Store(s, keep)
	t.Cleanup(func() { started.Delete(s) })
	return s
}

// RestartServer shuts s down (if it is running) and starts a new server
// with the same options: same port, same store directory, so JetStream
// data survive. Clients made with Connect reconnect by themselves. The new
// server is shut down in t.Cleanup.
func RestartServer(t testing.TB, s *server.Server) *server.Server {
	t.Helper()
	v, ok := started.Load(s)
	if !ok {
		t.Fatalf("testutil: RestartServer: server %s was not started by testutil", s.Name())
	}
	s.Shutdown()
	s.WaitForShutdown()
	started.Delete(s)
	return startServer(t, v.(*server.Options).Clone())
}

// ReconnectWait is the reconnect pause of connections made by Connect:
// short, so tests around restarts stay fast.
const ReconnectWait = 20 * time.Millisecond

// Connect connects to url and returns the connection and its JetStream
// API. The connection reconnects forever (every ReconnectWait) and is
// closed in t.Cleanup; opts are applied last.
func Connect(t testing.TB, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	all := append([]nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(ReconnectWait),
		nats.ReconnectJitter(0, 0),
		nats.Name(t.Name()),
	}, opts...)
	nc, err := nats.Connect(url, all...)
	if err != nil {
		t.Fatalf("testutil: connect to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("testutil: jetstream: %v", err)
	}
	return nc, js
}

// PollInterval is how often WaitFor evaluates its condition.
const PollInterval = 5 * time.Millisecond

// WaitFor evaluates cond every PollInterval until it returns true, and
// fails the test with msg (formatted with args) if it has not after d.
func WaitFor(t testing.TB, d time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	if !Eventually(d, cond) {
		t.Fatalf("testutil: after %s: %s", d, fmt.Sprintf(msg, args...))
	}
}

// Eventually evaluates cond every PollInterval until it returns true (and
// returns true) or d has passed (and returns false). Use it where a
// failure must not end the test, e.g. inside another goroutine.
func Eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(PollInterval)
	}
}
