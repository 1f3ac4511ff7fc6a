// Command tokenbench measures tokenkeeper: the numbers behind the claims
// of docs/guarantees.md and docs/benchmarks.md, each scenario
// self-contained (an embedded nats-server and the WeChat emulator on
// loopback, refresher processes built from ./cmd/refresher where real
// signals matter).
//
//	tokenbench read                          Source.Token vs mutex cache vs KV Get, one run
//	tokenbench propagation -n 1000           KV write -> every one of N Sources (N connections), vs core NATS fan-out
//	tokenbench storm -conns 1000 -requests 10000 -latency 100ms
//	tokenbench scale -apps 10000             one refresher process: startup, CPU, RSS
//	tokenbench component-scale -n 100000     one refresher, one component, N authorizers
//	tokenbench failover -trials 20           SIGTERM handover and SIGKILL failover, real processes
//	tokenbench cost                          upstream fetches per app and day, vs naive fetchers
//
// Every scenario prints a Markdown table. Every loop is bounded in count
// and in time; everything listens on 127.0.0.1 only. Run it from the
// repository root (scale and failover build ./cmd/refresher unless
// -refresher-bin is given).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"syscall"
)

type scenario struct {
	name  string
	about string
	run   func(ctx context.Context, args []string, out io.Writer) error
}

var scenarios = []scenario{
	{"read", "Source.Token() vs a mutex-guarded cache vs a KV Get per call (same run, ratios)", runRead},
	{"propagation", "KV write -> every one of N watching Sources, N connections, against core NATS fan-out to them; -keys K per connection", runPropagation},
	{"storm", "concurrent token.refresh requests for one stale revision: upstream fetches, reply latency", runStorm},
	{"scale", "one refresher process with many apps: startup to all tokens, CPU, RSS", runScale},
	{"component-scale", "one refresher, one Open Platform component with N authorizers: startup with stored tokens (0 calls), steady refreshes, CPU, RSS", runComponentScale},
	{"failover", "SIGTERM handover and SIGKILL failover of real refresher processes", runFailover},
	{"cost", "upstream fetches per app and day (compressed time) vs naive per-replica fetchers", runCost},
	{"storm-client", "(internal) the client process of storm -mode raw-proc", runStormClient},
}

func main() {
	// The embedded nats-server and the in-process refreshers log through
	// slog.Default: keep warnings only.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "tokenbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	// Global flags before the scenario: -cpuprofile FILE, -memprofile FILE.
	gfs := flag.NewFlagSet("tokenbench", flag.ContinueOnError)
	gfs.SetOutput(out)
	cpuProfile := gfs.String("cpuprofile", "", "write a CPU profile of the whole run (this process) to this file")
	memProfile := gfs.String("memprofile", "", "write a heap profile at the end of the run to this file")
	gfs.Usage = func() { usage(out); gfs.PrintDefaults() }
	if err := gfs.Parse(args); err != nil {
		return err
	}
	args = gfs.Args()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *memProfile != "" {
		defer func() {
			f, err := os.Create(*memProfile)
			if err == nil {
				runtime.GC()
				_ = pprof.WriteHeapProfile(f)
				f.Close()
			}
		}()
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(out)
		if len(args) == 0 {
			return errors.New("no scenario given")
		}
		return nil
	}
	for _, s := range scenarios {
		if s.name == args[0] {
			return s.run(ctx, args[1:], out)
		}
	}
	usage(out)
	return fmt.Errorf("unknown scenario %q", args[0])
}

func usage(w io.Writer) {
	names := make([]string, 0, len(scenarios))
	for _, s := range scenarios {
		names = append(names, s.name)
	}
	sort.Strings(names)
	fmt.Fprintf(w, "usage: tokenbench [-cpuprofile FILE] [-memprofile FILE] <%s> [flags]   (tokenbench <scenario> -h for its flags)\n\n", strings.Join(names, "|"))
	for _, s := range scenarios {
		fmt.Fprintf(w, "  %-12s %s\n", s.name, s.about)
	}
}
