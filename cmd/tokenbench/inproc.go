// A refresher running in this process, and the one-app world that the
// propagation and storm scenarios start from.

package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// inproc is a refresher running in this process on its own connection.
type inproc struct {
	r      *refresher.Refresher
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan error
}

// startRefresher runs a refresher for cfg in this process and waits until
// it has loaded the bucket (Ready).
func (w *world) startRefresher(ctx context.Context, cfg *refresher.Config, opts ...refresher.Option) (*inproc, error) {
	nc, err := w.connect("tokenbench-refresher")
	if err != nil {
		return nil, err
	}
	all := append([]refresher.Option{
		refresher.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		refresher.WithUpstream(wechat.New(wechat.WithTimeout(30 * time.Second))),
	}, opts...)
	r, err := refresher.New(cfg, nc, all...)
	if err != nil {
		nc.Close()
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	p := &inproc{r: r, nc: nc, cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- r.Run(rctx) }()
	select {
	case <-r.Ready():
	case err := <-p.done:
		cancel()
		nc.Close()
		return nil, fmt.Errorf("refresher stopped before ready: %v", err)
	case <-ctx.Done():
		p.stop()
		return nil, ctx.Err()
	}
	w.onClose(p.stop)
	return p, nil
}

func (p *inproc) stop() {
	if p.cancel == nil {
		return
	}
	p.cancel()
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
	}
	p.cancel = nil
	p.nc.Close()
}

// config returns a validated refresher config for apps against the
// world's server with the project's defaults, changed by mod.
func (w *world) config(apps []refresher.AppConfig, mod func(*refresher.Config)) (*refresher.Config, error) {
	c := &refresher.Config{NATS: natsconf.Options{URL: w.url}, Apps: apps}
	if mod != nil {
		mod(c)
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// oneApp is a world with one app, its refresher running in-process and
// its first token stored: the start of the propagation and storm runs.
type oneApp struct {
	w    *world
	app  refresher.AppConfig   // the first of apps
	apps []refresher.AppConfig // every app, in the order asked for
	nc   *nats.Conn            // the bench's own connection
	js   jetstream.JetStream
	kv   jetstream.KeyValue
	// maxConsumers describes the token stream's max_consumers as the run
	// sees it, for the report header.
	maxConsumers string
}

// startOneApp builds a oneApp for app with passive_min_interval 0 (so that
// one run's forced refresh is not answered from the previous one's rate
// limit). maxConsumers > 0 overrides the limit the refresher set on the
// token stream. Close it with w.close.
func startOneApp(ctx context.Context, app, connName string, maxConsumers int) (*oneApp, error) {
	return startApps(ctx, []string{app}, connName, maxConsumers)
}

// startApps is startOneApp for several apps, all held by the one
// refresher, each with its first token stored.
func startApps(ctx context.Context, apps []string, connName string, maxConsumers int) (*oneApp, error) {
	w, err := newWorld(wechatsim.Options{})
	if err != nil {
		return nil, err
	}
	o := &oneApp{w: w}
	fail := func(err error) (*oneApp, error) { w.close(); return nil, err }
	for _, app := range apps {
		o.apps = append(o.apps, w.addApp(app))
	}
	o.app = o.apps[0]
	zero := time.Duration(0)
	cfg, err := w.config(o.apps, func(c *refresher.Config) { c.PassiveMinInterval = &zero })
	if err != nil {
		return fail(err)
	}
	if _, err := w.startRefresher(ctx, cfg); err != nil {
		return fail(err)
	}
	if o.nc, err = w.connect(connName); err != nil {
		return fail(err)
	}
	w.onClose(o.nc.Close)
	o.js, _ = jetstream.New(o.nc)
	if o.kv, err = tokensKV(ctx, o.js, contract.DefaultBucket); err != nil {
		return fail(err)
	}
	for _, app := range apps {
		if _, err := waitRecord(ctx, o.kv, app, 0); err != nil {
			return fail(err)
		}
	}
	if maxConsumers > 0 {
		if err := setMaxConsumers(ctx, o.js, contract.DefaultBucket, maxConsumers); err != nil {
			return fail(err)
		}
	}
	if o.maxConsumers, err = streamMaxConsumers(ctx, o.js, contract.DefaultBucket); err != nil {
		return fail(err)
	}
	return o, nil
}
