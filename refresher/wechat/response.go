package wechat

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// errcodeBody is the error part of every WeChat API answer.
type errcodeBody struct {
	Errcode *json.Number `json:"errcode"`
	Errmsg  string       `json:"errmsg"`
}

// ParseErrcode reads the errcode and errmsg of a WeChat API answer. ok is
// false if body is not a JSON object or has no integer errcode (a number,
// or a string holding one). A successful business answer usually carries
// errcode 0 or none at all; use contract.RejectedTokenCode on a non-zero code to
// decide whether to refresh the token. The errmsg is returned as sent:
// sanitize it before logging if the request carried anything secret.
func ParseErrcode(body []byte) (code int, msg string, ok bool) {
	var b errcodeBody
	if err := json.Unmarshal(body, &b); err != nil || b.Errcode == nil {
		return 0, "", false
	}
	n, err := strconv.Atoi(b.Errcode.String())
	if err != nil {
		return 0, "", false
	}
	return n, b.Errmsg, true
}

// tokenBody is the answer of both token endpoints.
type tokenBody struct {
	errcodeBody
	AccessToken string      `json:"access_token"`
	ExpiresIn   json.Number `json:"expires_in"`
}

// parseToken turns a 200 response body into a Token, an *Error or an
// error wrapping ErrBadResponse. contentType is used in messages only.
func parseToken(body []byte, contentType string, sc scrubber) (Token, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return Token{}, fmt.Errorf("%w: empty body", ErrBadResponse)
	}
	var b tokenBody
	if err := json.Unmarshal(body, &b); err != nil {
		// The decoder's message is not kept: it may quote the body.
		return Token{}, fmt.Errorf("%w: body is not a JSON token answer (%s, %d bytes)",
			ErrBadResponse, describeType(contentType, sc), len(body))
	}
	if b.Errcode != nil {
		code, err := strconv.Atoi(b.Errcode.String())
		if err != nil {
			return Token{}, fmt.Errorf("%w: errcode is not an integer", ErrBadResponse)
		}
		if code != 0 {
			return Token{}, &Error{Code: code, Msg: sc.cleanMsg(b.Errmsg)}
		}
	}
	if b.AccessToken == "" {
		return Token{}, fmt.Errorf("%w: neither access_token nor errcode in the answer", ErrBadResponse)
	}
	secs, err := b.ExpiresIn.Float64()
	if b.ExpiresIn == "" || err != nil || !(secs > 0) || secs > math.MaxInt64/float64(time.Second) {
		return Token{}, fmt.Errorf("%w: expires_in missing, not a number or not positive", ErrBadResponse)
	}
	return Token{AccessToken: b.AccessToken, ExpiresIn: time.Duration(secs * float64(time.Second))}, nil
}

// describeType returns a short, safe rendering of a Content-Type header.
func describeType(ct string, sc scrubber) string {
	if ct == "" {
		return "no content type"
	}
	ct = sc.scrub(ct) // before cutting, so that no prefix of the secret is left
	if len(ct) > 64 {
		ct = ct[:64]
	}
	return strconv.Quote(strings.ToValidUTF8(ct, "?"))
}

// feishuTokenBody is the answer of Feishu's tenant_access_token endpoint.
type feishuTokenBody struct {
	Code   *json.Number `json:"code"`
	Msg    string       `json:"msg"`
	Token  string       `json:"tenant_access_token"`
	Expire json.Number  `json:"expire"`
}

// parseFeishuCode reads the code and msg of a Feishu answer; ok is false
// if body is not a JSON object with an integer code.
func parseFeishuCode(body []byte) (code int, msg string, ok bool) {
	var b feishuTokenBody
	if err := json.Unmarshal(body, &b); err != nil || b.Code == nil {
		return 0, "", false
	}
	n, err := strconv.Atoi(b.Code.String())
	if err != nil {
		return 0, "", false
	}
	return n, b.Msg, true
}

// parseFeishuToken turns a 200 response body of Feishu's
// tenant_access_token endpoint into a Token, an *Error (its code) or an
// error wrapping ErrBadResponse.
func parseFeishuToken(body []byte, contentType string, sc scrubber) (Token, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return Token{}, fmt.Errorf("%w: empty body", ErrBadResponse)
	}
	var b feishuTokenBody
	if err := json.Unmarshal(body, &b); err != nil {
		return Token{}, fmt.Errorf("%w: body is not a JSON token answer (%s, %d bytes)",
			ErrBadResponse, describeType(contentType, sc), len(body))
	}
	if b.Code == nil {
		return Token{}, fmt.Errorf("%w: no code in the answer", ErrBadResponse)
	}
	code, err := strconv.Atoi(b.Code.String())
	if err != nil {
		return Token{}, fmt.Errorf("%w: code is not an integer", ErrBadResponse)
	}
	if code != 0 {
		return Token{}, &Error{Code: code, Msg: sc.cleanMsg(b.Msg)}
	}
	if b.Token == "" {
		return Token{}, fmt.Errorf("%w: code 0 without tenant_access_token", ErrBadResponse)
	}
	secs, err := b.Expire.Float64()
	if b.Expire == "" || err != nil || !(secs > 0) || secs > math.MaxInt64/float64(time.Second) {
		return Token{}, fmt.Errorf("%w: expire missing, not a number or not positive", ErrBadResponse)
	}
	return Token{AccessToken: b.Token, ExpiresIn: time.Duration(secs * float64(time.Second))}, nil
}
