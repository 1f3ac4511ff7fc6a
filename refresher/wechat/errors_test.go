package wechat_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"syscall"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher/wechat"
)

var allSentinels = []error{
	wechat.ErrBusy, wechat.ErrInvalidCredential, wechat.ErrInvalidGrantType, wechat.ErrInvalidAppID,
	wechat.ErrSecretFrozen, wechat.ErrIPNotAllowed, wechat.ErrRiskControl, wechat.ErrQuotaExceeded,
	wechat.ErrRateLimited, wechat.ErrTokenRejected, wechat.ErrBadResponse, wechat.ErrUnknownKind,
	wechat.ErrInvalidArgument,
}

func TestErrcodeMapping(t *testing.T) {
	cases := []struct {
		code      int
		msg       string
		want      []error
		retryable bool
	}{
		{-1, "system error", []error{wechat.ErrBusy}, true},
		{40001, "invalid credential", []error{wechat.ErrInvalidCredential, wechat.ErrTokenRejected}, false},
		{40125, "invalid appsecret", []error{wechat.ErrInvalidCredential}, false},
		{40002, "invalid grant_type", []error{wechat.ErrInvalidGrantType}, false},
		{40013, "invalid appid", []error{wechat.ErrInvalidAppID}, false},
		{40243, "AppSecret frozen", []error{wechat.ErrSecretFrozen}, false},
		{40164, "invalid ip 1.2.3.4, not in whitelist", []error{wechat.ErrIPNotAllowed}, false},
		{89501, "pending", []error{wechat.ErrRiskControl}, false},
		{89503, "risk control", []error{wechat.ErrRiskControl}, false},
		{89506, "refused twice", []error{wechat.ErrRiskControl}, false},
		{89507, "refused once", []error{wechat.ErrRiskControl}, false},
		{45009, "reach max api daily quota limit", []error{wechat.ErrQuotaExceeded}, false},
		{45011, "api minute-quota reach limit", []error{wechat.ErrRateLimited}, false},
		{40014, "invalid access_token", []error{wechat.ErrTokenRejected}, false},
		{42001, "access_token expired", []error{wechat.ErrTokenRejected}, false},
		{48001, "api unauthorized", nil, false},
	}
	for _, tc := range cases {
		up := newUpstream(t, errcode(tc.code, tc.msg))
		c := wechat.New(wechat.WithBaseURL(up.URL), wechat.WithRetry(wechat.RetryPolicy{Attempts: 1}))
		for _, kind := range []string{wechat.KindClassic, wechat.KindStable} {
			_, err := c.Fetch(context.Background(), kind, "", testCred, false)
			var we *wechat.Error
			if !errors.As(err, &we) {
				t.Fatalf("errcode %d: err = %v (%T), want *wechat.Error", tc.code, err, err)
			}
			if we.Code != tc.code || we.Msg != tc.msg {
				t.Errorf("errcode %d: *Error = %+v", tc.code, we)
			}
			if got := fmt.Sprintf("wechat: errcode %d: %s", tc.code, tc.msg); we.Error() != got {
				t.Errorf("Error() = %q, want %q", we.Error(), got)
			}
			if !errors.Is(err, &wechat.Error{Code: tc.code}) || errors.Is(err, &wechat.Error{Code: tc.code + 1}) {
				t.Errorf("errcode %d: errors.Is by code is wrong", tc.code)
			}
			for _, s := range allSentinels {
				want := false
				for _, w := range tc.want {
					want = want || w == s
				}
				if errors.Is(err, s) != want {
					t.Errorf("errcode %d (%s): errors.Is(err, %v) = %v, want %v", tc.code, kind, s, !want, want)
				}
			}
			if we.Retryable() != tc.retryable || wechat.IsRetryable(err) != tc.retryable {
				t.Errorf("errcode %d: retryable %v/%v, want %v", tc.code, we.Retryable(), wechat.IsRetryable(err), tc.retryable)
			}
		}
	}
}

func TestErrorMsgSanitized(t *testing.T) {
	long := make([]byte, 1000)
	for i := range long {
		long[i] = 'x'
	}
	up := newUpstream(t, reply(200, `{"errcode":40013,"errmsg":"bad\u0000line\nbreak `+string(long)+`"}`))
	_, err := wechat.New(wechat.WithBaseURL(up.URL)).Fetch(context.Background(), wechat.KindClassic, "", testCred, false)
	var we *wechat.Error
	if !errors.As(err, &we) {
		t.Fatal(err)
	}
	if len(we.Msg) > 300 {
		t.Errorf("errmsg kept at %d bytes, want it bounded", len(we.Msg))
	}
	for _, r := range we.Msg {
		if r < ' ' {
			t.Fatalf("errmsg %q keeps control characters", we.Msg)
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestIsRetryable(t *testing.T) {
	refused := &url.Error{Op: "Get", URL: "http://x/cgi-bin/token?secret=REDACTED",
		Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"busy", &wechat.Error{Code: -1}, true},
		{"busy wrapped", fmt.Errorf("x: %w", &wechat.Error{Code: -1}), true},
		{"40001", &wechat.Error{Code: 40001}, false},
		{"40002", &wechat.Error{Code: 40002}, false},
		{"40013", &wechat.Error{Code: 40013}, false},
		{"40125", &wechat.Error{Code: 40125}, false},
		{"40164", &wechat.Error{Code: 40164}, false},
		{"40243", &wechat.Error{Code: 40243}, false},
		{"89503", &wechat.Error{Code: 89503}, false},
		{"45009", &wechat.Error{Code: 45009}, false},
		{"45011", &wechat.Error{Code: 45011}, false},
		{"unknown code", &wechat.Error{Code: 12345}, false},
		{"500", &wechat.HTTPError{Status: 500}, true},
		{"502", &wechat.HTTPError{Status: 502}, true},
		{"503", &wechat.HTTPError{Status: 503}, true},
		{"429", &wechat.HTTPError{Status: 429}, true},
		{"408", &wechat.HTTPError{Status: 408}, true},
		{"400", &wechat.HTTPError{Status: 400}, false},
		{"403", &wechat.HTTPError{Status: 403}, false},
		{"404", &wechat.HTTPError{Status: 404}, false},
		{"301", &wechat.HTTPError{Status: 301}, false},
		{"bad response", fmt.Errorf("%w: html", wechat.ErrBadResponse), true},
		{"connection refused", refused, true},
		{"timeout net.Error", timeoutErr{}, true},
		{"url timeout", &url.Error{Op: "Get", URL: "u", Err: timeoutErr{}}, true},
		{"deadline exceeded", context.DeadlineExceeded, true},
		{"unexpected EOF", io.ErrUnexpectedEOF, true},
		{"canceled", context.Canceled, false},
		{"canceled in url.Error", &url.Error{Op: "Get", URL: "u", Err: context.Canceled}, false},
		{"canceled joined with busy", errors.Join(context.Canceled, &wechat.Error{Code: -1}), false},
		{"unknown kind", fmt.Errorf("%w: x", wechat.ErrUnknownKind), false},
		{"invalid argument", fmt.Errorf("%w: x", wechat.ErrInvalidArgument), false},
		{"plain error", errors.New("something"), false},
	}
	for _, tc := range cases {
		if got := wechat.IsRetryable(tc.err); got != tc.want {
			t.Errorf("%s: IsRetryable(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

func TestHTTPErrorText(t *testing.T) {
	if got := (&wechat.HTTPError{Status: 502}).Error(); got != "wechat: HTTP 502 Bad Gateway" {
		t.Errorf("Error() = %q", got)
	}
	if got := (&wechat.HTTPError{Status: 599}).Error(); got != "wechat: HTTP 599" {
		t.Errorf("Error() = %q", got)
	}
}

// TestRejectedTokenCodesMatchContract: the errcodes that match
// ErrTokenRejected are exactly those of contract.RejectedTokenCode.
func TestRejectedTokenCodesMatchContract(t *testing.T) {
	for code := -1; code < 100000; code++ {
		want := contract.RejectedTokenCode(code)
		if got := errors.Is(&wechat.Error{Code: code}, wechat.ErrTokenRejected); got != want {
			t.Errorf("errcode %d: matches ErrTokenRejected = %v, contract.RejectedTokenCode = %v", code, got, want)
		}
	}
}

func TestParseErrcode(t *testing.T) {
	cases := []struct {
		body string
		code int
		msg  string
		ok   bool
	}{
		{`{"errcode":40001,"errmsg":"invalid credential, access_token is invalid or not latest rid: 1"}`, 40001, "invalid credential, access_token is invalid or not latest rid: 1", true},
		{`{"errcode":0,"errmsg":"ok","msgid":123}`, 0, "ok", true},
		{`{"errcode":-1}`, -1, "", true},
		{`{"errcode":"42001","errmsg":"expired"}`, 42001, "expired", true},
		{`{"msgid":123}`, 0, "", false},
		{`{"errcode":1.5}`, 0, "", false},
		{`{"errcode":null}`, 0, "", false},
		{`[1]`, 0, "", false},
		{`<html></html>`, 0, "", false},
		{``, 0, "", false},
		{`{"errcode":40001`, 0, "", false},
	}
	for _, tc := range cases {
		code, msg, ok := wechat.ParseErrcode([]byte(tc.body))
		if code != tc.code || msg != tc.msg || ok != tc.ok {
			t.Errorf("ParseErrcode(%s) = %d, %q, %v; want %d, %q, %v", tc.body, code, msg, ok, tc.code, tc.msg, tc.ok)
		}
	}
}
