// Package e2e runs the real cmd/refresher binary as separate processes
// against embedded NATS (single node and 3-node cluster) and the WeChat
// emulator, so that SIGTERM, SIGKILL and SIGSTOP are the real thing.
package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
)

var refresherBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tokenkeeper-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	refresherBin = filepath.Join(dir, "refresher")
	args := []string{"build", "-o", refresherBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/refresher")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building cmd/refresher:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is one refresher replica running as its own process.
type proc struct {
	t    testing.TB
	id   string
	cmd  *exec.Cmd
	out  *harness.SyncBuffer
	done chan struct{}
}

// writeConfig writes a refresher config for apps on e (NATS url given) and
// returns its path; secrets travel in the environment (see env).
func writeConfig(t testing.TB, url string, leaseTTL time.Duration, extra string, apps ...refresher.AppConfig) string {
	t.Helper()
	var b strings.Builder
	refresh := "refresh: {min_left: 0s}\n"
	if strings.Contains(extra, "refresh:") {
		refresh = ""
	}
	fmt.Fprintf(&b, "nats:\n  url: %q\nreplicas: %d\nschedule: \"@every 1s\"\nlease_ttl: %s\npassive_min_interval: 0s\n%slog: {level: debug}\n%s\napps:\n",
		url, replicasFor(url), leaseTTL, refresh, extra)
	for _, a := range apps {
		fmt.Fprintf(&b, "  - {name: %s, kind: %s, appid: %s, api_base: %q, secret_env: %s}\n", a.Name, a.Kind, a.AppID, a.APIBase, secretEnv(a.AppID))
	}
	p := filepath.Join(t.TempDir(), "refresher.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func replicasFor(url string) int {
	if strings.Contains(url, ",") {
		return 3
	}
	return 1
}

func secretEnv(appid string) string { return "SECRET_" + strings.ToUpper(appid) }

// startProc starts a replica with the config at path.
func startProc(t testing.TB, path, id string, apps ...refresher.AppConfig) *proc {
	t.Helper()
	p := &proc{t: t, id: id, out: &harness.SyncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(refresherBin, "--config", path, "--replica-id", id)
	p.cmd.Env = os.Environ()
	for _, a := range apps {
		p.cmd.Env = append(p.cmd.Env, secretEnv(a.AppID)+"="+a.Secret())
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.signal(syscall.SIGCONT)
		p.signal(syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("--- output of replica %s ---\n%s", p.id, p.out.String())
		}
	})
	testutil.WaitFor(t, 15*time.Second, func() bool { return p.out.Contains("refresher running") || p.exited() },
		"replica %s did not start", id)
	if p.exited() {
		t.Fatalf("replica %s exited at start:\n%s", id, p.out.String())
	}
	return p
}

func (p *proc) signal(s syscall.Signal) { _ = p.cmd.Process.Signal(s) }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		p.t.Fatalf("replica %s did not exit within %v", p.id, d)
	}
	return -1
}

// leaseHolder returns the id in the lease key ("" when there is none).
func leaseHolder(t testing.TB, js jetstream.JetStream) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, contract.LeaseBucket(contract.DefaultBucket))
	if err != nil {
		return ""
	}
	e, err := kv.Get(ctx, "leader")
	if err != nil {
		return ""
	}
	var l contract.LeaseRecord
	if json.Unmarshal(e.Value(), &l) != nil {
		return ""
	}
	return l.ID
}

func byID(procs []*proc, id string) *proc {
	for _, p := range procs {
		if p.id == id {
			return p
		}
	}
	return nil
}
