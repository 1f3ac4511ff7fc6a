package contract_test

import (
	"encoding/json"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// The example of WeChat's JS-SDK documentation, 附录1 "JS-SDK使用权限签名算法"
// (developers.weixin.qq.com/doc/offiaccount/OA_Web_Apps/JS-SDK.html).
const (
	docTicket    = "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg"
	docNonce     = "Wm3WZYTPz0wzccnW"
	docTimestamp = 1414587457
	docURL       = "http://mp.weixin.qq.com?params=value"
	docSignature = "0f9de62fce790f9a083d5c99e95740ceb90c27ed"
)

func TestJSSDKSignatureOfficialExample(t *testing.T) {
	if got := contract.JSSDKSignature(docTicket, docNonce, docTimestamp, docURL); got != docSignature {
		t.Fatalf("signature of the documented example = %s, want %s", got, docSignature)
	}
	// The fragment is not signed: the page's URL with #… gives the same.
	if got := contract.JSSDKSignature(docTicket, docNonce, docTimestamp, docURL+"#wechat_redirect"); got != docSignature {
		t.Fatalf("signature with a fragment = %s, want %s (fragment not cut)", got, docSignature)
	}
	// Every input takes part.
	for name, got := range map[string]string{
		"ticket":    contract.JSSDKSignature(docTicket+"x", docNonce, docTimestamp, docURL),
		"nonce":     contract.JSSDKSignature(docTicket, docNonce+"x", docTimestamp, docURL),
		"timestamp": contract.JSSDKSignature(docTicket, docNonce, docTimestamp+1, docURL),
		"url":       contract.JSSDKSignature(docTicket, docNonce, docTimestamp, docURL+"&x=1"),
	} {
		if got == docSignature {
			t.Errorf("changing the %s did not change the signature", name)
		}
	}
}

// TestJSSDKSignatureSha1sum checks the function against an independent
// implementation, coreutils' sha1sum, over the string WeChat documents,
// for the official example and inputs that need no escaping of any kind.
func TestJSSDKSignatureSha1sum(t *testing.T) {
	if _, err := exec.LookPath("sha1sum"); err != nil {
		t.Skip("sha1sum not installed")
	}
	cases := []struct {
		ticket, nonce string
		ts            int64
		url, signed   string // signed: the url as it appears in the signed string
	}{
		{docTicket, docNonce, docTimestamp, docURL, docURL},
		{"kgt8ON7yVITDhtdwci0qebMAl1jydj2yNxzk59NEHN0JJ4ulv-5Cj4tQA_J_4Hf2kIIn5XTdhtyEJ_ss0OL2Uw", "abc123",
			1700000000, "https://shop.example.com/p/商品?id=1&from=share#top", "https://shop.example.com/p/商品?id=1&from=share"},
		{"t", "n", 0, "https://a.example/#/spa#route", "https://a.example/"},
	}
	for _, c := range cases {
		s := "jsapi_ticket=" + c.ticket + "&noncestr=" + c.nonce + "&timestamp=" + strconv.FormatInt(c.ts, 10) + "&url=" + c.signed
		cmd := exec.Command("sha1sum")
		cmd.Stdin = strings.NewReader(s)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("sha1sum: %v", err)
		}
		want, _, _ := strings.Cut(string(out), " ")
		if got := contract.JSSDKSignature(c.ticket, c.nonce, c.ts, c.url); got != want {
			t.Errorf("JSSDKSignature(%q) = %s, sha1sum says %s", c.url, got, want)
		}
	}
}

func TestSignWireNames(t *testing.T) {
	b, err := json.Marshal(contract.SignReply{AppID: "wx1", Timestamp: docTimestamp, NonceStr: docNonce, Signature: docSignature})
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"appId":"wx1","timestamp":1414587457,"nonceStr":"Wm3WZYTPz0wzccnW","signature":"0f9de62fce790f9a083d5c99e95740ceb90c27ed"}`
	if string(b) != want {
		t.Fatalf("reply = %s\nwant    %s", b, want)
	}
	b, _ = json.Marshal(contract.SignReply{AppID: "ww1", AgentID: 1000002})
	if !strings.Contains(string(b), `"agentId":1000002`) {
		t.Fatalf("agent_config reply %s lacks agentId", b)
	}
	var req contract.SignRequest
	if err := json.Unmarshal([]byte(`{"url":"https://a.example/x","ticket":"agent_config"}`), &req); err != nil {
		t.Fatal(err)
	}
	if req.URL != "https://a.example/x" || req.Ticket != contract.TicketAgentConfig {
		t.Fatalf("request decoded as %+v", req)
	}
	b, _ = json.Marshal(contract.SignRequest{URL: "u"})
	if string(b) != `{"url":"u"}` {
		t.Fatalf("request without ticket = %s", b)
	}
}

func TestCheckSignURL(t *testing.T) {
	for _, ok := range []string{"https://shop.example/", "http://shop.example/a?b=c#d", "https://[::1]:8443/x",
		"https://shop.example/" + strings.Repeat("a", contract.MaxSignURL-len("https://shop.example/"))} {
		if err := contract.CheckSignURL(ok); err != nil {
			t.Errorf("CheckSignURL(%.40q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "/relative", "shop.example/x", "ftp://shop.example/", "https:///x", "https://shop.example/\x00",
		"https://shop.example/\xff", "https://shop.example/" + strings.Repeat("a", contract.MaxSignURL)} {
		if err := contract.CheckSignURL(bad); err == nil {
			t.Errorf("CheckSignURL(%.40q) = nil, want an error", bad)
		} else if len(err.Error()) > 200 {
			t.Errorf("CheckSignURL error of %d bytes: quote less", len(err.Error()))
		}
	}
}
