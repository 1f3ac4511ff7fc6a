package seal_test

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/internal/seal"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigLoad(t *testing.T) {
	primary, old1, old2 := newKey(t), newKey(t), newKey(t)
	t.Setenv("TK_TEST_SEAL_KEY", base64.StdEncoding.EncodeToString(primary))
	t.Setenv("TK_TEST_SEAL_OLD", "  "+base64.StdEncoding.EncodeToString(old1)+"\n")
	file := writeFile(t, base64.StdEncoding.EncodeToString(old2)+"\n") // as `base64` writes it

	k, err := seal.Config{KeyEnv: "TK_TEST_SEAL_KEY", OldKeyEnvs: []string{"TK_TEST_SEAL_OLD"}, OldKeyFiles: []string{file}}.Load()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{seal.KeyID(primary), seal.KeyID(old1), seal.KeyID(old2)}
	if got := k.IDs(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("IDs = %v, want %v", got, want)
	}
	// The file form of the primary.
	pf := writeFile(t, base64.StdEncoding.EncodeToString(primary))
	k2, err := seal.Config{KeyFile: pf}.Load()
	if err != nil {
		t.Fatal(err)
	}
	sealed, _ := k2.Seal(kvKey, []byte(secret))
	if got, err := k.Open(kvKey, sealed); err != nil || string(got) != secret {
		t.Fatalf("a value sealed with the file's key opens with the env's: %v", err)
	}
}

func TestConfigBadKeyMaterial(t *testing.T) {
	good := base64.StdEncoding.EncodeToString(newKey(t))
	short := base64.StdEncoding.EncodeToString(newKey(t)[:16])
	notB64 := "this-is-not~base64~but-a-password-SECRETVALUE"
	raw32 := strings.Repeat("k", 32) // 32 characters, not base64 of 32 bytes
	t.Setenv("TK_TEST_GOOD", good)
	t.Setenv("TK_TEST_SHORT", short)
	t.Setenv("TK_TEST_NOTB64", notB64)
	t.Setenv("TK_TEST_RAW32", raw32)
	t.Setenv("TK_TEST_EMPTY", "")
	t.Setenv("TK_TEST_BLANK", "  \n")
	os.Unsetenv("TK_TEST_UNSET_SEAL_42")
	dir := t.TempDir()

	cases := []struct {
		name string
		cfg  seal.Config
		want error
		says []string // every one in the error
	}{
		{"nothing", seal.Config{}, seal.ErrNoKey, []string{"secrets_key_env/secrets_key_file"}},
		{"only old keys", seal.Config{OldKeyEnvs: []string{"TK_TEST_GOOD"}}, seal.ErrNoKey, []string{"secrets_key_env/secrets_key_file"}},
		{"both forms", seal.Config{KeyEnv: "TK_TEST_GOOD", KeyFile: writeFile(t, good)}, seal.ErrBadKey, []string{"set only one"}},
		{"unset env", seal.Config{KeyEnv: "TK_TEST_UNSET_SEAL_42"}, seal.ErrBadKey, []string{"secrets_key_env", "TK_TEST_UNSET_SEAL_42", "not set or empty"}},
		{"empty env", seal.Config{KeyEnv: "TK_TEST_EMPTY"}, seal.ErrBadKey, []string{"secrets_key_env", "TK_TEST_EMPTY", "not set or empty"}},
		{"blank env", seal.Config{KeyEnv: "TK_TEST_BLANK"}, seal.ErrBadKey, []string{"secrets_key_env", "not set or empty"}},
		{"not base64", seal.Config{KeyEnv: "TK_TEST_NOTB64"}, seal.ErrBadKey, []string{"secrets_key_env", "TK_TEST_NOTB64", "not base64", "head -c32 /dev/urandom | base64"}},
		{"raw 32 characters", seal.Config{KeyEnv: "TK_TEST_RAW32"}, seal.ErrBadKey, []string{"secrets_key_env", "decodes to 24 bytes, want 32"}},
		{"16 bytes", seal.Config{KeyEnv: "TK_TEST_SHORT"}, seal.ErrBadKey, []string{"secrets_key_env", "decodes to 16 bytes, want 32"}},
		{"missing file", seal.Config{KeyFile: filepath.Join(dir, "nope")}, seal.ErrBadKey, []string{"secrets_key_file", "nope", "no such file"}},
		{"empty file", seal.Config{KeyFile: writeFile(t, "\n")}, seal.ErrBadKey, []string{"secrets_key_file", "is empty"}},
		{"file not base64", seal.Config{KeyFile: writeFile(t, notB64)}, seal.ErrBadKey, []string{"secrets_key_file", "not base64"}},
		{"huge file", seal.Config{KeyFile: writeFile(t, strings.Repeat("A", 10000))}, seal.ErrBadKey, []string{"secrets_key_file", "not a key"}},
		{"a directory", seal.Config{KeyFile: dir}, seal.ErrBadKey, []string{"secrets_key_file"}},
		{"bad old env", seal.Config{KeyEnv: "TK_TEST_GOOD", OldKeyEnvs: []string{"TK_TEST_GOOD", "TK_TEST_SHORT"}}, seal.ErrBadKey, []string{"secrets_keys_old_env[1]", "TK_TEST_SHORT", "16 bytes"}},
		{"bad old file", seal.Config{KeyEnv: "TK_TEST_GOOD", OldKeyFiles: []string{writeFile(t, notB64)}}, seal.ErrBadKey, []string{"secrets_keys_old_files[0]", "not base64"}},
		{"empty old name", seal.Config{KeyEnv: "TK_TEST_GOOD", OldKeyEnvs: []string{""}}, seal.ErrBadKey, []string{"secrets_keys_old_env[0]", "empty variable name"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, err := c.cfg.Load()
			if !errors.Is(err, c.want) || k != nil {
				t.Fatalf("Load = %v, %v; want %v", k, err, c.want)
			}
			for _, s := range c.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("the error %q does not say %q", err, s)
				}
			}
			for _, v := range []string{good, short, notB64, raw32} {
				if strings.Contains(err.Error(), v) {
					t.Fatalf("the error %q holds a key's value", err)
				}
			}
		})
	}
	// Every problem at once.
	_, err := seal.Config{KeyEnv: "TK_TEST_SHORT", OldKeyEnvs: []string{"TK_TEST_UNSET_SEAL_42"}, OldKeyFiles: []string{filepath.Join(dir, "nope")}}.Load()
	for _, s := range []string{"secrets_key_env:", "secrets_keys_old_env[0]:", "secrets_keys_old_files[0]:"} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("the error %v does not report %s", err, s)
		}
	}
}

func TestConfigured(t *testing.T) {
	if (seal.Config{}).Configured() {
		t.Fatal("an empty config is configured")
	}
	if !(seal.Config{OldKeyFiles: []string{"/x"}}).Configured() {
		t.Fatal("a config with an old key file is not configured")
	}
}
