package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// runFailover runs real refresher processes (as e2e does) and measures,
// over many trials: graceful handover (SIGTERM the leader) and crash
// failover (SIGKILL the leader), each until another replica holds the
// lease (seen by a watch of the lease key) and until token.refresh is
// answered again. The stopped replica is restarted after each trial.
func runFailover(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("failover", flag.ContinueOnError)
	fs.SetOutput(out)
	trials := fs.Int("trials", 20, "trials of each kind")
	replicas := fs.Int("replicas", 3, "refresher processes")
	leaseTTL := fs.Duration("lease-ttl", 10*time.Second, "lease_ttl of the refreshers (whole seconds)")
	bin := fs.String("refresher-bin", "", "refresher binary (default: go build ./cmd/refresher)")
	kinds := fs.String("kinds", "both", "sigterm, sigkill or both")
	gracefulTarget := fs.Duration("graceful-target", 500*time.Millisecond, "graceful handover target")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *replicas < 2 || *trials < 1 {
		return errors.New("want replicas ≥ 2 and trials ≥ 1")
	}
	var sigs []syscall.Signal
	switch *kinds {
	case "sigterm":
		sigs = []syscall.Signal{syscall.SIGTERM}
	case "sigkill":
		sigs = []syscall.Signal{syscall.SIGKILL}
	case "both":
		sigs = []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL}
	default:
		return fmt.Errorf("-kinds: %q is not sigterm, sigkill or both", *kinds)
	}
	tmp, err := os.MkdirTemp("", "tokenbench-failover-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	refBin, err := refresherBinary(ctx, *bin, tmp)
	if err != nil {
		return err
	}
	w, err := newWorld(wechatsim.Options{})
	if err != nil {
		return err
	}
	defer w.close()
	const app = "fo"
	ac := w.addApp(app)
	cfgPath := filepath.Join(tmp, "refresher.yaml")
	cfg := fmt.Sprintf("nats: {url: %q}\nlease_ttl: %s\nlog: {level: info}\napps:\n  - {name: %s, appid: %s, api_base: %q, secret_env: TOKENBENCH_SECRET}\n",
		w.url, *leaseTTL, app, ac.AppID, w.simURL)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	env := []string{"TOKENBENCH_SECRET=" + benchSecret}

	procs := map[string]*proc{}
	defer func() {
		for _, p := range procs {
			p.kill()
		}
	}()
	start := func(id string) error {
		p, err := startProc(refBin, cfgPath, id, env)
		if err != nil {
			return err
		}
		procs[id] = p
		return p.waitLine(ctx, "refresher running", 30*time.Second)
	}
	for i := range *replicas {
		if err := start(fmt.Sprintf("r%d", i+1)); err != nil {
			return err
		}
	}
	nc, err := w.connect("tokenbench-failover")
	if err != nil {
		return err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	kv, err := tokensKV(ctx, js, contract.DefaultBucket)
	if err != nil {
		return err
	}
	if _, err := waitRecord(ctx, kv, app, 0); err != nil {
		return err
	}
	leaseKV, err := tokensKV(ctx, js, contract.LeaseBucket(contract.DefaultBucket))
	if err != nil {
		return err
	}
	lw := newLeaseWatch(ctx, leaseKV)
	defer lw.stop()
	if _, err := lw.waitHolder(ctx, "", 30*time.Second); err != nil {
		return err
	}
	fetches0 := w.sim.Fetches(ac.AppID)

	header(out, "Failover of real refresher processes",
		fmt.Sprintf("%d cmd/refresher processes, lease_ttl %s, embedded nats-server on 127.0.0.1, %d trials per kind; lease taken = another replica's lease write seen by a watch of the lease key; service gap = longest time without a token.refresh answer around the signal (probed every 1 ms, one request at a time)", *replicas, *leaseTTL, *trials))
	t := newTable("signal to the leader", "trials", "lease taken: min", "median", "p95", "max", "service gap: median", "p95", "max", "target", "met")
	var summary []string
	for _, sig := range sigs {
		var taken, back []time.Duration
		for i := range *trials {
			// A random phase against the lease renewal (every ttl/4).
			if err := sleepCtx(ctx, time.Duration(rand.Int64N(int64(*leaseTTL/4)))+200*time.Millisecond); err != nil {
				return err
			}
			leader, err := lw.waitHolder(ctx, "", 30*time.Second)
			if err != nil {
				return err
			}
			p := procs[leader]
			if p == nil {
				return fmt.Errorf("lease held by unknown replica %q", leader)
			}
			probe := newProbe(nc, app)
			if err := probe.waitOK(ctx, 5*time.Second); err != nil {
				probe.stop()
				return err
			}
			t0 := time.Now()
			p.signal(sig)
			newLeader, err := lw.waitHolder(ctx, leader, *leaseTTL+30*time.Second)
			if err != nil {
				probe.stop()
				return fmt.Errorf("trial %d (%s): %w", i+1, sig, err)
			}
			taken = append(taken, lw.takenAt(newLeader).Sub(t0))
			b, err := probe.gapAfter(t0, 30*time.Second)
			probe.stop()
			if err != nil {
				return fmt.Errorf("trial %d (%s): %w", i+1, sig, err)
			}
			back = append(back, b)
			select {
			case <-p.done:
			case <-time.After(30 * time.Second):
				return fmt.Errorf("replica %s did not exit after %s", leader, sig)
			}
			if sig == syscall.SIGTERM && p.cmd.ProcessState.ExitCode() != 0 {
				return fmt.Errorf("replica %s exited %d after SIGTERM:\n%s", leader, p.cmd.ProcessState.ExitCode(), p.out.tail())
			}
			if err := start(leader); err != nil {
				return err
			}
		}
		dt, db := summarize(taken), summarize(back)
		target := *gracefulTarget
		name := "SIGTERM (graceful handover)"
		if sig == syscall.SIGKILL {
			target = *leaseTTL + time.Second
			name = "SIGKILL (crash failover)"
		}
		ok := dt.max <= target && db.max <= target
		t.add(name, len(taken), dt.min, dt.p50, dt.p95, dt.max, db.p50, db.p95, db.max, "≤ "+ms(target), verdict(ok))
		summary = append(summary, fmt.Sprintf("%s: lease taken max %s, service gap max %s, target %s: %s", name, ms(dt.max), ms(db.max), ms(target), verdict(ok)))
	}
	t.print(out)
	fmt.Fprintln(out)
	for _, s := range summary {
		fmt.Fprintln(out, s)
	}
	fmt.Fprintf(out, "upstream fetches during all trials: %d (a new leader must not re-fetch a valid token)\n", w.sim.Fetches(ac.AppID)-fetches0)
	return nil
}

// leaseWatch follows the lease key and remembers when each holder's
// first write of its tenure was seen.
type leaseWatch struct {
	mu      sync.Mutex
	holder  string
	since   time.Time
	changed chan struct{}
	cancel  context.CancelFunc
}

func newLeaseWatch(ctx context.Context, kv jetstream.KeyValue) *leaseWatch {
	ctx, cancel := context.WithCancel(ctx)
	lw := &leaseWatch{changed: make(chan struct{}), cancel: cancel}
	go func() {
		for ctx.Err() == nil {
			w, err := kv.Watch(ctx, contract.LeaseKey)
			if err != nil {
				_ = sleepCtx(ctx, 50*time.Millisecond)
				continue
			}
			for e := range w.Updates() {
				if e == nil {
					continue
				}
				now := time.Now()
				id := ""
				if e.Operation() == jetstream.KeyValuePut {
					var rec contract.LeaseRecord
					if json.Unmarshal(e.Value(), &rec) == nil {
						id = rec.ID
					}
				}
				lw.mu.Lock()
				if id != lw.holder {
					lw.holder, lw.since = id, now
					close(lw.changed)
					lw.changed = make(chan struct{})
				}
				lw.mu.Unlock()
			}
		}
	}()
	return lw
}

func (lw *leaseWatch) stop() { lw.cancel() }

// waitHolder waits until the lease is held by someone other than not
// (not "" means anyone) and returns the holder.
func (lw *leaseWatch) waitHolder(ctx context.Context, not string, d time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		lw.mu.Lock()
		h, ch := lw.holder, lw.changed
		lw.mu.Unlock()
		if h != "" && h != not {
			return h, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return "", fmt.Errorf("no new lease holder (last %q) after %s", h, d)
		}
	}
}

// takenAt is when holder's tenure was first seen.
func (lw *leaseWatch) takenAt(holder string) time.Time {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if lw.holder == holder {
		return lw.since
	}
	return time.Now()
}

// probe asks token.refresh (empty body: "a valid token") every
// millisecond and remembers which were answered.
type probe struct {
	mu     sync.Mutex
	ok     []time.Time
	failed []time.Time
	cancel context.CancelFunc
	done   chan struct{}
}

func newProbe(nc *nats.Conn, app string) *probe {
	ctx, cancel := context.WithCancel(context.Background())
	p := &probe{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for ctx.Err() == nil {
			rctx, c := context.WithTimeout(ctx, 500*time.Millisecond)
			m, err := nc.RequestWithContext(rctx, contract.RefreshSubject(app), nil)
			c()
			now := time.Now()
			good := err == nil && m.Header.Get("Nats-Service-Error-Code") == ""
			p.mu.Lock()
			if good {
				p.ok = append(p.ok, now)
			} else {
				p.failed = append(p.failed, now)
			}
			p.mu.Unlock()
			_ = sleepCtx(ctx, time.Millisecond)
		}
	}()
	return p
}

func (p *probe) stop() { p.cancel(); <-p.done }

// waitOK waits for the probe's first answered request.
func (p *probe) waitOK(ctx context.Context, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		p.mu.Lock()
		n := len(p.ok)
		p.mu.Unlock()
		if n > 0 {
			return nil
		}
		if err := sleepCtx(ctx, time.Millisecond); err != nil {
			return fmt.Errorf("token.refresh not answered before the trial: %w", err)
		}
	}
}

// gapAfter waits until a request succeeded at least settle after every
// failure since t0, then returns the longest time without a successful
// answer from the last success before t0 on: how long clients saw no
// token.refresh service.
func (p *probe) gapAfter(t0 time.Time, d time.Duration) (time.Duration, error) {
	const settle = 100 * time.Millisecond
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		var lastFail time.Time
		for _, f := range p.failed {
			if f.After(t0) {
				lastFail = f
			}
		}
		prev := t0 // the last success before t0 (t0 if none)
		var gap time.Duration
		settled := false
		for _, o := range p.ok {
			if !o.After(t0) {
				prev = o
				continue
			}
			gap = max(gap, o.Sub(prev))
			prev = o
			from := t0
			if lastFail.After(from) {
				from = lastFail
			}
			if o.Sub(from) >= settle {
				settled = true
			}
		}
		p.mu.Unlock()
		if settled {
			return gap, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0, fmt.Errorf("token.refresh not answered steadily within %s of the signal", d)
}
