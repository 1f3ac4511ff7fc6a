package natsconf_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/natsconf"
)

const storeKeyEnv = "TK_TEST_STORE_KEY"

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// withStore runs f against an embedded server on dir started with o,
// then shuts the server down (flushing the store).
func withStore(t *testing.T, o natsconf.EmbeddedOptions, f func(kv jetstream.KeyValue)) {
	t.Helper()
	s, err := natsconf.StartEmbedded(o)
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	defer func() {
		s.Shutdown()
		s.WaitForShutdown()
	}()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "tokens", Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	f(kv)
}

// storeContains reports whether any file under dir contains secret.
func storeContains(t *testing.T, dir, secret string) bool {
	t.Helper()
	found, files := false, 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files++
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		found = found || bytes.Contains(b, []byte(secret))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files == 0 {
		t.Fatalf("no files in the store %s", dir)
	}
	return found
}

func put(t *testing.T, kv jetstream.KeyValue, key, val string) {
	t.Helper()
	if _, err := kv.Put(context.Background(), key, []byte(val)); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, kv jetstream.KeyValue, key string) string {
	t.Helper()
	e, err := kv.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return string(e.Value())
}

// TestStoreEncryptionAtRest: with a store key, a token written to the
// embedded server's store is not on disk in clear (without a key it is:
// the check can fail); a restart with the key reads it back; a wrong key
// or no key refuses to start with ErrStoreKey, names the key's source,
// never shows a key, and changes nothing: the right key still reads it.
func TestStoreEncryptionAtRest(t *testing.T) {
	logs := captureLog(t)

	t.Run("plain store holds the token in clear", func(t *testing.T) {
		dir := t.TempDir()
		token := "PLAINTOKEN-" + randomHex(t, 16)
		withStore(t, natsconf.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: dir}, func(kv jetstream.KeyValue) {
			put(t, kv, "mp", token)
		})
		if !storeContains(t, dir, token) {
			t.Fatal("the token is not found in a plain store: the encryption check below could not fail")
		}
	})

	for _, cipher := range []string{"", natsconf.StoreCipherChaCha, natsconf.StoreCipherAES} {
		name := cipher
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			key, wrong := randomHex(t, 32), randomHex(t, 32)
			token := "SECRETTOKEN-" + randomHex(t, 16)
			o := natsconf.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: dir, StoreKeyEnv: storeKeyEnv, StoreCipher: cipher}

			t.Setenv(storeKeyEnv, key)
			withStore(t, o, func(kv jetstream.KeyValue) { put(t, kv, "mp", token) })
			if storeContains(t, dir, token) {
				t.Fatal("the token is on disk in clear with encryption on")
			}
			withStore(t, o, func(kv jetstream.KeyValue) {
				if got := get(t, kv, "mp"); got != token {
					t.Fatalf("read back %q", got)
				}
			})

			t.Setenv(storeKeyEnv, wrong)
			_, err := natsconf.StartEmbedded(o)
			if !errors.Is(err, natsconf.ErrStoreKey) || !errors.Is(err, natsconf.ErrEmbeddedStart) ||
				!strings.Contains(err.Error(), "nats.embedded.store_key_env ("+storeKeyEnv+")") {
				t.Fatalf("wrong key: err = %v, want ErrStoreKey naming nats.embedded.store_key_env", err)
			}
			t.Logf("wrong key: %v", err)
			_, err = natsconf.StartEmbedded(natsconf.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: dir})
			if !errors.Is(err, natsconf.ErrStoreKey) || !strings.Contains(err.Error(), "is encrypted") {
				t.Fatalf("no key: err = %v, want ErrStoreKey saying the store is encrypted", err)
			}
			t.Logf("no key: %v", err)

			t.Setenv(storeKeyEnv, key)
			withStore(t, o, func(kv jetstream.KeyValue) {
				if got := get(t, kv, "mp"); got != token {
					t.Fatalf("after the refused starts, read back %q", got)
				}
			})
			for _, secret := range []string{key, wrong, token} {
				if strings.Contains(logs.String(), secret) {
					t.Errorf("the log contains a key or the token (%.6s…)", secret)
				}
			}
		})
	}
	if !strings.Contains(logs.String(), "embedded nats-server encrypts its store") {
		t.Error("the start with a key does not log that the store is encrypted")
	}
}

// TestStoreEncryptionTurnedOn: a plain store started with a key is
// encrypted by the server, and keeps its data.
func TestStoreEncryptionTurnedOn(t *testing.T) {
	captureLog(t)
	dir := t.TempDir()
	token := "LATERTOKEN-" + randomHex(t, 16)
	withStore(t, natsconf.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: dir}, func(kv jetstream.KeyValue) { put(t, kv, "mp", token) })
	t.Setenv(storeKeyEnv, randomHex(t, 32))
	o := natsconf.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: dir, StoreKeyEnv: storeKeyEnv}
	withStore(t, o, func(kv jetstream.KeyValue) {
		if got := get(t, kv, "mp"); got != token {
			t.Fatalf("read back %q", got)
		}
		put(t, kv, "other", "x")
	})
	if storeContains(t, dir, token) {
		t.Error("the token written before the key was set is still on disk in clear")
	}
	withStore(t, o, func(kv jetstream.KeyValue) {
		if got := get(t, kv, "mp"); got != token {
			t.Fatalf("read back %q", got)
		}
	})
}

// TestStoreKeyValidate: each problem of the store key settings names its
// key, matches ErrInvalidOptions, starts nothing and never shows a key.
func TestStoreKeyValidate(t *testing.T) {
	dir := t.TempDir()
	short := "short-key-123"
	shortFile := filepath.Join(dir, "short")
	emptyFile := filepath.Join(dir, "empty")
	goodFile := filepath.Join(dir, "good")
	good := randomHex(t, 32)
	for p, v := range map[string]string{shortFile: short + "\n", emptyFile: " \n", goodFile: good + "\n"} {
		if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("TK_TEST_EMPTY_KEY", "")
	t.Setenv("TK_TEST_SHORT_KEY", short)
	t.Setenv("TK_TEST_GOOD_KEY", good)
	for _, tc := range []struct {
		name string
		o    natsconf.EmbeddedOptions
		want string // "" = valid
	}{
		{"env", natsconf.EmbeddedOptions{StoreKeyEnv: "TK_TEST_GOOD_KEY"}, ""},
		{"file aes", natsconf.EmbeddedOptions{StoreKeyFile: goodFile, StoreCipher: "aes"}, ""},
		{"missing env", natsconf.EmbeddedOptions{StoreKeyEnv: "TK_TEST_NO_SUCH_KEY"}, "nats.embedded.store_key_env: environment variable TK_TEST_NO_SUCH_KEY is not set or empty"},
		{"empty env", natsconf.EmbeddedOptions{StoreKeyEnv: "TK_TEST_EMPTY_KEY"}, "nats.embedded.store_key_env: environment variable TK_TEST_EMPTY_KEY is not set or empty"},
		{"short env", natsconf.EmbeddedOptions{StoreKeyEnv: "TK_TEST_SHORT_KEY"}, "nats.embedded.store_key_env: the key is 13 bytes; at least 16"},
		{"missing file", natsconf.EmbeddedOptions{StoreKeyFile: filepath.Join(dir, "nope")}, "nats.embedded.store_key_file: file " + filepath.Join(dir, "nope") + " does not exist"},
		{"empty file", natsconf.EmbeddedOptions{StoreKeyFile: emptyFile}, "nats.embedded.store_key_file: " + emptyFile + " is empty"},
		{"short file", natsconf.EmbeddedOptions{StoreKeyFile: shortFile}, "nats.embedded.store_key_file: the key is 13 bytes"},
		{"both", natsconf.EmbeddedOptions{StoreKeyEnv: "TK_TEST_GOOD_KEY", StoreKeyFile: goodFile}, "nats.embedded.store_key_file: cannot be combined with store_key_env"},
		{"bad cipher", natsconf.EmbeddedOptions{StoreKeyEnv: "TK_TEST_GOOD_KEY", StoreCipher: "rot13"}, `nats.embedded.store_cipher: "rot13" is not a store cipher: chachapoly (default) or aes`},
		{"cipher without key", natsconf.EmbeddedOptions{StoreCipher: "aes"}, "nats.embedded.store_cipher: needs a key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.Listen = "127.0.0.1:0"
			tc.o.StoreDir = filepath.Join(t.TempDir(), "store")
			err := natsconf.Options{Embedded: tc.o}.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !errors.Is(err, natsconf.ErrInvalidOptions) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate: %v, want %q", err, tc.want)
			}
			s, err := natsconf.StartEmbedded(tc.o)
			if s != nil || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("StartEmbedded: %v", err)
			}
			if _, serr := os.Stat(tc.o.StoreDir); serr == nil {
				t.Error("the store dir was created although the options are invalid")
			}
			for _, secret := range []string{good, short} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("the error shows a key: %v", err)
				}
			}
		})
	}
	// The keys alone (no environment or files looked at): only the
	// combination problems.
	if err := (natsconf.Options{Embedded: natsconf.EmbeddedOptions{StoreKeyEnv: "TK_TEST_NO_SUCH_KEY"}}).ValidateKeys(); err != nil {
		t.Errorf("ValidateKeys looked at the environment: %v", err)
	}
}
