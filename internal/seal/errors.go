package seal

import "errors"

// Every error the package returns matches one of these with errors.Is.
// The wrapping error names the setting, the KV key or the key id, never
// a key or a plaintext.
var (
	// ErrNoKey is returned by Config.Load when no primary key is
	// configured (neither secrets_key_env nor secrets_key_file), and by
	// the methods of a nil *Keyring.
	ErrNoKey = errors.New("seal: no secrets key configured")

	// ErrBadKey is returned for unusable key material: an environment
	// variable unset or empty, a file unreadable or empty, a value that
	// is not base64 or does not decode to exactly 32 bytes, both the env
	// and the file form of one setting, two different keys with one id.
	ErrBadKey = errors.New("seal: bad secrets key")

	// ErrMalformed is returned by Open for a value that is not
	// "tk1:<key-id>:<base64(nonce|ciphertext)>": another version, a bad
	// key id, non-canonical base64, too short to hold a nonce and a tag.
	ErrMalformed = errors.New("seal: not a sealed value")

	// ErrUnknownKey is returned by Open for a value sealed under a key
	// that is not in the keyring: a key dropped from the configuration
	// while values sealed under it remain (reseal before dropping it).
	ErrUnknownKey = errors.New("seal: sealed under a key not in the keyring")

	// ErrAuth is returned by Open when the value does not authenticate
	// under its key: the ciphertext was changed, or the value was sealed
	// for another KV key and moved.
	ErrAuth = errors.New("seal: sealed value does not authenticate")
)
