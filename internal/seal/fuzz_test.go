package seal_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/internal/seal"
)

// FuzzOpen gives Open arbitrary values and KV keys: it must never panic
// and answer only with the package's errors; and a value sealed from the
// fuzzed plaintext must open to it under its own KV key, and fail after
// any one byte of it is changed or under another KV key.
//
//	go test ./internal/seal -run '^$' -fuzz '^FuzzOpen$' -fuzztime 30s
func FuzzOpen(f *testing.F) {
	k := ring(f, bytes.Repeat([]byte{7}, 32), bytes.Repeat([]byte{9}, 32))
	good, err := k.Seal(kvKey, []byte(secret))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(kvKey, good, uint(5), byte(1))
	f.Add("", []byte("tk1:00000000:AAAA"), uint(0), byte(0x80))
	f.Add("a.b", []byte("tk1:"), uint(3), byte(0))
	f.Fuzz(func(t *testing.T, key string, value []byte, pos uint, x byte) {
		got, err := k.Open(key, value)
		if err != nil {
			if got != nil {
				t.Fatal("a plaintext with an error")
			}
			if !errors.Is(err, seal.ErrMalformed) && !errors.Is(err, seal.ErrUnknownKey) && !errors.Is(err, seal.ErrAuth) {
				t.Fatalf("an error of no kind: %v", err)
			}
		}

		sealed, err := k.Seal(key, value)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := k.Open(key, sealed); err != nil || !bytes.Equal(got, value) {
			t.Fatalf("round trip: %v", err)
		}
		if x != 0 {
			m := bytes.Clone(sealed)
			m[pos%uint(len(m))] ^= x
			if got, err := k.Open(key, m); err == nil {
				t.Fatalf("a changed byte at %d opened to %q", pos%uint(len(m)), got)
			}
		}
		if _, err := k.Open(key+"x", sealed); !errors.Is(err, seal.ErrAuth) {
			t.Fatalf("opened under another KV key: %v", err)
		}
	})
}
