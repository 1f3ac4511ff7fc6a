package wxcrypt_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt"
)

func pushes() []wxcrypt.ComponentPush {
	return []wxcrypt.ComponentPush{
		{AppID: sampleAppID, CreateTime: 1413192605, InfoType: wxcrypt.InfoVerifyTicket, ComponentVerifyTicket: "ticket@@@TICKET-SECRET-<&>"},
		{AppID: sampleAppID, CreateTime: 1413192760, InfoType: wxcrypt.InfoAuthorized, AuthorizerAppID: "wxf8b4f85f3a794e77",
			AuthorizationCode: "queryauthcode@@@CODE-SECRET", AuthorizationCodeExpiredTime: 1413196360, PreAuthCode: "preauthcode@@@x"},
		{AppID: sampleAppID, CreateTime: 1413192760, InfoType: wxcrypt.InfoUpdateAuthorized, AuthorizerAppID: "wxf8b4f85f3a794e77",
			AuthorizationCode: "queryauthcode@@@CODE-SECRET", AuthorizationCodeExpiredTime: 1413196360},
		{AppID: sampleAppID, CreateTime: 1413192760, InfoType: wxcrypt.InfoUnauthorized, AuthorizerAppID: "wxf8b4f85f3a794e77"},
	}
}

func TestComponentPushRoundTrip(t *testing.T) {
	c := sampleCrypter(t)
	for _, p := range pushes() {
		body, sig, err := c.Seal(p.XML(), ts, nonce)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.OpenComponentPush(sig, ts, nonce, body)
		if err != nil {
			t.Fatalf("%s: %v", p.InfoType, err)
		}
		if *got != p {
			t.Fatalf("round trip of %s:\n got %+v\nwant %+v", p.InfoType, *got, p)
		}
		if !got.InfoType.Known() || got.Created().Unix() != p.CreateTime {
			t.Fatalf("Known %v, Created %v", got.InfoType.Known(), got.Created())
		}
	}
}

// WeChat's documented examples (第三方平台 验证票据 / 授权变更通知推送),
// with CDATA and white space as WeChat sends them.
func TestParseDocumentedPushes(t *testing.T) {
	ticket := `<xml>
<AppId><![CDATA[some_appid]]></AppId>
<CreateTime>1413192605</CreateTime>
<InfoType><![CDATA[component_verify_ticket]]></InfoType>
<ComponentVerifyTicket><![CDATA[some_verify_ticket]]></ComponentVerifyTicket>
</xml>`
	p, err := wxcrypt.ParseComponentPush([]byte(ticket))
	if err != nil {
		t.Fatal(err)
	}
	if p.AppID != "some_appid" || p.CreateTime != 1413192605 || p.InfoType != wxcrypt.InfoVerifyTicket || p.ComponentVerifyTicket != "some_verify_ticket" {
		t.Fatalf("%#v", *p)
	}
	auth := `<xml>
<AppId>第三方平台appid</AppId>
<CreateTime>1413192760</CreateTime>
<InfoType>authorized</InfoType>
<AuthorizerAppid>公众号appid</AuthorizerAppid>
<AuthorizationCode>授权码</AuthorizationCode>
<AuthorizationCodeExpiredTime>过期时间</AuthorizationCodeExpiredTime>
<PreAuthCode>预授权码</PreAuthCode>
</xml>`
	// The documentation's placeholders are not an appid or a time.
	if _, err := wxcrypt.ParseComponentPush([]byte(auth)); !errors.Is(err, wxcrypt.ErrMalformed) {
		t.Fatalf("the placeholders parse: %v", err)
	}
	auth = strings.NewReplacer("第三方平台appid", "wxcomponent1", "公众号appid", "wxf8b4f85f3a794e77", "授权码", "queryauthcode@@@abc",
		"过期时间", "1413196360", "预授权码", "preauthcode@@@def").Replace(auth)
	p, err = wxcrypt.ParseComponentPush([]byte(auth))
	if err != nil {
		t.Fatal(err)
	}
	want := wxcrypt.ComponentPush{AppID: "wxcomponent1", CreateTime: 1413192760, InfoType: wxcrypt.InfoAuthorized, AuthorizerAppID: "wxf8b4f85f3a794e77",
		AuthorizationCode: "queryauthcode@@@abc", AuthorizationCodeExpiredTime: 1413196360, PreAuthCode: "preauthcode@@@def"}
	if *p != want {
		t.Fatalf("got %+v", *p)
	}
}

func TestParseComponentPushRejects(t *testing.T) {
	base := map[string]string{"AppId": "wxc", "CreateTime": "1413192605", "InfoType": "component_verify_ticket", "ComponentVerifyTicket": "TICKET-SECRET"}
	doc := func(edit map[string]string) []byte {
		var b strings.Builder
		b.WriteString("<xml>")
		for _, k := range []string{"AppId", "CreateTime", "InfoType", "ComponentVerifyTicket", "AuthorizerAppid", "AuthorizationCode", "AuthorizationCodeExpiredTime"} {
			v, ok := edit[k]
			if !ok {
				v = base[k]
			}
			if v != "-" && v != "" {
				fmt.Fprintf(&b, "<%s>%s</%s>", k, v, k)
			}
		}
		b.WriteString("</xml>")
		return []byte(b.String())
	}
	auth := func(m map[string]string) map[string]string {
		r := map[string]string{"InfoType": "authorized", "ComponentVerifyTicket": "-", "AuthorizerAppid": "wxa", "AuthorizationCode": "CODE-SECRET"}
		for k, v := range m {
			r[k] = v
		}
		return r
	}
	cases := map[string]map[string]string{
		"no AppId":                   {"AppId": "-"},
		"no InfoType":                {"InfoType": "-"},
		"no CreateTime":              {"CreateTime": "-"},
		"CreateTime not a number":    {"CreateTime": "soon"},
		"CreateTime zero":            {"CreateTime": "0"},
		"CreateTime negative":        {"CreateTime": "-5"},
		"CreateTime with a sign":     {"CreateTime": "+5"},
		"CreateTime overflowing":     {"CreateTime": "99999999999999999999"},
		"ticket missing":             {"ComponentVerifyTicket": "-"},
		"ticket holds an element":    {"ComponentVerifyTicket": "TICKET-SECRET<b/>"},
		"authorized without appid":   auth(map[string]string{"AuthorizerAppid": "-"}),
		"authorized without code":    auth(map[string]string{"AuthorizationCode": "-"}),
		"authorizer appid with a .":  auth(map[string]string{"AuthorizerAppid": "wx.a"}),
		"authorizer appid with a *":  auth(map[string]string{"AuthorizerAppid": "*"}),
		"authorizer appid too long":  auth(map[string]string{"AuthorizerAppid": strings.Repeat("a", 65)}),
		"code expiry not a number":   auth(map[string]string{"AuthorizationCodeExpiredTime": "later"}),
		"unauthorized without appid": {"InfoType": "unauthorized", "ComponentVerifyTicket": "-"},
	}
	for name, edit := range cases {
		p, err := wxcrypt.ParseComponentPush(doc(edit))
		if !errors.Is(err, wxcrypt.ErrMalformed) {
			t.Errorf("%s: ParseComponentPush = %v, %v; want ErrMalformed", name, p, err)
			continue
		}
		noSecretIn(t, err)
	}
	if _, err := wxcrypt.ParseComponentPush(doc(nil)); err != nil {
		t.Fatalf("the base document: %v", err)
	}
}

func TestUnknownInfoType(t *testing.T) {
	p, err := wxcrypt.ParseComponentPush([]byte("<xml><AppId>wxc</AppId><CreateTime>1</CreateTime><InfoType>notify_third_fasteregister</InfoType><info><name>x</name></info></xml>"))
	if err != nil {
		t.Fatal(err)
	}
	if p.InfoType.Known() || p.InfoType != "notify_third_fasteregister" || p.AppID != "wxc" {
		t.Fatalf("%+v", *p)
	}
}

func TestOpenComponentPushOfAnotherComponent(t *testing.T) {
	c := sampleCrypter(t)
	p := pushes()[0]
	p.AppID = "wxanothercomponent"
	body, sig, err := c.Seal(p.XML(), ts, nonce)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.OpenComponentPush(sig, ts, nonce, body); !errors.Is(err, wxcrypt.ErrAppIDMismatch) {
		t.Fatalf("OpenComponentPush = %v, want ErrAppIDMismatch", err)
	}
}

func TestComponentPushPrintsNoSecret(t *testing.T) {
	for _, p := range pushes() {
		for _, s := range []string{fmt.Sprint(p), fmt.Sprintf("%v %+v %#v %s", p, p, p, p), fmt.Sprintf("%v %+v %#v", &p, &p, &p)} {
			if strings.Contains(s, "SECRET") || strings.Contains(s, "preauthcode") {
				t.Fatalf("printed push holds a secret: %s", s)
			}
			if !strings.Contains(s, string(p.InfoType)) {
				t.Fatalf("printed push says nothing: %s", s)
			}
		}
	}
}
