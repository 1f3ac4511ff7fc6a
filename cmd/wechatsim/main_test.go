package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt"
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

func TestParseConfigKinds(t *testing.T) {
	env := map[string]string{
		"WECHATSIM_WECOM_APPS":     "wwenv:1000005:wecom-env-secret",
		"WECHATSIM_FEISHU_APPS":    "cli_env:feishu:env-secret",
		"WECHATSIM_OAUTH2_CLIENTS": "envclient:oauth-env-secret",
	}
	c, err := parseConfig([]string{"--wecom", "wwflag:1000002:wecom:flag", "--feishu", "cli_flag:fs", "--oauth2", "svc:os",
		"--oauth2-scopes", "svc=read write", "--oauth2-scopes", "envclient=admin", "--feishu-renew-window", "0"},
		func(k string) string { return env[k] }, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.apps) != 0 || len(c.wecom) != 2 || len(c.feishu) != 2 || len(c.oauth2) != 2 {
		t.Fatalf("config %+v", c)
	}
	if c.wecom[0] != (wecomApp{"wwflag", 1000002, "wecom:flag"}) || c.wecom[1] != (wecomApp{"wwenv", 1000005, "wecom-env-secret"}) {
		t.Fatalf("wecom %+v", c.wecom)
	}
	if c.feishu[1] != (app{"cli_env", "feishu:env-secret"}) {
		t.Fatalf("feishu %+v", c.feishu)
	}
	if o := c.oauth2[0]; o.id != "svc" || o.secret != "os" || strings.Join(o.scopes, ",") != "read,write" {
		t.Fatalf("oauth2 %+v", o)
	}
	if o := c.oauth2[1]; o.id != "envclient" || strings.Join(o.scopes, ",") != "admin" {
		t.Fatalf("oauth2 %+v", o)
	}
	if c.opts.FeishuRenewWindow != -1 || c.opts.WeComTicketCorpHourly != 400 || c.opts.WeComTicketAppHourly != 100 {
		t.Fatalf("opts %+v", c.opts)
	}

	none := func(string) string { return "" }
	for _, bad := range [][]string{
		{"--wecom", "ww:notanumber:topsecret"},
		{"--wecom", "ww:topsecret"},
		{"--feishu", "topsecret"},
		{"--oauth2", ":topsecret"},
		{"--oauth2", "a:b", "--oauth2-scopes", "other=read"},
	} {
		var out bytes.Buffer
		_, err := parseConfig(bad, none, &out)
		if err == nil {
			t.Errorf("%q accepted", bad)
			continue
		}
		if strings.Contains(err.Error(), "topsecret") || strings.Contains(out.String(), "topsecret") {
			t.Errorf("%q: error leaks the secret: %v", bad, err)
		}
	}
	_, err = parseConfig(nil, func(k string) string {
		if k == "WECHATSIM_WECOM_APPS" {
			return "ww:x:topsecret"
		}
		return ""
	}, &bytes.Buffer{})
	if err == nil || strings.Contains(err.Error(), "topsecret") || !strings.Contains(err.Error(), "WECHATSIM_WECOM_APPS") {
		t.Fatalf("env error: %v", err)
	}
}

func TestRunServesEveryKind(t *testing.T) {
	const wecomSecret, feishuSecret, oauthSecret = "wecom-very-secret", "feishu-very-secret", "oauth-very-secret"
	var logs lockedBuf
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--wecom", "wwdemo:1000002:" + wecomSecret,
			"--feishu", "cli_demo:" + feishuSecret, "--oauth2", "svc:" + oauthSecret, "--oauth2-scopes", "svc=read"},
			func(string) string { return "" }, &logs, ready)
	}()
	var base string
	select {
	case addr := <-ready:
		base = "http://" + addr
	case err := <-done:
		t.Fatal(err)
	}
	decode := func(resp *http.Response, err error) map[string]any {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("HTTP %d %v %v", resp.StatusCode, m, err)
		}
		return m
	}
	var tokens []string
	m := decode(http.Get(base + "/cgi-bin/gettoken?" + url.Values{"corpid": {"wwdemo"}, "corpsecret": {wecomSecret}}.Encode()))
	tokens = append(tokens, m["access_token"].(string))
	m = decode(http.Post(base+"/open-apis/auth/v3/tenant_access_token/internal", "application/json",
		strings.NewReader(`{"app_id":"cli_demo","app_secret":"`+feishuSecret+`"}`)))
	tokens = append(tokens, m["tenant_access_token"].(string))
	m = decode(http.PostForm(base+"/oauth2/token", url.Values{"grant_type": {"client_credentials"},
		"client_id": {"svc"}, "client_secret": {oauthSecret}}))
	if m["scope"] != "read" {
		t.Fatalf("oauth2 answer %v", m)
	}
	tokens = append(tokens, m["access_token"].(string))
	for _, tok := range tokens {
		if tok == "" {
			t.Fatal("empty token")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	out := logs.String()
	for _, s := range append([]string{wecomSecret, feishuSecret, oauthSecret}, tokens...) {
		if strings.Contains(out, s) {
			t.Fatalf("log leaks a secret or token:\n%s", out)
		}
	}
	for _, want := range []string{"appid=wwdemo/1000002", "appid=cli_demo", "appid=svc", "wecom:wwdemo/1000002,feishu:cli_demo,oauth2:svc"} {
		if !strings.Contains(out, want) {
			t.Fatalf("log lacks %q:\n%s", want, out)
		}
	}
}

func TestParseComponent(t *testing.T) {
	const key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
	env := map[string]string{"WECHATSIM_COMPONENTS": "wxcompenv:env:secret:envtoken:" + key}
	c, err := parseConfig([]string{"--component", "wxcomp:comp-secret:pushtoken:" + key,
		"--component-callback", "http://127.0.0.1:1/wechat/component/{appid}", "--push-every", "1m", "--component-authorizers", "3"},
		func(k string) string { return env[k] }, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	want := []componentConf{{"wxcomp", "comp-secret", "pushtoken", key}, {"wxcompenv", "env:secret", "envtoken", key}}
	if !slices.Equal(c.components, want) || c.pushEvery != time.Minute || c.authorizers != 3 {
		t.Fatalf("config %+v", c)
	}
	none := func(string) string { return "" }
	for _, bad := range [][]string{
		{"--component", "wxcomp:topsecret"},
		{"--component", "wxcomp:topsecret:tok"},
		{"--component", ":topsecret:tok:" + key},
		{"--component", "wxcomp:topsecret:tok:shortkey"},
		{"--component", "wxcomp::tok:" + key},
		{"--component", "wxcomp:s:tok:" + key, "--component-callback", "not-a-url"},
		{"--component", "wxcomp:s:tok:" + key, "--push-every", "0s"},
		{"--component", "wxcomp:s:tok:" + key, "--component-authorizers", "-1"},
	} {
		var out bytes.Buffer
		_, err := parseConfig(bad, none, &out)
		if err == nil {
			t.Errorf("%q accepted", bad)
			continue
		}
		for _, s := range []string{"topsecret", key, "shortkey"} {
			if strings.Contains(err.Error(), s) || strings.Contains(out.String(), s) {
				t.Errorf("%q: error leaks %q: %v", bad, s, err)
			}
		}
	}
}

// The binary registers a component, pushes it tickets at start and every
// --push-every, authorizes --component-authorizers accounts, pushes
// authorization events on demand, and logs no secret, ticket or token.
func TestRunComponent(t *testing.T) {
	const (
		compSecret = "component-very-secret"
		token      = "pushtoken"
		key        = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
	)
	cr, err := wxcrypt.New(token, key, "wxcomp")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var pushes []*wxcrypt.ComponentPush
	cb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		q := r.URL.Query()
		p, err := cr.OpenComponentPush(q.Get("msg_signature"), q.Get("timestamp"), q.Get("nonce"), body)
		if err != nil || r.URL.Path != "/wechat/component/wxcomp" {
			http.Error(w, "bad push", http.StatusBadRequest)
			return
		}
		mu.Lock()
		pushes = append(pushes, p)
		mu.Unlock()
		_, _ = io.WriteString(w, "success")
	}))
	defer cb.Close()
	received := func() []*wxcrypt.ComponentPush {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(pushes)
	}
	waitPushes := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for len(received()) < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d pushes, want %d", len(received()), n)
			}
			time.Sleep(time.Millisecond)
		}
	}

	var logs lockedBuf
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--component-authorizers", "3", "--push-every", "50ms",
			"--component-callback", cb.URL + "/wechat/component/{appid}"},
			func(k string) string {
				if k == "WECHATSIM_COMPONENTS" {
					return "wxcomp:" + compSecret + ":" + token + ":" + key
				}
				return ""
			}, &logs, ready)
	}()
	var base string
	select {
	case addr := <-ready:
		base = "http://" + addr
	case err := <-done:
		t.Fatal(err)
	}
	waitPushes(2) // at start and after --push-every
	post := func(path string, body any) map[string]any {
		t.Helper()
		b, _ := json.Marshal(body)
		resp, err := http.Post(base+path, "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	ps := received()
	ticket := ps[len(ps)-1].ComponentVerifyTicket
	m := post("/cgi-bin/component/api_component_token", map[string]string{
		"component_appid": "wxcomp", "component_appsecret": compSecret, "component_verify_ticket": ticket})
	ctok, _ := m["component_access_token"].(string)
	if ctok == "" {
		t.Fatalf("component token: %v", m)
	}
	m = post("/cgi-bin/component/api_get_authorizer_list?component_access_token="+ctok,
		map[string]any{"component_appid": "wxcomp", "offset": 0, "count": 100})
	if m["total_count"] != float64(3) {
		t.Fatalf("list %v", m)
	}

	n := len(received())
	resp, err := http.Post(base+"/sim/component/authorize?component=wxcomp&authorizer=wxmerchant1", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	ans, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(ans), `"ok":true`) {
		t.Fatalf("authorize: %d %s", resp.StatusCode, ans)
	}
	var authorized *wxcrypt.ComponentPush
	for _, p := range received()[n:] {
		if p.InfoType == wxcrypt.InfoAuthorized {
			authorized = p
		}
	}
	if authorized == nil || authorized.AuthorizerAppID != "wxmerchant1" || strings.Contains(string(ans), authorized.AuthorizationCode) {
		t.Fatalf("authorized push %v, answer %s", authorized, ans)
	}
	resp, err = http.Post(base+"/sim/component/unauthorize?component=wxcomp&authorizer=nosuch", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Fatal("unauthorize of an unknown authorizer succeeded")
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	out := logs.String()
	secrets := []string{compSecret, key, ctok, authorized.AuthorizationCode}
	for _, p := range received() {
		if p.ComponentVerifyTicket != "" {
			secrets = append(secrets, p.ComponentVerifyTicket)
		}
	}
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Fatalf("log leaks a secret, ticket or token:\n%s", out)
		}
	}
	for _, want := range []string{"component:wxcomp", "push=component_verify_ticket", "push=authorized", "path=/cgi-bin/component/api_component_token"} {
		if !strings.Contains(out, want) {
			t.Fatalf("log lacks %q:\n%s", want, out)
		}
	}
}
