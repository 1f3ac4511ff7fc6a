package wxcrypt_test

import (
	"errors"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt"
)

// The official sample of Tencent's WXBizMsgCrypt (使用示例二, "decrypting a
// pushed message": Sample.cs / Sample.php / Sample.py of the
// WXBizMsgCrypt download; e.g. Chain.Wechat/Tencent/Sample.cs in
// github.com/2830499544/VipCard, and the same strings in EasyWeChat's
// Encryptor tests). Token, EncodingAESKey and appid are the sample's
// configuration; the request is
//
//	POST /cgi-bin/wxpush?msg_signature=477715d1…&timestamp=1409659813&nonce=1372623149
const (
	sampleToken     = "QDG6eK"
	sampleAESKey    = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
	sampleAppID     = "wx5823bf96d3bd56c7"
	sampleSignature = "477715d11cdb4164915debcba66cb864d751f3e6"
	sampleTimestamp = "1409659813"
	sampleNonce     = "1372623149"
	sampleEncrypt   = "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q=="
	sampleBody      = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA[" + sampleEncrypt + "]]></Encrypt><AgentID><![CDATA[218]]></AgentID></xml>"

	// samplePlain is the message the sample decrypts to (the samples print
	// it; checked here against openssl too, TestOpenSSLDecryptsTheSample).
	samplePlain = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>\n" +
		"<FromUserName><![CDATA[mycreate]]></FromUserName>\n" +
		"<CreateTime>1409659813</CreateTime>\n" +
		"<MsgType><![CDATA[text]]></MsgType>\n" +
		"<Content><![CDATA[hello]]></Content>\n" +
		"<MsgId>4561255354251345929</MsgId>\n" +
		"<AgentID>218</AgentID>\n" +
		"</xml>"
)

func sampleCrypter(t testing.TB) *wxcrypt.Crypter {
	t.Helper()
	c, err := wxcrypt.New(sampleToken, sampleAESKey, sampleAppID)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestOfficialSampleSignature(t *testing.T) {
	if got := wxcrypt.Signature(sampleToken, sampleTimestamp, sampleNonce, sampleEncrypt); got != sampleSignature {
		t.Fatalf("Signature = %s, the sample says %s", got, sampleSignature)
	}
	c := sampleCrypter(t)
	if err := c.Verify(sampleSignature, sampleTimestamp, sampleNonce, sampleEncrypt); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	// One hex digit off, the nonce off by one, the timestamp of another push.
	for _, q := range [][3]string{
		{"477715d11cdb4164915debcba66cb864d751f3e7", sampleTimestamp, sampleNonce},
		{sampleSignature, sampleTimestamp, "1372623148"},
		{sampleSignature, "1409659814", sampleNonce},
		{"477715D11CDB4164915DEBCBA66CB864D751F3E6", sampleTimestamp, sampleNonce},
		{"", sampleTimestamp, sampleNonce},
	} {
		if err := c.Verify(q[0], q[1], q[2], sampleEncrypt); !errors.Is(err, wxcrypt.ErrBadSignature) {
			t.Errorf("Verify(%q, %q, %q) = %v, want ErrBadSignature", q[0], q[1], q[2], err)
		}
	}
}

func TestOfficialSampleOpens(t *testing.T) {
	c := sampleCrypter(t)
	msg, err := c.Open(sampleSignature, sampleTimestamp, sampleNonce, []byte(sampleBody))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if string(msg) != samplePlain {
		t.Fatalf("Open = %q\nwant %q", msg, samplePlain)
	}
	env, err := wxcrypt.ParseEnvelope([]byte(sampleBody))
	if err != nil {
		t.Fatal(err)
	}
	if env.ToUserName != sampleAppID || env.Encrypt != sampleEncrypt || env.AppID != "" {
		t.Fatalf("ParseEnvelope = %+v", env)
	}
}
