package wechat_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

func ExampleClient_Fetch() {
	// A stand-in for https://api.weixin.qq.com.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"access_token":"ACCESS_TOKEN","expires_in":7200}`)
	}))
	defer srv.Close()

	c := wechat.New(wechat.WithBaseURL(srv.URL), wechat.WithTimeout(5*time.Second))
	cred := wechat.Credentials{AppID: "wx0123456789abcdef", Secret: "the-app-secret"}
	tok, err := c.Fetch(context.Background(), wechat.KindStable, "", cred, false)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(tok.AccessToken, tok.ExpiresIn)
	fmt.Printf("%+v\n", cred)
	// Output:
	// ACCESS_TOKEN 2h0m0s
	// {AppID:wx0123456789abcdef Secret:REDACTED}
}

func ExampleClient_Fetch_errors() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"errcode":40164,"errmsg":"invalid ip 203.0.113.7, not in whitelist"}`)
	}))
	defer srv.Close()

	c := wechat.New(wechat.WithBaseURL(srv.URL))
	_, err := c.Fetch(context.Background(), wechat.KindClassic, "", wechat.Credentials{AppID: "wx0123456789abcdef", Secret: "0123456789abcdef0123456789abcdef"}, false)

	var we *wechat.Error
	fmt.Println(errors.Is(err, wechat.ErrIPNotAllowed), errors.As(err, &we) && we.Code == 40164, wechat.IsRetryable(err))
	fmt.Println(err)
	// Output:
	// true true false
	// wechat: fetch wechat token for appid wx0123456789abcdef failed after 1 attempt: errcode 40164: invalid ip 203.0.113.7, not in whitelist
}

func ExampleParseErrcode() {
	body := []byte(`{"errcode":42001,"errmsg":"access_token expired rid: 64f0"}`)
	if code, msg, ok := wechat.ParseErrcode(body); ok && contract.RejectedTokenCode(code) {
		fmt.Printf("token rejected (%d: %s): refresh and retry once\n", code, msg)
	}
	// Output:
	// token rejected (42001: access_token expired rid: 64f0): refresh and retry once
}
