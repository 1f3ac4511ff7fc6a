// The world of a scenario: an embedded nats-server and the WeChat
// emulator on loopback, client connections, and waiting on the tokens bucket.

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// world is one scenario's tokenkeeper world on loopback.
type world struct {
	dir    string
	ns     *server.Server
	url    string
	sim    *wechatsim.Sim
	simURL string
	accept *atomic.Int64 // TCP connections the emulator accepted
	// lastCall is the last token call the emulator answered.
	lastCall atomic.Pointer[simCall]
	closes   []func()
}

// newWorld starts an embedded nats-server (JetStream, 127.0.0.1, random
// port, a temporary store) and the WeChat emulator on its own listener.
func newWorld(simOpts wechatsim.Options) (*world, error) {
	dir, err := os.MkdirTemp("", "tokenbench-")
	if err != nil {
		return nil, err
	}
	w := &world{dir: dir, accept: &atomic.Int64{}}
	w.closes = append(w.closes, func() { _ = os.RemoveAll(dir) })
	w.ns, err = natsconf.StartEmbedded(natsconf.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "nats")})
	if err != nil {
		w.close()
		return nil, err
	}
	w.closes = append(w.closes, func() { w.ns.Shutdown(); w.ns.WaitForShutdown() })
	w.url = w.ns.ClientURL()
	onCall := simOpts.OnCall
	simOpts.OnCall = func(c wechatsim.Call) {
		if c.Path == wechatsim.PathToken || c.Path == wechatsim.PathStableToken {
			end := time.Now()
			w.lastCall.Store(&simCall{start: end.Add(-c.Duration), end: end})
		}
		if onCall != nil {
			onCall(c)
		}
	}
	w.sim = wechatsim.New(simOpts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		w.close()
		return nil, err
	}
	srv := &http.Server{Handler: w.sim.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(&countingListener{Listener: ln, n: w.accept}) }()
	w.closes = append(w.closes, func() { _ = srv.Close() })
	w.simURL = "http://" + ln.Addr().String()
	return w, nil
}

// simCall is when one upstream token call started and ended.
type simCall struct{ start, end time.Time }

// close stops everything in reverse order of start.
func (w *world) close() {
	for i := len(w.closes) - 1; i >= 0; i-- {
		w.closes[i]()
	}
	w.closes = nil
}

// onClose registers f to run at close (before what was started earlier).
func (w *world) onClose(f func()) { w.closes = append(w.closes, f) }

// countingListener counts accepted connections: how many TCP (and, for
// WeChat, TLS) handshakes the refresher's HTTP client made.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// connect opens a client connection to the world's server over TCP.
func (w *world) connect(name string) (*nats.Conn, error) {
	return nats.Connect(w.url, nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
}

// benchSecret is the AppSecret of every benchmark app.
const benchSecret = "tokenbench-secret-0123456789"

// addApp registers appid with the emulator and returns its app config.
func (w *world) addApp(name string) refresher.AppConfig {
	appid := "wx" + name
	w.sim.AddApp(appid, benchSecret)
	return refresher.AppConfig{Name: name, Kind: wechat.KindClassic, AppID: appid, APIBase: w.simURL}.WithSecret(benchSecret)
}

// tokensKV returns the tokens bucket (waiting for it to exist).
func tokensKV(ctx context.Context, js jetstream.JetStream, bucket string) (jetstream.KeyValue, error) {
	for {
		kv, err := js.KeyValue(ctx, bucket)
		if err == nil {
			return kv, nil
		}
		if !errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, err
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// waitRecord waits until app's record exists and returns its revision.
func waitRecord(ctx context.Context, kv jetstream.KeyValue, app string, after uint64) (uint64, error) {
	for {
		e, err := kv.Get(ctx, app)
		if err == nil && e.Revision() > after {
			return e.Revision(), nil
		}
		if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return 0, err
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return 0, fmt.Errorf("waiting for the record of %s: %w", app, err)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
