// Command tokenctl is the operator's tool for tokenkeeper: it reads the
// token records the refresher keeps in the JetStream KV bucket, follows
// their updates, asks the refresher for a new token (or ticket) and for
// JS-SDK signatures, and shows the state of every app and the current
// leader.
//
//	tokenctl [global flags] get KEY
//	tokenctl [global flags] watch KEY
//	tokenctl [global flags] refresh KEY [--stale REV]
//	tokenctl [global flags] sign APP|COMPONENT.AUTHORIZER URL [--ticket agent_config]
//	tokenctl [global flags] status
//	tokenctl [global flags] audit [KEY] [--since D] [--follow]
//	tokenctl [global flags] authorizers list|show|import|export|reconcile COMPONENT [AUTHORIZER|FILE]
//	tokenctl hash-token [--new] < token
//
// It speaks only the wire contract of docs/protocol.md, with the same
// connection options as the refresher (natsconf.Options). Exit status: 0
// ok, 1 runtime error, 2 usage error. Run "tokenctl --help" for details.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
)

// Exit codes.
const (
	exitOK      = 0
	exitRuntime = 1
	exitUsage   = 2
)

// Environment variables tokenctl reads.
const (
	// envURL is the default of --nats.
	envURL = "NATS_URL"
	// envPassword is the password of --user when --password is not given.
	envPassword = "TOKENCTL_PASSWORD"
)

// defaultURL is used when neither --nats nor NATS_URL is set. tokenctl
// never starts an embedded server.
const defaultURL = "nats://127.0.0.1:4222"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// globals are the flags every command accepts, before or after its name.
type globals struct {
	url      string
	creds    string
	nkey     string
	user     string
	password string
	token    string
	tlsCA    string
	tlsCert  string
	tlsKey   string
	bucket   string
	timeout  time.Duration
	json     bool
}

// defaultGlobals are the defaults of the global flags.
func defaultGlobals() globals {
	return globals{bucket: contract.DefaultBucket, timeout: 5 * time.Second}
}

// register defines the global flags on fs. Each flag's default is the
// current value of g, so that flags given before the command keep their
// values when the command's flag set defines them again.
func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.url, "nats", g.url, "NATS server `URL`, or a comma-separated list of a cluster's URLs\n(default: $"+envURL+", else "+defaultURL+")")
	fs.StringVar(&g.creds, "creds", g.creds, "authenticate with this credentials `FILE` (user JWT and nkey seed)")
	fs.StringVar(&g.nkey, "nkey", g.nkey, "authenticate with the user nkey seed in `FILE`")
	fs.StringVar(&g.user, "user", g.user, "authenticate with this user `NAME` (password: --password or $"+envPassword+")")
	fs.StringVar(&g.password, "password", g.password, "`PASSWORD` of --user; prefer $"+envPassword+", which other users cannot see in ps")
	fs.StringVar(&g.token, "token", g.token, "authenticate with this `TOKEN`")
	fs.StringVar(&g.tlsCA, "tls-ca", g.tlsCA, "verify the server with the CA certificates in PEM `FILE`")
	fs.StringVar(&g.tlsCert, "tls-cert", g.tlsCert, "present the client certificate in PEM `FILE` (with --tls-key)")
	fs.StringVar(&g.tlsKey, "tls-key", g.tlsKey, "private key of --tls-cert, PEM `FILE`")
	fs.StringVar(&g.bucket, "bucket", g.bucket, "KV `BUCKET` of the token records; the lease lives in BUCKET_lease")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "bound of the connection and of each request, a `DURATION` such as 500ms or 1m")
	fs.BoolVar(&g.json, "json", g.json, "machine output: JSON instead of text")
}

// usageError is a problem with the command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// usagef returns a usageError with a formatted message.
func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// command is one subcommand of tokenctl.
type command struct {
	name    string
	args    string // synopsis of the positional arguments
	summary string
	help    string // the long description, printed by CMD --help
	nargs   int    // exact number of positional arguments
	anyKey  bool   // the first argument is any key (APP, APP.TICKET, COMPONENT.AUTHORIZER[.TICKET]), not only an app
	optArgs bool   // the positional arguments are optional (0 to nargs)
	flags   func(fs *flag.FlagSet) any
	run     func(ctx context.Context, c *cli, args []string, flags any) error
}

// commands are tokenctl's subcommands, in the order of the help.
var commands = []*command{getCommand, watchCommand, refreshCommand, signCommand, statusCommand, auditCommand, authorizersCommand, hashTokenCommand}

// lookup returns the command called name, or nil.
func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// cli is one invocation of tokenctl.
type cli struct {
	g      globals
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// run is tokenctl: it parses args (without the program name), runs the
// command, writes to stdout and stderr, and returns the exit status.
// Cancelling ctx stops a running command (watch returns 0 then).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runIO(ctx, args, os.Stdin, stdout, stderr)
}

// runIO is run reading standard input from stdin (hash-token).
func runIO(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &cli{g: defaultGlobals(), stdin: stdin, stdout: stdout, stderr: stderr}
	code, err := c.main(ctx, args)
	if err != nil {
		var ue *usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "tokenctl: %s\nRun 'tokenctl --help' for usage.\n", ue.msg)
			return exitUsage
		}
		fmt.Fprintf(stderr, "tokenctl: %s\n", err)
		return exitRuntime
	}
	return code
}

// main parses the global flags, the command and its flags, validates them
// and runs the command. A usageError means exit status 2, another error 1.
func (c *cli) main(ctx context.Context, args []string) (int, error) {
	fs := newFlagSet("tokenctl")
	c.g.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.mainUsage(c.stdout)
			return exitOK, nil
		}
		return 0, usagef("%v", err)
	}
	rest := fs.Args()
	if len(rest) == 0 {
		c.mainUsage(c.stderr)
		return exitUsage, nil
	}
	name, rest := rest[0], rest[1:]
	if name == "help" {
		if len(rest) == 0 {
			c.mainUsage(c.stdout)
			return exitOK, nil
		}
		cmd := lookup(rest[0])
		if cmd == nil {
			return 0, usagef("unknown command %q (commands: %s)", rest[0], commandNames())
		}
		c.commandUsage(c.stdout, cmd)
		return exitOK, nil
	}
	cmd := lookup(name)
	if cmd == nil {
		return 0, usagef("unknown command %q (commands: %s)", name, commandNames())
	}

	cfs := newFlagSet("tokenctl " + cmd.name)
	cflags := cmd.flags(cfs)
	c.g.register(cfs)
	pos, err := parseInterspersed(cfs, rest)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.commandUsage(c.stdout, cmd)
			return exitOK, nil
		}
		return 0, usagef("%s: %v", cmd.name, err)
	}
	if len(pos) != cmd.nargs && !(cmd.optArgs && len(pos) < cmd.nargs) {
		if cmd.nargs == 0 {
			return 0, usagef("%s takes no arguments, got %q", cmd.name, pos)
		}
		return 0, usagef("usage: tokenctl %s %s (got %d arguments: %q)", cmd.name, cmd.args, len(pos), pos)
	}
	if len(pos) > 0 {
		if cmd.anyKey {
			if _, _, err := contract.ParseKey(pos[0]); err != nil {
				return 0, usagef("%q is not a key: an app name (1-64 characters of A-Z a-z 0-9 _ -), APP.TICKET such as mp.jsapi, or COMPONENT.AUTHORIZER[.TICKET]", pos[0])
			}
		} else if !contract.ValidAppName(pos[0]) {
			return 0, usagef("%q is not an app name (1-64 characters of A-Z a-z 0-9 _ -)", pos[0])
		}
	}
	if err := c.checkGlobals(); err != nil {
		return 0, err
	}
	if err := cmd.run(ctx, c, pos, cflags); err != nil {
		return 0, err
	}
	return exitOK, nil
}

// newFlagSet returns a flag set that reports errors to its caller only.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parseInterspersed parses args with fs, allowing flags after positional
// arguments ("get mp --json"); "--" ends the flags. It returns the
// positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

var bucketNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// checkGlobals validates the global flags without connecting.
func (c *cli) checkGlobals() error {
	if !bucketNameRE.MatchString(c.g.bucket) {
		return usagef("--bucket %q is not a bucket name (A-Z a-z 0-9 _ -)", c.g.bucket)
	}
	if c.g.timeout <= 0 {
		return usagef("--timeout must be positive, got %s", c.g.timeout)
	}
	if errs := natsconf.Problems(c.options().Validate()); len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = flagNames.Replace(e.Error())
		}
		return usagef("%s", strings.Join(msgs, "\n  "))
	}
	return nil
}

// serverURL is the URL list tokenctl connects to: --nats, else $NATS_URL,
// else defaultURL: an explicit default. It is never empty (natsconf.Connect
// refuses an empty URL; it never starts an embedded server).
func (c *cli) serverURL() string {
	if u := strings.TrimSpace(c.g.url); u != "" {
		return u
	}
	if u := strings.TrimSpace(os.Getenv(envURL)); u != "" {
		return u
	}
	return defaultURL
}

// options maps the global flags onto natsconf.Options.
func (c *cli) options() natsconf.Options {
	o := natsconf.Options{
		URL:       c.serverURL(),
		User:      c.g.user,
		Password:  c.g.password,
		Token:     c.g.token,
		CredsFile: c.g.creds,
		NKeyFile:  c.g.nkey,
		TLS:       natsconf.TLSOptions{CAFile: c.g.tlsCA, CertFile: c.g.tlsCert, KeyFile: c.g.tlsKey},
		Name:      "tokenctl",
	}
	if o.User != "" && o.Password == "" && os.Getenv(envPassword) != "" {
		o.PasswordEnv = envPassword
	}
	return o
}

// flagNames rewrites the config keys in natsconf's messages as the flags
// of tokenctl. Longer keys come first: Replacer tries them in order.
var flagNames = strings.NewReplacer(
	"nats.password_env", "$"+envPassword,
	"nats.password", "--password",
	"nats.user", "--user",
	"nats.token", "--token",
	"nats.creds", "--creds",
	"nats.nkey", "--nkey",
	"nats.tls.ca", "--tls-ca",
	"nats.tls.cert", "--tls-cert",
	"nats.tls.key", "--tls-key",
	"nats.tls", "--tls-*",
	"nats.url", "--nats",
)

// commandNames lists the commands for error messages.
func commandNames() string {
	names := make([]string, len(commands))
	for i, c := range commands {
		names[i] = c.name
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// mainUsage writes tokenctl --help.
func (c *cli) mainUsage(w io.Writer) {
	fmt.Fprint(w, `tokenctl - operator tool for tokenkeeper

tokenkeeper's refresher keeps one record per key (an app's access token,
an app's ticket under APP.TICKET such as mp.jsapi, an Open Platform
authorizer's token under COMPONENT.AUTHORIZER and its tickets under
COMPONENT.AUTHORIZER.TICKET, and when each expires) in a JetStream KV
bucket and serves token.refresh.<key> and token.sign.<app> (or
token.sign.<component>.<authorizer>) requests. tokenctl reads and follows those records, asks
for new tokens and tickets and for JS-SDK signatures, and shows who leads.
The wire contract is docs/protocol.md.

Usage:
  tokenctl [global flags] COMMAND [flags] [arguments]
  tokenctl help [COMMAND]

Commands:
`)
	tw := newTable(w)
	for _, cmd := range commands {
		fmt.Fprintf(tw, "  %s %s\t%s\n", cmd.name, cmd.args, cmd.summary)
	}
	tw.Flush()
	fmt.Fprint(w, "\nGlobal flags (before or after the command):\n")
	printGlobalFlags(w)
	fmt.Fprint(w, globalNotes)
	fmt.Fprint(w, "\nRun 'tokenctl COMMAND --help' for a command's details.\n")
}

// globalNotes ends every help text.
const globalNotes = `
Environment:
  NATS_URL           default of --nats
  TOKENCTL_PASSWORD  password of --user when --password is not given

One way to authenticate at a time: --user, --token, --creds or --nkey.
Passwords and tokens are never printed, not even from a URL with user info.

Exit status:
  0  success
  1  runtime error: NATS unreachable, bucket or app missing, error reply
  2  usage error: unknown command, bad flags or arguments, connection
     flags that cannot work (a missing --creds file, --user without a
     password, two ways to authenticate)
`

// commandUsage writes tokenctl CMD --help.
func (c *cli) commandUsage(w io.Writer, cmd *command) {
	fmt.Fprintf(w, "Usage: tokenctl [global flags] %s %s\n\n%s\n", cmd.name, cmd.args, cmd.summary)
	fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(cmd.help))
	// Command flags first, then the global ones.

	// A fresh flag set: defaults, not the values given on this command
	// line (which may hold a password).
	own := newFlagSet("")
	cmd.flags(own)
	if n := countFlags(own); n > 0 {
		fmt.Fprint(w, "\nFlags:\n")
		own.SetOutput(w)
		own.PrintDefaults()
	}
	fmt.Fprint(w, "\nGlobal flags (before or after the command):\n")
	printGlobalFlags(w)
	fmt.Fprint(w, globalNotes)
}

// printGlobalFlags lists the global flags with their defaults (never the
// values of this command line, which may hold a password).
func printGlobalFlags(w io.Writer) {
	g := defaultGlobals()
	fs := newFlagSet("")
	g.register(fs)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// countFlags returns the number of flags defined in fs.
func countFlags(fs *flag.FlagSet) int {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n
}
