package natsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

// Defaults of Connect.
const (
	// DefaultReconnectWait is the pause between reconnect attempts to the
	// same server (nats.go adds up to 100 ms of jitter, 1 s with TLS).
	DefaultReconnectWait = time.Second
	// DefaultConnectTimeout bounds the dial and handshake with one server.
	DefaultConnectTimeout = 2 * time.Second
)

// Options is the nats: section of the YAML config and the connection flags
// of tokenctl. Connect needs URL; in the refresher's config an empty URL
// means "run the embedded server", which cmd/refresher does by calling
// ConnectEmbedded.
type Options struct {
	// URL is the server URL, or a comma-separated list of the URLs of a
	// cluster ("nats://a:4222,nats://b:4222"). Connect requires it. In the
	// refresher's config, empty means: run the embedded server (see
	// Embedded) and connect to it in-process (ConnectEmbedded).
	URL string `yaml:"url"`
	// User and Password authenticate with user/password.
	User string `yaml:"user"`
	// Password is the password of User. Prefer PasswordEnv.
	Password string `yaml:"password"`
	// PasswordEnv names the environment variable that holds the password.
	PasswordEnv string `yaml:"password_env"`
	// Token authenticates with a token.
	Token string `yaml:"token"`
	// CredsFile is a decentralised-auth credentials file (user JWT + seed).
	CredsFile string `yaml:"creds"`
	// NKeyFile is a file holding a user nkey seed.
	NKeyFile string `yaml:"nkey"`
	// TLS configures TLS to the server.
	TLS TLSOptions `yaml:"tls"`
	// Name is the connection name the server shows in its monitoring.
	Name string `yaml:"name"`
	// Embedded configures the embedded server of ConnectEmbedded (the
	// refresher's, when URL is empty).
	Embedded EmbeddedOptions `yaml:"embedded"`
}

// TLSOptions is the nats.tls: section. Setting CAFile makes the client
// verify the server with that CA (instead of the system pool); CertFile and
// KeyFile, set together, present a client certificate.
type TLSOptions struct {
	// CAFile is a PEM file of the CA certificates that sign the server.
	CAFile string `yaml:"ca"`
	// CertFile is the PEM client certificate.
	CertFile string `yaml:"cert"`
	// KeyFile is the PEM private key of CertFile.
	KeyFile string `yaml:"key"`
}

// enabled reports whether any TLS setting is present.
func (t TLSOptions) enabled() bool { return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" }

// Validate checks o without connecting and returns every problem found in
// one error, or nil. Like every error of tokenkeeper that carries several
// problems, it is an errors.Join: Unwrap() []error gives one error per
// problem, each naming the YAML key it is about ("nats.tls.cert: ...")
// and matching ErrInvalidOptions. Files named by the options must exist
// and parse; the variable named by PasswordEnv must be set. Secrets never
// appear in the messages. Validate reports what ValidateKeys and
// ValidateFiles report.
func (o Options) Validate() error { return errors.Join(o.validate(true, true)...) }

// ValidateKeys is the part of Validate that reads nothing: the values of
// the keys and how they combine. It neither opens a file nor looks at the
// environment.
func (o Options) ValidateKeys() error { return errors.Join(o.validate(true, false)...) }

// ValidateFiles is the part of Validate that reads what the keys name:
// the creds, nkey and TLS files exist and parse, the password variables
// are set, the password files are readable and not empty, the embedded
// server's store_dir is not a file.
func (o Options) ValidateFiles() error { return errors.Join(o.validate(false, true)...) }

// Problems returns the problems of an error that carries several (an
// errors.Join, or any error with Unwrap() []error), or err alone; nil for
// nil.
func Problems(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// problemAdders returns the two ways a validate reports a problem into
// errs, each naming its key and matching ErrInvalidOptions: add for a
// problem of the keys' values (kept if keys), addFile for one found by
// reading what they name (kept if files).
func problemAdders(errs *[]error, keys, files bool) (add, addFile func(key, format string, args ...any)) {
	adder := func(on bool) func(key, format string, args ...any) {
		return func(key, format string, args ...any) {
			if on {
				*errs = append(*errs, optErr(key, fmt.Sprintf(format, args...)))
			}
		}
	}
	return adder(keys), adder(files)
}

// validate reports the problems of the keys (keys) and of the files and
// variables they name (files).
func (o Options) validate(keys, files bool) []error {
	var errs []error
	add, addFile := problemAdders(&errs, keys, files)

	embedded := strings.TrimSpace(o.URL) == ""
	if !embedded {
		for i, raw := range strings.Split(o.URL, ",") {
			if msg := checkURL(strings.TrimSpace(raw)); msg != "" {
				add("nats.url", "entry %d: %s", i+1, msg)
			}
		}
	} else {
		errs = append(errs, o.Embedded.validate(keys, files)...)
		// The refresher's own connection to its embedded server is
		// in-process, with an identity made for it: client credentials
		// would be silently ignored, which is worse than an error.
		for _, k := range o.authKeys() {
			add(k, "only used with nats.url; the refresher connects to its embedded server in-process (nats.embedded.users are for other clients)")
		}
		if o.TLS.enabled() {
			add("nats.tls", "only used with nats.url; the embedded server runs without TLS")
		}
	}

	// One way to authenticate.
	if keys := o.authMethods(); len(keys) > 1 {
		for _, k := range keys[1:] {
			add(k, "cannot be combined with %s; choose one way to authenticate", keys[0])
		}
	}
	// User and password.
	if o.Password != "" && o.PasswordEnv != "" {
		add("nats.password_env", "cannot be combined with nats.password")
	}
	if o.User == "" && (o.Password != "" || o.PasswordEnv != "") {
		add("nats.user", "required when a password is set")
	}
	if o.User != "" && o.Password == "" && o.PasswordEnv == "" {
		add("nats.password", "required with nats.user (or set nats.password_env)")
	}
	// TLS.
	if o.TLS.CertFile != "" && o.TLS.KeyFile == "" {
		add("nats.tls.key", "required when nats.tls.cert is set")
	}
	if o.TLS.KeyFile != "" && o.TLS.CertFile == "" {
		add("nats.tls.cert", "required when nats.tls.key is set")
	}
	if files {
		o.checkFiles(addFile)
	}
	return errs
}

// checkFiles reports, through add, what is wrong with the files and
// variables the options name (the I/O half of Validate).
func (o Options) checkFiles(add func(key, format string, args ...any)) {
	if o.PasswordEnv != "" && os.Getenv(o.PasswordEnv) == "" {
		add("nats.password_env", "environment variable %s is not set or empty", o.PasswordEnv)
	}
	// Credentials and nkey files.
	if o.CredsFile != "" {
		if data, msg := readFile(o.CredsFile); msg != "" {
			add("nats.creds", "%s", msg)
		} else {
			if !strings.Contains(string(data), "-----BEGIN NATS USER JWT-----") {
				add("nats.creds", "%s does not hold a user JWT", o.CredsFile)
			}
			if !holdsUserSeed(data) {
				add("nats.creds", "%s does not hold a user nkey seed", o.CredsFile)
			}
			wipe(data)
		}
	}
	if o.NKeyFile != "" {
		if data, msg := readFile(o.NKeyFile); msg != "" {
			add("nats.nkey", "%s", msg)
		} else {
			if !holdsUserSeed(data) {
				add("nats.nkey", "%s does not hold a user nkey seed (a line starting with SU)", o.NKeyFile)
			}
			wipe(data)
		}
	}
	// TLS files.
	certOK, keyOK := true, true
	if o.TLS.CertFile != "" {
		if _, msg := readFile(o.TLS.CertFile); msg != "" {
			add("nats.tls.cert", "%s", msg)
			certOK = false
		}
	}
	if o.TLS.KeyFile != "" {
		if data, msg := readFile(o.TLS.KeyFile); msg != "" {
			add("nats.tls.key", "%s", msg)
			keyOK = false
		} else {
			wipe(data)
		}
	}
	if o.TLS.CertFile != "" && o.TLS.KeyFile != "" && certOK && keyOK {
		if _, err := tls.LoadX509KeyPair(o.TLS.CertFile, o.TLS.KeyFile); err != nil {
			add("nats.tls.cert", "cannot load the certificate with nats.tls.key: %v", err)
		}
	}
	if o.TLS.CAFile != "" {
		if data, msg := readFile(o.TLS.CAFile); msg != "" {
			add("nats.tls.ca", "%s", msg)
		} else if !x509.NewCertPool().AppendCertsFromPEM(data) {
			add("nats.tls.ca", "%s holds no PEM certificate", o.TLS.CAFile)
		}
	}
}

// authMethods lists the YAML keys of the authentication methods in use.
func (o Options) authMethods() []string {
	var keys []string
	if o.User != "" || o.Password != "" || o.PasswordEnv != "" {
		keys = append(keys, "nats.user")
	}
	if o.Token != "" {
		keys = append(keys, "nats.token")
	}
	if o.CredsFile != "" {
		keys = append(keys, "nats.creds")
	}
	if o.NKeyFile != "" {
		keys = append(keys, "nats.nkey")
	}
	return keys
}

// authKeys lists every authentication key that is set.
func (o Options) authKeys() []string {
	var keys []string
	for _, kv := range []struct{ key, val string }{
		{"nats.user", o.User}, {"nats.password", o.Password}, {"nats.password_env", o.PasswordEnv},
		{"nats.token", o.Token}, {"nats.creds", o.CredsFile}, {"nats.nkey", o.NKeyFile},
	} {
		if kv.val != "" {
			keys = append(keys, kv.key)
		}
	}
	return keys
}

// checkURL returns what is wrong with one server URL, or "". It never
// echoes the URL, which may carry a password.
func checkURL(s string) string {
	if s == "" {
		return "empty"
	}
	if !strings.Contains(s, "://") {
		s = "nats://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "not a valid URL"
	}
	switch u.Scheme {
	case "nats", "tls", "ws", "wss":
	default:
		return fmt.Sprintf("scheme %q is not supported (nats, tls, ws, wss)", u.Scheme)
	}
	if u.Hostname() == "" {
		return "no host"
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Sprintf("port %q is not a number in 1-65535", p)
		}
	}
	return ""
}

// readFile reads path; on failure it returns a message for Validate.
func readFile(path string) ([]byte, string) {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Sprintf("file %s does not exist", path)
		}
		return nil, fmt.Sprintf("cannot read %s: %v", path, errors.Unwrap(err))
	}
	if fi.IsDir() {
		return nil, fmt.Sprintf("%s is a directory, not a file", path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Sprintf("cannot read %s: %v", path, errors.Unwrap(err))
	}
	return data, ""
}

// holdsUserSeed reports whether data holds a user nkey seed.
func holdsUserSeed(data []byte) bool {
	kp, err := nkeys.ParseDecoratedNKey(data)
	if err != nil {
		return false
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil || !nkeys.IsValidPublicUserKey(pub) {
		return false
	}
	_, err = kp.Seed()
	return err == nil
}

func wipe(b []byte) {
	for i := range b {
		b[i] = 'x'
	}
}

// RedactURLs returns the comma-separated URL list with any user info (a
// password, a token, a user name) replaced by "xxxxx"; an unparseable
// entry that could carry user info is replaced whole. Use it before a URL
// list goes into a log line or an error.
func RedactURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if !strings.Contains(p, "@") {
			parts[i] = p
			continue
		}
		s := p
		if !strings.Contains(s, "://") {
			s = "nats://" + s
		}
		u, err := url.Parse(s)
		if err != nil {
			parts[i] = "<invalid url>"
			continue
		}
		if u.User != nil {
			u.User = url.User("xxxxx")
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}

// Conn is a NATS connection with its JetStream context and, when the
// embedded server runs, that server.
type Conn struct {
	// NC is the NATS connection.
	NC *nats.Conn
	// JS is the JetStream API on NC.
	JS jetstream.JetStream
	// Server is the embedded server, nil when connected to an external one.
	Server *server.Server

	closeOnce sync.Once
}

// Close drains the connection (waiting at most its drain timeout), closes
// it, then shuts the embedded server down, if any, and waits until it has
// stopped. It is safe to call more than once and on a nil *Conn.
func (c *Conn) Close() {
	if c == nil {
		return
	}
	c.closeOnce.Do(func() {
		if nc := c.NC; nc != nil {
			if err := nc.Drain(); err == nil {
				// Drain finishes asynchronously; wait for the close it ends
				// with, bounded by the drain timeout.
				deadline := time.Now().Add(nc.Opts.DrainTimeout + time.Second)
				for !nc.IsClosed() && time.Now().Before(deadline) {
					time.Sleep(5 * time.Millisecond)
				}
			}
			nc.Close()
		}
		if s := c.Server; s != nil {
			s.Shutdown()
			s.WaitForShutdown()
		}
	})
}

// Connect connects to o.URL: a server URL or a comma-separated list of a
// cluster's URLs. The URL is required: with an empty o.URL Connect returns
// an error matching ErrNoURL (and ErrInvalidOptions) and starts nothing. A
// client that finds no URL in its configuration must say so, not get a
// private, empty embedded server that never receives a token; the
// embedded server runs only where it is asked for explicitly
// (ConnectEmbedded, which cmd/refresher calls when its nats.url is empty).
//
// It validates o first and returns every problem at once (the joined
// error matches ErrInvalidOptions). The connection reconnects forever
// (nats.MaxReconnects(-1)) every DefaultReconnectWait; extra options are
// applied last, so callers add handlers or override these defaults.
//
// While no server of the list can be reached (connection refused, dial
// timeouts) Connect keeps trying, with backoff, until ctx is done: give
// ctx a deadline to fail fast. Any other failure — authentication, TLS —
// is returned at once. Errors match ErrConnect and wrap the client's
// error (for example nats.ErrAuthorization); they never contain a
// password, token or seed.
func Connect(ctx context.Context, o Options, extra ...nats.Option) (*Conn, error) {
	servers := strings.TrimSpace(o.URL)
	if servers == "" {
		return nil, ErrNoURL
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	aopts, err := o.authOptions()
	if err != nil {
		return nil, err
	}
	return connect(ctx, o, servers, nil, append(aopts, extra...))
}

// ConnectEmbedded starts the embedded nats-server (StartEmbedded with
// o.Embedded, JetStream on) and connects to it in-process — with
// nats.embedded.users configured, as an identity of role refresher made
// for this start (RolePermissions), so the refresher holds no more rights
// than a refresher connecting from elsewhere. The returned Conn owns the
// server: Close shuts it down.
//
// It is the refresher's explicit choice for an empty nats.url (the config
// contract); o.URL must be empty, and client credentials and TLS, which
// the in-process connection would ignore, are refused (Options.Validate).
// Errors are those of StartEmbedded and Connect.
func ConnectEmbedded(ctx context.Context, o Options, extra ...nats.Option) (*Conn, error) {
	if strings.TrimSpace(o.URL) != "" {
		return nil, optErr("nats.url", "set; ConnectEmbedded starts an embedded server only when nats.url is empty (use Connect)")
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	s, selfAuth, err := startEmbedded(o.Embedded, true)
	if err != nil {
		return nil, err
	}
	opts := []nats.Option{nats.InProcessServer(s)}
	if selfAuth != nil {
		opts = append(opts, selfAuth)
	}
	return connect(ctx, o, s.ClientURL(), s, append(opts, extra...))
}

// connect dials servers with Connect's defaults, then opts; the returned
// Conn owns srv (nil: none). On failure srv is shut down.
func connect(ctx context.Context, o Options, servers string, srv *server.Server, opts []nats.Option) (*Conn, error) {
	base := []nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(DefaultReconnectWait),
	}
	if o.Name != "" {
		base = append(base, nats.Name(o.Name))
	}
	c := &Conn{Server: srv}
	nc, err := dial(ctx, servers, append(base, opts...))
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("%w at %s: %w%s", ErrConnect, RedactURLs(servers), err, o.hint(err))
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		c.Close()
		return nil, fmt.Errorf("%w: jetstream: %w", ErrConnect, err)
	}
	c.NC, c.JS = nc, js
	return c, nil
}

// authOptions turns the auth and TLS settings into nats options.
func (o Options) authOptions() ([]nats.Option, error) {
	var opts []nats.Option
	switch {
	case o.User != "":
		pw := o.Password
		if o.PasswordEnv != "" {
			pw = os.Getenv(o.PasswordEnv)
		}
		opts = append(opts, nats.UserInfo(o.User, pw))
	case o.Token != "":
		opts = append(opts, nats.Token(o.Token))
	case o.CredsFile != "":
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	case o.NKeyFile != "":
		opt, err := nats.NkeyOptionFromSeed(o.NKeyFile)
		if err != nil {
			return nil, optErr("nats.nkey", fmt.Sprintf("cannot load the seed from %s", o.NKeyFile))
		}
		opts = append(opts, opt)
	}
	if o.TLS.CAFile != "" {
		opts = append(opts, nats.RootCAs(o.TLS.CAFile))
	}
	if o.TLS.CertFile != "" {
		opts = append(opts, nats.ClientCert(o.TLS.CertFile, o.TLS.KeyFile))
	}
	return opts, nil
}

// hint explains a connection error in terms of the config keys.
func (o Options) hint(err error) string {
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired),
		errors.Is(err, nats.ErrAuthRevoked), errors.Is(err, nats.ErrAccountAuthExpired):
		switch {
		case o.User != "":
			return " (check nats.user and nats.password/nats.password_env)"
		case o.Token != "":
			return " (check nats.token)"
		case o.CredsFile != "":
			return " (check nats.creds)"
		case o.NKeyFile != "":
			return " (check nats.nkey)"
		default:
			return " (the server wants credentials: set nats.user/nats.password, nats.token, nats.creds or nats.nkey)"
		}
	case errors.Is(err, nats.ErrNoServers):
		return " (no server reachable)"
	}
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	if errors.As(err, &certErr) || errors.As(err, &unknownCA) || errors.As(err, &hostErr) {
		return " (the server certificate was not accepted: check nats.tls.ca and the host name in nats.url)"
	}
	if o.TLS.CertFile == "" && (errors.Is(err, nats.ErrTLS) || strings.Contains(err.Error(), "tls: certificate required")) {
		return " (the server may require a client certificate: set nats.tls.cert and nats.tls.key)"
	}
	if errors.Is(err, nats.ErrSecureConnWanted) {
		return " (nats.tls is set but the server offers no TLS)"
	}
	return ""
}

// dial connects, retrying while no server is reachable, until ctx is done.
func dial(ctx context.Context, servers string, opts []nats.Option) (*nats.Conn, error) {
	backoff := 100 * time.Millisecond
	var last error // of the previous attempt
	for {
		if err := ctx.Err(); err != nil {
			if last != nil {
				// ctx ended as the backoff did: still say why.
				return nil, fmt.Errorf("%w (last error: %w)", err, last)
			}
			return nil, err
		}
		timeout := DefaultConnectTimeout
		if dl, ok := ctx.Deadline(); ok {
			if left := time.Until(dl); left < timeout {
				timeout = max(left, 10*time.Millisecond)
			}
		}
		nc, err := nats.Connect(servers, append([]nats.Option{nats.Timeout(timeout)}, opts...)...)
		if err == nil {
			return nc, nil
		}
		if !unreachable(err) {
			return nil, err
		}
		last = err
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// unreachable reports whether err means "no server answered", as opposed
// to a server that answered and refused us.
func unreachable(err error) bool {
	if errors.Is(err, nats.ErrNoServers) || errors.Is(err, nats.ErrTimeout) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
