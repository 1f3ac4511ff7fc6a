package natsconf

import (
	"fmt"
	"os"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
)

// Store ciphers of nats.embedded.store_cipher (nats-server's JetStream
// store encryption).
const (
	// StoreCipherChaCha is ChaCha20-Poly1305, the default when a store
	// key is set.
	StoreCipherChaCha = "chachapoly"
	// StoreCipherAES is AES-GCM (for FIPS-140 environments).
	StoreCipherAES = "aes"
)

// MinStoreKeyLen is the shortest store key accepted, in bytes. The key
// is not used as a cipher key directly but through HMAC-SHA256, so any
// high-entropy string will do: `openssl rand -hex 32`.
const MinStoreKeyLen = 16

// encrypted reports whether a store key is configured.
func (o EmbeddedOptions) encrypted() bool { return o.StoreKeyEnv != "" || o.StoreKeyFile != "" }

// storeKeySource names where the key comes from, for messages (never the
// key itself).
func (o EmbeddedOptions) storeKeySource() string {
	if o.StoreKeyEnv != "" {
		return "nats.embedded.store_key_env (" + o.StoreKeyEnv + ")"
	}
	return "nats.embedded.store_key_file (" + o.StoreKeyFile + ")"
}

// storeCipher maps store_cipher ("" meaning the default) to the server's
// cipher; ok is false for an unknown name.
func storeCipher(name string) (server.StoreCipher, bool) {
	switch name {
	case "", StoreCipherChaCha, "chacha":
		return server.ChaCha, true
	case StoreCipherAES:
		return server.AES, true
	}
	return server.NoCipher, false
}

// validateStoreKey adds the problems of the store encryption keys (add)
// and of the variable or file holding the key (addFile, when files).
func (o EmbeddedOptions) validateStoreKey(add, addFile func(key, format string, args ...any), files bool) {
	if _, ok := storeCipher(o.StoreCipher); !ok {
		add("nats.embedded.store_cipher", "%q is not a store cipher: %s (default) or %s", o.StoreCipher, StoreCipherChaCha, StoreCipherAES)
	}
	switch {
	case o.StoreKeyEnv != "" && o.StoreKeyFile != "":
		add("nats.embedded.store_key_file", "cannot be combined with store_key_env; choose one")
		return
	case !o.encrypted():
		if o.StoreCipher != "" {
			add("nats.embedded.store_cipher", "needs a key: set nats.embedded.store_key_env or store_key_file")
		}
		return
	}
	if !files {
		return
	}
	key, msg := o.readStoreKey()
	switch {
	case msg != "":
		addFile(o.storeKeyKey(), "%s", msg)
	case len(key) < MinStoreKeyLen:
		addFile(o.storeKeyKey(), "the key is %d bytes; at least %d are needed (for example `openssl rand -hex 32`)", len(key), MinStoreKeyLen)
	}
}

// storeKeyKey is the YAML key that holds the store key's source.
func (o EmbeddedOptions) storeKeyKey() string {
	if o.StoreKeyEnv != "" {
		return "nats.embedded.store_key_env"
	}
	return "nats.embedded.store_key_file"
}

// readStoreKey reads the store key from its variable or file, surrounding
// white space removed. msg says what is wrong (never the key).
func (o EmbeddedOptions) readStoreKey() (key, msg string) {
	if o.StoreKeyEnv != "" {
		key = strings.TrimSpace(os.Getenv(o.StoreKeyEnv))
		if key == "" {
			return "", fmt.Sprintf("environment variable %s is not set or empty", o.StoreKeyEnv)
		}
		return key, ""
	}
	data, msg := readFile(o.StoreKeyFile)
	if msg != "" {
		return "", msg
	}
	key = strings.TrimSpace(string(data))
	wipe(data)
	if key == "" {
		return "", fmt.Sprintf("%s is empty", o.StoreKeyFile)
	}
	return key, ""
}

// applyStoreKey sets the server options' store encryption from o. The
// options must have been validated.
func (o EmbeddedOptions) applyStoreKey(sopts *server.Options) error {
	if !o.encrypted() {
		return nil
	}
	key, msg := o.readStoreKey()
	if msg != "" {
		return optErr(o.storeKeyKey(), msg)
	}
	sopts.JetStreamKey = key
	sopts.JetStreamCipher, _ = storeCipher(o.StoreCipher)
	return nil
}

// storeKeyError explains a store the server could not decrypt at start:
// its first such warning is warning.
func (o EmbeddedOptions) storeKeyError(warning string) error {
	if !o.encrypted() {
		return fmt.Errorf("%w: %w: the store in %s is encrypted and nats.embedded.store_key_env/store_key_file is not set: "+
			"configure the key it was written with (server: %s)", ErrEmbeddedStart, ErrStoreKey, o.StoreDir, warning)
	}
	return fmt.Errorf("%w: %w: the store in %s cannot be decrypted with the key of %s: "+
		"it was written with another key (or is damaged); the store is left as it is (server: %s)",
		ErrEmbeddedStart, ErrStoreKey, o.StoreDir, o.storeKeySource(), warning)
}

// isDecryptWarning reports whether a server warning says that a stored
// stream or consumer could not be decrypted (it is then skipped, which
// would look like a lost bucket).
func isDecryptWarning(msg string) bool {
	return strings.Contains(msg, "Error decrypting") || strings.Contains(msg, "encryption key length")
}
