// The host: the open-file limit and /proc samples of a process's CPU
// time and memory.

package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// raiseNoFile raises the soft open-file limit to the hard one and
// returns the new soft limit.
func raiseNoFile() uint64 {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) != nil {
		return 0
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	}
	return l.Cur
}

// procSample is one reading of a process's CPU time and memory.
type procSample struct {
	at       time.Time
	cpu      time.Duration // user + system
	rss, hwm int64         // bytes
	threads  int
}

// benchDir makes a temporary directory (the caller removes it) and,
// unless the refresher runs in process, builds the refresher binary into
// it (or takes bin); it returns the directory and the binary's path.
func benchDir(ctx context.Context, prefix, bin string, inproc bool) (tmp, refBin string, err error) {
	if tmp, err = os.MkdirTemp("", prefix); err != nil {
		return "", "", err
	}
	if !inproc {
		if refBin, err = refresherBinary(ctx, bin, tmp); err != nil {
			os.RemoveAll(tmp)
			return "", "", err
		}
	}
	return tmp, refBin, nil
}

// rssMeter samples a process's memory over a window: the mean RSS and the
// peak (VmHWM) of its samples.
type rssMeter struct {
	sum, n, peak int64
}

// sample reads pid once and adds the reading.
func (m *rssMeter) sample(pid int) error {
	s, err := readProc(pid)
	if err != nil {
		return err
	}
	m.sum += s.rss
	m.n++
	m.peak = max(m.peak, s.hwm)
	return nil
}

// mean is the mean RSS of the samples (0 without any).
func (m *rssMeter) mean() int64 {
	if m.n == 0 {
		return 0
	}
	return m.sum / m.n
}

// readProc samples /proc/<pid>/stat and /proc/<pid>/status.
func readProc(pid int) (procSample, error) {
	s := procSample{at: time.Now()}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// Fields after the command name (which may hold spaces) start after ')'.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return s, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64) // field 14 utime
	st, _ := strconv.ParseInt(f[12], 10, 64) // field 15 stime
	const clkTck = 100                       // USER_HZ on Linux
	s.cpu = time.Duration(ut+st) * time.Second / clkTck
	st2, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	defer st2.Close()
	sc := bufio.NewScanner(st2)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fs[0], 10, 64)
		switch k {
		case "VmRSS":
			s.rss = n << 10
		case "VmHWM":
			s.hwm = n << 10
		case "Threads":
			s.threads = int(n)
		}
	}
	return s, nil
}
