package refresher_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/seal"
	"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

const (
	compName  = "comp"
	compAppID = "wxcomponent01"
	cbToken   = "cbtoken0123"
)

// compWorld is one component on an embedded server and the emulator.
type compWorld struct {
	t      testing.TB
	e      *harness.Env
	cfg    *refresher.Config
	ring   *seal.Keyring
	key    []byte // the secrets key of ring
	aesKey string
	secKV  jetstream.KeyValue
	tokKV  jetstream.KeyValue
}

func newCompWorld(t *testing.T, simOpts wechatsim.Options) *compWorld {
	return newCompWorldTB(t, simOpts)
}

func newCompWorldTB(t testing.TB, simOpts wechatsim.Options) *compWorld {
	t.Helper()
	e := harness.New(t, harness.Options{Sim: simOpts})
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	aesKey := strings.TrimRight(base64.StdEncoding.EncodeToString(raw), "=")
	e.Sim.AddComponent(compAppID, harness.Secret(compAppID), cbToken, aesKey)
	key := make([]byte, seal.KeySize)
	_, _ = rand.Read(key)
	ring, err := seal.NewKeyring(key)
	if err != nil {
		t.Fatal(err)
	}
	ac := refresher.AppConfig{Name: compName, Kind: refresher.KindWeChatComponent, AppID: compAppID, APIBase: e.SimURL}.
		WithSecret(harness.Secret(compAppID)).WithCallbackSecrets(cbToken, aesKey)
	cfg := e.Config(ac)
	cfg.WithKeyring(ring)
	return &compWorld{t: t, e: e, cfg: cfg, ring: ring, key: key, aesKey: aesKey}
}

// start runs a replica and serves its callback; it returns the replica
// and the callback URL of the component.
func (w *compWorld) start(opts ...refresher.Option) (*harness.Replica, string) {
	w.t.Helper()
	rep := w.e.Start(w.cfg, opts...)
	srv := httptest.NewServer(rep.R.CallbackHandler())
	w.t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var err error
	if w.secKV, err = w.e.JS.KeyValue(ctx, contract.SecretsBucket(contract.DefaultBucket)); err != nil {
		w.t.Fatalf("secrets bucket: %v", err)
	}
	if w.tokKV, err = w.e.JS.KeyValue(ctx, contract.DefaultBucket); err != nil {
		w.t.Fatal(err)
	}
	return rep, srv.URL + refresher.CallbackPathPrefix + compName
}

// startWithTicket is start, then a verify ticket pushed to the callback
// and the component token fetched with it.
func (w *compWorld) startWithTicket(opts ...refresher.Option) (*harness.Replica, string) {
	w.t.Helper()
	rep, cb := w.start(opts...)
	if err := w.e.Sim.PushVerifyTicket(context.Background(), compAppID, cb); err != nil {
		w.t.Fatal(err)
	}
	w.waitToken(compName, 10*time.Second, nil)
	return rep, cb
}

// secret opens the secrets record under key into v; it returns the
// revision (0: none).
func (w *compWorld) secret(key string, v any) uint64 {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ent, err := w.secKV.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0
	}
	if err != nil {
		w.t.Fatalf("get %s: %v", key, err)
	}
	plain, err := w.ring.Open(key, ent.Value())
	if err != nil {
		w.t.Fatalf("open %s: %v", key, err)
	}
	if err := json.Unmarshal(plain, v); err != nil {
		w.t.Fatal(err)
	}
	return ent.Revision()
}

type secretTicket struct {
	Ticket     string `json:"ticket"`
	CreateTime int64  `json:"create_time"`
}

type secretAuthorizer struct {
	RefreshToken string `json:"refresh_token"`
	State        string `json:"state"`
	Why          string `json:"why"`
}

// waitToken waits for a valid record under key that satisfies cond.
func (w *compWorld) waitToken(key string, d time.Duration, cond func(contract.Record) bool) (contract.Record, uint64) {
	w.t.Helper()
	return w.e.WaitRecord(d, key, func(rec contract.Record, _ uint64) bool { return cond == nil || cond(rec) })
}

// push seals p as WeChat does and POSTs it to url.
func (w *compWorld) push(url string, p wxcrypt.ComponentPush) (int, string) {
	w.t.Helper()
	cr, err := wxcrypt.New(cbToken, w.aesKey, compAppID)
	if err != nil {
		w.t.Fatal(err)
	}
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	body, sig, err := cr.Seal(p.XML(), ts, "nonce123")
	if err != nil {
		w.t.Fatal(err)
	}
	resp, err := http.Post(url+"?timestamp="+ts+"&nonce=nonce123&encrypt_type=aes&msg_signature="+sig, "text/xml", strings.NewReader(string(body)))
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 512)
	n, _ := resp.Body.Read(buf)
	sb.Write(buf[:n])
	return resp.StatusCode, sb.String()
}

// TestComponentVerifyTicketAndToken: a pushed verify ticket is stored
// sealed in the secrets bucket before "success", and the leader fetches
// the component token with it at once; a replayed older ticket is
// answered but never replaces the newer one; nothing of the ticket is in
// the tokens bucket.
func TestComponentVerifyTicketAndToken(t *testing.T) {
	w := newCompWorld(t, wechatsim.Options{})
	_, cb := w.start()
	ctx := context.Background()

	// No ticket yet: no component token call can succeed, none is stored.
	if err := w.e.Sim.PushVerifyTicket(ctx, compAppID, cb); err != nil {
		t.Fatalf("push: %v", err)
	}
	var vt secretTicket
	rev := w.secret(compName+".verify_ticket", &vt)
	if rev == 0 || vt.Ticket == "" || vt.CreateTime == 0 {
		t.Fatalf("after success the verify ticket is not stored (revision %d)", rev)
	}
	rec, _ := w.waitToken(compName, 10*time.Second, nil)
	if rec.Kind != refresher.KindWeChatComponent || rec.AppID != compAppID {
		t.Fatalf("component record kind %q appid %q", rec.Kind, rec.AppID)
	}
	if n := w.e.Sim.ComponentTokenCalls(compAppID); n != 1 {
		t.Fatalf("component token calls %d, want 1", n)
	}

	// A replay of an older ticket: answered success, not stored.
	code, body := w.push(cb, wxcrypt.ComponentPush{AppID: compAppID, CreateTime: vt.CreateTime - 600,
		InfoType: wxcrypt.InfoVerifyTicket, ComponentVerifyTicket: "ticket@@@older"})
	if code != http.StatusOK || body != "success" {
		t.Fatalf("replay answered %d %q", code, body)
	}
	var vt2 secretTicket
	if rev2 := w.secret(compName+".verify_ticket", &vt2); rev2 != rev || vt2.Ticket != vt.Ticket {
		t.Fatalf("an older ticket replaced the newer one (revision %d → %d)", rev, rev2)
	}
	// A newer one replaces it.
	code, _ = w.push(cb, wxcrypt.ComponentPush{AppID: compAppID, CreateTime: vt.CreateTime + 1,
		InfoType: wxcrypt.InfoVerifyTicket, ComponentVerifyTicket: "ticket@@@newer"})
	if code != http.StatusOK {
		t.Fatalf("newer ticket answered %d", code)
	}
	if w.secret(compName+".verify_ticket", &vt2); vt2.Ticket != "ticket@@@newer" {
		t.Fatal("a newer ticket was not stored")
	}

	// Neither ticket is anywhere in the tokens bucket, nor in the logs.
	assertNotInTokens(t, w, vt.Ticket, "ticket@@@newer")
	assertNotLogged(t, w, vt.Ticket, "ticket@@@newer", harness.Secret(compAppID))
}

// assertNotLogged fails if the refresher logs contain one of secrets.
func assertNotLogged(t *testing.T, w *compWorld, secrets ...string) {
	t.Helper()
	logs := w.e.Logs.String()
	for _, s := range secrets {
		if s != "" && strings.Contains(logs, s) {
			t.Fatalf("the logs contain a secret (%d chars)", len(s))
		}
	}
}

// assertNotInTokens fails if any value of the tokens bucket contains one
// of secrets.
func assertNotInTokens(t *testing.T, w *compWorld, secrets ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys, err := w.tokKV.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		e, err := w.tokKV.Get(ctx, k)
		if err != nil {
			continue
		}
		for _, s := range secrets {
			if s != "" && strings.Contains(string(e.Value()), s) {
				t.Fatalf("the tokens bucket's key %s holds a secret", k)
			}
		}
	}
}

// TestComponentTicketNotStoredNoSuccess: when the secrets bucket refuses
// the write, the push is not answered success (WeChat pushes again) and
// nothing is stored; once writes work the next push is stored.
func TestComponentTicketNotStoredNoSuccess(t *testing.T) {
	w := newCompWorld(t, wechatsim.Options{})
	_, cb := w.start()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	setMax := func(n int32) { setSecretsMaxMsgSize(t, w.e.JS, n) }
	setMax(16) // every sealed value is larger: writes fail
	err := w.e.Sim.PushVerifyTicket(ctx, compAppID, cb)
	if !errors.Is(err, wechatsim.ErrPushRejected) {
		t.Fatalf("push with failing writes: %v, want ErrPushRejected", err)
	}
	var vt secretTicket
	if rev := w.secret(compName+".verify_ticket", &vt); rev != 0 {
		t.Fatalf("a ticket is stored at revision %d although the write failed", rev)
	}
	if n := w.e.Sim.ComponentTokenCalls(compAppID); n != 0 {
		t.Fatalf("%d component token calls without a stored ticket", n)
	}
	setMax(-1)
	if err := w.e.Sim.PushVerifyTicket(ctx, compAppID, cb); err != nil {
		t.Fatalf("push: %v", err)
	}
	w.waitToken(compName, 10*time.Second, nil)
}

// TestComponentRestartUsesStoredTicket: a new replica fetches the
// component token at once from the stored ticket (no push), and a
// replica that finds valid stored tokens makes no upstream call at all.
func TestComponentRestartUsesStoredTicket(t *testing.T) {
	w := newCompWorld(t, wechatsim.Options{})
	r1, cb := w.startWithTicket()
	ctx := context.Background()
	if _, err := w.e.Sim.Authorize(ctx, compAppID, "wxauthz01", cb); err != nil {
		t.Fatal(err)
	}
	w.waitToken(compName+".wxauthz01", 10*time.Second, nil)
	if err := r1.Stop(); err != nil {
		t.Fatal(err)
	}
	calls := w.e.Sim.ComponentTokenCalls(compAppID)
	authCalls := w.e.Sim.AuthorizerTokenCalls(compAppID, "wxauthz01")

	// Valid stored tokens: a new replica leads and calls nothing.
	r2, _ := w.start()
	testutil.WaitFor(t, 10*time.Second, r2.R.Leader, "replica 2 never led")
	// Give the planner a chance to (wrongly) call upstream: wait for one
	// status that shows the authorizer loaded.
	testutil.WaitFor(t, 5*time.Second, func() bool {
		st := r2.R.AuthorizerStatuses(compName)
		return len(st) == 1 && st[0].AuthorizerAppID == "wxauthz01" && st[0].Valid
	}, "replica 2's status does not list the authorizer as valid")
	// A planner tick after loading (the schedule is 1 s) would have
	// started any refresh it found due.
	r2.R.Tick()

	if n := w.e.Sim.ComponentTokenCalls(compAppID); n != calls {
		t.Fatalf("a restart with a valid component token made %d component token calls", n-calls)
	}
	if n := w.e.Sim.AuthorizerTokenCalls(compAppID, "wxauthz01"); n != authCalls {
		t.Fatalf("a restart with a valid authorizer token made %d authorizer token calls", n-authCalls)
	}
	if err := r2.Stop(); err != nil {
		t.Fatal(err)
	}
	// Stop waited for every refresh started: the counters are final.
	if n := w.e.Sim.ComponentTokenCalls(compAppID) + w.e.Sim.AuthorizerTokenCalls(compAppID, "wxauthz01"); n != calls+authCalls {
		t.Fatalf("replica 2 made %d upstream calls with valid stored tokens", n-calls-authCalls)
	}

	// The component token is gone: the next replica fetches it at once
	// with the stored ticket, without waiting for a push.
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := w.tokKV.Delete(dctx, compName); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	w.start()
	w.waitToken(compName, 10*time.Second, nil)
	if n := w.e.Sim.ComponentTokenCalls(compAppID); n != calls+1 {
		t.Fatalf("component token calls %d, want %d", n, calls+1)
	}
	t.Logf("component token fetched %s after the start, from the stored ticket", time.Since(start).Round(time.Millisecond))
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestComponentAuthorizerLifecycle: authorized → the code is stored, then
// redeemed, the token stored under <component>.<authorizer> with its
// authorizer_appid and the refresh token in the secrets bucket; rotated
// refresh tokens are stored with history; 61023 keeps the refresh token
// and says "needs re-authorization"; unauthorized deletes the key
// (watchers see it) and keeps a tombstone with the last refresh token.
func TestComponentAuthorizerLifecycle(t *testing.T) {
	w := newCompWorld(t, wechatsim.Options{ExpiresIn: 6 * time.Second, RotateRefreshTokens: true})
	rep, cb := w.startWithTicket()
	ctx := context.Background()

	const authz = "wxauthz02"
	key := compName + "." + authz
	pushed := time.Now()
	if _, err := w.e.Sim.Authorize(ctx, compAppID, authz, cb); err != nil {
		t.Fatalf("authorize push: %v", err)
	}
	rec, rev := w.waitToken(key, 5*time.Second, nil)
	t.Logf("authorized → token stored in %s", time.Since(pushed).Round(time.Millisecond))
	if rec.AuthorizerAppID != authz || rec.App != compName || rec.Key != key || rec.AppID != compAppID {
		t.Fatalf("authorizer record: app %q key %q appid %q authorizer_appid %q", rec.App, rec.Key, rec.AppID, rec.AuthorizerAppID)
	}
	var sa secretAuthorizer
	skey := compName + ".authorizer." + authz
	if w.secret(skey, &sa); sa.RefreshToken == "" || sa.RefreshToken != w.e.Sim.AuthorizerRefreshToken(compAppID, authz) || sa.State != "authorized" {
		t.Fatalf("stored refresh token is not the emulator's (state %q)", sa.State)
	}
	var code struct{}
	if r := w.secret(compName+".code."+authz, &code); r != 0 {
		t.Fatal("the redeemed authorization code is still stored")
	}

	// Rotation: the next refresh hands back a new refresh token, stored
	// over the old one (which history keeps).
	first := sa.RefreshToken
	w.waitToken(key, 15*time.Second, func(r contract.Record) bool { return r.AccessToken != rec.AccessToken })
	testutil.WaitFor(t, 5*time.Second, func() bool {
		w.secret(skey, &sa)
		return sa.RefreshToken != first && sa.RefreshToken == w.e.Sim.AuthorizerRefreshToken(compAppID, authz)
	}, "the rotated refresh token was not stored")
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	hist, err := w.secKV.History(hctx, skey)
	if err != nil || len(hist) < 2 {
		t.Fatalf("history of %s: %d entries, %v", skey, len(hist), err)
	}
	_ = rev

	// 61023: the refresh token is kept, never blanked; status says so.
	w.e.Sim.SetFault(wechatsim.Fault{Errcode: 61023, Errmsg: "invalid refresh token", Paths: []string{wechatsim.PathAuthorizerToken}})
	kept := sa.RefreshToken
	testutil.WaitFor(t, 15*time.Second, func() bool {
		return strings.Contains(string(mustJSON(t, rep.R.Statuses())), "needs_reauthorization")
	}, "61023 did not mark the authorizer")
	if w.secret(skey, &sa); sa.RefreshToken != kept || sa.State != "authorized" {
		t.Fatalf("after 61023 the refresh token changed or was blanked (state %q)", sa.State)
	}
	if !strings.Contains(w.e.Logs.String(), refresher.AlertNeedsReauthorization) {
		t.Fatal("no alert logged for 61023")
	}
	w.e.Sim.SetFault(wechatsim.Fault{})

	// Unauthorized: the key is deleted (a watcher sees it), a tombstone
	// keeps the last refresh token.
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	watcher, err := w.tokKV.Watch(wctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.e.Sim.Unauthorize(ctx, compAppID, authz, cb); err != nil {
		t.Fatalf("unauthorize push: %v", err)
	}
	deadline := time.After(10 * time.Second)
	for deleted := false; !deleted; {
		select {
		case e := <-watcher.Updates():
			deleted = e != nil && e.Operation() == jetstream.KeyValueDelete
		case <-deadline:
			t.Fatal("the watcher saw no delete of the unauthorized authorizer's key")
		}
	}
	if w.secret(skey, &sa); sa.State != "unauthorized" || sa.RefreshToken != kept || sa.Why == "" {
		t.Fatalf("tombstone: state %q, refresh token kept %v, why %q", sa.State, sa.RefreshToken == kept, sa.Why)
	}
	assertNotInTokens(t, w, first, kept)
	assertNotLogged(t, w, first, kept, harness.Secret(compAppID))

	// The audit trail has the code's redemption and the authorizer's
	// refreshes under the authorizer's key, and no refresh token.
	recs, raw := readAudit(t, w.e.JS)
	reasons := map[string]int{}
	for _, rec := range recs {
		if rec.Key == key {
			reasons[rec.Reason]++
			if rec.Endpoint != "/cgi-bin/component/api_query_auth" && rec.Endpoint != "/cgi-bin/component/api_authorizer_token" {
				t.Errorf("authorizer audit endpoint %q", rec.Endpoint)
			}
		}
	}
	if reasons[contract.ReasonCallback] == 0 || reasons[contract.SourceScheduled] == 0 {
		t.Errorf("audit records of %s by reason %v: want the callback's redemption and scheduled refreshes", key, reasons)
	}
	for _, secret := range []string{first, kept, harness.Secret(compAppID)} {
		if strings.Contains(strings.Join(raw, "\n"), secret) {
			t.Errorf("a refresh token or the secret appears in the audit trail")
		}
	}
}

// TestComponentReconcileRecovers: an authorizer whose refresh token is
// missing from the store is recovered from api_get_authorizer_list.
func TestComponentReconcileRecovers(t *testing.T) {
	w := newCompWorld(t, wechatsim.Options{})
	rep, _ := w.startWithTicket()
	ctx := context.Background()
	testutil.WaitFor(t, 5*time.Second, rep.R.Leader, "not leading")
	// The record is in the bucket a moment before the leader holds it.
	testutil.WaitFor(t, 5*time.Second, func() bool {
		for _, st := range rep.R.Statuses() {
			if st.App == compName {
				return st.Valid
			}
		}
		return false
	}, "the leader holds no valid component token")
	refresh := w.e.Sim.AuthorizeDirect(compAppID, "wxauthz03")
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rp, err := rep.R.Reconcile(rctx, compName)
	if err != nil {
		t.Fatal(err)
	}
	if len(rp.Recovered) != 1 || rp.Recovered[0] != "wxauthz03" || rp.Listed != 1 {
		t.Fatalf("report %+v", rp)
	}
	var sa secretAuthorizer
	if w.secret(compName+".authorizer.wxauthz03", &sa); sa.RefreshToken != refresh {
		t.Fatal("the recovered refresh token is not the listed one")
	}
	w.waitToken(compName+".wxauthz03", 10*time.Second, nil)
}

// TestCallbackRejects: every class of bad push gets a 4xx and stores
// nothing.
func TestCallbackRejects(t *testing.T) {
	w := newCompWorld(t, wechatsim.Options{})
	_, cb := w.start()
	cr, _ := wxcrypt.New(cbToken, w.aesKey, compAppID)
	other, _ := wxcrypt.New(cbToken, w.aesKey, "wxsomeoneelse")
	good := wxcrypt.ComponentPush{AppID: compAppID, CreateTime: time.Now().Unix(), InfoType: wxcrypt.InfoVerifyTicket, ComponentVerifyTicket: "T"}
	body, sig, _ := cr.Seal(good.XML(), "1700000000", "n")
	wrongApp := good
	wrongApp.AppID = "wxsomeoneelse"
	obody, osig, _ := other.Seal(wrongApp.XML(), "1700000000", "n")
	post := func(url, ctype string, b []byte) int {
		resp, err := http.Post(url, ctype, strings.NewReader(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	q := func(s string) string { return "?timestamp=1700000000&nonce=n&msg_signature=" + s }
	cases := []struct {
		name string
		url  string
		body []byte
		want int
	}{
		{"bad signature", cb + q(strings.Repeat("0", 40)), body, 403},
		{"no query", cb, body, 403},
		{"other appid", cb + q(osig), obody, 403},
		{"malformed", cb + q(sig), []byte("<xml><Encrypt>"), 400},
		{"oversized", cb + q(sig), []byte(strings.Repeat("a", wxcrypt.MaxBodySize+10)), 413},
		{"unknown component", strings.Replace(cb, compName, "nosuch", 1) + q(sig), body, 404},
	}
	for _, c := range cases {
		if got := post(c.url, "text/xml", c.body); got != c.want {
			t.Errorf("%s: status %d, want %d", c.name, got, c.want)
		}
	}
	var vt secretTicket
	if rev := w.secret(compName+".verify_ticket", &vt); rev != 0 {
		t.Fatal("a rejected push stored a ticket")
	}
	// And the good one is taken.
	if got := post(cb+q(sig), "text/xml", body); got != 200 {
		t.Fatalf("good push: %d", got)
	}
}

// FuzzCallback throws arbitrary bodies and query values at the callback
// handler: it never panics, answers success only to a push signed with the
// component's token, and otherwise a 4xx (or 503 when a store fails).
func FuzzCallback(f *testing.F) {
	w := newCompWorldTB(f, wechatsim.Options{})
	rep := w.e.Start(w.cfg)
	h := rep.R.CallbackHandler()
	cr, _ := wxcrypt.New(cbToken, w.aesKey, compAppID)
	good := wxcrypt.ComponentPush{AppID: compAppID, CreateTime: 1700000000, InfoType: wxcrypt.InfoVerifyTicket, ComponentVerifyTicket: "T"}
	body, sig, _ := cr.Seal(good.XML(), "1700000000", "n")
	f.Add(body, sig, "1700000000", "n")
	f.Add([]byte("<xml><AppId>x</AppId><Encrypt>AAAA</Encrypt></xml>"), sig, "1", "n")
	f.Add([]byte("<!DOCTYPE x><xml/>"), "", "", "")
	f.Add([]byte{0xff, 0xfe, 0}, strings.Repeat("a", 40), "9999999999999999999999", "\x00")
	f.Fuzz(func(t *testing.T, body []byte, sig, ts, nonce string) {
		req := httptest.NewRequest(http.MethodPost, refresher.CallbackPathPrefix+compName, strings.NewReader(string(body)))
		q := req.URL.Query()
		q.Set("msg_signature", sig)
		q.Set("timestamp", ts)
		q.Set("nonce", nonce)
		req.URL.RawQuery = q.Encode()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch c := rec.Code; {
		case c == http.StatusOK:
			if sig != wxcrypt.Signature(cbToken, ts, nonce, envelopeEncrypt(body)) {
				t.Fatalf("success for a push whose signature does not hold")
			}
		case c >= 400 && c < 500, c == http.StatusServiceUnavailable:
		default:
			t.Fatalf("status %d", c)
		}
	})
}

// envelopeEncrypt returns the Encrypt field of an envelope ("" if none).
func envelopeEncrypt(body []byte) string {
	env, err := wxcrypt.ParseEnvelope(body)
	if err != nil {
		return ""
	}
	return env.Encrypt
}

// TestComponentKeyRotation: after the secrets key is rotated (new primary,
// the old key kept to open), values sealed under the old key are read —
// the component token is fetched with the ticket sealed before the
// rotation — and new values are sealed under the new key.
func TestComponentKeyRotation(t *testing.T) {
	w := newCompWorld(t, wechatsim.Options{})
	r1, _ := w.startWithTicket()
	ctx := context.Background()
	if err := r1.Stop(); err != nil {
		t.Fatal(err)
	}
	oldID := w.ring.PrimaryID()
	newKey := make([]byte, seal.KeySize)
	_, _ = rand.Read(newKey)
	ring, err := seal.NewKeyring(newKey, w.key)
	if err != nil {
		t.Fatal(err)
	}
	w.cfg.WithKeyring(ring)
	w.ring = ring
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := w.tokKV.Delete(dctx, compName); err != nil {
		t.Fatal(err)
	}
	calls := w.e.Sim.ComponentTokenCalls(compAppID)
	_, cb2 := w.start()
	w.waitToken(compName, 10*time.Second, nil)
	if n := w.e.Sim.ComponentTokenCalls(compAppID); n != calls+1 {
		t.Fatalf("component token calls %d, want %d (the old-key ticket was not usable?)", n, calls+1)
	}
	// A push's CreateTime has whole seconds, and one no newer than the
	// stored ticket's is ignored: push in the next second.
	var vt secretTicket
	w.secret(compName+".verify_ticket", &vt)
	testutil.WaitFor(t, 3*time.Second, func() bool { return time.Now().Unix() > vt.CreateTime }, "clock")
	if err := w.e.Sim.PushVerifyTicket(ctx, compAppID, cb2); err != nil {
		t.Fatal(err)
	}
	ent, err := w.secKV.Get(dctx, compName+".verify_ticket")
	if err != nil {
		t.Fatal(err)
	}
	id, err := seal.SealedKeyID(ent.Value())
	if err != nil || id != seal.KeyID(newKey) || id == oldID {
		t.Fatalf("a ticket stored after the rotation is sealed under key %s (%v), want the new %s", id, err, seal.KeyID(newKey))
	}
}

// TestComponentAuthorizerPassiveRefresh: token.refresh.<component>.<authorizer>
// is served like an app's: an empty request gets the stored record; 200
// concurrent requests naming the stored revision as stale cost one
// api_authorizer_token call and all get the new token; a second storm
// inside passive_min_interval gets the current record and costs nothing.
func TestComponentAuthorizerPassiveRefresh(t *testing.T) {
	w := newCompWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.cfg.PassiveMinInterval = new(time.Duration)
	*w.cfg.PassiveMinInterval = time.Hour
	_, cb := w.startWithTicket()
	ctx := context.Background()
	const authz = "wxauthz09"
	key := compName + "." + authz
	if _, err := w.e.Sim.Authorize(ctx, compAppID, authz, cb); err != nil {
		t.Fatal(err)
	}
	first, rev := w.waitToken(key, 5*time.Second, nil)

	ask := func(body string) (contract.RefreshReply, error) {
		return askRefresh[contract.RefreshReply](w, key, body)
	}
	calls := w.e.Sim.AuthorizerTokenCalls(compAppID, authz)
	if rep, err := ask(""); err != nil || rep.Revision != rev || rep.AccessToken != first.AccessToken {
		t.Fatalf("empty request: %+v %v, want revision %d", rep.Revision, err, rev)
	}
	storm := func() []contract.RefreshReply { return stormRefresh[contract.RefreshReply](t, w, key, rev, 200) }
	for _, rep := range storm() {
		if rep.Revision <= rev || rep.AccessToken == first.AccessToken {
			t.Fatalf("a reply kept the rejected token (revision %d, stale %d, same token %v)", rep.Revision, rev, rep.AccessToken == first.AccessToken)
		}
	}
	if got := w.e.Sim.AuthorizerTokenCalls(compAppID, authz) - calls; got != 1 {
		t.Errorf("200 requests for one stale revision cost %d api_authorizer_token calls, want 1", got)
	}
	// The new token rejected again at once: inside passive_min_interval
	// the current record answers, no call.
	_, rev = w.waitToken(key, 5*time.Second, func(r contract.Record) bool { return r.AccessToken != first.AccessToken })
	storm()
	if got := w.e.Sim.AuthorizerTokenCalls(compAppID, authz) - calls; got != 1 {
		t.Errorf("a second storm inside passive_min_interval made %d more calls, want 0", got-1)
	}
}

// TestComponentAuthorizeStoresTheNewestToken: an authorization push is
// redeemed with api_query_auth and that token is stored — no
// api_authorizer_token call races the redemption (which would supersede
// the redeemed token, or be overwritten by it: the stored token would be
// one WeChat no longer honours after its grace). Repeated to catch the
// interleaving.
func TestComponentAuthorizeStoresTheNewestToken(t *testing.T) {
	w := newCompWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.authorizerTickets(contract.TicketJSAPI)
	_, cb := w.startWithTicket()
	ctx := context.Background()
	for i := range 10 {
		authz := fmt.Sprintf("wxnewest%02d", i)
		key := compName + "." + authz
		if _, err := w.e.Sim.Authorize(ctx, compAppID, authz, cb); err != nil {
			t.Fatal(err)
		}
		rec, _ := w.waitToken(key, 5*time.Second, nil)
		// The ticket is fetched after the token: once it is stored, the
		// job that would have raced is over.
		waitTicket(t, w.e, 5*time.Second, contract.Key(key, contract.TicketJSAPI), func(contract.TicketRecord, uint64) bool { return true })
		if n := w.e.Sim.AuthorizerTokenCalls(compAppID, authz); n != 0 {
			t.Errorf("%s: %d api_authorizer_token calls right after the authorization, want 0", authz, n)
		}
		cur, _ := w.waitToken(key, time.Second, nil)
		if last := w.e.Sim.LastAuthorizerToken(compAppID, authz); cur.AccessToken != last {
			t.Errorf("%s: the stored token (%s, first stored %s) is not the last one WeChat issued (%s)", authz,
				contract.Fingerprint(cur.AccessToken), contract.Fingerprint(rec.AccessToken), contract.Fingerprint(last))
		}
	}
}
