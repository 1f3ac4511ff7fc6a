package seal

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Config says where the secrets keys are, as the refresher's YAML spells
// it at the top level:
//
//	secrets_key_env: TK_SECRETS_KEY          # the primary key, or:
//	secrets_key_file: /run/secrets/tk-key
//	secrets_keys_old_env: [TK_SECRETS_KEY_OLD]         # still opened
//	secrets_keys_old_files: [/run/secrets/tk-key-old]  # still opened
//
// Each names an environment variable or a file holding the base64
// (standard alphabet, padded) of exactly 32 bytes, surrounding white
// space ignored: `head -c32 /dev/urandom | base64`. The primary seals
// and opens; old keys only open, for a rotation (docs/operations.md).
type Config struct {
	KeyEnv      string   `yaml:"secrets_key_env"`
	KeyFile     string   `yaml:"secrets_key_file"`
	OldKeyEnvs  []string `yaml:"secrets_keys_old_env"`
	OldKeyFiles []string `yaml:"secrets_keys_old_files"`
}

// Configured reports whether any key setting is present.
func (c Config) Configured() bool {
	return c.KeyEnv != "" || c.KeyFile != "" || len(c.OldKeyEnvs) > 0 || len(c.OldKeyFiles) > 0
}

// maxKeyFile bounds what is read of a key file: a key is 44 characters.
const maxKeyFile = 4096

// Load reads the keys from the environment and files and returns the
// keyring. It reports every problem at once (errors.Join), each naming
// the setting and the variable or file, never a value: ErrNoKey without
// a primary, ErrBadKey for material that cannot be used.
func (c Config) Load() (*Keyring, error) {
	var errs []error
	bad := func(setting, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %w: %s", setting, ErrBadKey, fmt.Sprintf(format, a...)))
	}
	var primary []byte
	switch {
	case c.KeyEnv != "" && c.KeyFile != "":
		bad("secrets_key_env/secrets_key_file", "set only one")
	case c.KeyEnv != "":
		primary = envKey("secrets_key_env", c.KeyEnv, bad)
	case c.KeyFile != "":
		primary = fileKey("secrets_key_file", c.KeyFile, bad)
	default:
		errs = append(errs, fmt.Errorf("secrets_key_env/secrets_key_file: %w: set one to the base64 of 32 bytes", ErrNoKey))
	}
	var old [][]byte
	for i, name := range c.OldKeyEnvs {
		if k := envKey(fmt.Sprintf("secrets_keys_old_env[%d]", i), name, bad); k != nil {
			old = append(old, k)
		}
	}
	for i, path := range c.OldKeyFiles {
		if k := fileKey(fmt.Sprintf("secrets_keys_old_files[%d]", i), path, bad); k != nil {
			old = append(old, k)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return NewKeyring(primary, old...)
}

func envKey(setting, name string, bad func(string, string, ...any)) []byte {
	if name == "" {
		bad(setting, "empty variable name")
		return nil
	}
	v, ok := os.LookupEnv(name)
	if !ok || strings.TrimSpace(v) == "" {
		bad(setting, "environment variable %s is not set or empty", name)
		return nil
	}
	return decodeKey(setting, "environment variable "+name, []byte(v), bad)
}

func fileKey(setting, path string, bad func(string, string, ...any)) []byte {
	if path == "" {
		bad(setting, "empty file name")
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		// *PathError names the file and the reason, never contents.
		bad(setting, "%v", err)
		return nil
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		bad(setting, "%v", err)
		return nil
	}
	if len(b) > maxKeyFile {
		bad(setting, "%s is over %d bytes, not a key", path, maxKeyFile)
		return nil
	}
	if len(bytes.TrimSpace(b)) == 0 {
		bad(setting, "%s is empty", path)
		return nil
	}
	return decodeKey(setting, path, b, bad)
}

func decodeKey(setting, where string, v []byte, bad func(string, string, ...any)) []byte {
	k, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(v)))
	if err != nil {
		bad(setting, "%s is not base64 (make a key with: head -c32 /dev/urandom | base64)", where)
		return nil
	}
	if len(k) != KeySize {
		bad(setting, "%s decodes to %d bytes, want %d", where, len(k), KeySize)
		return nil
	}
	return k
}
