package gateway_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/gateway"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

// readTimeout is the gateway's read timeout in the slow-loris tests: the
// mechanism is the server's own (http.Server.ReadTimeout); a short value
// keeps the test short.
const readTimeout = 2 * time.Second

// TestSlowLorisBody: a client that sends the headers of a refresh and
// then its body a byte at a time, slower than the read timeout, holds a
// handler only until the timeout: the server answers or closes the
// connection, and the handler's goroutine is gone.
func TestSlowLorisBody(t *testing.T) {
	w := setup(t, nil, gateway.WithReadTimeout(readTimeout))
	conn, err := net.Dial("tcp", strings.TrimPrefix(w.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	_, err = io.WriteString(conn, "POST /v1/tokens/mp/refresh HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+tokShop+
		"\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"stale")
	if err != nil {
		t.Fatal(err)
	}
	// The handler runs, waiting for the body.
	testutil.WaitFor(t, 5*time.Second, func() bool { return gateway.InFlight(w.g) == 1 }, "the handler did not start")

	// Trickle a byte every 100 ms until the server gives up.
	closed := make(chan time.Time, 1)
	go func() {
		_ = conn.SetReadDeadline(time.Now().Add(readTimeout + 20*time.Second))
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			t.Logf("answer to the slow body: %d", resp.StatusCode)
		} else {
			t.Logf("connection ended: %v", err)
		}
		closed <- time.Now()
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var end time.Time
loop:
	for {
		select {
		case end = <-closed:
			break loop
		case <-tick.C:
			_, _ = conn.Write([]byte(" "))
		case <-time.After(readTimeout + 20*time.Second):
			t.Fatalf("the server still reads the slow body after %s", time.Since(start))
		}
	}
	if held := end.Sub(start); held < readTimeout-200*time.Millisecond {
		t.Errorf("the connection ended after %s, before the read timeout %s: was it the timeout?", held, readTimeout)
	} else {
		t.Logf("the slow body was cut after %s", held.Round(time.Millisecond))
	}
	testutil.WaitFor(t, 5*time.Second, func() bool { return gateway.InFlight(w.g) == 0 }, "the handler is still held after the read timeout")
	// The gateway still serves.
	mustStatus(t, "after the slow client", w.do(t, "GET", "/v1/tokens/mp", tokShop, ""), 200)
}

// TestSlowLorisHeaders: a client that never finishes its headers is cut
// off at the header timeout, before any handler runs.
func TestSlowLorisHeaders(t *testing.T) {
	w := setup(t, nil, gateway.WithReadTimeout(readTimeout))
	conn, err := net.Dial("tcp", strings.TrimPrefix(w.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err := io.WriteString(conn, "GET /v1/tokens/mp HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(readTimeout + 20*time.Second))
	_, err = io.Copy(io.Discard, conn) // until the server closes
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server kept the connection with unfinished headers for %s", time.Since(start))
	}
	if held := time.Since(start); held < readTimeout-200*time.Millisecond {
		t.Errorf("closed after %s, before the header timeout", held)
	}
	if n := gateway.InFlight(w.g); n != 0 {
		t.Errorf("%d handlers ran for unfinished headers", n)
	}
}

// TestTLS: with tls_cert_file and tls_key_file the gateway serves HTTPS
// with that certificate (a self-signed one made here) and refuses plain
// HTTP without serving a record.
func TestTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	w := setup(t, func(c *gateway.Config) { c.TLSCertFile, c.TLSKeyFile = certFile, keyFile })
	w.hc = tlsClient(&tls.Config{RootCAs: pool})
	if !strings.HasPrefix(w.base, "https://") {
		t.Fatalf("base %s", w.base)
	}
	r := w.do(t, "GET", "/v1/tokens/mp", tokShop, "")
	mustStatus(t, "GET over TLS", r, 200)
	stored, _ := w.stored(t, "mp")
	if string(r.body) != string(stored) {
		t.Errorf("GET over TLS: %s, want %s", r.body, stored)
	}
	mustStatus(t, "wrong token over TLS", w.do(t, "GET", "/v1/tokens/mp", tokShop+"x", ""), 401)

	// A client that does not trust the certificate fails the handshake.
	if _, err := (&http.Client{Timeout: 10 * time.Second}).Get(w.base + "/v1/tokens/mp"); err == nil {
		t.Errorf("a client without the CA connected")
	}
	// Plain HTTP to the TLS port gets no record.
	req, _ := http.NewRequest("GET", "http://"+strings.TrimPrefix(w.base, "https://")+"/v1/tokens/mp", nil)
	req.Header.Set("Authorization", "Bearer "+tokShop)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 || strings.Contains(string(b), "access_token") {
			t.Errorf("plain HTTP to the TLS port: %d %s", resp.StatusCode, b)
		}
	}
}

// TestTLSFilesMissing: New names the TLS keys when the files do not load.
func TestTLSFilesMissing(t *testing.T) {
	cfg := gateway.Config{Listen: "127.0.0.1:0", TLSCertFile: "/nonexistent/cert.pem", TLSKeyFile: "/nonexistent/key.pem", Clients: testClients()}
	nc, _ := testutil.Connect(t, testutil.RunServer(t).ClientURL())
	_, err := gateway.New(cfg, nc)
	if err == nil || !strings.Contains(err.Error(), "tls_cert_file") {
		t.Fatalf("New with missing TLS files: %v", err)
	}
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key
// to files and returns them with a pool that trusts the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tokenkeeper-gateway-test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}
