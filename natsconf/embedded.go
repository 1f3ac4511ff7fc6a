package natsconf

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Defaults of the embedded server.
const (
	// DefaultEmbeddedListen is the client address of the embedded server.
	DefaultEmbeddedListen = "127.0.0.1:4222"
	// DefaultEmbeddedStoreDir is the JetStream store directory of the
	// embedded server.
	DefaultEmbeddedStoreDir = "data/nats"
	// EmbeddedStartTimeout bounds how long StartEmbedded waits for the
	// server to accept connections (JetStream recovers its store first).
	EmbeddedStartTimeout = 30 * time.Second
)

// EmbeddedOptions is the nats.embedded: section: the single nats-server
// that runs inside the process when nats.url is empty.
type EmbeddedOptions struct {
	// Listen is the host:port of the client listener; default
	// DefaultEmbeddedListen. Port 0 picks a free port.
	Listen string `yaml:"listen"`
	// StoreDir is the JetStream store directory; default
	// DefaultEmbeddedStoreDir. It is created if missing.
	StoreDir string `yaml:"store_dir"`
	// ServerName is the server's name; default: the server ID.
	ServerName string `yaml:"server_name"`
}

// withDefaults returns o with empty fields set to their defaults.
func (o EmbeddedOptions) withDefaults() EmbeddedOptions {
	if strings.TrimSpace(o.Listen) == "" {
		o.Listen = DefaultEmbeddedListen
	}
	if strings.TrimSpace(o.StoreDir) == "" {
		o.StoreDir = DefaultEmbeddedStoreDir
	}
	return o
}

// splitListen parses host:port; port 0 becomes server.RANDOM_PORT.
func splitListen(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%q is not host:port", addr)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q of %q is not a number in 0-65535", p, addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

// StartEmbedded starts a single nats-server with JetStream on, listening on
// o.Listen, storing in o.StoreDir (created if missing), without signal
// handlers, and waits until it accepts connections. Its warnings and errors
// go to slog.Default() (notices at debug level) with component=nats-server.
//
// A malformed o.Listen gives an error matching ErrInvalidOptions. When the
// address is taken the error matches ErrAddressInUse (and
// ErrEmbeddedStart); other failures match ErrEmbeddedStart and carry the
// server's own message. The caller owns the server: Shutdown and
// WaitForShutdown it (Conn.Close does).
func StartEmbedded(o EmbeddedOptions) (*server.Server, error) {
	o = o.withDefaults()
	host, port, err := splitListen(o.Listen)
	if err != nil {
		return nil, optErr("nats.embedded.listen", err.Error())
	}
	if err := os.MkdirAll(o.StoreDir, 0o750); err != nil {
		return nil, fmt.Errorf("%w: nats.embedded.store_dir: %w", ErrEmbeddedStart, err)
	}
	sopts := &server.Options{
		ServerName: o.ServerName,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
	}
	s, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEmbeddedStart, err)
	}
	lg := &serverLogger{log: slog.Default().With("component", "nats-server")}
	s.SetLoggerV2(lg, false, false, false)
	go s.Start()

	deadline := time.Now().Add(EmbeddedStartTimeout)
	for !s.ReadyForConnections(50 * time.Millisecond) {
		if lg.failed() || time.Now().After(deadline) {
			s.Shutdown()
			s.WaitForShutdown()
			return nil, startError(o.Listen, lg)
		}
	}
	if !s.JetStreamEnabled() {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, fmt.Errorf("%w: jetstream is not enabled%s", ErrEmbeddedStart, lg.suffix())
	}
	return s, nil
}

// startError explains why the embedded server did not become ready.
func startError(listen string, lg *serverLogger) error {
	// The server keeps its listen error to itself; find out whether the
	// address is taken by trying it (the server has shut down by now).
	l, err := net.Listen("tcp", listen)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use") {
			return fmt.Errorf("%w: %w: nats.embedded.listen %s is taken by another process (stop it, pick another address, or set nats.url to use that server)",
				ErrEmbeddedStart, ErrAddressInUse, listen)
		}
		return fmt.Errorf("%w: nats.embedded.listen %s: %w%s", ErrEmbeddedStart, listen, err, lg.suffix())
	}
	l.Close()
	if lg.failed() {
		return fmt.Errorf("%w%s", ErrEmbeddedStart, lg.suffix())
	}
	return fmt.Errorf("%w: not ready for connections after %s", ErrEmbeddedStart, EmbeddedStartTimeout)
}

// serverLogger forwards the embedded server's log to slog and remembers
// its first fatal error.
type serverLogger struct {
	log *slog.Logger

	mu    sync.Mutex
	fatal string
}

func (l *serverLogger) failed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fatal != ""
}

// suffix is ": <first fatal message>" or "".
func (l *serverLogger) suffix() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fatal == "" {
		return ""
	}
	return ": " + l.fatal
}

// Noticef implements server.Logger.
func (l *serverLogger) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }

// Warnf implements server.Logger.
func (l *serverLogger) Warnf(format string, v ...any) { l.log.Warn(fmt.Sprintf(format, v...)) }

// Errorf implements server.Logger.
func (l *serverLogger) Errorf(format string, v ...any) { l.log.Error(fmt.Sprintf(format, v...)) }

// Fatalf implements server.Logger. The server stops starting after a
// fatal error; it never exits the process here.
func (l *serverLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.mu.Lock()
	if l.fatal == "" {
		l.fatal = msg
	}
	l.mu.Unlock()
	l.log.Error(msg)
}

// Debugf implements server.Logger (dropped).
func (l *serverLogger) Debugf(string, ...any) {}

// Tracef implements server.Logger (dropped).
func (l *serverLogger) Tracef(string, ...any) {}
