// Package seal seals secrets at rest — the values of the secrets bucket:
// refresh tokens, verify tickets, authorization codes — with AES-256-GCM.
//
// A [Keyring] holds named 32-byte keys: the primary seals, every key
// opens. A sealed value is self-describing text,
//
//	tk1:<key-id>:<base64(nonce | ciphertext | tag)>
//
// where tk1 is the format version, key-id is [KeyID] of the key (8 hex
// digits of a SHA-256 over it: it names the key, it cannot recover it),
// the nonce is 12 random bytes, and the additional authenticated data is
// "tk1:<key-id>:<kv-key>", the record's KV key: a value copied to another
// key does not open ([ErrAuth]). Keys come from configuration ([Config]).
//
// Errors never hold a key or a plaintext.
package seal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
)

// KeySize is the size of a key, in bytes.
const KeySize = 32

const (
	version   = "tk1"
	idLen     = 8 // hex digits of the key id
	nonceSize = 12
	tagSize   = 16
)

// b64 is strict so that one sealed value has one spelling: a changed
// character is a changed value, never the same bytes.
var b64 = base64.StdEncoding.Strict()

// Keyring is a set of keys, one of them primary. It is immutable and safe
// for concurrent use.
type Keyring struct {
	primary *ringKey
	byID    map[string]*ringKey
	ids     []string // primary first, then the others in the order given
}

type ringKey struct {
	id   string
	raw  []byte
	aead cipher.AEAD
}

// KeyID returns the id of a key: the first 8 hex digits of
// SHA-256("tokenkeeper seal key id\x00" | key).
func KeyID(key []byte) string {
	h := sha256.New()
	h.Write([]byte("tokenkeeper seal key id\x00"))
	h.Write(key)
	return hex.EncodeToString(h.Sum(nil))[:idLen]
}

// NewKeyring returns a keyring whose primary key is primary and which
// also opens values sealed under the old keys. Each key must be KeySize
// bytes (ErrBadKey). An old key equal to the primary or to another old
// key is kept once.
func NewKeyring(primary []byte, old ...[]byte) (*Keyring, error) {
	k := &Keyring{byID: map[string]*ringKey{}}
	for i, raw := range append([][]byte{primary}, old...) {
		name := "the primary key"
		if i > 0 {
			name = fmt.Sprintf("old key %d", i-1)
		}
		rk, err := newRingKey(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if prev, ok := k.byID[rk.id]; ok {
			if !bytes.Equal(prev.raw, rk.raw) {
				return nil, fmt.Errorf("%s: %w: its id %s is another key's", name, ErrBadKey, rk.id)
			}
			continue
		}
		k.byID[rk.id] = rk
		k.ids = append(k.ids, rk.id)
		if i == 0 {
			k.primary = rk
		}
	}
	return k, nil
}

func newRingKey(raw []byte) (*ringKey, error) {
	if len(raw) != KeySize {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrBadKey, len(raw), KeySize)
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	return &ringKey{id: KeyID(raw), raw: bytes.Clone(raw), aead: aead}, nil
}

// PrimaryID returns the id of the key Seal uses.
func (k *Keyring) PrimaryID() string {
	if k == nil {
		return ""
	}
	return k.primary.id
}

// IDs returns the ids of every key Open accepts, the primary first.
func (k *Keyring) IDs() []string {
	if k == nil {
		return nil
	}
	return append([]string(nil), k.ids...)
}

func aad(id, kvKey string) []byte { return []byte(version + ":" + id + ":" + kvKey) }

// Seal encrypts plaintext under the primary key for the record at KV key
// kvKey and returns the sealed value.
func (k *Keyring) Seal(kvKey string, plaintext []byte) ([]byte, error) {
	if k == nil {
		return nil, ErrNoKey
	}
	p := k.primary
	buf := make([]byte, nonceSize, nonceSize+len(plaintext)+tagSize)
	if _, err := rand.Read(buf); err != nil {
		return nil, fmt.Errorf("seal: random nonce: %w", err)
	}
	buf = p.aead.Seal(buf, buf[:nonceSize], plaintext, aad(p.id, kvKey))
	head := version + ":" + p.id + ":"
	out := make([]byte, len(head)+b64.EncodedLen(len(buf)))
	copy(out, head)
	b64.Encode(out[len(head):], buf)
	return out, nil
}

// parse splits a sealed value into its key id and nonce|ciphertext.
func parse(sealed []byte) (id string, body []byte, err error) {
	s := string(sealed)
	v, rest, ok := strings.Cut(s, ":")
	if !ok || v != version {
		return "", nil, fmt.Errorf("%w: no %s: prefix", ErrMalformed, version)
	}
	id, enc, ok := strings.Cut(rest, ":")
	if !ok || !isKeyID(id) {
		return "", nil, fmt.Errorf("%w: no key id", ErrMalformed)
	}
	// Strict base64 still skips \r and \n; a sealed value has none.
	if strings.ContainsAny(enc, "\r\n") {
		return "", nil, fmt.Errorf("%w: a line break in the base64", ErrMalformed)
	}
	body, err = b64.DecodeString(enc)
	if err != nil {
		return "", nil, fmt.Errorf("%w: not canonical base64", ErrMalformed)
	}
	if len(body) < nonceSize+tagSize {
		return "", nil, fmt.Errorf("%w: %d bytes, under a nonce and a tag", ErrMalformed, len(body))
	}
	return id, body, nil
}

func isKeyID(s string) bool {
	if len(s) != idLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// SealedKeyID returns the id of the key a sealed value names, without
// opening it (ErrMalformed if it is not a sealed value).
func SealedKeyID(sealed []byte) (string, error) {
	id, _, err := parse(sealed)
	return id, err
}

// Open returns the plaintext of a value sealed for KV key kvKey under any
// key of the ring. Errors match ErrMalformed, ErrUnknownKey or ErrAuth
// (ErrNoKey for a nil ring) and name kvKey and the key id.
func (k *Keyring) Open(kvKey string, sealed []byte) ([]byte, error) {
	if k == nil {
		return nil, ErrNoKey
	}
	id, body, err := parse(sealed)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", kvKey, err)
	}
	rk, ok := k.byID[id]
	if !ok {
		return nil, fmt.Errorf("%s: %w: key %s (the keyring has %s)", kvKey, ErrUnknownKey, id, strings.Join(k.ids, ", "))
	}
	plain, err := rk.aead.Open(nil, body[:nonceSize], body[nonceSize:], aad(id, kvKey))
	if err != nil {
		return nil, fmt.Errorf("%s: %w under key %s: changed, or sealed for another KV key", kvKey, ErrAuth, id)
	}
	return plain, nil
}

// Reseal opens a sealed value and, when it is not under the primary key,
// seals it again under the primary; changed says whether it did. This is
// the step of a key rotation that lets the old key be dropped.
func (k *Keyring) Reseal(kvKey string, sealed []byte) (out []byte, changed bool, err error) {
	plain, err := k.Open(kvKey, sealed)
	if err != nil {
		return nil, false, err
	}
	if id, _ := SealedKeyID(sealed); id == k.primary.id {
		return sealed, false, nil
	}
	out, err = k.Seal(kvKey, plain)
	if err != nil {
		return nil, false, err
	}
	return out, true, nil
}
