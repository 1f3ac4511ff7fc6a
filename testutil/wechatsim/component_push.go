package wechatsim

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt"
)

// The push driver: what WeChat POSTs to a component's callback
// (授权事件接收 URL). Each push is the encrypted XML of a
// wxcrypt.ComponentPush, sealed with the component's token and
// EncodingAESKey, POSTed with the query parameters WeChat sends
// (signature, timestamp, nonce, encrypt_type=aes, msg_signature); the
// callback must answer HTTP 200 with the body "success" (surrounding
// white space ignored) within Options.PushTimeout. The driver does not
// retry: a failed push is an error for the caller (and counted in
// Pushes).

// ErrPushRejected is returned (wrapped, with the HTTP status) when a
// callback answered a push with anything but HTTP 200 and "success".
var ErrPushRejected = errors.New("wechatsim: the callback did not answer success")

// PlaceholderAppID in a callback URL given to StartPushing is replaced by
// each component's appid.
const PlaceholderAppID = "{appid}"

const (
	verifyTicketLength = 64
	authCodeLength     = 64
	maxPushAnswer      = 4 << 10
)

// PushVerifyTicket pushes a new component_verify_ticket (InfoType
// component_verify_ticket, CreateTime now) to callbackURL. The ticket is
// valid from now on for Options.VerifyTicketTTL, whatever the callback
// answers (as at WeChat, where the ticket exists once pushed); an error
// says the callback did not take it: ErrPushRejected, a transport error,
// or the component's unusable token or EncodingAESKey (wxcrypt.ErrBadConfig).
func (s *Sim) PushVerifyTicket(ctx context.Context, component, callbackURL string) error {
	s.mu.Lock()
	c := s.components[component]
	if c == nil {
		s.mu.Unlock()
		return fmt.Errorf("%w %q", errUnknownComponent, component)
	}
	now := s.opts.Now()
	ticket := newSecretValue("ticket@@@", verifyTicketLength)
	c.tickets[ticket] = now
	c.lastTicket = ticket
	// Forget tickets long expired: a push every 10 minutes keeps ~72 valid.
	for v, created := range c.tickets {
		if now.Sub(created) > s.opts.VerifyTicketTTL+24*time.Hour {
			delete(c.tickets, v)
		}
	}
	p := &wxcrypt.ComponentPush{AppID: c.appid, CreateTime: now.Unix(), InfoType: wxcrypt.InfoVerifyTicket,
		ComponentVerifyTicket: ticket}
	s.mu.Unlock()
	return s.push(ctx, component, p, callbackURL)
}

// Authorize authorizes the account authorizerAppID for the component (or
// renews its authorization: a new refresh token, the old one invalid at
// once, as WeChat does on re-authorization) and pushes InfoType
// authorized with a new AuthorizationCode (valid Options.AuthCodeTTL,
// once), AuthorizationCodeExpiredTime and PreAuthCode. It returns the
// code even if the push failed (the authorization exists; the code also
// reaches the merchant's browser at WeChat), with the push's error.
func (s *Sim) Authorize(ctx context.Context, component, authorizerAppID, callbackURL string) (authCode string, err error) {
	return s.authEvent(ctx, component, authorizerAppID, callbackURL, wxcrypt.InfoAuthorized)
}

// UpdateAuthorize pushes InfoType updateauthorized for an authorized
// account (its permission sets changed): a new AuthorizationCode as in
// Authorize; the refresh token stays. It returns an error without a push
// if the account is not authorized.
func (s *Sim) UpdateAuthorize(ctx context.Context, component, authorizerAppID, callbackURL string) (authCode string, err error) {
	return s.authEvent(ctx, component, authorizerAppID, callbackURL, wxcrypt.InfoUpdateAuthorized)
}

// Unauthorize ends the account's authorization and pushes InfoType
// unauthorized: its refresh tokens answer 61023 from now on, its access
// tokens 40001, its pending codes 61009, and it leaves the authorizer
// list. The authorization ends even if the push fails. It returns an
// error without a push if the account is not authorized. O(number of
// authorizers of the component).
func (s *Sim) Unauthorize(ctx context.Context, component, authorizerAppID, callbackURL string) error {
	s.mu.Lock()
	c := s.components[component]
	if c == nil {
		s.mu.Unlock()
		return fmt.Errorf("%w %q", errUnknownComponent, component)
	}
	a := c.authorizers[authorizerAppID]
	if a == nil || !a.authorized {
		s.mu.Unlock()
		return fmt.Errorf("wechatsim: %q has not authorized component %q", authorizerAppID, component)
	}
	s.unauthorize(c, a)
	p := &wxcrypt.ComponentPush{AppID: c.appid, CreateTime: s.opts.Now().Unix(), InfoType: wxcrypt.InfoUnauthorized,
		AuthorizerAppID: authorizerAppID}
	s.mu.Unlock()
	return s.push(ctx, component, p, callbackURL)
}

func (s *Sim) authEvent(ctx context.Context, component, authorizerAppID, callbackURL string, it wxcrypt.InfoType) (string, error) {
	s.mu.Lock()
	c := s.components[component]
	if c == nil {
		s.mu.Unlock()
		return "", fmt.Errorf("%w %q", errUnknownComponent, component)
	}
	if !validAppID(authorizerAppID) {
		s.mu.Unlock()
		return "", fmt.Errorf("wechatsim: authorizer appid must be 1 to 64 of [A-Za-z0-9_-] (got %d bytes)", len(authorizerAppID))
	}
	now := s.opts.Now()
	var a *authorizer
	if it == wxcrypt.InfoAuthorized {
		a = s.authorize(c, authorizerAppID, now)
	} else if a = c.authorizers[authorizerAppID]; a == nil || !a.authorized {
		s.mu.Unlock()
		return "", fmt.Errorf("wechatsim: %q has not authorized component %q", authorizerAppID, component)
	}
	for v, ac := range c.codes { // pending codes are few: drop the expired
		if !now.Before(ac.expiresAt) {
			delete(c.codes, v)
		}
	}
	code := newSecretValue("queryauthcode@@@", authCodeLength)
	exp := now.Add(s.opts.AuthCodeTTL)
	c.codes[code] = &authCode{authorizer: a, expiresAt: exp}
	p := &wxcrypt.ComponentPush{AppID: c.appid, CreateTime: now.Unix(), InfoType: it,
		AuthorizerAppID: authorizerAppID, AuthorizationCode: code, AuthorizationCodeExpiredTime: exp.Unix(),
		PreAuthCode: newSecretValue("preauthcode@@@", authCodeLength)}
	s.mu.Unlock()
	return code, s.push(ctx, component, p, callbackURL)
}

// StartPushing pushes a component_verify_ticket for every registered
// component at once and then every interval (WeChat: 10 minutes) to
// callbackURL, in which PlaceholderAppID ("{appid}") is replaced by the
// component's appid. Failures are counted in Pushes and reported to
// Options.OnCall; the next push comes at the next tick. stop ends the
// pushing and waits for a push in flight; calling it again does nothing.
func (s *Sim) StartPushing(callbackURL string, every time.Duration) (stop func()) {
	if every <= 0 {
		every = 10 * time.Minute
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			s.mu.Lock()
			ids := make([]string, 0, len(s.components))
			for id := range s.components {
				ids = append(ids, id)
			}
			s.mu.Unlock()
			slices.Sort(ids)
			for _, id := range ids {
				_ = s.PushVerifyTicket(ctx, id, strings.ReplaceAll(callbackURL, PlaceholderAppID, id))
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			wg.Wait()
		})
	}
}

// push seals p with the component's crypter and POSTs it to callbackURL.
func (s *Sim) push(ctx context.Context, component string, p *wxcrypt.ComponentPush, callbackURL string) (err error) {
	start := time.Now()
	status := 0
	path := ""
	defer func() {
		s.mu.Lock()
		if c := s.components[component]; c != nil {
			if err == nil {
				c.pushesOK++
			} else {
				c.pushesFailed++
			}
		}
		s.mu.Unlock()
		call := Call{Path: path, AppID: component, Status: status, Push: string(p.InfoType), Duration: time.Since(start)}
		if err != nil {
			call.Err = err.Error()
		}
		s.report(call)
	}()

	u, err := url.Parse(callbackURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("wechatsim: push %s: the callback URL must be an absolute http(s) URL", p.InfoType)
	}
	path = u.Path
	where := u.Scheme + "://" + u.Host + u.Path // for errors: no query

	s.mu.Lock()
	c := s.components[component]
	var cr *wxcrypt.Crypter
	var crErr error
	msgToken := ""
	if c != nil {
		cr, crErr, msgToken = c.crypter, c.cryptErr, c.msgToken
	}
	s.mu.Unlock()
	if cr == nil {
		return fmt.Errorf("wechatsim: push %s for %q: %w", p.InfoType, component, crErr)
	}
	ts := strconv.FormatInt(s.opts.Now().Unix(), 10)
	nonce := newNonce()
	body, msgSig, err := cr.Seal(p.XML(), ts, nonce)
	if err != nil {
		return fmt.Errorf("wechatsim: push %s for %q: %w", p.InfoType, component, err)
	}
	q := u.Query()
	q.Set("signature", plainSignature(msgToken, ts, nonce))
	q.Set("timestamp", ts)
	q.Set("nonce", nonce)
	q.Set("encrypt_type", "aes")
	q.Set("msg_signature", msgSig)
	u.RawQuery = q.Encode()

	ctx, cancel := context.WithTimeout(ctx, s.opts.PushTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("wechatsim: push %s to %s: %w", p.InfoType, where, unwrapURLError(err))
	}
	req.Header.Set("Content-Type", "text/xml")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("wechatsim: push %s to %s: %w", p.InfoType, where, unwrapURLError(err))
	}
	defer resp.Body.Close()
	status = resp.StatusCode
	ans, _ := io.ReadAll(io.LimitReader(resp.Body, maxPushAnswer))
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(ans)) != "success" {
		return fmt.Errorf("%w: push %s to %s: HTTP %d, %d-byte answer", ErrPushRejected, p.InfoType, where, resp.StatusCode, len(ans))
	}
	return nil
}

// unwrapURLError drops *url.Error's "Post <url>:" prefix (the URL carries
// the push's signatures).
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// newNonce returns 10 random decimal digits, like WeChat's nonces.
func newNonce() string {
	v := newSecretValue("", 10)
	b := []byte(v)
	for i := range b {
		b[i] = '0' + b[i]%10
	}
	return string(b)
}

// plainSignature is the "signature" query parameter WeChat adds to a
// push: hex(SHA-1(sorted(token, timestamp, nonce))), the unencrypted
// mode's signature.
func plainSignature(token, timestamp, nonce string) string {
	parts := []string{token, timestamp, nonce}
	slices.Sort(parts)
	sum := sha1.Sum([]byte(strings.Join(parts, "")))
	return hex.EncodeToString(sum[:])
}
