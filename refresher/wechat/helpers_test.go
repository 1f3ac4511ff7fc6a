package wechat_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

// seen is one request as the fake upstream received it.
type seen struct {
	Method, Path, RawQuery, ContentType string
	Body                                []byte
}

// upstream is a scripted fake token endpoint: the n-th request is answered
// by script[n], the last entry repeating.
type upstream struct {
	*httptest.Server
	mu     sync.Mutex
	reqs   []seen
	count  atomic.Int64
	script []http.HandlerFunc
}

func newUpstream(t *testing.T, script ...http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{script: script}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		n := len(u.reqs)
		u.reqs = append(u.reqs, seen{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Content-Type"), body})
		u.mu.Unlock()
		u.count.Add(1)
		h := u.script[min(n, len(u.script)-1)]
		h(w, r)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) requests() []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seen(nil), u.reqs...)
}

// reply answers with status and body as application/json.
func reply(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// ok answers with a token.
func ok(token string) http.HandlerFunc {
	return reply(200, `{"access_token":"`+token+`","expires_in":7200}`)
}

// errcode answers with an errcode body and HTTP 200, like WeChat.
func errcode(code int, msg string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		reply(200, `{"errcode":`+strconv.Itoa(code)+`,"errmsg":"`+msg+`"}`)(w, r)
	}
}

// htmlPage answers like a proxy in trouble.
func htmlPage(status int) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, "<html><body><h1>502 Bad Gateway</h1></body></html>")
	}
}

// fastRetry makes tests retry without measurable waits.
var fastRetry = wechat.RetryPolicy{Attempts: 4, Base: time.Millisecond, Max: 2 * time.Millisecond}

const testAppID = "wx0123456789abcdef"
const testSecret = "0123456789abcdef0123456789abcdef"

var testCred = wechat.Credentials{AppID: testAppID, Secret: testSecret}
