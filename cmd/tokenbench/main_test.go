package main

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs the in-process scenarios with tiny sizes: they must
// finish, print their table and measure what they claim (one fetch per
// storm). scale and failover build cmd/refresher and take longer; run them
// by hand (docs/benchmarks.md).
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, args := range [][]string{
		{"propagation", "-n", "1,3", "-writes", "3", "-refreshes", "1", "-gap", "1ms"},
		{"propagation", "-n", "2", "-keys", "2", "-writes", "4", "-refreshes", "2", "-gap", "1ms"},
		{"storm", "-conns", "3", "-requests", "12", "-latency", "20ms", "-slack", "10s", "-mode", "both"},
		{"cost", "-lifetime", "2s", "-days", "0.01", "-replicas", "2", "-call-every", "10s"},
	} {
		t.Run(args[0], func(t *testing.T) {
			var out bytes.Buffer
			if err := run(ctx, args, &out); err != nil {
				t.Fatalf("tokenbench %s: %v\n%s", strings.Join(args, " "), err, out.String())
			}
			s := out.String()
			if !strings.Contains(s, "| ") || !strings.Contains(s, "machine: ") {
				t.Fatalf("no results table:\n%s", s)
			}
			if args[0] == "propagation" && !strings.Contains(s, "max_consumers 1000000;") {
				t.Fatalf("the refresher did not raise the tokens stream's max_consumers (nats-server's default of 1000 would cap the watching Sources):\n%s", s)
			}
			if args[0] == "propagation" {
				// Core fan-out is measured beside the Sources, and the
				// consumers are counted: one per connection (one Client
				// each), however many keys it follows.
				want := "per connection (process) at N = 3: met (1)"
				if slices.Contains(args, "-keys") {
					want = "per connection (process) at N = 2: met (1)"
				}
				if !strings.Contains(s, "| core fan-out ") || !strings.Contains(s, "p99 ratio") || !strings.Contains(s, want) {
					t.Fatalf("no core fan-out rows, ratio or consumer count %q:\n%s", want, s)
				}
			}
			if args[0] == "storm" && strings.Contains(s, "MISSED") {
				t.Fatalf("a storm made more than one upstream fetch or failed requests:\n%s", s)
			}
			t.Log("\n" + s)
		})
	}
}

func TestUnknownScenario(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"nope"}, &out); err == nil || !strings.Contains(out.String(), "usage") {
		t.Fatalf("want usage and an error, got %v:\n%s", err, out.String())
	}
}

// component-scale -tickets jsapi, in-process and tiny: the stored tokens
// and tickets make the start call nothing upstream, and the steady state
// refreshes tickets (getticket counted beside the component calls). Bad
// -tickets values are refused.
func TestComponentScaleTickets(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	args := []string{"component-scale", "-inproc", "-n", "60", "-rate", "5", "-window", "4s", "-tickets", "jsapi"}
	if err := run(ctx, args, &out); err != nil {
		t.Fatalf("tokenbench %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	s := out.String()
	var row []string
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, "| 60 ") {
			row = strings.Split(line, "|")
		}
	}
	if len(row) < 10 {
		t.Fatalf("no row for 60 authorizers:\n%s", s)
	}
	start, steady := strings.TrimSpace(row[6]), strings.TrimSpace(row[10])
	if start != "0 (0 + 0)" {
		t.Fatalf("upstream calls at start = %q, want 0 (0 + 0):\n%s", start, s)
	}
	var total, comp, tick int
	if _, err := fmt.Sscanf(steady, "%d (%d + %d)", &total, &comp, &tick); err != nil || comp == 0 || tick == 0 || total != comp+tick {
		t.Fatalf("steady calls %q: want component and getticket calls (err %v):\n%s", steady, err, s)
	}
	t.Log("\n" + s)

	for _, bad := range []string{"agent_config", "jsapi,jsapi", "nope"} {
		out.Reset()
		if err := run(ctx, []string{"component-scale", "-inproc", "-n", "1", "-tickets", bad}, &out); err == nil || !strings.Contains(err.Error(), "-tickets") {
			t.Errorf("-tickets %s: err %v, want a -tickets error", bad, err)
		}
	}
}
