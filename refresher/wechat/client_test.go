package wechat_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

func TestFetchClassicRequestShape(t *testing.T) {
	up := newUpstream(t, ok("TOKEN-classic"))
	c := wechat.New(wechat.WithBaseURL(up.URL))
	cred := wechat.Credentials{AppID: testAppID, Secret: "s&e=c r+t/?#"}

	tok, err := c.Fetch(context.Background(), wechat.KindClassic, "", cred, true)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if tok.AccessToken != "TOKEN-classic" || tok.ExpiresIn != 7200*time.Second {
		t.Fatalf("token = %q %v, want TOKEN-classic 2h", tok.AccessToken, tok.ExpiresIn)
	}
	reqs := up.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if r.Method != http.MethodGet || r.Path != "/cgi-bin/token" || len(r.Body) != 0 {
		t.Errorf("request = %s %s body %q, want GET /cgi-bin/token with no body", r.Method, r.Path, r.Body)
	}
	q, err := url.ParseQuery(r.RawQuery)
	if err != nil {
		t.Fatal(err)
	}
	want := url.Values{"grant_type": {"client_credential"}, "appid": {testAppID}, "secret": {cred.Secret}}
	if len(q) != len(want) {
		t.Errorf("query %q has %d keys, want %d", r.RawQuery, len(q), len(want))
	}
	for k, v := range want {
		if q.Get(k) != v[0] || len(q[k]) != 1 {
			t.Errorf("query %s = %q, want %q", k, q[k], v)
		}
	}
	if !strings.HasPrefix(r.RawQuery, "grant_type=client_credential&appid=") {
		t.Errorf("query %q: want the documented order grant_type, appid, secret", r.RawQuery)
	}
}

func TestFetchStableRequestShape(t *testing.T) {
	for _, force := range []bool{false, true} {
		t.Run("force="+map[bool]string{false: "false", true: "true"}[force], func(t *testing.T) {
			up := newUpstream(t, ok("TOKEN-stable"))
			c := wechat.New(wechat.WithBaseURL(up.URL))
			tok, err := c.Fetch(context.Background(), wechat.KindStable, "", testCred, force)
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			if tok.AccessToken != "TOKEN-stable" || tok.ExpiresIn != 2*time.Hour {
				t.Fatalf("token = %q %v", tok.AccessToken, tok.ExpiresIn)
			}
			r := up.requests()[0]
			if r.Method != http.MethodPost || r.Path != "/cgi-bin/stable_token" || r.RawQuery != "" {
				t.Errorf("request = %s %s?%s, want POST /cgi-bin/stable_token without query", r.Method, r.Path, r.RawQuery)
			}
			if r.ContentType != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", r.ContentType)
			}
			var body map[string]any
			if err := json.Unmarshal(r.Body, &body); err != nil {
				t.Fatalf("body %q: %v", r.Body, err)
			}
			want := map[string]any{"grant_type": "client_credential", "appid": testAppID, "secret": testSecret, "force_refresh": force}
			if len(body) != len(want) {
				t.Errorf("body %s has %d keys, want %d", r.Body, len(body), len(want))
			}
			for k, v := range want {
				if body[k] != v {
					t.Errorf("body[%s] = %#v, want %#v", k, body[k], v)
				}
			}
		})
	}
}

func TestFetchBaseURL(t *testing.T) {
	up := newUpstream(t, ok("T"))
	t.Run("path prefix and trailing slash", func(t *testing.T) {
		c := wechat.New(wechat.WithBaseURL(up.URL + "/wechat/"))
		if _, err := c.Fetch(context.Background(), wechat.KindStable, "", testCred, false); err != nil {
			t.Fatal(err)
		}
		if p := up.requests()[len(up.requests())-1].Path; p != "/wechat/cgi-bin/stable_token" {
			t.Errorf("path = %q", p)
		}
	})
	t.Run("per-call base overrides the client's", func(t *testing.T) {
		c := wechat.New(wechat.WithBaseURL("http://127.0.0.1:1"), wechat.WithRetry(wechat.RetryPolicy{Attempts: 1}))
		if _, err := c.Fetch(context.Background(), wechat.KindClassic, up.URL, testCred, false); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("bad base URLs", func(t *testing.T) {
		c := wechat.New()
		for _, base := range []string{"api.weixin.qq.com", "ftp://x", "http://", "http://h/?a=b", "http://h/#f", "http://[::1", ":"} {
			_, err := c.Fetch(context.Background(), wechat.KindClassic, base, testCred, false)
			if !errors.Is(err, wechat.ErrInvalidArgument) || wechat.IsRetryable(err) {
				t.Errorf("base %q: err = %v, want ErrInvalidArgument, not retryable", base, err)
			}
		}
	})
}

func TestFetchInvalidArguments(t *testing.T) {
	up := newUpstream(t, ok("T"))
	c := wechat.New(wechat.WithBaseURL(up.URL))
	cases := []struct {
		name string
		kind string
		cred wechat.Credentials
		want error
	}{
		{"unknown kind", "dingtalk", testCred, wechat.ErrUnknownKind},
		{"empty kind", "", testCred, wechat.ErrUnknownKind},
		{"empty appid", wechat.KindClassic, wechat.Credentials{Secret: testSecret}, wechat.ErrInvalidArgument},
		{"empty secret", wechat.KindStable, wechat.Credentials{AppID: testAppID}, wechat.ErrInvalidArgument},
	}
	for _, tc := range cases {
		_, err := c.Fetch(context.Background(), tc.kind, "", tc.cred, false)
		if !errors.Is(err, tc.want) || wechat.IsRetryable(err) {
			t.Errorf("%s: err = %v, want %v, not retryable", tc.name, err, tc.want)
		}
	}
	if n := up.count.Load(); n != 0 {
		t.Errorf("%d requests made for invalid arguments, want 0", n)
	}
}

func TestFetchLongTokenIntact(t *testing.T) {
	for _, n := range []int{512, 2048, 4096} {
		token := strings.Repeat("A1b2_-", n/6+1)[:n]
		up := newUpstream(t, ok(token))
		for _, kind := range []string{wechat.KindClassic, wechat.KindStable} {
			tok, err := wechat.New(wechat.WithBaseURL(up.URL)).Fetch(context.Background(), kind, "", testCred, false)
			if err != nil {
				t.Fatalf("%d chars, %s: %v", n, kind, err)
			}
			if tok.AccessToken != token {
				t.Errorf("%d chars, %s: token changed (len %d)", n, kind, len(tok.AccessToken))
			}
		}
	}
}

func TestFetchResponseBodies(t *testing.T) {
	cases := []struct {
		name    string
		h       http.HandlerFunc
		wantTok string
		wantExp time.Duration
		wantBad bool
	}{
		{"errcode 0 with token", reply(200, `{"errcode":0,"errmsg":"ok","access_token":"T","expires_in":7200}`), "T", 2 * time.Hour, false},
		{"expires_in as string", reply(200, `{"access_token":"T","expires_in":"300"}`), "T", 5 * time.Minute, false},
		{"extra fields", reply(200, `{"access_token":"T","expires_in":60,"scope":"x"}`), "T", time.Minute, false},
		{"empty body", reply(200, ``), "", 0, true},
		{"whitespace body", reply(200, " \n"), "", 0, true},
		{"html", htmlPage(200), "", 0, true},
		{"json array", reply(200, `[1,2]`), "", 0, true},
		{"truncated json", reply(200, `{"access_token":"T","expi`), "", 0, true},
		{"no token no errcode", reply(200, `{"foo":"bar"}`), "", 0, true},
		{"errcode 0 without token", reply(200, `{"errcode":0,"errmsg":"ok"}`), "", 0, true},
		{"expires_in missing", reply(200, `{"access_token":"T"}`), "", 0, true},
		{"expires_in zero", reply(200, `{"access_token":"T","expires_in":0}`), "", 0, true},
		{"expires_in negative", reply(200, `{"access_token":"T","expires_in":-5}`), "", 0, true},
		{"expires_in huge", reply(200, `{"access_token":"T","expires_in":1e300}`), "", 0, true},
		{"errcode float", reply(200, `{"errcode":1.5}`), "", 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := newUpstream(t, tc.h)
			c := wechat.New(wechat.WithBaseURL(up.URL), wechat.WithRetry(wechat.RetryPolicy{Attempts: 1}))
			tok, err := c.Fetch(context.Background(), wechat.KindClassic, "", testCred, false)
			if tc.wantBad {
				if !errors.Is(err, wechat.ErrBadResponse) || !wechat.IsRetryable(err) {
					t.Fatalf("err = %v, want retryable ErrBadResponse", err)
				}
				return
			}
			if err != nil || tok.AccessToken != tc.wantTok || tok.ExpiresIn != tc.wantExp {
				t.Fatalf("got %q %v %v, want %q %v", tok.AccessToken, tok.ExpiresIn, err, tc.wantTok, tc.wantExp)
			}
		})
	}
}

func TestFetchMaxBody(t *testing.T) {
	body := `{"access_token":"` + strings.Repeat("x", 200) + `","expires_in":7200}`
	up := newUpstream(t, reply(200, body))
	opts := []wechat.Option{wechat.WithBaseURL(up.URL), wechat.WithRetry(wechat.RetryPolicy{Attempts: 1})}

	_, err := wechat.New(append(opts, wechat.WithMaxBody(int64(len(body)-1)))...).Fetch(context.Background(), wechat.KindClassic, "", testCred, false)
	if !errors.Is(err, wechat.ErrBadResponse) {
		t.Errorf("body one byte over the limit: err = %v, want ErrBadResponse", err)
	}
	if _, err := wechat.New(append(opts, wechat.WithMaxBody(int64(len(body))))...).Fetch(context.Background(), wechat.KindClassic, "", testCred, false); err != nil {
		t.Errorf("body exactly at the limit: %v", err)
	}
	// The default limit (64 KiB) takes a long token.
	if _, err := wechat.New(opts...).Fetch(context.Background(), wechat.KindClassic, "", testCred, false); err != nil {
		t.Errorf("default limit: %v", err)
	}
	big := newUpstream(t, reply(200, `{"access_token":"`+strings.Repeat("x", 70<<10)+`","expires_in":7200}`))
	if _, err := wechat.New(wechat.WithBaseURL(big.URL), wechat.WithRetry(wechat.RetryPolicy{Attempts: 1})).Fetch(context.Background(), wechat.KindClassic, "", testCred, false); !errors.Is(err, wechat.ErrBadResponse) {
		t.Errorf("70 KiB body with the default limit: err = %v, want ErrBadResponse", err)
	}
}

func TestFetchHTTPStatus(t *testing.T) {
	cases := []struct {
		status    int
		retryable bool
	}{
		{500, true}, {502, true}, {503, true}, {504, true}, {429, true}, {408, true},
		{400, false}, {401, false}, {403, false}, {404, false}, {302, false}, {204, false},
	}
	for _, tc := range cases {
		up := newUpstream(t, reply(tc.status, `{"errcode":-1,"errmsg":"ignored"}`))
		c := wechat.New(wechat.WithBaseURL(up.URL), wechat.WithRetry(wechat.RetryPolicy{Attempts: 1}))
		_, err := c.Fetch(context.Background(), wechat.KindStable, "", testCred, false)
		var he *wechat.HTTPError
		if !errors.As(err, &he) || he.Status != tc.status {
			t.Errorf("status %d: err = %v, want *HTTPError with that status", tc.status, err)
			continue
		}
		if he.Retryable() != tc.retryable || wechat.IsRetryable(err) != tc.retryable {
			t.Errorf("status %d: retryable = %v/%v, want %v", tc.status, he.Retryable(), wechat.IsRetryable(err), tc.retryable)
		}
		if errors.Is(err, wechat.ErrBusy) {
			t.Errorf("status %d: the body of a non-200 answer must not be interpreted", tc.status)
		}
	}
}

func TestFetchDoesNotFollowRedirects(t *testing.T) {
	elsewhere := newUpstream(t, ok("T"))
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	})
	for _, hc := range []*http.Client{nil, {}} {
		c := wechat.New(wechat.WithBaseURL(up.URL), wechat.WithHTTPClient(hc))
		for _, kind := range []string{wechat.KindClassic, wechat.KindStable} {
			_, err := c.Fetch(context.Background(), kind, "", testCred, false)
			var he *wechat.HTTPError
			if !errors.As(err, &he) || he.Status != http.StatusTemporaryRedirect || wechat.IsRetryable(err) {
				t.Errorf("%s: err = %v, want permanent *HTTPError 307", kind, err)
			}
		}
	}
	if n := elsewhere.count.Load(); n != 0 {
		t.Errorf("redirect target got %d requests (with the secret), want 0", n)
	}
}

func TestFetchRetries(t *testing.T) {
	busy := errcode(-1, "system error")
	cases := []struct {
		name   string
		script []http.HandlerFunc
		check  func(error) bool
	}{
		{"errcode -1", []http.HandlerFunc{busy}, func(err error) bool { return errors.Is(err, wechat.ErrBusy) }},
		{"5xx", []http.HandlerFunc{reply(503, "")}, func(err error) bool { var he *wechat.HTTPError; return errors.As(err, &he) }},
		{"429", []http.HandlerFunc{reply(429, "")}, func(err error) bool { var he *wechat.HTTPError; return errors.As(err, &he) }},
		{"html", []http.HandlerFunc{htmlPage(200)}, func(err error) bool { return errors.Is(err, wechat.ErrBadResponse) }},
	}
	for _, tc := range cases {
		t.Run(tc.name+" until success", func(t *testing.T) {
			up := newUpstream(t, append(append([]http.HandlerFunc{}, tc.script[0], tc.script[0]), ok("T"))...)
			var hooks []error
			c := wechat.New(wechat.WithBaseURL(up.URL), wechat.WithRetry(fastRetry),
				wechat.WithAttemptHook(func(appid string, attempt int, err error, d time.Duration) {
					if appid != testAppID || attempt != len(hooks)+1 || d < 0 {
						t.Errorf("hook(%q, %d, %v, %v)", appid, attempt, err, d)
					}
					hooks = append(hooks, err)
				}))
			tok, err := c.Fetch(context.Background(), wechat.KindClassic, "", testCred, false)
			if err != nil || tok.AccessToken != "T" {
				t.Fatalf("Fetch = %v, %v", tok, err)
			}
			if n := up.count.Load(); n != 3 {
				t.Errorf("%d requests, want 3", n)
			}
			if len(hooks) != 3 || !tc.check(hooks[0]) || !tc.check(hooks[1]) || hooks[2] != nil {
				t.Errorf("hook errors = %v", hooks)
			}
		})
		t.Run(tc.name+" gives up after Attempts", func(t *testing.T) {
			up := newUpstream(t, tc.script...)
			c := wechat.New(wechat.WithBaseURL(up.URL), wechat.WithRetry(wechat.RetryPolicy{Attempts: 3, Base: time.Millisecond, Max: time.Millisecond}))
			_, err := c.Fetch(context.Background(), wechat.KindStable, "", testCred, false)
			if !tc.check(err) || !wechat.IsRetryable(err) {
				t.Fatalf("err = %v", err)
			}
			if n := up.count.Load(); n != 3 {
				t.Errorf("%d requests, want 3", n)
			}
			if !strings.Contains(err.Error(), "3 attempts") || !strings.Contains(err.Error(), testAppID) {
				t.Errorf("error %q should name the appid and the attempts", err)
			}
		})
	}
	t.Run("Attempts 1 means no retry", func(t *testing.T) {
		up := newUpstream(t, busy)
		c := wechat.New(wechat.WithBaseURL(up.URL), wechat.WithRetry(wechat.RetryPolicy{Attempts: 1}))
		if _, err := c.Fetch(context.Background(), wechat.KindClassic, "", testCred, false); !errors.Is(err, wechat.ErrBusy) {
			t.Fatalf("err = %v", err)
		}
		if n := up.count.Load(); n != 1 {
			t.Errorf("%d requests, want 1", n)
		}
	})
	t.Run("default policy makes 4 attempts", func(t *testing.T) {
		if wechat.DefaultAttempts != 4 || wechat.DefaultBackoffBase != 200*time.Millisecond || wechat.DefaultBackoffMax != 5*time.Second {
			t.Errorf("defaults = %d %v %v", wechat.DefaultAttempts, wechat.DefaultBackoffBase, wechat.DefaultBackoffMax)
		}
		up := newUpstream(t, busy)
		// Zero Base/Max would mean the default 200ms..5s; keep them short.
		c := wechat.New(wechat.WithBaseURL(up.URL), wechat.WithRetry(wechat.RetryPolicy{Base: time.Millisecond, Max: time.Millisecond}))
		_, _ = c.Fetch(context.Background(), wechat.KindClassic, "", testCred, false)
		if n := up.count.Load(); n != 4 {
			t.Errorf("%d requests, want 4", n)
		}
	})
}

func TestFetchRetriesTransportErrors(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		base := closedURL(t)
		var attempts int
		c := wechat.New(wechat.WithRetry(fastRetry), wechat.WithAttemptHook(func(string, int, error, time.Duration) { attempts++ }))
		_, err := c.Fetch(context.Background(), wechat.KindClassic, base, testCred, false)
		var ue *url.Error
		var oe *net.OpError
		if !errors.As(err, &ue) || !errors.As(err, &oe) || !wechat.IsRetryable(err) {
			t.Fatalf("err = %v (%T), want a retryable *url.Error around a *net.OpError", err, err)
		}
		if attempts != fastRetry.Attempts {
			t.Errorf("%d attempts, want %d", attempts, fastRetry.Attempts)
		}
	})
	t.Run("per-attempt timeout", func(t *testing.T) {
		release := make(chan struct{})
		up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
		defer close(release)
		c := wechat.New(wechat.WithBaseURL(up.URL), wechat.WithTimeout(50*time.Millisecond),
			wechat.WithRetry(wechat.RetryPolicy{Attempts: 2, Base: time.Millisecond, Max: time.Millisecond}))
		_, err := c.Fetch(context.Background(), wechat.KindStable, "", testCred, false)
		var netErr net.Error
		if !errors.As(err, &netErr) || !netErr.Timeout() {
			t.Fatalf("err = %v, want a net.Error with Timeout()", err)
		}
		if !errors.Is(err, context.DeadlineExceeded) || !wechat.IsRetryable(err) {
			t.Errorf("err = %v, want context.DeadlineExceeded, retryable", err)
		}
		var ue *url.Error
		if !errors.As(err, &ue) || !strings.Contains(ue.URL, "/cgi-bin/stable_token") {
			t.Errorf("url.Error = %#v", ue)
		}
		if n := up.count.Load(); n != 2 {
			t.Errorf("%d requests, want 2", n)
		}
	})
	t.Run("timeout while reading the body", func(t *testing.T) {
		release := make(chan struct{})
		up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(200)
			_, _ = w.Write([]byte(`{"access_token":"`))
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
		defer close(release)
		c := wechat.New(wechat.WithBaseURL(up.URL), wechat.WithTimeout(50*time.Millisecond), wechat.WithRetry(wechat.RetryPolicy{Attempts: 1}))
		_, err := c.Fetch(context.Background(), wechat.KindClassic, "", testCred, false)
		var netErr net.Error
		if !errors.As(err, &netErr) || !netErr.Timeout() || !wechat.IsRetryable(err) {
			t.Fatalf("err = %v, want a retryable timeout net.Error", err)
		}
	})
}

func TestFetchPermanentErrorsNotRetried(t *testing.T) {
	for _, code := range []int{40001, 40002, 40013, 40125, 40164, 40243, 45009, 45011, 89501, 89503, 89506, 89507, 40014, 42001, 48001, 99999} {
		up := newUpstream(t, errcode(code, "nope"))
		c := wechat.New(wechat.WithBaseURL(up.URL), wechat.WithRetry(fastRetry))
		_, err := c.Fetch(context.Background(), wechat.KindClassic, "", testCred, false)
		var we *wechat.Error
		if !errors.As(err, &we) || we.Code != code || wechat.IsRetryable(err) {
			t.Errorf("errcode %d: err = %v, want permanent *Error", code, err)
		}
		if n := up.count.Load(); n != 1 {
			t.Errorf("errcode %d: %d requests, want 1", code, n)
		}
	}
}

func TestFetchContextCancelDuringBackoff(t *testing.T) {
	up := newUpstream(t, reply(503, ""))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := wechat.New(wechat.WithBaseURL(up.URL),
		wechat.WithRetry(wechat.RetryPolicy{Attempts: 5, Base: time.Hour, Max: time.Hour}),
		wechat.WithAttemptHook(func(string, int, error, time.Duration) { cancel() }))
	start := time.Now()
	_, err := c.Fetch(ctx, wechat.KindClassic, "", testCred, false)
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("Fetch returned after %v; cancel must stop the backoff at once", elapsed)
	}
	var he *wechat.HTTPError
	if !errors.Is(err, context.Canceled) || !errors.As(err, &he) || he.Status != 503 {
		t.Fatalf("err = %v, want context.Canceled wrapped with the last upstream error", err)
	}
	if wechat.IsRetryable(err) {
		t.Errorf("a cancelled fetch is not retryable")
	}
	if n := up.count.Load(); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

func TestFetchContextCancelDuringRequest(t *testing.T) {
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	defer close(release)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := wechat.New(wechat.WithBaseURL(up.URL), wechat.WithTimeout(time.Hour), wechat.WithRetry(fastRetry))
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := c.Fetch(ctx, wechat.KindStable, "", testCred, true)
		done <- err
	}()
	<-entered
	cancel()
	err := <-done
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("Fetch returned after %v", elapsed)
	}
	if !errors.Is(err, context.Canceled) || wechat.IsRetryable(err) {
		t.Fatalf("err = %v, want context.Canceled, not retryable", err)
	}
	if n := up.count.Load(); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

func TestFetchContextAlreadyDone(t *testing.T) {
	up := newUpstream(t, ok("T"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := wechat.New(wechat.WithBaseURL(up.URL)).Fetch(ctx, wechat.KindClassic, "", testCred, false)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if n := up.count.Load(); n != 0 {
		t.Errorf("%d requests, want 0", n)
	}
}

func TestNewNeverPanics(t *testing.T) {
	up := newUpstream(t, ok("T"))
	c := wechat.New(nil, wechat.WithHTTPClient(nil), wechat.WithBaseURL(""), wechat.WithTimeout(-1),
		wechat.WithRetry(wechat.RetryPolicy{Attempts: -3, Base: -1, Max: -1}), wechat.WithMaxBody(-5),
		wechat.WithAttemptHook(nil), wechat.WithBaseURL(up.URL))
	if _, err := c.Fetch(context.Background(), wechat.KindClassic, "", testCred, false); err != nil {
		t.Fatal(err)
	}
	var zero wechat.Client // the zero Client works with the defaults
	if _, err := zero.Fetch(context.Background(), wechat.KindClassic, up.URL, testCred, false); err != nil {
		t.Fatalf("zero Client: %v", err)
	}
}

func TestFetchConcurrent(t *testing.T) {
	up := newUpstream(t, ok("T"))
	c := wechat.New(wechat.WithBaseURL(up.URL))
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			kind := []string{wechat.KindClassic, wechat.KindStable}[i%2]
			if _, err := c.Fetch(context.Background(), kind, "", testCred, i%3 == 0); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
}

// closedURL returns the URL of a port where nothing listens.
func closedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return "http://" + addr
}
