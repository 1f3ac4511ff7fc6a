package subscriber_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// revoker sits between the Transport and the network: when armed, it
// revokes (in the emulator) the token of the request passing through,
// before sending it, so that upstream rejects it with 40001.
type revoker struct {
	sim     *wechatsim.Sim
	armed   atomic.Bool
	revokes atomic.Int64
	mu      sync.Mutex
	seen    []string // every token sent, in order
}

func (r *revoker) RoundTrip(req *http.Request) (*http.Response, error) {
	tok := req.URL.Query().Get("access_token")
	r.mu.Lock()
	r.seen = append(r.seen, tok)
	r.mu.Unlock()
	if r.armed.CompareAndSwap(true, false) {
		r.sim.Revoke(tok)
		r.revokes.Add(1)
	}
	return http.DefaultTransport.RoundTrip(req)
}

type callbackIP struct {
	IPList  []string `json:"ip_list"`
	Errcode int      `json:"errcode"`
	Errmsg  string   `json:"errmsg"`
}

// A business client calls getcallbackip through the RoundTripper while
// the refresher replaces the token every ~2 s and tokens get revoked
// under it: the client never sees a rejection, and upstream rejected
// exactly one call per revoke (the retry absorbed each).
func TestRoundTripperAbsorbsRejections(t *testing.T) {
	const revokesWanted, scheduledWanted = 4, 3
	w := newWorld(t, wechatsim.Options{ExpiresIn: 3 * time.Second, Grace: time.Second})
	w.start()
	log, logs := logBuffer(t)
	var mu sync.Mutex
	var scheduled int
	tokens := map[string]bool{}
	src := newSource(t, w.NC, "mp-main", subscriber.WithLogger(log), subscriber.WithOnUpdate(func(tok *subscriber.Token) {
		mu.Lock()
		defer mu.Unlock()
		tokens[tok.AccessToken] = true
		if tok.Source == contract.SourceScheduled {
			scheduled++
		}
	}))
	rv := &revoker{sim: w.Sim}
	client := &http.Client{Transport: src.RoundTripper(rv), Timeout: 10 * time.Second}

	var calls, rejections atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := client.Get(w.SimURL + wechatsim.PathCallbackIP)
			if err != nil {
				t.Errorf("business call: %v", err)
				return
			}
			var body callbackIP
			err = json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			calls.Add(1)
			if err != nil || body.Errcode != 0 || len(body.IPList) == 0 {
				rejections.Add(1)
				t.Errorf("the client saw %+v (%v)", body, err)
			}
			if resp.Request.URL.Query().Has("access_token") {
				t.Error("Response.Request carries the token")
			}
		}
	}()
	for i := range revokesWanted {
		// Revoke the token of the next call, and wait for the client to
		// get past it.
		rv.armed.Store(true)
		testutil.WaitFor(t, 10*time.Second, func() bool { return !rv.armed.Load() }, "revoke %d not consumed", i)
		after := calls.Load()
		testutil.WaitFor(t, 10*time.Second, func() bool { return calls.Load() >= after+2 }, "the client stalled after revoke %d", i)
	}
	testutil.WaitFor(t, 15*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return scheduled >= scheduledWanted
	}, "the refresher did not refresh on schedule %d times", scheduledWanted)
	close(stop)
	<-done

	ok, rejected := w.Sim.BusinessCalls()
	t.Logf("%d client calls, %d scheduled refreshes, %d revokes; upstream: %d ok, %d rejected", calls.Load(), scheduled, rv.revokes.Load(), ok, rejected)
	if rejections.Load() != 0 {
		t.Errorf("the client saw %d rejections", rejections.Load())
	}
	if int64(rejected) != rv.revokes.Load() {
		t.Errorf("upstream rejected %d calls for %d revokes: want one each", rejected, rv.revokes.Load())
	}
	if int64(ok) != calls.Load() {
		t.Errorf("upstream accepted %d calls, the client made %d", ok, calls.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	all := []string{}
	for tok := range tokens {
		all = append(all, tok)
	}
	if s := leaked(logs.String(), all...); s != "" {
		t.Errorf("the Source's log contains a token (fingerprint %s)", contract.Fingerprint(s))
	}
}

// echo is a business API that accepts only tokens the emulator accepts,
// and records what it received.
type echo struct {
	sim *wechatsim.Sim
	mu  sync.Mutex
	got []echoed
}

type echoed struct {
	Token string
	Query url.Values
	Body  string
}

func (e *echo) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	q := r.URL.Query()
	e.mu.Lock()
	e.got = append(e.got, echoed{Token: q.Get("access_token"), Query: q, Body: string(body)})
	e.mu.Unlock()
	w.Header().Set("Content-Type", "application/json; encoding=utf-8")
	if r.URL.Path == "/big" {
		_, _ = w.Write(bigBody)
		return
	}
	if err := e.sim.Check(q.Get("access_token")); err != nil {
		_, _ = io.WriteString(w, `{"errcode":40001,"errmsg":"invalid credential, access_token is invalid or not latest"}`)
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"errcode": 0, "errmsg": "ok", "echo": string(body)})
}

func (e *echo) calls() []echoed {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]echoed(nil), e.got...)
}

var bigBody = []byte(`{"errcode":40001,"pad":"` + strings.Repeat("x", subscriber.MaxPeek) + `"}`)

// onlyReader hides everything but Read: http.NewRequest cannot set
// GetBody for it, so the body cannot be replayed.
type onlyReader struct{ io.Reader }

func TestRoundTripperReplaysBodies(t *testing.T) {
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.start()
	log, _ := logBuffer(t)
	src := newSource(t, w.NC, "mp-main", subscriber.WithLogger(log))
	api := &echo{sim: w.Sim}
	hs := httptest.NewServer(api)
	defer hs.Close()
	client := &http.Client{Transport: src.RoundTripper(nil)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	post := func(body io.Reader, query string) (map[string]any, []echoed) {
		t.Helper()
		n := len(api.calls())
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, hs.URL+"/cgi-bin/message/send?"+query, body)
		if err != nil {
			t.Fatal(err)
		}
		before := req.URL.String()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if req.URL.String() != before {
			t.Errorf("the caller's request was modified: %s", req.URL)
		}
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatalf("response body: %v", err)
		}
		return out, api.calls()[n:]
	}

	// A good token: one call, the token set, the query kept, a token in
	// the query replaced.
	tok, _ := src.Token()
	out, got := post(bytes.NewReader([]byte(`{"touser":"a"}`)), "foo=b%20r&access_token=BOGUS&x=1")
	if out["errcode"] != float64(0) || len(got) != 1 {
		t.Fatalf("good token: %v after %d calls", out, len(got))
	}
	if q := got[0].Query; q.Get("foo") != "b r" || q.Get("x") != "1" || len(q["access_token"]) != 1 || q.Get("access_token") != tok.AccessToken {
		t.Errorf("query upstream saw: %v", q)
	}

	// A revoked token, a replayable body: retried once with the same body
	// and a new token; the caller sees the success.
	w.Sim.Revoke(tok.AccessToken)
	payload := `{"touser":"b","msgtype":"text"}`
	out, got = post(bytes.NewReader([]byte(payload)), "")
	if out["errcode"] != float64(0) || out["echo"] != payload {
		t.Fatalf("after a revoke: %v", out)
	}
	if len(got) != 2 || got[0].Token != tok.AccessToken || got[1].Token == tok.AccessToken ||
		got[0].Body != payload || got[1].Body != payload {
		t.Fatalf("upstream saw %+v; want the revoked then a new token, the same body twice", got)
	}
	if now, _ := src.Token(); now.AccessToken != got[1].Token || now.Revision <= tok.Revision {
		t.Errorf("the Source holds %v, the retry used %s", now, contract.Fingerprint(got[1].Token))
	}

	// No body (GET) is replayable too.
	tok, _ = src.Token()
	w.Sim.Revoke(tok.AccessToken)
	out, got = post(nil, "")
	if out["errcode"] != float64(0) || len(got) != 2 {
		t.Fatalf("GET-like POST without body after a revoke: %v after %d calls", out, len(got))
	}

	// A body that cannot be replayed: no retry, the rejection comes back
	// intact; the token is refreshed for the next call.
	tok, _ = src.Token()
	w.Sim.Revoke(tok.AccessToken)
	out, got = post(onlyReader{strings.NewReader(payload)}, "")
	if out["errcode"] != float64(40001) || len(got) != 1 || got[0].Body != payload {
		t.Fatalf("non-replayable body: %v after %+v", out, got)
	}
	if now, _ := src.Token(); now.Revision <= tok.Revision {
		t.Errorf("a rejected token was not refreshed for the next call")
	}

	// A body larger than MaxPeek is passed on whole, even if it starts
	// like a rejection.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, hs.URL+"/big", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(b, bigBody) {
		t.Errorf("big body: got %d bytes, want %d intact", len(b), len(bigBody))
	}
}

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// A base transport whose errors print the request URL (Go's own
// *url.Error does): the token is replaced by its fingerprint.
func TestRoundTripperErrorsCarryNoToken(t *testing.T) {
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.start()
	log, _ := logBuffer(t)
	src := newSource(t, w.NC, "mp-main", subscriber.WithLogger(log))
	tok, _ := src.Token()
	base := rtFunc(func(r *http.Request) (*http.Response, error) {
		return nil, &url.Error{Op: "Get", URL: r.URL.String(), Err: io.ErrUnexpectedEOF}
	})
	client := &http.Client{Transport: src.RoundTripper(base)}
	_, err := client.Get("https://api.weixin.qq.com/cgi-bin/getcallbackip?x=1")
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), tok.AccessToken) {
		t.Fatalf("the error shows the token: %v", err)
	}
	if !strings.Contains(err.Error(), contract.Fingerprint(tok.AccessToken)) || !errorsIs(err, io.ErrUnexpectedEOF) {
		t.Errorf("error %v: want the fingerprint and the cause", err)
	}
}

// TestTransportOverStaticSource: the Transport takes any TokenSource; over
// a StaticSource a rejection comes back as it came (no newer token), an
// expired static token is refused before any request is sent.
func TestTransportOverStaticSource(t *testing.T) {
	var calls atomic.Int64
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.URL.Query().Get("access_token") != "GOOD" {
			_, _ = w.Write([]byte(`{"errcode":40001,"errmsg":"invalid credential"}`))
			return
		}
		_, _ = w.Write([]byte(`{"errcode":0}`))
	}))
	defer hs.Close()
	get := func(src subscriber.TokenSource) (string, error) {
		resp, err := (&http.Client{Transport: &subscriber.Transport{Source: src}}).Get(hs.URL + "/cgi-bin/x")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), nil
	}
	if body, err := get(subscriber.StaticAccessToken("mp", "GOOD")); err != nil || body != `{"errcode":0}` {
		t.Fatalf("good static token: %q, %v", body, err)
	}
	if body, err := get(subscriber.StaticAccessToken("mp", "BAD")); err != nil || !strings.Contains(body, "40001") {
		t.Fatalf("rejected static token: %q, %v; want the rejection as it came", body, err)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d upstream calls, want 2 (no retry: the static source has no newer token)", n)
	}
	old := subscriber.NewStaticSource(&subscriber.Token{App: "mp", AccessToken: "GOOD", Revision: 1, ExpiresAt: time.Now().Add(-time.Minute)})
	if _, err := get(old); !errors.Is(err, subscriber.ErrExpired) {
		t.Fatalf("expired static token: %v, want ErrExpired", err)
	}
	if n := calls.Load(); n != 2 {
		t.Fatal("an expired token was sent upstream")
	}
}
