package testutil

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy is a TCP proxy on 127.0.0.1 in front of one address (a NATS
// server's client port), for injecting network faults into one process's
// connection while it runs:
//
//   - Cut closes every connection at once and refuses new ones (a crashed
//     peer, a reset link: the client sees the error and reconnects);
//   - Blackhole keeps connections open but moves no byte in either
//     direction, and new connections are accepted and held the same way (a
//     partition: no RST, no FIN, the client notices only by its own
//     timeouts and pings); bytes written meanwhile wait, as in TCP's
//     buffers, and flow again on Restore if the client has not given up;
//   - Delay adds a latency to every chunk in both directions;
//   - Restore ends every fault.
//
// Point the process at URL(). Clients of a cluster learn the other
// servers' addresses from the server and would bypass the proxy on
// reconnect: connect with nats.IgnoreDiscoveredServers(), or start the
// cluster with Cluster.NoAdvertise. A Proxy is closed in t.Cleanup.
type Proxy struct {
	t      testing.TB
	ln     net.Listener
	target string

	mu      sync.Mutex
	cond    *sync.Cond // signalled when the mode changes
	mode    proxyMode
	delay   time.Duration
	conns   map[net.Conn]struct{}
	closed  bool
	wg      sync.WaitGroup
	accepts int
}

type proxyMode int

const (
	modePass proxyMode = iota
	modeCut
	modeBlackhole
)

// NewProxy starts a proxy to target (host:port).
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testutil: proxy listen: %v", err)
	}
	p := &Proxy{t: t, ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL is the proxy's nats:// URL.
func (p *Proxy) URL() string { return "nats://" + p.Addr() }

// Accepts counts the connections accepted so far (held or refused ones
// included).
func (p *Proxy) Accepts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepts
}

// Cut closes every connection and refuses new ones until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.mode = modeCut
	for c := range p.conns {
		c.Close()
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}

// Blackhole stops every byte, both ways, on every connection, old and new,
// until Restore.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	p.mode = modeBlackhole
	p.cond.Broadcast()
	p.mu.Unlock()
}

// Delay adds d to every chunk forwarded, both ways (0: none).
func (p *Proxy) Delay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// Restore ends Cut and Blackhole (a Delay stays until Delay(0)).
func (p *Proxy) Restore() {
	p.mu.Lock()
	p.mode = modePass
	p.cond.Broadcast()
	p.mu.Unlock()
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.ln.Close()
	for c := range p.conns {
		c.Close()
	}
	p.cond.Broadcast()
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.accepts++
		if p.closed || p.mode == modeCut {
			p.mu.Unlock()
			in.Close()
			continue
		}
		p.conns[in] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(1)
		go p.serve(in)
	}
}

func (p *Proxy) serve(in net.Conn) {
	defer p.wg.Done()
	out, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		p.drop(in)
		return
	}
	p.mu.Lock()
	if p.closed || p.mode == modeCut {
		p.mu.Unlock()
		in.Close()
		out.Close()
		p.drop(in)
		return
	}
	p.conns[out] = struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(out, in) }()
	go func() { defer wg.Done(); p.pipe(in, out) }()
	wg.Wait()
	p.drop(in)
	p.drop(out)
}

// pipe copies src to dst chunk by chunk, honouring the mode before each
// write; when either side fails both are closed.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.pass() {
				return
			}
			if werr := writeAll(dst, buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// pass waits while the proxy blackholes, applies the delay, and reports
// whether the chunk may be forwarded (false once cut or closed).
func (p *Proxy) pass() bool {
	p.mu.Lock()
	for p.mode == modeBlackhole && !p.closed {
		p.cond.Wait()
	}
	ok := p.mode == modePass && !p.closed
	d := p.delay
	p.mu.Unlock()
	if ok && d > 0 {
		time.Sleep(d) // the injected latency itself, not synchronisation
	}
	return ok
}

func writeAll(w io.Writer, b []byte) error {
	for len(b) > 0 {
		n, err := w.Write(b)
		if err != nil {
			return err
		}
		if n == 0 {
			return errors.New("short write")
		}
		b = b[n:]
	}
	return nil
}

func (p *Proxy) drop(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// String describes the proxy for test logs.
func (p *Proxy) String() string { return fmt.Sprintf("proxy %s -> %s", p.Addr(), p.target) }
