package wechat_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// The distinctive part: a leak of any spelling, or of a prefix cut off by a
// truncation, contains it.
const leakMarker = "do-not-leak"

var leakSecrets = []string{
	"S3CR3T-do-not-leak-7f3a9c41b2",
	`S3CR3T-do-not-leak+&=/ <"x">?#%`, // every escaping differs from the raw form
}

// assertNoLeak fails if any rendering of err, or of any error it wraps,
// shows the secret.
func assertNoLeak(t *testing.T, what string, err error, secret string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want one", what)
		return
	}
	forms := []string{secret, url.QueryEscape(secret), url.PathEscape(secret), leakMarker}
	if j, _ := json.Marshal(secret); true {
		forms = append(forms, strings.Trim(string(j), `"`))
	}
	var walk func(e error, depth int)
	walk = func(e error, depth int) {
		if e == nil || depth > 20 {
			return
		}
		for _, out := range []string{e.Error(), fmt.Sprint(e), fmt.Sprintf("%v", e), fmt.Sprintf("%+v", e),
			fmt.Sprintf("%#v", e), fmt.Sprintf("%s", e), fmt.Sprintf("%q", e)} {
			for _, f := range forms {
				if strings.Contains(out, f) {
					t.Errorf("%s: secret (%q) leaked at depth %d (%T): %s", what, f, depth, e, out)
					return
				}
			}
		}
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap(), depth+1)
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x, depth+1)
			}
		}
	}
	walk(err, 0)
}

// leakyTransport fails every request with an error that quotes the full
// URL and the request body, as a careless proxy library might.
type leakyTransport struct{ nested bool }

func (l leakyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	var body []byte
	if r.Body != nil {
		body, _ = io.ReadAll(r.Body)
	}
	err := fmt.Errorf("proxy refused %s with body %s: %w", r.URL, body, timeoutErr{})
	if l.nested {
		err = &url.Error{Op: "Proxy", URL: r.URL.String(), Err: err}
	}
	return nil, err
}

// echoTransport answers 200 with a redirect whose Location repeats the URL.
func TestSecretNeverLeaks(t *testing.T) {
	for _, secret := range leakSecrets {
		t.Run(fmt.Sprintf("%q", secret), func(t *testing.T) {
			testSecretNeverLeaks(t, secret)
		})
	}
}

func testSecretNeverLeaks(t *testing.T, secret string) {
	cred := wechat.Credentials{AppID: testAppID, Secret: secret}
	js, _ := json.Marshal(secret)
	jsonEscaped := strings.Trim(string(js), `"`)
	long := strings.Repeat("y", 236) // the 256-byte errmsg cut falls just after "do-not-leak"

	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	blocking := func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}
	echoQuery := func(w http.ResponseWriter, r *http.Request) {
		// Echo what the server saw, the way WeChat echoes parameters.
		got := r.URL.Query().Get("secret")
		if got == "" {
			var b struct{ Secret string }
			_ = json.NewDecoder(r.Body).Decode(&b)
			got = b.Secret
		}
		msg, _ := json.Marshal("invalid appsecret " + got + " rid: 1 " + url.QueryEscape(got))
		reply(200, `{"errcode":40125,"errmsg":`+string(msg)+`}`)(w, r)
	}
	servers := map[string]http.HandlerFunc{
		"5xx":                  reply(502, "bad gateway "+secret),
		"html":                 htmlPage(200),
		"html 500":             htmlPage(500),
		"too large":            reply(200, `{"access_token":"`+strings.Repeat("x", 100<<10)+`","expires_in":7200}`),
		"busy echo":            reply(200, `{"errcode":-1,"errmsg":"system error `+jsonEscaped+`"}`),
		"errmsg echoes secret": echoQuery,
		"errmsg echo at cut": func(w http.ResponseWriter, r *http.Request) {
			msg, _ := json.Marshal(long + secret)
			reply(200, `{"errcode":40001,"errmsg":`+string(msg)+`}`)(w, r)
		},
		"content-type echoes secret": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html; x="+url.QueryEscape(secret)+"; y="+secret)
			_, _ = io.WriteString(w, "<html>"+secret+"</html>")
		},
		"redirect with secret": func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://elsewhere.invalid/x?secret="+url.QueryEscape(secret)+"&"+r.URL.RawQuery, http.StatusFound)
		},
		"timeout": blocking,
	}

	var hookMu sync.Mutex
	var hookErrs []error
	hook := wechat.WithAttemptHook(func(_ string, _ int, err error, _ time.Duration) {
		hookMu.Lock()
		defer hookMu.Unlock()
		if err != nil {
			hookErrs = append(hookErrs, err)
		}
	})
	newClient := func(opts ...wechat.Option) *wechat.Client {
		return wechat.New(append([]wechat.Option{hook, wechat.WithTimeout(300 * time.Millisecond),
			wechat.WithRetry(wechat.RetryPolicy{Attempts: 2, Base: time.Millisecond, Max: time.Millisecond})}, opts...)...)
	}
	kinds := []string{wechat.KindClassic, wechat.KindStable}
	check := func(what string, err error) {
		t.Helper()
		assertNoLeak(t, what, err, secret)
	}

	for name, h := range servers {
		up := newUpstream(t, h)
		for _, kind := range kinds {
			_, err := newClient().Fetch(context.Background(), kind, up.URL, cred, true)
			check(name+"/"+kind, err)
		}
	}
	for _, kind := range kinds {
		_, err := newClient().Fetch(context.Background(), kind, closedURL(t), cred, false)
		check("connection refused/"+kind, err)

		_, err = newClient(wechat.WithTimeout(2*time.Second)).Fetch(context.Background(), kind, "http://no-such-host.invalid", cred, false)
		check("DNS failure/"+kind, err)

		for _, base := range []string{"http://[::1", "ht tp://x", "http://h/?secret=" + secret, "http://user:" + url.QueryEscape(secret) + "@h/#x"} {
			_, err = newClient().Fetch(context.Background(), kind, base, cred, false)
			check("bad base URL "+base+"/"+kind, err)
		}
		_, err = newClient().Fetch(context.Background(), kind+secret, "", cred, false)
		check("unknown kind/"+kind, err)

		for _, nested := range []bool{false, true} {
			c := newClient(wechat.WithHTTPClient(&http.Client{Transport: leakyTransport{nested: nested}}))
			_, err = c.Fetch(context.Background(), kind, "http://h", cred, false)
			check(fmt.Sprintf("transport quoting URL and body (nested %v)/%s", nested, kind), err)
			var netErr net.Error
			if !errors.As(err, &netErr) || !netErr.Timeout() {
				t.Errorf("sanitized transport error lost Timeout(): %v", err)
			}
		}

		// ctx cancelled during the request and during the backoff.
		entered := make(chan struct{}, 1)
		up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
			entered <- struct{}{}
			blocking(w, r)
		})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := newClient(wechat.WithTimeout(time.Hour)).Fetch(ctx, kind, up.URL, cred, false)
			done <- err
		}()
		<-entered
		cancel()
		check("ctx cancel during request/"+kind, <-done)

		up = newUpstream(t, reply(503, ""))
		ctx, cancel = context.WithCancel(context.Background())
		c := newClient(wechat.WithRetry(wechat.RetryPolicy{Attempts: 3, Base: time.Hour, Max: time.Hour}),
			wechat.WithAttemptHook(func(string, int, error, time.Duration) { cancel() }))
		_, err = c.Fetch(ctx, kind, up.URL, cred, false)
		check("ctx cancel during backoff/"+kind, err)

		ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
		up = newUpstream(t, blocking)
		_, err = newClient(wechat.WithTimeout(time.Hour)).Fetch(ctx, kind, up.URL, cred, false)
		cancel()
		check("ctx deadline/"+kind, err)
	}

	hookMu.Lock()
	defer hookMu.Unlock()
	if len(hookErrs) == 0 {
		t.Fatal("the attempt hook saw no errors")
	}
	for i, err := range hookErrs {
		check(fmt.Sprintf("attempt hook error %d", i), err)
	}
}

func TestRedactedURLErrorKeepsTimeout(t *testing.T) {
	secret := leakSecrets[0]
	release := make(chan struct{})
	defer close(release)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	c := wechat.New(wechat.WithTimeout(50*time.Millisecond), wechat.WithRetry(wechat.RetryPolicy{Attempts: 1}))
	_, err := c.Fetch(context.Background(), wechat.KindClassic, up.URL, wechat.Credentials{AppID: testAppID, Secret: secret}, false)

	var netErr net.Error
	if !errors.As(err, &netErr) || !netErr.Timeout() {
		t.Fatalf("errors.As(err, &net.Error) with Timeout() failed: %v", err)
	}
	var ue *url.Error
	if !errors.As(err, &ue) {
		t.Fatalf("no *url.Error in %v", err)
	}
	if !ue.Timeout() || !strings.Contains(ue.URL, "secret=REDACTED") || strings.Contains(ue.URL, leakMarker) {
		t.Errorf("url.Error: Timeout %v, URL %q; want a timeout with secret=REDACTED", ue.Timeout(), ue.URL)
	}
	if !strings.Contains(ue.URL, "appid="+testAppID) || !strings.Contains(ue.URL, "/cgi-bin/token") {
		t.Errorf("url.Error URL %q lost the useful parts", ue.URL)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("errors.Is(err, context.DeadlineExceeded) = false: %v", err)
	}
	assertNoLeak(t, "timeout", err, secret)
}

func TestCredentialsFormattingRedactsSecret(t *testing.T) {
	for _, secret := range leakSecrets {
		cred := wechat.Credentials{AppID: testAppID, Secret: secret}
		type holder struct {
			Cred  wechat.Credentials
			Ptr   *wechat.Credentials
			Slice []wechat.Credentials
		}
		h := holder{cred, &cred, []wechat.Credentials{cred}}
		var outs []string
		for _, v := range []any{cred, &cred, h, &h, []wechat.Credentials{cred}, map[string]wechat.Credentials{"a": cred}} {
			for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d", "%10v"} {
				outs = append(outs, fmt.Sprintf(verb, v))
			}
		}
		outs = append(outs, cred.String(), cred.GoString(), fmt.Sprint(cred), fmt.Sprintln(cred))
		j, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, string(j))
		for _, handler := range []func(io.Writer) slog.Handler{
			func(w io.Writer) slog.Handler { return slog.NewTextHandler(w, nil) },
			func(w io.Writer) slog.Handler { return slog.NewJSONHandler(w, nil) },
		} {
			var buf bytes.Buffer
			slog.New(handler(&buf)).Info("fetch", "cred", cred, "ptr", &cred, "holder", h)
			outs = append(outs, buf.String())
		}
		for _, out := range outs {
			if strings.Contains(out, leakMarker) {
				t.Errorf("credentials formatting leaks the secret: %s", out)
			}
		}
		// Still useful: the AppID shows, and the presence of a secret.
		if s := fmt.Sprintf("%+v", cred); s != "{AppID:"+testAppID+" Secret:REDACTED}" {
			t.Errorf("%%+v = %s", s)
		}
		if s := fmt.Sprintf("%#v", cred); s != `wechat.Credentials{AppID:"`+testAppID+`", Secret:"REDACTED"}` {
			t.Errorf("%%#v = %s", s)
		}
		if s := fmt.Sprintf("%v", wechat.Credentials{AppID: testAppID}); s != "{"+testAppID+" }" {
			t.Errorf("%%v of credentials without secret = %q", s)
		}
	}
}

func TestTokenFormattingHidesToken(t *testing.T) {
	tok := wechat.Token{AccessToken: "ACCESS-do-not-leak-token", ExpiresIn: 2 * time.Hour}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		out := fmt.Sprintf(verb, tok)
		if strings.Contains(out, leakMarker) || !strings.Contains(out, "24") {
			t.Errorf("%s = %s: want the length (24) and no token", verb, out)
		}
	}
	if tok.AccessToken != "ACCESS-do-not-leak-token" {
		t.Fatal("the field itself must be intact")
	}
}
