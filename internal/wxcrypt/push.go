package wxcrypt

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"strconv"
	"time"
)

// InfoType is a component push's InfoType.
type InfoType string

// The InfoTypes an Open Platform component push carries that tokenkeeper
// acts on. WeChat sends others (e.g. notify_third_fasteregister):
// ParseComponentPush returns those too, with only AppID, CreateTime and
// InfoType read (Known is false).
const (
	// InfoVerifyTicket: the component_verify_ticket WeChat pushes every
	// 10 minutes (valid 12 hours); ComponentVerifyTicket is set.
	InfoVerifyTicket InfoType = "component_verify_ticket"
	// InfoAuthorized: a merchant authorized the component;
	// AuthorizerAppID and AuthorizationCode are set.
	InfoAuthorized InfoType = "authorized"
	// InfoUpdateAuthorized: a merchant changed its authorization;
	// AuthorizerAppID and AuthorizationCode are set.
	InfoUpdateAuthorized InfoType = "updateauthorized"
	// InfoUnauthorized: a merchant revoked its authorization;
	// AuthorizerAppID is set.
	InfoUnauthorized InfoType = "unauthorized"
)

// Known reports whether t is one of the InfoTypes above.
func (t InfoType) Known() bool {
	switch t {
	case InfoVerifyTicket, InfoAuthorized, InfoUpdateAuthorized, InfoUnauthorized:
		return true
	}
	return false
}

// ComponentPush is the decrypted XML of an Open Platform component push.
// ComponentVerifyTicket, AuthorizationCode and PreAuthCode are secrets:
// String and GoString leave them out, so printing a push with fmt does
// not leak them.
type ComponentPush struct {
	AppID      string // the component appid
	CreateTime int64  // Unix seconds, > 0
	InfoType   InfoType

	ComponentVerifyTicket string // InfoVerifyTicket

	AuthorizerAppID              string // authorized, updateauthorized, unauthorized; [A-Za-z0-9_-]{1,64}
	AuthorizationCode            string // authorized, updateauthorized
	AuthorizationCodeExpiredTime int64  // Unix seconds; 0 when absent
	PreAuthCode                  string // authorized, updateauthorized, when sent
}

// Created returns CreateTime as a time.
func (p *ComponentPush) Created() time.Time { return time.Unix(p.CreateTime, 0) }

// String describes the push without its secrets.
func (p ComponentPush) String() string {
	s := fmt.Sprintf("%s push for %s created %d", p.InfoType, p.AppID, p.CreateTime)
	if p.AuthorizerAppID != "" {
		s += " (authorizer " + p.AuthorizerAppID + ")"
	}
	return s
}

// GoString is String, so %#v does not print the secrets either.
func (p ComponentPush) GoString() string { return p.String() }

// ParseComponentPush parses a decrypted component push (from Open) and
// checks that it has the fields its InfoType needs. An error matches
// ErrMalformed and names the field, never its value. It does not compare
// AppID with a configured appid; OpenComponentPush does.
func ParseComponentPush(msg []byte) (*ComponentPush, error) {
	if len(msg) > MaxBodySize {
		return nil, ErrTooLarge
	}
	f, err := parseFlat(msg)
	if err != nil {
		return nil, err
	}
	var p ComponentPush
	if p.AppID, err = f.get("AppId", true); err != nil {
		return nil, err
	}
	it, err := f.get("InfoType", true)
	if err != nil {
		return nil, err
	}
	p.InfoType = InfoType(it)
	if p.CreateTime, err = unixField(f, "CreateTime", true); err != nil {
		return nil, err
	}
	switch p.InfoType {
	case InfoVerifyTicket:
		if p.ComponentVerifyTicket, err = f.get("ComponentVerifyTicket", true); err != nil {
			return nil, err
		}
	case InfoAuthorized, InfoUpdateAuthorized, InfoUnauthorized:
		if p.AuthorizerAppID, err = f.get("AuthorizerAppid", true); err != nil {
			return nil, err
		}
		if !validAppID(p.AuthorizerAppID) {
			return nil, fmt.Errorf("%w: field AuthorizerAppid is not 1 to 64 of [A-Za-z0-9_-]", ErrMalformed)
		}
		if p.InfoType == InfoUnauthorized {
			break
		}
		if p.AuthorizationCode, err = f.get("AuthorizationCode", true); err != nil {
			return nil, err
		}
		if p.AuthorizationCodeExpiredTime, err = unixField(f, "AuthorizationCodeExpiredTime", false); err != nil {
			return nil, err
		}
		if p.PreAuthCode, err = f.get("PreAuthCode", false); err != nil {
			return nil, err
		}
	}
	return &p, nil
}

// unixField reads a field of Unix seconds: digits, > 0.
func unixField(f *flat, name string, required bool) (int64, error) {
	s, err := f.get(name, required)
	if err != nil || s == "" {
		return 0, err
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v <= 0 || s[0] == '+' {
		return 0, fmt.Errorf("%w: field %s is not a positive integer", ErrMalformed, name)
	}
	return v, nil
}

// OpenComponentPush is Open followed by ParseComponentPush, and checks
// that the push's AppId is the configured appid (ErrAppIDMismatch).
func (c *Crypter) OpenComponentPush(msgSignature, timestamp, nonce string, body []byte) (*ComponentPush, error) {
	msg, err := c.Open(msgSignature, timestamp, nonce, body)
	if err != nil {
		return nil, err
	}
	p, err := ParseComponentPush(msg)
	if err != nil {
		return nil, err
	}
	if p.AppID != c.appID {
		return nil, fmt.Errorf("%w: the push's AppId is another component's", ErrAppIDMismatch)
	}
	return p, nil
}

// XML returns the push as WeChat's plain XML, the fields its InfoType
// uses (and any other non-empty ones), for the emulator to Seal.
func (p *ComponentPush) XML() []byte {
	var b bytes.Buffer
	b.WriteString("<xml>")
	field := func(name, v string) {
		if v == "" {
			return
		}
		b.WriteString("<" + name + ">")
		_ = xml.EscapeText(&b, []byte(v)) // a bytes.Buffer does not fail
		b.WriteString("</" + name + ">")
	}
	num := func(name string, v int64) {
		if v != 0 {
			field(name, strconv.FormatInt(v, 10))
		}
	}
	field("AppId", p.AppID)
	num("CreateTime", p.CreateTime)
	field("InfoType", string(p.InfoType))
	field("ComponentVerifyTicket", p.ComponentVerifyTicket)
	field("AuthorizerAppid", p.AuthorizerAppID)
	field("AuthorizationCode", p.AuthorizationCode)
	num("AuthorizationCodeExpiredTime", p.AuthorizationCodeExpiredTime)
	field("PreAuthCode", p.PreAuthCode)
	b.WriteString("</xml>")
	return b.Bytes()
}
