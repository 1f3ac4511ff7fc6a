package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestParseConfig(t *testing.T) {
	env := map[string]string{"WECHATSIM_APPS": "wxenv1:envsecret1, wxenv2:env:secret2"}
	c, err := parseConfig([]string{"--app", "wxflag:flagsecret", "--quota", "0", "--grace", "10s"},
		func(k string) string { return env[k] }, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	want := []app{{"wxflag", "flagsecret"}, {"wxenv1", "envsecret1"}, {"wxenv2", "env:secret2"}}
	if len(c.apps) != len(want) {
		t.Fatalf("apps %v", c.apps)
	}
	for i := range want {
		if c.apps[i] != want[i] {
			t.Fatalf("app %d = %v, want %v", i, c.apps[i], want[i])
		}
	}
	if c.opts.DailyQuota != -1 || c.opts.Grace != 10*time.Second || c.listen != "127.0.0.1:9100" {
		t.Fatalf("opts %+v listen %q", c.opts, c.listen)
	}

	for _, bad := range [][]string{{}, {"--app", "nosecret"}, {"--app", ":x"}, {"--app", "a:b", "--latency", "-1s"}} {
		if _, err := parseConfig(bad, func(string) string { return "" }, &bytes.Buffer{}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	var out bytes.Buffer
	_, err = parseConfig([]string{"--app", "topsecret"}, func(string) string { return "" }, &out)
	if err == nil || strings.Contains(err.Error(), "topsecret") || strings.Contains(out.String(), "topsecret") {
		t.Fatalf("error leaks the value: %v\n%s", err, out.String())
	}
	_, err = parseConfig(nil, func(string) string { return "wxa-topsecret" }, &bytes.Buffer{})
	if err == nil || strings.Contains(err.Error(), "topsecret") {
		t.Fatalf("error leaks the value: %v", err)
	}
}

func TestRunServesLogsAndShutsDown(t *testing.T) {
	const secret = "very-secret-value"
	var logs lockedBuf
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--app", "wxdemo:" + secret, "--latency", "1ms"},
			func(string) string { return "" }, &logs, ready)
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	base := "http://" + addr
	q := url.Values{"grant_type": {"client_credential"}, "appid": {"wxdemo"}, "secret": {secret}}
	resp, err := http.Get(base + "/cgi-bin/token?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&r)
	resp.Body.Close()
	if r.AccessToken == "" || r.ExpiresIn != 7200 {
		t.Fatalf("answer %+v", r)
	}
	resp, err = http.Get(base + "/cgi-bin/getcallbackip?access_token=" + r.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	resp, err = http.Get(base + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz: %v", err)
	}
	resp.Body.Close()

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no graceful shutdown")
	}
	out := logs.String()
	if strings.Contains(out, secret) || strings.Contains(out, r.AccessToken) {
		t.Fatalf("log leaks a secret or token:\n%s", out)
	}
	for _, want := range []string{"path=/cgi-bin/token", "appid=wxdemo", "errcode=0", "path=/cgi-bin/getcallbackip", "shutting down"} {
		if !strings.Contains(out, want) {
			t.Fatalf("log lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "msg=call"); n != 2 {
		t.Fatalf("%d call lines, want 2:\n%s", n, out)
	}
}
