package wxcrypt

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
)

// MaxBodySize is the largest body Open accepts, in bytes, checked before
// any parsing. WeChat's pushes are well under 4 KiB; an HTTP handler
// reads at most MaxBodySize+1 bytes (http.MaxBytesReader) and passes
// them on, so an oversized body is refused as ErrTooLarge.
const MaxBodySize = 64 << 10

// maxParam bounds the query's timestamp and nonce (WeChat sends 10 digits
// and about 10 characters).
const maxParam = 64

// maxToken bounds the configured token (WeChat allows 3 to 32 characters).
const maxToken = 128

// blockSize is the PKCS#7 block WeChat pads to: 32 bytes, not AES's 16.
const blockSize = 32

// Crypter holds one app's callback configuration: token, AES key and
// appid. It is immutable and safe for concurrent use.
type Crypter struct {
	token string
	appID string
	key   []byte // 32 bytes
	block cipher.Block
}

// New returns a Crypter for the token and EncodingAESKey configured on
// WeChat's side and the appid pushes must carry (the component appid for
// an Open Platform component). An error matches ErrBadConfig and names
// the setting, never its value.
func New(token, encodingAESKey, appID string) (*Crypter, error) {
	if token == "" || len(token) > maxToken {
		return nil, fmt.Errorf("%w: token must be 1 to %d bytes", ErrBadConfig, maxToken)
	}
	if !validAppID(appID) {
		return nil, fmt.Errorf("%w: appid must be 1 to 64 of [A-Za-z0-9_-]", ErrBadConfig)
	}
	key, err := decodeAESKey(encodingAESKey)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil { // unreachable with 32 bytes
		return nil, fmt.Errorf("%w: EncodingAESKey: %v", ErrBadConfig, err)
	}
	return &Crypter{token: token, appID: appID, key: key, block: block}, nil
}

// decodeAESKey turns the 43-character EncodingAESKey into the 32-byte AES
// key. The last character carries 2 bits beyond the key that WeChat does
// not keep at zero, so the decoding is not base64's strict one.
func decodeAESKey(s string) ([]byte, error) {
	if len(s) != 43 {
		return nil, fmt.Errorf("%w: EncodingAESKey must be 43 characters of base64, got %d characters", ErrBadConfig, len(s))
	}
	key, err := base64.StdEncoding.DecodeString(s + "=")
	if err != nil || len(key) != 32 {
		return nil, fmt.Errorf("%w: EncodingAESKey is not base64 of 32 bytes", ErrBadConfig)
	}
	return key, nil
}

func validAppID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// AppID returns the configured appid.
func (c *Crypter) AppID() string { return c.appID }

// Signature returns WeChat's msg_signature over a push: the lowercase hex
// SHA-1 of token, timestamp, nonce and encrypt, sorted byte-wise and
// concatenated.
func Signature(token, timestamp, nonce, encrypt string) string {
	parts := []string{token, timestamp, nonce, encrypt}
	sort.Strings(parts)
	sum := sha1.Sum([]byte(strings.Join(parts, "")))
	return hex.EncodeToString(sum[:])
}

// Verify checks msgSignature against Signature with the configured token,
// in constant time. It returns nil or an error matching ErrBadSignature
// (or ErrMalformed for an over-long timestamp or nonce).
func (c *Crypter) Verify(msgSignature, timestamp, nonce, encrypt string) error {
	if len(timestamp) > maxParam || len(nonce) > maxParam {
		return fmt.Errorf("%w: timestamp or nonce over %d bytes", ErrMalformed, maxParam)
	}
	want := Signature(c.token, timestamp, nonce, encrypt)
	if subtle.ConstantTimeCompare([]byte(want), []byte(msgSignature)) != 1 {
		return ErrBadSignature
	}
	return nil
}

// Decrypt decrypts an Encrypt field and returns the message it carries
// after checking padding, length and appid. It does not check a
// signature: callers verify first (Open does), so that nothing
// unauthenticated is ever decrypted.
func (c *Crypter) Decrypt(encrypt string) ([]byte, error) {
	if len(encrypt) > MaxBodySize {
		return nil, ErrTooLarge
	}
	ct, err := base64.StdEncoding.DecodeString(encrypt)
	if err != nil {
		return nil, fmt.Errorf("%w: Encrypt is not base64", ErrMalformed)
	}
	if len(ct) == 0 || len(ct)%blockSize != 0 {
		return nil, fmt.Errorf("%w: ciphertext of %d bytes is not a whole number of %d-byte blocks", ErrMalformed, len(ct), blockSize)
	}
	plain := make([]byte, len(ct))
	cipher.NewCBCDecrypter(c.block, c.key[:aes.BlockSize]).CryptBlocks(plain, ct)

	pad := int(plain[len(plain)-1])
	if pad < 1 || pad > blockSize {
		return nil, fmt.Errorf("%w: pad value %d, want 1..%d", ErrBadPadding, pad, blockSize)
	}
	for _, b := range plain[len(plain)-pad:] {
		if int(b) != pad {
			return nil, fmt.Errorf("%w: pad bytes differ from the pad value %d", ErrBadPadding, pad)
		}
	}
	plain = plain[:len(plain)-pad]

	if len(plain) < 20 {
		return nil, fmt.Errorf("%w: %d bytes decrypted, under the 20 of random and length", ErrMalformed, len(plain))
	}
	n := binary.BigEndian.Uint32(plain[16:20])
	rest := plain[20:]
	if uint64(n) > uint64(len(rest)) {
		return nil, fmt.Errorf("%w: message length %d over the %d bytes decrypted", ErrMalformed, n, len(rest))
	}
	msg, appID := rest[:n], rest[n:]
	if subtle.ConstantTimeCompare(appID, []byte(c.appID)) != 1 {
		return nil, fmt.Errorf("%w: the message is for another appid", ErrAppIDMismatch)
	}
	return msg, nil
}

// Encrypt encrypts msg as WeChat does: 16 random bytes (crypto/rand), the
// length of msg (4 bytes, big-endian), msg, the appid, PKCS#7-padded to
// 32 bytes, AES-256-CBC, base64. An error matches ErrTooLarge when the
// envelope around it would be over MaxBodySize.
func (c *Crypter) Encrypt(msg []byte) (string, error) {
	n := 20 + len(msg) + len(c.appID)
	pad := blockSize - n%blockSize
	if base64.StdEncoding.EncodedLen(n+pad)+envelopeOverhead > MaxBodySize {
		return "", fmt.Errorf("%w: a message of %d bytes", ErrTooLarge, len(msg))
	}
	plain := make([]byte, n+pad)
	if _, err := rand.Read(plain[:16]); err != nil {
		return "", fmt.Errorf("wxcrypt: random: %w", err)
	}
	binary.BigEndian.PutUint32(plain[16:20], uint32(len(msg)))
	copy(plain[20:], msg)
	copy(plain[20+len(msg):], c.appID)
	for i := n; i < len(plain); i++ {
		plain[i] = byte(pad)
	}
	cipher.NewCBCEncrypter(c.block, c.key[:aes.BlockSize]).CryptBlocks(plain, plain)
	return base64.StdEncoding.EncodeToString(plain), nil
}
