package wechatsim_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// newWeComEnv is an emulator with two apps of one corp.
func newWeComEnv(t *testing.T, opts wechatsim.Options) *env {
	t.Helper()
	e := newEnv(t, opts)
	e.sim.AddWeComApp(wecomCorp, agentA, wecomSecretA)
	e.sim.AddWeComApp(wecomCorp, agent, wecomSecretB)
	return e
}

// wecomReply is the union of WeCom's answers.
type wecomReply struct {
	Errcode     int    `json:"errcode"`
	Errmsg      string `json:"errmsg"`
	AccessToken string `json:"access_token"`
	Ticket      string `json:"ticket"`
	ExpiresIn   int    `json:"expires_in"`
	AgentID     int    `json:"agentid"`
}

func (e *env) wecom(path string, q url.Values) wecomReply {
	e.t.Helper()
	r := e.get(path + "?" + q.Encode())
	if r.status != http.StatusOK {
		e.t.Fatalf("%s: HTTP %d %s", path, r.status, r.body)
	}
	var w wecomReply
	r.decode(e.t, &w)
	return w
}

func (e *env) wecomToken(corpid, sec string) wecomReply {
	e.t.Helper()
	q := url.Values{}
	if corpid != "" {
		q.Set("corpid", corpid)
	}
	if sec != "" {
		q.Set("corpsecret", sec)
	}
	return e.wecom(wechatsim.PathWeComToken, q)
}

func (e *env) wecomTicket(tok, typ string) wecomReply {
	e.t.Helper()
	if typ == contract.TicketJSAPI {
		return e.wecom(wechatsim.PathWeComJSAPITicket, url.Values{"access_token": {tok}})
	}
	return e.wecom(wechatsim.PathWeComAgentTicket, url.Values{"access_token": {tok}, "type": {typ}})
}

func (e *env) wecomAgentGet(tok string, agentid int) wecomReply {
	e.t.Helper()
	return e.wecom(wechatsim.PathWeComAgentGet, url.Values{"access_token": {tok}, "agentid": {fmt.Sprint(agentid)}})
}

func wecomOK(t *testing.T, r wecomReply) wecomReply {
	t.Helper()
	if r.Errcode != 0 || r.Errmsg != "ok" || (r.AccessToken == "" && r.Ticket == "" && r.AgentID == 0) {
		t.Fatalf("want success, got %+v", r)
	}
	return r
}

func wecomErr(t *testing.T, r wecomReply, code int) {
	t.Helper()
	if r.Errcode != code || r.AccessToken != "" || r.Ticket != "" {
		t.Fatalf("want errcode %d and nothing else, got %+v", code, r)
	}
}

func TestWeComSameTokenUntilExpiry(t *testing.T) {
	e := newWeComEnv(t, wechatsim.Options{})
	r1 := wecomOK(t, e.wecomToken(wecomCorp, wecomSecretA))
	if r1.ExpiresIn != 7200 {
		t.Fatalf("expires_in %d, want 7200", r1.ExpiresIn)
	}
	e.clock.Advance(1000 * time.Second)
	r2 := wecomOK(t, e.wecomToken(wecomCorp, wecomSecretA))
	if r2.AccessToken != r1.AccessToken || r2.ExpiresIn != 6200 {
		t.Fatalf("inside the validity: %+v, want the same token with 6200 s left", r2)
	}
	if err := e.sim.CheckWeCom(r1.AccessToken); err != nil {
		t.Fatalf("CheckWeCom = %v", err)
	}
	e.clock.Advance(6200*time.Second - time.Millisecond)
	if r := wecomOK(t, e.wecomToken(wecomCorp, wecomSecretA)); r.AccessToken != r1.AccessToken || r.ExpiresIn != 1 {
		t.Fatalf("in the last second: %+v, want the same token, expires_in 1", r)
	}
	e.clock.Advance(time.Millisecond) // the expiry instant
	if err := e.sim.CheckWeCom(r1.AccessToken); !errors.Is(err, wechatsim.ErrWeComExpiredToken) {
		t.Fatalf("CheckWeCom after expiry = %v", err)
	}
	r3 := wecomOK(t, e.wecomToken(wecomCorp, wecomSecretA))
	if r3.AccessToken == r1.AccessToken || r3.ExpiresIn != 7200 {
		t.Fatalf("after expiry: %+v, want a new token for 7200 s", r3)
	}
	if got := e.sim.LastWeComToken(wecomCorp, agentA); got != r3.AccessToken {
		t.Fatalf("LastWeComToken = %q", got)
	}
	// A revoked token is replaced at the next fetch, not returned again.
	if !e.sim.Revoke(r3.AccessToken) {
		t.Fatal("Revoke: unknown token")
	}
	r4 := wecomOK(t, e.wecomToken(wecomCorp, wecomSecretA))
	if r4.AccessToken == r3.AccessToken {
		t.Fatal("a revoked token was handed out again")
	}
	if calls, issued := e.sim.WeComTokenCalls(wecomCorp, agentA), e.sim.WeComTokensIssued(wecomCorp, agentA); calls != 5 || issued != 3 {
		t.Fatalf("calls %d issued %d, want 5 and 3", calls, issued)
	}
}

func TestWeComTokensArePerAppNotPerCorp(t *testing.T) {
	e := newWeComEnv(t, wechatsim.Options{})
	a := wecomOK(t, e.wecomToken(wecomCorp, wecomSecretA)).AccessToken
	b := wecomOK(t, e.wecomToken(wecomCorp, wecomSecretB)).AccessToken
	if a == b {
		t.Fatal("two apps of one corp got the same token")
	}
	if e.sim.WeComTokensIssued(wecomCorp, agentA) != 1 || e.sim.WeComTokensIssued(wecomCorp, agent) != 1 {
		t.Fatal("each app should have exactly one token")
	}
	// Each token belongs to its app: agent/get accepts only its own agentid.
	if r := wecomOK(t, e.wecomAgentGet(a, agentA)); r.AgentID != agentA {
		t.Fatalf("agent/get = %+v", r)
	}
	wecomErr(t, e.wecomAgentGet(a, agent), wechatsim.CodeWeComInvalidAgentID)
	wecomOK(t, e.wecomAgentGet(b, agent))
	// A WeCom token is no WeChat token, and the other way round.
	wantErrcode(t, e.business(http.MethodGet, a), wechatsim.CodeInvalidCredential)
	wechat := mustToken(t, e.classic())
	wecomErr(t, e.wecomAgentGet(wechat, agentA), wechatsim.CodeWeComInvalidToken)
	wecomErr(t, e.wecomTicket(wechat, contract.TicketJSAPI), wechatsim.CodeWeComInvalidToken)
	// Re-registering an app rotates its secret; its token stays.
	e.sim.AddWeComApp(wecomCorp, agentA, "rotated-"+wecomSecretA)
	wecomErr(t, e.wecomToken(wecomCorp, wecomSecretA), wechatsim.CodeWeComInvalidSecret)
	if r := wecomOK(t, e.wecomToken(wecomCorp, "rotated-"+wecomSecretA)); r.AccessToken != a {
		t.Fatal("a secret rotation replaced the valid token")
	}
}

func TestWeComTokenErrors(t *testing.T) {
	e := newWeComEnv(t, wechatsim.Options{})
	wecomErr(t, e.wecomToken("", wecomSecretA), wechatsim.CodeWeComCorpIDMissing)
	wecomErr(t, e.wecomToken("ww-unknown", wecomSecretA), wechatsim.CodeWeComInvalidCorpID)
	wecomErr(t, e.wecomToken(wecomCorp, ""), wechatsim.CodeWeComSecretMissing)
	wecomErr(t, e.wecomToken(wecomCorp, wrongSecret), wechatsim.CodeWeComInvalidSecret)
	if n := e.sim.WeComTokenCalls(wecomCorp, agentA) + e.sim.WeComTokensIssued(wecomCorp, agentA); n != 0 {
		t.Fatalf("failed calls counted as fetches: %d", n)
	}
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+wechatsim.PathWeComToken, nil)
	if r := e.raw(req); r.status != http.StatusMethodNotAllowed {
		t.Fatalf("POST gettoken: HTTP %d", r.status)
	}
}

func TestWeComBusinessRejectsBadTokens(t *testing.T) {
	e := newWeComEnv(t, wechatsim.Options{})
	tok := wecomOK(t, e.wecomToken(wecomCorp, wecomSecretA)).AccessToken
	wecomOK(t, e.wecomAgentGet(tok, agentA))
	wecomErr(t, e.wecomAgentGet("", agentA), wechatsim.CodeTokenMissing)
	wecomErr(t, e.wecomAgentGet("not-a-token", agentA), wechatsim.CodeWeComInvalidToken)
	e.clock.Advance(7200 * time.Second)
	wecomErr(t, e.wecomAgentGet(tok, agentA), wechatsim.CodeTokenExpired)
	if ok, rejected := e.sim.WeComBusinessCalls(); ok != 1 || rejected != 3 {
		t.Fatalf("business calls ok %d rejected %d, want 1 and 3", ok, rejected)
	}
	if ok, rejected := e.sim.BusinessCalls(); ok+rejected != 0 {
		t.Fatal("WeCom business calls counted as WeChat's")
	}
	if err := e.sim.CheckWeCom(""); !errors.Is(err, wechatsim.ErrMissingToken) {
		t.Fatalf("CheckWeCom(\"\") = %v", err)
	}
	if err := e.sim.CheckWeCom("nope"); !errors.Is(err, wechatsim.ErrWeComInvalidToken) {
		t.Fatalf("CheckWeCom(unknown) = %v", err)
	}
}

func TestWeComTickets(t *testing.T) {
	e := newWeComEnv(t, wechatsim.Options{})
	a := wecomOK(t, e.wecomToken(wecomCorp, wecomSecretA)).AccessToken
	b := wecomOK(t, e.wecomToken(wecomCorp, wecomSecretB)).AccessToken

	// The jsapi ticket belongs to the corp: any app's token gets it.
	ja := wecomOK(t, e.wecomTicket(a, contract.TicketJSAPI))
	jb := wecomOK(t, e.wecomTicket(b, contract.TicketJSAPI))
	if ja.Ticket != jb.Ticket || ja.ExpiresIn != 7200 {
		t.Fatalf("corp ticket: %+v and %+v, want one ticket for 7200 s", ja, jb)
	}
	// The agent_config ticket belongs to the app.
	aa := wecomOK(t, e.wecomTicket(a, contract.TicketAgentConfig))
	ab := wecomOK(t, e.wecomTicket(b, contract.TicketAgentConfig))
	if aa.Ticket == ab.Ticket || aa.Ticket == ja.Ticket {
		t.Fatal("agent_config tickets must be per app and differ from the corp's")
	}
	// Same until expiry, with the remaining expires_in.
	e.clock.Advance(200 * time.Second)
	if r := wecomOK(t, e.wecomTicket(a, contract.TicketJSAPI)); r.Ticket != ja.Ticket || r.ExpiresIn != 7000 {
		t.Fatalf("jsapi inside validity: %+v", r)
	}
	if r := wecomOK(t, e.wecomTicket(a, contract.TicketAgentConfig)); r.Ticket != aa.Ticket || r.ExpiresIn != 7000 {
		t.Fatalf("agent_config inside validity: %+v", r)
	}
	if e.sim.WeComTicketsIssued(wecomCorp, 0, contract.TicketJSAPI) != 1 ||
		e.sim.WeComTicketsIssued(wecomCorp, agentA, contract.TicketAgentConfig) != 1 ||
		e.sim.WeComTicketCalls(wecomCorp, agentA, contract.TicketJSAPI) != 2 ||
		e.sim.LastWeComTicket(wecomCorp, agent, contract.TicketJSAPI) != ja.Ticket ||
		e.sim.LastWeComTicket(wecomCorp, agent, contract.TicketAgentConfig) != ab.Ticket {
		t.Fatal("ticket counters or getters disagree with the answers")
	}

	// Signatures: wx.config with the corp ticket, wx.agentConfig with the app's.
	const page, nonce, ts = "https://shop.example/page?x=1", "Wm3WZYTPz0wzccnW", int64(1414587457)
	sig := contract.JSSDKSignature(ja.Ticket, nonce, ts, page)
	agentSig := contract.JSSDKSignature(aa.Ticket, nonce, ts, page)
	if err := e.sim.CheckWeComSignature(wecomCorp, agent, contract.TicketJSAPI, page+"#frag", nonce, ts, sig); err != nil {
		t.Fatalf("corp signature: %v", err)
	}
	if err := e.sim.CheckWeComSignature(wecomCorp, agentA, contract.TicketAgentConfig, page, nonce, ts, agentSig); err != nil {
		t.Fatalf("agent signature: %v", err)
	}
	for name, bad := range map[string]func() error{
		"agent sig for another app": func() error {
			return e.sim.CheckWeComSignature(wecomCorp, agent, contract.TicketAgentConfig, page, nonce, ts, agentSig)
		},
		"corp sig as agent_config": func() error {
			return e.sim.CheckWeComSignature(wecomCorp, agentA, contract.TicketAgentConfig, page, nonce, ts, sig)
		},
		"other url": func() error {
			return e.sim.CheckWeComSignature(wecomCorp, agentA, contract.TicketJSAPI, page+"&y", nonce, ts, sig)
		},
	} {
		if err := bad(); !errors.Is(err, wechatsim.ErrInvalidSignature) {
			t.Errorf("%s: %v, want ErrInvalidSignature", name, err)
		}
	}

	// After expiry: new tickets; the old signature no longer passes.
	e.clock.Advance(7000 * time.Second)
	c := wecomOK(t, e.wecomToken(wecomCorp, wecomSecretA)).AccessToken
	wecomErr(t, e.wecomTicket(a, contract.TicketJSAPI), wechatsim.CodeTokenExpired)
	if r := wecomOK(t, e.wecomTicket(c, contract.TicketJSAPI)); r.Ticket == ja.Ticket || r.ExpiresIn != 7200 {
		t.Fatalf("jsapi after expiry: %+v", r)
	}
	if err := e.sim.CheckWeComSignature(wecomCorp, agentA, contract.TicketJSAPI, page, nonce, ts, sig); !errors.Is(err, wechatsim.ErrInvalidSignature) {
		t.Fatalf("an expired ticket's signature passed: %v", err)
	}
	if ok, rejected := e.sim.SignatureChecks(); ok != 2 || rejected != 4 {
		t.Fatalf("signature checks ok %d rejected %d", ok, rejected)
	}

	// Rejected tokens and a bad type.
	wecomErr(t, e.wecomTicket("", contract.TicketAgentConfig), wechatsim.CodeTokenMissing)
	wecomErr(t, e.wecomTicket("nope", contract.TicketAgentConfig), wechatsim.CodeWeComInvalidToken)
	wecomErr(t, e.wecomTicket(c, "jsapi_x"), wechatsim.CodeWeComInvalidType)
}

func TestWeComTicketHourlyLimits(t *testing.T) {
	t.Run("app 100 per hour", func(t *testing.T) {
		e := newWeComEnv(t, wechatsim.Options{})
		a := wecomOK(t, e.wecomToken(wecomCorp, wecomSecretA)).AccessToken
		typ := []string{contract.TicketJSAPI, contract.TicketAgentConfig}
		for i := range 100 { // both endpoints count, same ticket or not
			wecomOK(t, e.wecomTicket(a, typ[i%2]))
		}
		wecomErr(t, e.wecomTicket(a, contract.TicketJSAPI), wechatsim.CodeWeComFreqLimit)
		wecomErr(t, e.wecomTicket(a, contract.TicketAgentConfig), wechatsim.CodeWeComFreqLimit)
		if corp, app := e.sim.WeComTicketHourUsed(wecomCorp, agentA); corp != 100 || app != 100 {
			t.Fatalf("hour used corp %d app %d", corp, app)
		}
		// Another app of the corp still has its own 100.
		b := wecomOK(t, e.wecomToken(wecomCorp, wecomSecretB)).AccessToken
		wecomOK(t, e.wecomTicket(b, contract.TicketJSAPI))
		// The next clock hour (12:00 → 13:00 here) resets the limit.
		e.clock.Advance(time.Hour)
		wecomOK(t, e.wecomTicket(a, contract.TicketJSAPI))
		if e.sim.WeComTicketCalls(wecomCorp, agentA, contract.TicketJSAPI) != 52 {
			t.Fatalf("ticket calls %d, want 52 (refused ones included)", e.sim.WeComTicketCalls(wecomCorp, agentA, contract.TicketJSAPI))
		}
	})
	t.Run("corp 400 per hour", func(t *testing.T) {
		e := newEnv(t, wechatsim.Options{})
		toks := make([]string, 5)
		for i := range toks {
			e.sim.AddWeComApp(wecomCorp, agentA+i, fmt.Sprintf("%s-%d", wecomSecretA, i))
			toks[i] = wecomOK(t, e.wecomToken(wecomCorp, fmt.Sprintf("%s-%d", wecomSecretA, i))).AccessToken
		}
		e.clock.Advance(59 * time.Minute) // 12:59: the limits count clock hours
		for i := range 400 {
			wecomOK(t, e.wecomTicket(toks[i%4], contract.TicketJSAPI))
		}
		wecomErr(t, e.wecomTicket(toks[4], contract.TicketJSAPI), wechatsim.CodeWeComFreqLimit)
		wecomErr(t, e.wecomTicket(toks[4], contract.TicketAgentConfig), wechatsim.CodeWeComFreqLimit)
		if corp, app := e.sim.WeComTicketHourUsed(wecomCorp, agentA+4); corp != 400 || app != 0 {
			t.Fatalf("hour used corp %d app %d", corp, app)
		}
		if n := e.sim.WeComTicketsIssued(wecomCorp, 0, contract.TicketJSAPI); n != 1 {
			t.Fatalf("%d corp tickets issued, want 1 (same until expiry)", n)
		}
		e.clock.Advance(time.Minute) // 13:00
		wecomOK(t, e.wecomTicket(toks[4], contract.TicketJSAPI))
	})
	t.Run("options", func(t *testing.T) {
		e := newWeComEnv(t, wechatsim.Options{WeComTicketCorpHourly: -1, WeComTicketAppHourly: 2})
		a := wecomOK(t, e.wecomToken(wecomCorp, wecomSecretA)).AccessToken
		wecomOK(t, e.wecomTicket(a, contract.TicketJSAPI))
		wecomOK(t, e.wecomTicket(a, contract.TicketJSAPI))
		wecomErr(t, e.wecomTicket(a, contract.TicketJSAPI), wechatsim.CodeWeComFreqLimit)
	})
}

func TestWeComFaults(t *testing.T) {
	e := newWeComEnv(t, wechatsim.Options{})
	e.sim.SetFault(wechatsim.Fault{Errcode: wechatsim.CodeWeComIPNotTrusted, Paths: []string{wechatsim.PathWeComToken}})
	r := e.wecomToken(wecomCorp, wecomSecretA)
	wecomErr(t, r, wechatsim.CodeWeComIPNotTrusted)
	if r.Errmsg != "not allow to access from your ip" {
		t.Fatalf("errmsg %q", r.Errmsg)
	}
	mustToken(t, e.classic()) // Paths: WeChat is untouched
	if e.sim.WeComTokenCalls(wecomCorp, agentA) != 0 {
		t.Fatal("a faulted call was counted")
	}
	e.sim.SetFault(wechatsim.Fault{Busy: 1})
	wecomErr(t, e.wecomToken(wecomCorp, wecomSecretA), wechatsim.CodeBusy)
	wecomOK(t, e.wecomToken(wecomCorp, wecomSecretA))
}

func TestWeComCallsNameTheApp(t *testing.T) {
	calls := make(chan wechatsim.Call, 10)
	e := newWeComEnv(t, wechatsim.Options{OnCall: func(c wechatsim.Call) { calls <- c }})
	wecomOK(t, e.wecomToken(wecomCorp, wecomSecretB))
	wecomErr(t, e.wecomToken(wecomCorp, wrongSecret), wechatsim.CodeWeComInvalidSecret)
	for _, want := range []string{wechatsim.WeComKey(wecomCorp, agent), wecomCorp} {
		if c := <-calls; c.Path != wechatsim.PathWeComToken || c.AppID != want {
			t.Fatalf("call %+v, want AppID %q", c, want)
		}
	}
	if n := e.sim.MaxConcurrentFetches(wechatsim.WeComKey(wecomCorp, agent)); n != 1 {
		t.Fatalf("MaxConcurrentFetches = %d", n)
	}
}
