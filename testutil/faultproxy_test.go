package testutil_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/testutil"
)

// TestProxyFaults checks each fault of the proxy against a real server: a
// request through a blackholed link times out and succeeds after Restore
// on the same connection; a cut link disconnects the client, which gets
// back in after Restore; a delay slows a round trip by at least itself.
func TestProxyFaults(t *testing.T) {
	s := testutil.RunServer(t)
	p := testutil.NewProxy(t, s.Addr().String())
	disc := make(chan struct{}, 4)
	nc, err := nats.Connect(p.URL(), nats.ReconnectWait(20*time.Millisecond), nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(*nats.Conn, error) { disc <- struct{}{} }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.Subscribe("echo", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	// The responder is on the same connection, so each request crosses the
	// proxy twice each way.
	if _, err := nc.Request("echo", []byte("x"), time.Second); err != nil {
		t.Fatalf("through a healthy proxy: %v", err)
	}

	p.Blackhole()
	if _, err := nc.Request("echo", []byte("x"), 200*time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("through a blackhole: err = %v, want a timeout", err)
	}
	p.Restore()
	if _, err := nc.Request("echo", []byte("x"), 2*time.Second); err != nil {
		t.Fatalf("after restoring a blackhole: %v", err)
	}

	p.Cut()
	select {
	case <-disc:
	case <-time.After(5 * time.Second):
		t.Fatal("a cut link did not disconnect the client")
	}
	if _, err := nc.Request("echo", []byte("x"), 200*time.Millisecond); err == nil {
		t.Fatal("a request went through a cut link")
	}
	p.Restore()
	testutil.WaitFor(t, 5*time.Second, nc.IsConnected, "client did not reconnect after Restore")

	p.Delay(100 * time.Millisecond)
	start := time.Now()
	if _, err := nc.Request("echo", []byte("x"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Fatalf("round trip with a 100ms delay took %v", d)
	}
	p.Delay(0)
}
