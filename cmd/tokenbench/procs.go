// Refresher processes: building cmd/refresher, starting, signalling and
// killing replicas, and watching their output.

package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// refresherBinary returns bin, or builds ./cmd/refresher into dir.
func refresherBinary(ctx context.Context, bin, dir string) (string, error) {
	if bin != "" {
		return bin, nil
	}
	out := filepath.Join(dir, "refresher")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/tokenkeeper/tokenkeeper/cmd/refresher")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building cmd/refresher (run tokenbench from the repository, or pass -refresher-bin): %v\n%s", err, stderr.String())
	}
	return out, nil
}

// proc is one refresher process.
type proc struct {
	id   string
	cmd  *exec.Cmd // nil for a refresher in this process
	stop func()    // stops an in-process refresher

	out  *watchWriter
	done chan struct{}
}

// startProc starts bin with config path as replica id; secrets come from
// env. It does not wait for readiness (see waitLine).
func startProc(bin, path, id string, env []string) (*proc, error) {
	p := &proc{id: id, out: newWatchWriter(64 << 10), done: make(chan struct{})}
	p.cmd = exec.Command(bin, "--config", path, "--replica-id", id)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) pid() int {
	if p.cmd == nil {
		return os.Getpid()
	}
	return p.cmd.Process.Pid
}

// signal sends s; an in-process refresher is stopped by any signal.
func (p *proc) signal(s syscall.Signal) {
	if p.cmd == nil {
		p.stop()
		return
	}
	_ = p.cmd.Process.Signal(s)
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill ends the process (SIGKILL) and waits for it, at most 10 s.
func (p *proc) kill() {
	if !p.exited() {
		p.signal(syscall.SIGKILL)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}

// waitLine waits until the process printed a line containing s.
func (p *proc) waitLine(ctx context.Context, s string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		if p.out.seen(s) {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("replica %s exited:\n%s", p.id, p.out.tail())
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return fmt.Errorf("replica %s: no %q after %s:\n%s", p.id, s, d, p.out.tail())
		}
	}
}

// watchWriter keeps the last max bytes of a process's output and counts
// lines by substring, so that long logs (10k apps) cost little memory.
type watchWriter struct {
	mu      sync.Mutex
	max     int
	buf     []byte
	partial []byte
	marks   map[string]int
	watch   []string
}

func newWatchWriter(maxBytes int) *watchWriter {
	return &watchWriter{max: maxBytes, marks: map[string]int{},
		watch: []string{"refresher running", "released leadership", "acquired leadership", "token refreshed", "level=ERROR", "ALERT"}}
}

func (w *watchWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	if len(w.buf) > 2*w.max {
		w.buf = append(w.buf[:0:0], w.buf[len(w.buf)-w.max:]...)
	}
	w.partial = append(w.partial, b...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := w.partial[:i]
		for _, m := range w.watch {
			if bytes.Contains(line, []byte(m)) {
				w.marks[m]++
			}
		}
		w.partial = w.partial[i+1:]
	}
	if len(w.partial) > 1<<20 {
		w.partial = nil
	}
	return len(b), nil
}

func (w *watchWriter) seen(s string) bool { return w.count(s) > 0 }

func (w *watchWriter) count(s string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.marks[s]
}

func (w *watchWriter) tail() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := w.buf
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}
