package seal_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/internal/seal"
)

func newKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, seal.KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func ring(t testing.TB, primary []byte, old ...[]byte) *seal.Keyring {
	t.Helper()
	k, err := seal.NewKeyring(primary, old...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

const (
	kvKey  = "comp1.wxf8b4f85f3a794e77.refresh_token"
	secret = "refreshtoken@@@SECRET-VALUE"
)

// noLeak fails when s holds the plaintext or a key (raw or base64).
func noLeak(t *testing.T, s string, keys ...[]byte) {
	t.Helper()
	if strings.Contains(s, secret) {
		t.Fatalf("%q holds the plaintext", s)
	}
	for _, k := range keys {
		if strings.Contains(s, string(k)) || strings.Contains(s, base64.StdEncoding.EncodeToString(k)) {
			t.Fatalf("%q holds a key", s)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	key := newKey(t)
	k := ring(t, key)
	for _, plain := range [][]byte{[]byte(secret), {}, bytes.Repeat([]byte{0xff}, 70000)} {
		sealed, err := k.Seal(kvKey, plain)
		if err != nil {
			t.Fatal(err)
		}
		if want := "tk1:" + seal.KeyID(key) + ":"; !strings.HasPrefix(string(sealed), want) {
			t.Fatalf("sealed value %.20q does not start with %q", sealed, want)
		}
		noLeak(t, string(sealed), key)
		got, err := k.Open(kvKey, sealed)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, plain) {
			t.Fatalf("Open = %.40q, want %.40q", got, plain)
		}
		if id, err := seal.SealedKeyID(sealed); err != nil || id != k.PrimaryID() {
			t.Fatalf("SealedKeyID = %q, %v", id, err)
		}
	}
	// Random nonces: one plaintext sealed twice differs.
	a, _ := k.Seal(kvKey, []byte(secret))
	b, _ := k.Seal(kvKey, []byte(secret))
	if bytes.Equal(a, b) {
		t.Fatal("two seals of one plaintext are equal")
	}
}

func TestWrongKey(t *testing.T) {
	key := newKey(t)
	sealed, err := ring(t, key).Seal(kvKey, []byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	other := newKey(t)
	_, err = ring(t, other).Open(kvKey, sealed)
	if !errors.Is(err, seal.ErrUnknownKey) {
		t.Fatalf("Open under another key = %v, want ErrUnknownKey", err)
	}
	if !strings.Contains(err.Error(), seal.KeyID(key)) || !strings.Contains(err.Error(), kvKey) {
		t.Fatalf("the error %q names neither the key id nor the KV key", err)
	}
	noLeak(t, err.Error(), key, other)

	// Another key under the same id (a forged header) fails authentication.
	forged := []byte(strings.Replace(string(sealed), seal.KeyID(key), seal.KeyID(other), 1))
	if _, err := ring(t, other).Open(kvKey, forged); !errors.Is(err, seal.ErrAuth) {
		t.Fatalf("Open of a relabelled value = %v, want ErrAuth", err)
	}
}

func TestTampered(t *testing.T) {
	key := newKey(t)
	k := ring(t, key)
	sealed, err := k.Seal(kvKey, []byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	head := len("tk1:") + 8 + 1
	raw, err := base64.StdEncoding.DecodeString(string(sealed[head:]))
	if err != nil {
		t.Fatal(err)
	}
	// Every bit of nonce, ciphertext and tag matters.
	for i := range raw {
		for _, bit := range []byte{0x01, 0x80} {
			m := bytes.Clone(raw)
			m[i] ^= bit
			v := append(bytes.Clone(sealed[:head]), base64.StdEncoding.EncodeToString(m)...)
			got, err := k.Open(kvKey, v)
			if !errors.Is(err, seal.ErrAuth) {
				t.Fatalf("byte %d bit %#x flipped: Open = %q, %v; want ErrAuth", i, bit, got, err)
			}
			noLeak(t, err.Error(), key)
		}
	}
	// Truncated, extended, re-encoded.
	for name, v := range map[string][]byte{
		"one byte short":   append(bytes.Clone(sealed[:head]), base64.StdEncoding.EncodeToString(raw[:len(raw)-1])...),
		"one byte more":    append(bytes.Clone(sealed[:head]), base64.StdEncoding.EncodeToString(append(bytes.Clone(raw), 0))...),
		"tag only":         append(bytes.Clone(sealed[:head]), base64.StdEncoding.EncodeToString(raw[:28])...),
		"nonce of 12 only": append(bytes.Clone(sealed[:head]), base64.StdEncoding.EncodeToString(raw[:12])...),
	} {
		if _, err := k.Open(kvKey, v); !errors.Is(err, seal.ErrAuth) && !errors.Is(err, seal.ErrMalformed) {
			t.Errorf("%s: Open = %v", name, err)
		}
	}
}

func TestSwappedAAD(t *testing.T) {
	k := ring(t, newKey(t))
	a, err := k.Seal("comp1.wxA.refresh_token", []byte("token of A"))
	if err != nil {
		t.Fatal(err)
	}
	for _, other := range []string{"comp1.wxB.refresh_token", "comp2.wxA.refresh_token", "comp1.wxA", "", "comp1.wxA.refresh_token "} {
		if got, err := k.Open(other, a); !errors.Is(err, seal.ErrAuth) {
			t.Errorf("A's value opened as %q = %q, %v; want ErrAuth", other, got, err)
		}
	}
	if got, err := k.Open("comp1.wxA.refresh_token", a); err != nil || string(got) != "token of A" {
		t.Fatalf("Open = %q, %v", got, err)
	}
}

func TestMalformed(t *testing.T) {
	k := ring(t, newKey(t))
	good, _ := k.Seal(kvKey, []byte(secret))
	id := k.PrimaryID()
	body := string(good[len("tk1:")+9:])
	for name, v := range map[string]string{
		"empty":               "",
		"plaintext":           secret,
		"another version":     "tk2:" + id + ":" + body,
		"no key id":           "tk1::" + body,
		"upper-case key id":   "tk1:" + strings.ToUpper(id) + "x:" + body,
		"short key id":        "tk1:" + id[:7] + ":" + body,
		"no body separator":   "tk1:" + id + body,
		"not base64":          "tk1:" + id + ":!!!!",
		"unpadded base64":     "tk1:" + id + ":" + strings.TrimRight(body, "="),
		"non-canonical bits":  "tk1:" + id + ":" + noncanonical(t, body),
		"too short":           "tk1:" + id + ":" + base64.StdEncoding.EncodeToString(make([]byte, 27)),
		"white space":         "tk1:" + id + ": " + body,
		"a line break":        "tk1:" + id + ":" + body[:4] + "\n" + body[4:],
		"prefix in lowercase": "TK1:" + id + ":" + body,
	} {
		got, err := k.Open(kvKey, []byte(v))
		if !errors.Is(err, seal.ErrMalformed) {
			t.Errorf("%s: Open = %q, %v; want ErrMalformed", name, got, err)
			continue
		}
		noLeak(t, err.Error())
	}
}

// noncanonical changes the base64's last data character in its unused
// bits only: the same bytes, spelled otherwise.
func noncanonical(t *testing.T, body string) string {
	t.Helper()
	i := strings.IndexByte(body, '=') - 1
	if i < 0 {
		t.Skip("the body has no padding")
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	p := strings.IndexByte(alphabet, body[i])
	return body[:i] + string(alphabet[p^1]) + body[i+1:]
}

func TestRotation(t *testing.T) {
	oldKey, newK := newKey(t), newKey(t)
	// 1. Sealed under the old key as the primary.
	before := ring(t, oldKey)
	sealed, err := before.Seal(kvKey, []byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	// 2. A new primary, the old key kept: the old value opens, new values
	// are sealed under the new key.
	during := ring(t, newK, oldKey)
	if during.PrimaryID() != seal.KeyID(newK) || len(during.IDs()) != 2 || during.IDs()[1] != seal.KeyID(oldKey) {
		t.Fatalf("ids %v, primary %s", during.IDs(), during.PrimaryID())
	}
	if got, err := during.Open(kvKey, sealed); err != nil || string(got) != secret {
		t.Fatalf("the old value during the rotation: %v", err)
	}
	fresh, _ := during.Seal(kvKey, []byte("new value"))
	if id, _ := seal.SealedKeyID(fresh); id != seal.KeyID(newK) {
		t.Fatalf("a new value is sealed under %s", id)
	}
	// 3. Reseal: the old value moves to the new key; a value already under
	// it is left as it is.
	resealed, changed, err := during.Reseal(kvKey, sealed)
	if err != nil || !changed {
		t.Fatalf("Reseal = %v, changed %v", err, changed)
	}
	if id, _ := seal.SealedKeyID(resealed); id != seal.KeyID(newK) {
		t.Fatalf("resealed under %s", id)
	}
	if same, changed, err := during.Reseal(kvKey, resealed); err != nil || changed || !bytes.Equal(same, resealed) {
		t.Fatalf("Reseal of a current value: changed %v, %v", changed, err)
	}
	if _, _, err := during.Reseal("another.key", sealed); !errors.Is(err, seal.ErrAuth) {
		t.Fatalf("Reseal under another KV key = %v, want ErrAuth", err)
	}
	// 4. The old key dropped: the resealed value opens, the old one fails
	// clearly, naming the missing key.
	after := ring(t, newK)
	if got, err := after.Open(kvKey, resealed); err != nil || string(got) != secret {
		t.Fatalf("the resealed value after the rotation: %q, %v", got, err)
	}
	_, err = after.Open(kvKey, sealed)
	if !errors.Is(err, seal.ErrUnknownKey) || !strings.Contains(err.Error(), seal.KeyID(oldKey)) {
		t.Fatalf("the old value after dropping its key = %v, want ErrUnknownKey naming %s", err, seal.KeyID(oldKey))
	}
	noLeak(t, err.Error(), oldKey, newK)
}

func TestNewKeyring(t *testing.T) {
	a := newKey(t)
	for name, keys := range map[string][][]byte{
		"short primary": {a[:31]},
		"long primary":  {append(bytes.Clone(a), 0)},
		"nil primary":   {nil},
		"short old key": {a, a[:16]},
	} {
		if _, err := seal.NewKeyring(keys[0], keys[1:]...); !errors.Is(err, seal.ErrBadKey) {
			t.Errorf("%s: NewKeyring = %v, want ErrBadKey", name, err)
		}
	}
	// The same key twice is kept once.
	k := ring(t, a, a, newKey(t), a)
	if len(k.IDs()) != 2 {
		t.Fatalf("ids %v", k.IDs())
	}
	var nilRing *seal.Keyring
	if _, err := nilRing.Seal(kvKey, nil); !errors.Is(err, seal.ErrNoKey) {
		t.Fatalf("nil Seal = %v", err)
	}
	if _, err := nilRing.Open(kvKey, nil); !errors.Is(err, seal.ErrNoKey) {
		t.Fatalf("nil Open = %v", err)
	}
}

func TestKeyID(t *testing.T) {
	a := make([]byte, 32)
	id := seal.KeyID(a)
	if len(id) != 8 || strings.Trim(id, "0123456789abcdef") != "" {
		t.Fatalf("KeyID = %q", id)
	}
	b := make([]byte, 32)
	b[31] = 1
	if seal.KeyID(b) == id {
		t.Fatal("two keys, one id")
	}
	if seal.KeyID(a) != id {
		t.Fatal("KeyID is not a function of the key")
	}
}
