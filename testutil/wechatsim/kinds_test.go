package wechatsim_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// Secrets of the WeCom, Feishu and OAuth2 tests, and the wrong ones they
// send: none may ever appear in an answer.
const (
	wecomCorp     = "ww0123456789abcdef"
	wecomSecretA  = "wecom-secret-A-0123456789"
	wecomSecretB  = "wecom-secret-B-0123456789"
	feishuApp     = "cli_a1b2c3d4e5f60718"
	feishuSecret  = "feishu-secret-0123456789"
	oauthClient   = "svc-client"
	oauthSecret   = "oauth:secret+/ü-0123456789" // needs escaping in Basic auth
	wrongSecret   = "wrong-secret-0123456789"
	agentA, agent = 1000002, 1000003
)

var kindSecrets = []string{secret, wecomSecretA, wecomSecretB, feishuSecret, oauthSecret, wrongSecret}

// rawReply is one HTTP answer, checked for leaked secrets.
type rawReply struct {
	status int
	header http.Header
	body   []byte
}

func (r rawReply) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %q: %v", r.body, err)
	}
}

// raw sends req and fails the test if any known secret appears in the
// answer's body or headers.
func (e *env) raw(req *http.Request) rawReply {
	e.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("request: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("read: %v", err)
	}
	for _, sec := range kindSecrets {
		leak := strings.Contains(string(body), sec)
		for _, vs := range resp.Header {
			for _, v := range vs {
				leak = leak || strings.Contains(v, sec)
			}
		}
		if leak {
			e.t.Fatalf("answer to %s %s leaks a secret: %d %s", req.Method, req.URL.Path, resp.StatusCode, body)
		}
	}
	return rawReply{resp.StatusCode, resp.Header, body}
}

func (e *env) get(path string) rawReply {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+path, nil)
	return e.raw(req)
}
