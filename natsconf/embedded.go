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
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/tokenkeeper/tokenkeeper/contract"
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
	// Users are the users other processes connect with, each with a
	// least-privilege role (RolePermissions). With users, every
	// connection authenticates; the refresher's own in-process connection
	// uses an identity of role refresher made at each start (a fresh nkey
	// that never leaves the process). Without users the server accepts
	// anonymous connections, which StartEmbedded allows only on a
	// loopback address unless AllowAnonymous is set.
	Users []EmbeddedUser `yaml:"users"`
	// AllowAnonymous lets the server listen beyond loopback without users:
	// anyone who reaches the address reads every token and may write the
	// bucket. For a trusted network only; it cannot be combined with Users.
	AllowAnonymous bool `yaml:"allow_anonymous"`
	// StoreKeyEnv names the environment variable holding the key that
	// encrypts the JetStream store at rest (nats-server's own store
	// encryption); StoreKeyFile names a file holding it instead (surrounding
	// white space ignored). At most one; without either the store is not
	// encrypted. The key must be at least MinStoreKeyLen bytes and is never
	// logged. A plain store is encrypted at the first start with a key; an
	// encrypted store does not start without its key, nor with another one
	// (ErrStoreKey).
	StoreKeyEnv  string `yaml:"store_key_env"`
	StoreKeyFile string `yaml:"store_key_file"`
	// StoreCipher is StoreCipherChaCha (default) or StoreCipherAES. The
	// server converts a store written with the other cipher.
	StoreCipher string `yaml:"store_cipher"`
	// JetStreamDomain is the server's JetStream domain ([A-Za-z0-9_-],
	// at most 64); empty: none. Servers joined by leafnodes each need
	// their own (production "prod", staging "staging"), so that each
	// keeps its own JetStream and reaches the other's as
	// $JS.<domain>.API. Required with LeafNodes.
	JetStreamDomain string `yaml:"jetstream_domain"`
	// LeafNodes joins this server to others as leafnodes: a production
	// server listens for the leafnode connections of its follower
	// environments; a staging server connects to production as a remote.
	LeafNodes LeafNodeOptions `yaml:"leafnodes"`
	// Bucket is the token bucket the roles' permissions name (with its
	// _lease and _state buckets); default contract.DefaultBucket. The refresher sets
	// it from its bucket: key.
	Bucket string `yaml:"-"`
}

// bucket is o.Bucket or contract.DefaultBucket.
func (o EmbeddedOptions) bucket() string {
	if o.Bucket == "" {
		return contract.DefaultBucket
	}
	return o.Bucket
}

// validate returns every problem of o (with defaults applied), each
// naming its key and matching ErrInvalidOptions: those of the keys if
// keys, those of the files and variables they name if files.
func (o EmbeddedOptions) validate(keys, files bool) []error {
	var errs []error
	add, addFile := problemAdders(&errs, keys, files)
	o = o.withDefaults()
	host, _, err := splitListen(o.Listen)
	if err != nil {
		add("nats.embedded.listen", "%v", err)
	}
	if strings.ContainsAny(o.ServerName, " \t\n") {
		add("nats.embedded.server_name", "must not contain spaces")
	}
	if files {
		if fi, err := os.Stat(o.StoreDir); err == nil && !fi.IsDir() {
			addFile("nats.embedded.store_dir", "%s exists and is not a directory", o.StoreDir)
		}
	}
	o.validateUsers(add, addFile, files)
	o.validateStoreKey(add, addFile, files)
	o.validateLeafNodes(add, addFile, files)
	if err == nil && len(o.Users) == 0 && !o.AllowAnonymous && !loopback(host) {
		add("nats.embedded.listen", "%s is reachable beyond this host and nats.embedded.users is empty: "+
			"anyone who reaches it could read every token and write the bucket. "+
			"Add nats.embedded.users (roles refresher, service, operator), listen on 127.0.0.1, "+
			"or set nats.embedded.allow_anonymous: true on a trusted network", o.Listen)
	}
	return errs
}

// loopback reports whether host (of a listen address) is reachable from
// this host only: a loopback IP or "localhost". Any other name counts as
// reachable from elsewhere.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
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
// With o.Users every connection must authenticate as one of them and gets
// its role's permissions. Without users, an o.Listen beyond loopback is
// refused unless o.AllowAnonymous is set.
//
// Invalid options (a malformed o.Listen, a user without a password, an
// open non-loopback listener, …) give an error matching ErrInvalidOptions
// that names each key, and nothing is started or created. When the
// address is taken the error matches ErrAddressInUse (and
// ErrEmbeddedStart); other failures match ErrEmbeddedStart and carry the
// server's own message. The caller owns the server: Shutdown and
// WaitForShutdown it (Conn.Close does).
func StartEmbedded(o EmbeddedOptions) (*server.Server, error) {
	s, _, err := startEmbedded(o, false)
	return s, err
}

// startEmbedded is StartEmbedded. With self and users configured, the
// server also accepts an identity of role refresher made for this start,
// and the returned option connects as it; otherwise the option is nil.
func startEmbedded(o EmbeddedOptions, self bool) (*server.Server, nats.Option, error) {
	if errs := o.validate(true, true); len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	o = o.withDefaults()
	host, port, _ := splitListen(o.Listen)
	users, nkeyUsers, err := o.serverUsers()
	if err != nil {
		return nil, nil, err
	}
	var selfAuth nats.Option
	if self && len(o.Users) > 0 {
		kp, err := nkeys.CreateUser()
		if err != nil {
			return nil, nil, fmt.Errorf("%w: in-process identity: %w", ErrEmbeddedStart, err)
		}
		pub, err := kp.PublicKey()
		if err != nil {
			return nil, nil, fmt.Errorf("%w: in-process identity: %w", ErrEmbeddedStart, err)
		}
		nkeyUsers = append(nkeyUsers, &server.NkeyUser{Nkey: pub, Permissions: RolePermissions(RoleRefresher, o.bucket(), "")})
		selfAuth = nats.Nkey(pub, kp.Sign)
	}
	if err := os.MkdirAll(o.StoreDir, 0o750); err != nil {
		return nil, nil, fmt.Errorf("%w: nats.embedded.store_dir: %w", ErrEmbeddedStart, err)
	}
	leaf, err := o.LeafNodes.serverOptions()
	if err != nil {
		return nil, nil, err
	}
	sopts := &server.Options{
		ServerName:      o.ServerName,
		Host:            host,
		Port:            port,
		JetStream:       true,
		JetStreamDomain: o.JetStreamDomain,
		StoreDir:        o.StoreDir,
		NoSigs:          true,
		Users:           users,
		Nkeys:           nkeyUsers,
		LeafNode:        leaf,
	}
	if err := o.applyStoreKey(sopts); err != nil {
		return nil, nil, err
	}
	s, err := server.NewServer(sopts)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrEmbeddedStart, err)
	}
	log := slog.Default().With("component", "nats-server")
	lg := &serverLogger{log: log}
	s.SetLoggerV2(lg, false, false, false)
	go s.Start()

	deadline := time.Now().Add(EmbeddedStartTimeout)
	for !s.ReadyForConnections(50 * time.Millisecond) {
		if lg.failed() || time.Now().After(deadline) {
			s.Shutdown()
			s.WaitForShutdown()
			return nil, nil, startError(o.Listen, lg)
		}
	}
	if w := lg.decryptFailure(); w != "" {
		// The server skips a stream it cannot decrypt; running on would
		// look like a lost bucket and have it created anew over the store.
		s.Shutdown()
		s.WaitForShutdown()
		return nil, nil, o.storeKeyError(w)
	}
	if !s.JetStreamEnabled() {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, nil, fmt.Errorf("%w: jetstream is not enabled%s", ErrEmbeddedStart, lg.suffix())
	}
	if o.encrypted() {
		log.Info("embedded nats-server encrypts its store", "store_dir", o.StoreDir, "cipher", sopts.JetStreamCipher.String(), "key_from", o.storeKeySource())
	}
	switch {
	case len(o.Users) > 0:
		names := make([]string, len(o.Users))
		for i, u := range o.Users {
			names[i] = u.User + "(" + string(u.Role) + ")"
		}
		log.Info("embedded nats-server requires authentication", "listen", o.Listen, "users", strings.Join(names, " "))
	case !loopback(host):
		log.Warn("embedded nats-server accepts anonymous connections beyond loopback (nats.embedded.allow_anonymous): anyone who reaches it reads every token and can write the bucket", "listen", o.Listen)
	}
	return s, selfAuth, nil
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

	mu      sync.Mutex
	fatal   string
	decrypt string // the first warning that a stored stream could not be decrypted
}

// decryptFailure is the first warning that a stored stream or consumer
// could not be decrypted, or "".
func (l *serverLogger) decryptFailure() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.decrypt
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
func (l *serverLogger) Warnf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	if isDecryptWarning(msg) {
		l.mu.Lock()
		if l.decrypt == "" {
			l.decrypt = strings.TrimSpace(msg)
		}
		l.mu.Unlock()
	}
	l.log.Warn(msg)
}

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
