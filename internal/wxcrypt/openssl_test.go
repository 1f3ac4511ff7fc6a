package wxcrypt_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt"
)

// An independent implementation: the openssl CLI (Debian package
// "openssl") for AES-256-CBC, coreutils' sort and sha1sum for the
// signature. CI installs openssl (and fails without it); elsewhere a
// machine without it skips.

func sampleKey(t testing.TB) []byte {
	t.Helper()
	k, err := base64.StdEncoding.DecodeString(sampleAESKey + "=")
	if err != nil || len(k) != 32 {
		t.Fatalf("sample key: %v (%d bytes)", err, len(k))
	}
	return k
}

// openssl runs `openssl enc -aes-256-cbc [-d] -K key -iv key[:16] -nopad`
// over in.
func openssl(t *testing.T, decrypt bool, key, in []byte) []byte {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("openssl not installed in CI (.ci/run installs the Debian package openssl)")
		}
		t.Skip("openssl not installed (Debian package openssl)")
	}
	args := []string{"enc", "-aes-256-cbc", "-K", hex.EncodeToString(key), "-iv", hex.EncodeToString(key[:16]), "-nopad"}
	if decrypt {
		args = append(args, "-d")
	}
	cmd := exec.Command("openssl", args...)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("openssl %v: %v: %s", args[:2], err, stderr.String())
	}
	return out
}

// wechatPlain builds random(16) | len(4, BE) | msg | appid | PKCS#7 to 32
// by hand, as the samples do.
func wechatPlain(t testing.TB, msg, appID string) []byte {
	t.Helper()
	p := make([]byte, 20, 20+len(msg)+len(appID)+32)
	if _, err := rand.Read(p[:16]); err != nil {
		t.Fatal(err)
	}
	binary.BigEndian.PutUint32(p[16:20], uint32(len(msg)))
	p = append(p, msg...)
	p = append(p, appID...)
	pad := 32 - len(p)%32
	return append(p, bytes.Repeat([]byte{byte(pad)}, pad)...)
}

// messages of lengths that give every kind of padding, 32 included.
func messages() []string {
	// With the 18-byte appid, 20+18+26 = 64: 26 bytes give a pad of 32.
	var ms []string
	for _, n := range []int{0, 1, 25, 26, 27, 58, 100, 1000, 4096} {
		ms = append(ms, strings.Repeat("x", n))
	}
	ms = append(ms, "<xml><AppId>wx5823bf96d3bd56c7</AppId><InfoType>component_verify_ticket</InfoType><ComponentVerifyTicket>ticket@@@中文</ComponentVerifyTicket></xml>")
	return ms
}

func TestDecryptsWhatOpenSSLEncrypts(t *testing.T) {
	c := sampleCrypter(t)
	key := sampleKey(t)
	for _, msg := range messages() {
		ct := openssl(t, false, key, wechatPlain(t, msg, sampleAppID))
		enc := base64.StdEncoding.EncodeToString(ct)
		got, err := c.Decrypt(enc)
		if err != nil {
			t.Fatalf("Decrypt of openssl's %d-byte message: %v", len(msg), err)
		}
		if string(got) != msg {
			t.Fatalf("Decrypt = %q, want %q", got, msg)
		}
		// And through Open, signed by sort+sha1sum.
		body := "<xml><AppId><![CDATA[" + sampleAppID + "]]></AppId><Encrypt><![CDATA[" + enc + "]]></Encrypt></xml>"
		sig := sha1sumSorted(t, sampleToken, "1700000000", "nonce42", enc)
		got, err = c.Open(sig, "1700000000", "nonce42", []byte(body))
		if err != nil || string(got) != msg {
			t.Fatalf("Open = %q, %v", got, err)
		}
	}
}

func TestOpenSSLDecryptsWhatWeEncrypt(t *testing.T) {
	c := sampleCrypter(t)
	key := sampleKey(t)
	for _, msg := range messages() {
		enc, err := c.Encrypt([]byte(msg))
		if err != nil {
			t.Fatal(err)
		}
		ct, err := base64.StdEncoding.DecodeString(enc)
		if err != nil {
			t.Fatal(err)
		}
		p := openssl(t, true, key, ct)
		if len(p)%32 != 0 {
			t.Fatalf("%d bytes, not whole 32-byte blocks", len(p))
		}
		pad := int(p[len(p)-1])
		if pad < 1 || pad > 32 || !bytes.Equal(p[len(p)-pad:], bytes.Repeat([]byte{byte(pad)}, pad)) {
			t.Fatalf("padding %x", p[len(p)-min(len(p), 33):])
		}
		p = p[:len(p)-pad]
		if want := 20 + len(msg) + len(sampleAppID); len(p) != want {
			t.Fatalf("unpadded length %d, want %d", len(p), want)
		}
		if n := binary.BigEndian.Uint32(p[16:20]); int(n) != len(msg) {
			t.Fatalf("length field %d, want %d", n, len(msg))
		}
		if got := string(p[20 : 20+len(msg)]); got != msg {
			t.Fatalf("message %q, want %q", got, msg)
		}
		if got := string(p[20+len(msg):]); got != sampleAppID {
			t.Fatalf("appid %q", got)
		}
	}
	// The 16 random bytes differ between two encryptions of one message.
	a, _ := c.Encrypt([]byte("same"))
	b, _ := c.Encrypt([]byte("same"))
	if a == b {
		t.Fatal("two encryptions of one message are equal: the random prefix is not random")
	}
}

func TestOpenSSLDecryptsTheSample(t *testing.T) {
	ct, err := base64.StdEncoding.DecodeString(sampleEncrypt)
	if err != nil {
		t.Fatal(err)
	}
	p := openssl(t, true, sampleKey(t), ct)
	p = p[:len(p)-int(p[len(p)-1])]
	if got := string(p[20 : len(p)-len(sampleAppID)]); got != samplePlain {
		t.Fatalf("openssl decrypts the sample to %q", got)
	}
	got, err := sampleCrypter(t).Decrypt(sampleEncrypt)
	if err != nil || string(got) != samplePlain {
		t.Fatalf("Decrypt = %q, %v", got, err)
	}
}

// sha1sumSorted is the signature computed by coreutils: the four strings
// one a line, `LC_ALL=C sort`, newlines removed, `sha1sum`.
func sha1sumSorted(t *testing.T, parts ...string) string {
	t.Helper()
	for _, tool := range []string{"sh", "sort", "tr", "sha1sum"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	cmd := exec.Command("sh", "-c", `LC_ALL=C sort | tr -d '\n' | sha1sum`)
	cmd.Stdin = strings.NewReader(strings.Join(parts, "\n") + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sort | sha1sum: %v", err)
	}
	sum, _, _ := strings.Cut(string(out), " ")
	return sum
}

func TestSignatureSha1sum(t *testing.T) {
	if got := sha1sumSorted(t, sampleToken, sampleTimestamp, sampleNonce, sampleEncrypt); got != sampleSignature {
		t.Fatalf("sha1sum says %s for the sample, which says %s", got, sampleSignature)
	}
	cases := [][4]string{
		{"QDG6eK", "1700000000", "abc", "AAAA"},
		{"tok", "1", "Zzz", "zzz+/="},
		{"中文token", "1409659813", "ñonce", "x"},
		{"same", "same", "same", "same"},
		{"", "", "", ""},
	}
	for _, c := range cases {
		want := sha1sumSorted(t, c[0], c[1], c[2], c[3])
		if got := wxcrypt.Signature(c[0], c[1], c[2], c[3]); got != want {
			t.Errorf("Signature(%q) = %s, sha1sum says %s", c, got, want)
		}
	}
}
