package wxcrypt_test

import (
	"errors"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt"
)

// FuzzDecrypt feeds Open arbitrary query parameters and bodies. It must
// never panic, must answer with one of the package's errors or a message,
// and must never accept a push whose msg_signature is not the signature
// of its Encrypt. Each input is also tried with the right signature, so
// that arbitrary ciphertext reaches the decryption, padding, length and
// appid checks, and its message is parsed as a component push.
//
//	go test ./internal/wxcrypt -run '^$' -fuzz '^FuzzDecrypt$' -fuzztime 30s
func FuzzDecrypt(f *testing.F) {
	c := sampleCrypter(f)
	f.Add(sampleSignature, sampleTimestamp, sampleNonce, []byte(sampleBody))
	for _, p := range pushes() {
		body, sig, err := c.Seal(p.XML(), ts, nonce)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(sig, ts, nonce, body)
	}
	f.Add("", "", "", []byte("<xml><Encrypt>AAAA</Encrypt></xml>"))
	f.Add("x", "1", "2", []byte(`<!DOCTYPE x [<!ENTITY a "b">]><xml><Encrypt>&a;</Encrypt></xml>`))
	f.Add("x", "1", "2", []byte("\x00\xff"))

	known := []error{wxcrypt.ErrTooLarge, wxcrypt.ErrMalformed, wxcrypt.ErrBadSignature, wxcrypt.ErrBadPadding, wxcrypt.ErrAppIDMismatch}
	isKnown := func(err error) bool {
		for _, k := range known {
			if errors.Is(err, k) {
				return true
			}
		}
		return false
	}
	f.Fuzz(func(t *testing.T, sig, timestamp, nonce string, body []byte) {
		msg, err := c.Open(sig, timestamp, nonce, body)
		if err != nil && !isKnown(err) {
			t.Fatalf("Open: an error of no kind: %v", err)
		}
		if err != nil && msg != nil {
			t.Fatal("Open returned a message and an error")
		}
		env, envErr := wxcrypt.ParseEnvelope(body)
		if err == nil {
			// Accepted: the signature must be the envelope's.
			if envErr != nil {
				t.Fatalf("Open accepted a body ParseEnvelope refuses: %v", envErr)
			}
			if want := wxcrypt.Signature(sampleToken, timestamp, nonce, env.Encrypt); sig != want {
				t.Fatalf("Open accepted signature %q; the push's is %s", sig, want)
			}
		}
		if envErr != nil {
			return
		}
		// A signature one character off is always refused.
		if sig != "" {
			off := []byte(sig)
			off[0] ^= 1
			if _, err := c.Open(string(off), timestamp, nonce, body); err == nil {
				t.Fatal("Open accepted an altered signature")
			}
		}
		// The right signature: the ciphertext is what is fuzzed.
		good := wxcrypt.Signature(sampleToken, timestamp, nonce, env.Encrypt)
		msg, err = c.Open(good, timestamp, nonce, body)
		if err != nil {
			if errors.Is(err, wxcrypt.ErrBadSignature) || !isKnown(err) {
				t.Fatalf("Open with the right signature: %v", err)
			}
			return
		}
		if len(msg) > len(body) {
			t.Fatalf("a %d-byte message out of a %d-byte body", len(msg), len(body))
		}
		if p, err := wxcrypt.ParseComponentPush(msg); err != nil && !isKnown(err) {
			t.Fatalf("ParseComponentPush: an error of no kind: %v", err)
		} else if err == nil && p.InfoType == "" {
			t.Fatal("ParseComponentPush accepted a push without InfoType")
		}
	})
}
