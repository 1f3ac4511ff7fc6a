package wxcrypt_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt"
)

const (
	ts    = "1700000000"
	nonce = "n0nce"
)

// rawSeal encrypts plain (already framed and padded, or deliberately not)
// with the sample key and signs it correctly, so that what Open rejects
// is the plaintext, not the signature.
func rawSeal(t *testing.T, plain []byte) (body []byte, sig string) {
	t.Helper()
	if len(plain)%32 != 0 {
		t.Fatalf("test bug: %d bytes of plaintext, not whole 32-byte blocks", len(plain))
	}
	key := sampleKey(t)
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	ct := make([]byte, len(plain))
	cipher.NewCBCEncrypter(block, key[:16]).CryptBlocks(ct, plain)
	return signed(base64.StdEncoding.EncodeToString(ct))
}

// signed wraps an Encrypt value in an envelope with its right signature.
func signed(enc string) ([]byte, string) {
	return []byte("<xml><AppId>" + sampleAppID + "</AppId><Encrypt>" + enc + "</Encrypt></xml>"),
		wxcrypt.Signature(sampleToken, ts, nonce, enc)
}

// framed is random(16) | len | msg | appid with the given last 32 bytes'
// padding bytes replaced by pad (len(pad) bytes, appended).
func framed(msg, appID string, pad []byte) []byte {
	p := make([]byte, 20)
	binary.BigEndian.PutUint32(p[16:20], uint32(len(msg)))
	p = append(p, msg...)
	p = append(p, appID...)
	return append(p, pad...)
}

func fill(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func TestOpenRejects(t *testing.T) {
	c := sampleCrypter(t)
	good, goodSig, err := c.Seal([]byte("<xml><a>1</a></xml>"), ts, nonce)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Open(goodSig, ts, nonce, good); err != nil {
		t.Fatalf("the good push: %v", err)
	}
	// msg "hi" + 18-byte appid + 20 = 40 bytes: 24 bytes of padding to 64.
	type tc struct {
		name string
		body []byte
		sig  string
		want error
	}
	withSig := func(name string, b []byte, s string, want error) tc { return tc{name, b, s, want} }
	cases := []tc{
		withSig("signature of another push", good, wxcrypt.Signature(sampleToken, ts, nonce, "other"), wxcrypt.ErrBadSignature),
		withSig("signature with the wrong token", good, func() string {
			e, _ := wxcrypt.ParseEnvelope(good)
			return wxcrypt.Signature("other", ts, nonce, e.Encrypt)
		}(), wxcrypt.ErrBadSignature),
		withSig("no signature", good, "", wxcrypt.ErrBadSignature),
		withSig("Encrypt altered after signing", bytes.Replace(good, []byte("<Encrypt>"), []byte("<Encrypt>AAAA"), 1), goodSig, wxcrypt.ErrBadSignature),
	}
	add := func(name string, plain []byte, want error) {
		b, s := rawSeal(t, plain)
		cases = append(cases, tc{name, b, s, want})
	}
	add("pad value 0", framed("hi", sampleAppID, fill(24, 0)), wxcrypt.ErrBadPadding)
	add("pad value 33", framed("hi", sampleAppID, append(fill(23, 33), 33)), wxcrypt.ErrBadPadding)
	add("pad value 255", framed("hi", sampleAppID, fill(24, 255)), wxcrypt.ErrBadPadding)
	add("pad bytes inconsistent", framed("hi", sampleAppID, append(append(fill(23, 24), 7), 24)[1:]), wxcrypt.ErrBadPadding)
	add("pad longer than the pad bytes", framed("hi", sampleAppID, append(fill(23, 1), 24)), wxcrypt.ErrBadPadding)
	add("another appid", framed("hi", "wxOTHERAPPID000000", fill(24, 24)), wxcrypt.ErrAppIDMismatch)
	add("no appid", framed("hi", "", fill(10, 10)), wxcrypt.ErrAppIDMismatch)
	add("appid with a suffix", framed("h", sampleAppID+"x", fill(24, 24)), wxcrypt.ErrAppIDMismatch)
	add("length over the message", func() []byte {
		p := framed("hi", sampleAppID, fill(24, 24))
		binary.BigEndian.PutUint32(p[16:20], 0xFFFFFFFF)
		return p
	}(), wxcrypt.ErrMalformed)
	add("length one over", func() []byte {
		p := framed("hi", sampleAppID, fill(24, 24))
		binary.BigEndian.PutUint32(p[16:20], 2+18+1)
		return p
	}(), wxcrypt.ErrMalformed)
	add("under 20 bytes after unpadding", fill(32, 16)[:32], wxcrypt.ErrMalformed)
	add("all padding", fill(32, 32), wxcrypt.ErrMalformed)

	trunc := func(name string, enc string) {
		b, s := signed(enc)
		cases = append(cases, tc{name, b, s, wxcrypt.ErrMalformed})
	}
	e, _ := wxcrypt.ParseEnvelope(good)
	trunc("Encrypt truncated to a 16-byte block", base64.StdEncoding.EncodeToString(mustB64(t, e.Encrypt)[:len(mustB64(t, e.Encrypt))-16]))
	trunc("Encrypt truncated mid-block", base64.StdEncoding.EncodeToString(mustB64(t, e.Encrypt)[:len(mustB64(t, e.Encrypt))-3]))
	trunc("Encrypt base64 cut", e.Encrypt[:len(e.Encrypt)-5])
	trunc("Encrypt not base64", "@@@@not*base64!!")
	trunc("Encrypt unpadded base64", strings.TrimRight(e.Encrypt, "="))
	cases = append(cases,
		tc{"body truncated", good[:len(good)-10], goodSig, wxcrypt.ErrMalformed},
		tc{"body over MaxBodySize", append(bytes.Clone(good), fill(wxcrypt.MaxBodySize, ' ')...), goodSig, wxcrypt.ErrTooLarge},
		tc{"empty body", nil, goodSig, wxcrypt.ErrMalformed},
	)
	for _, x := range cases {
		t.Run(x.name, func(t *testing.T) {
			msg, err := c.Open(x.sig, ts, nonce, x.body)
			if !errors.Is(err, x.want) {
				t.Fatalf("Open = %q, %v; want %v", msg, err, x.want)
			}
			if msg != nil {
				t.Fatalf("Open returned a message with an error: %q", msg)
			}
			noSecretIn(t, err)
		})
	}
}

func mustB64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// noSecretIn fails when an error's text holds the token, the AES key or
// a piece of the sample ticket/code.
func noSecretIn(t *testing.T, err error) {
	t.Helper()
	s := err.Error()
	for _, secret := range []string{sampleToken, sampleAESKey, "TICKET-SECRET", "CODE-SECRET"} {
		if strings.Contains(s, secret) {
			t.Fatalf("error %q holds a secret", s)
		}
	}
}

func TestOpenRejectsParams(t *testing.T) {
	c := sampleCrypter(t)
	body, _, err := c.Seal([]byte("x"), ts, nonce)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := wxcrypt.ParseEnvelope(body)
	long := strings.Repeat("9", 65)
	for _, q := range [][2]string{{long, nonce}, {ts, long}} {
		sig := wxcrypt.Signature(sampleToken, q[0], q[1], e.Encrypt)
		if _, err := c.Open(sig, q[0], q[1], body); !errors.Is(err, wxcrypt.ErrMalformed) {
			t.Errorf("Open with a %d-byte timestamp and %d-byte nonce = %v, want ErrMalformed", len(q[0]), len(q[1]), err)
		}
	}
	if _, _, err := c.Seal([]byte("x"), long, nonce); !errors.Is(err, wxcrypt.ErrMalformed) {
		t.Errorf("Seal with a long timestamp = %v", err)
	}
}

func TestEnvelopeAppIDMismatch(t *testing.T) {
	c := sampleCrypter(t)
	body, sig, err := c.Seal([]byte("x"), ts, nonce)
	if err != nil {
		t.Fatal(err)
	}
	// The outer AppId is not signed; a push routed to the wrong component
	// is still refused by name.
	other := bytes.Replace(body, []byte(sampleAppID), []byte("wxsomeoneelse"), 1)
	if _, err := c.Open(sig, ts, nonce, other); !errors.Is(err, wxcrypt.ErrAppIDMismatch) {
		t.Fatalf("Open = %v, want ErrAppIDMismatch", err)
	}
	// Another component with the same token and key refuses it.
	o, err := wxcrypt.New(sampleToken, sampleAESKey, "wxsomeoneelse")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.Open(sig, ts, nonce, other); !errors.Is(err, wxcrypt.ErrAppIDMismatch) {
		t.Fatalf("another component's Open = %v, want ErrAppIDMismatch", err)
	}
}

func TestSizeLimits(t *testing.T) {
	c := sampleCrypter(t)
	if _, err := c.Decrypt(strings.Repeat("A", wxcrypt.MaxBodySize+4)); !errors.Is(err, wxcrypt.ErrTooLarge) {
		t.Errorf("Decrypt of an oversized field = %v", err)
	}
	if _, err := c.Encrypt(make([]byte, wxcrypt.MaxBodySize)); !errors.Is(err, wxcrypt.ErrTooLarge) {
		t.Errorf("Encrypt of a MaxBodySize message = %v", err)
	}
	// The largest message Seal takes makes a body Open takes.
	n := wxcrypt.MaxBodySize * 3 / 4
	for ; n > 0; n -= 32 {
		if _, err := c.Encrypt(make([]byte, n)); err == nil {
			break
		}
	}
	body, sig, err := c.Seal(make([]byte, n), ts, nonce)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Open(sig, ts, nonce, body); err != nil {
		t.Fatalf("a %d-byte body of the largest message: %v", len(body), err)
	}
	if _, err := wxcrypt.ParseEnvelope(make([]byte, wxcrypt.MaxBodySize+1)); !errors.Is(err, wxcrypt.ErrTooLarge) {
		t.Errorf("ParseEnvelope of an oversized body = %v", err)
	}
}

func TestEnvelopeRejectsHostileXML(t *testing.T) {
	enc := "AAAA"
	laughs := `<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><xml><Encrypt>&lol3;</Encrypt></xml>`
	cases := map[string]string{
		"billion laughs":           laughs,
		"external entity":          `<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><Encrypt>&xxe;</Encrypt></xml>`,
		"undeclared entity":        `<xml><Encrypt>&lol;</Encrypt></xml>`,
		"deep nesting":             "<xml>" + strings.Repeat("<a>", 5000) + strings.Repeat("</a>", 5000) + "<Encrypt>" + enc + "</Encrypt></xml>",
		"many elements":            "<xml>" + strings.Repeat("<a/>", 1000) + "<Encrypt>" + enc + "</Encrypt></xml>",
		"two roots":                "<xml><Encrypt>" + enc + "</Encrypt></xml><xml/>",
		"text after the root":      "<xml><Encrypt>" + enc + "</Encrypt></xml>junk",
		"another root":             "<foo><Encrypt>" + enc + "</Encrypt></foo>",
		"namespaced root":          `<x:xml xmlns:x="urn:x"><Encrypt>` + enc + `</Encrypt></x:xml>`,
		"Encrypt twice":            "<xml><Encrypt>" + enc + "</Encrypt><Encrypt>BBBB</Encrypt></xml>",
		"Encrypt holds an element": "<xml><Encrypt>" + enc + "<b/></Encrypt></xml>",
		"no Encrypt":               "<xml><AppId>wx1</AppId></xml>",
		"empty Encrypt":            "<xml><Encrypt><![CDATA[]]></Encrypt></xml>",
		"unclosed":                 "<xml><Encrypt>" + enc,
		"mismatched end tag":       "<xml><Encrypt>" + enc + "</AppId></xml>",
		"not XML":                  "Encrypt=" + enc,
		"binary":                   "\x00\xff\xfe<xml>\x01",
		"JSON":                     `{"Encrypt":"` + enc + `"}`,
		"other charset":            `<?xml version="1.0" encoding="GBK"?><xml><Encrypt>` + enc + `</Encrypt></xml>`,
		"AppId twice":              "<xml><AppId>a</AppId><AppId>b</AppId><Encrypt>" + enc + "</Encrypt></xml>",
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			e, err := wxcrypt.ParseEnvelope([]byte(body))
			if !errors.Is(err, wxcrypt.ErrMalformed) {
				t.Fatalf("ParseEnvelope = %+v, %v; want ErrMalformed", e, err)
			}
			if strings.Contains(err.Error(), enc) {
				t.Fatalf("the error quotes the input: %v", err)
			}
		})
	}
	// What WeChat does send: declaration, white space, CDATA, unknown
	// fields, comments.
	ok := "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<xml>\n  <ToUserName><![CDATA[gh_1]]></ToUserName>\n  <!-- c -->\n  <Encrypt><![CDATA[ " + enc + " ]]></Encrypt>\n  <Extra><A>1</A></Extra>\n</xml>\n"
	e, err := wxcrypt.ParseEnvelope([]byte(ok))
	if err != nil || e.Encrypt != enc || e.ToUserName != "gh_1" {
		t.Fatalf("ParseEnvelope = %+v, %v", e, err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	cases := map[string][3]string{
		"empty token":        {"", sampleAESKey, sampleAppID},
		"long token":         {strings.Repeat("t", 129), sampleAESKey, sampleAppID},
		"key of 42":          {sampleToken, sampleAESKey[:42], sampleAppID},
		"key of 44":          {sampleToken, sampleAESKey + "=", sampleAppID},
		"key not base64":     {sampleToken, strings.Repeat("*", 43), sampleAppID},
		"key url-safe chars": {sampleToken, "-_" + sampleAESKey[2:], sampleAppID},
		"empty appid":        {sampleToken, sampleAESKey, ""},
		"appid with a dot":   {sampleToken, sampleAESKey, "wx.1"},
		"appid too long":     {sampleToken, sampleAESKey, strings.Repeat("w", 65)},
	}
	for name, a := range cases {
		c, err := wxcrypt.New(a[0], a[1], a[2])
		if !errors.Is(err, wxcrypt.ErrBadConfig) || c != nil {
			t.Errorf("%s: New = %v, %v; want ErrBadConfig", name, c, err)
			continue
		}
		if a[1] != "" && strings.Contains(err.Error(), a[1]) || a[0] != "" && strings.Contains(err.Error(), a[0]) {
			t.Errorf("%s: the error %q holds the key or token", name, err)
		}
	}
}
