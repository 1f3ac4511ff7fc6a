package natsconf

import "errors"

// Sentinel errors. Errors returned by this package wrap one of these (and,
// where there is one, the underlying NATS error), so callers test them with
// errors.Is. No error string ever contains a password, token or seed.
var (
	// ErrInvalidOptions marks a problem found by Options.Validate. Every
	// error that Validate returns matches it, and so does the joined error
	// that Connect returns when Validate found problems.
	ErrInvalidOptions = errors.New("invalid nats options")

	// ErrNoURL is returned by Connect when no server URL is given. It
	// matches ErrInvalidOptions. Connect never starts a server: only
	// ConnectEmbedded (or StartEmbedded) does, when asked to.
	ErrNoURL error = &optionError{key: "nats.url", msg: "no NATS server URL given: set it (for example nats://127.0.0.1:4222, or $NATS_URL); a client never starts an embedded server"}

	// ErrInvalidBucketConfig marks a BucketConfig that EnsureBucket refuses
	// before asking the server (bad name, replicas or history out of range,
	// negative durations).
	ErrInvalidBucketConfig = errors.New("invalid bucket config")

	// ErrNoJetStream means the server, or the account the connection is
	// bound to, has no JetStream: enable JetStream on the server (and for
	// the account) or connect with another user.
	ErrNoJetStream = errors.New("jetstream is not enabled for this server or account")

	// ErrServerTooOld means the connected nats-server is older than 2.11,
	// the first release with per-message TTLs and limit markers, which
	// tokenkeeper's buckets need.
	ErrServerTooOld = errors.New("nats-server is too old: tokenkeeper needs 2.11 or newer")

	// ErrAddressInUse means the embedded server could not listen because
	// another process already uses the address of nats.embedded.listen.
	ErrAddressInUse = errors.New("address already in use")

	// ErrEmbeddedStart means the embedded nats-server failed to start or to
	// become ready for connections: taken address (then the error matches
	// ErrAddressInUse too), store directory, JetStream initialisation. The
	// message carries the server's own error when it logged one.
	ErrEmbeddedStart = errors.New("embedded nats-server did not start")

	// ErrStoreKey means the embedded server's JetStream store cannot be
	// decrypted: it is encrypted and no key is configured
	// (nats.embedded.store_key_env / store_key_file), or the key is not the
	// one it was written with. It comes with ErrEmbeddedStart; nothing is
	// changed on disk.
	ErrStoreKey = errors.New("the embedded server's store cannot be decrypted")

	// ErrConnect marks a failure to connect to NATS. It wraps the error of
	// the NATS client (nats.ErrAuthorization, nats.ErrNoServers, TLS errors
	// …), so errors.Is works with those too.
	ErrConnect = errors.New("cannot connect to nats")
)

// optionError is one problem found by Validate. Its message starts with the
// YAML key ("nats.tls.cert: ...") and it matches ErrInvalidOptions.
type optionError struct {
	key string
	msg string
}

func (e *optionError) Error() string { return e.key + ": " + e.msg }

// Is makes every optionError match ErrInvalidOptions.
func (e *optionError) Is(target error) bool { return target == ErrInvalidOptions }

func optErr(key, msg string) error { return &optionError{key: key, msg: msg} }
