package refresher

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt"
)

// CallbackPathPrefix is where a component's pushes arrive:
// POST /wechat/component/<app> (WeChat's 授权事件接收URL).
const CallbackPathPrefix = "/wechat/component/"

// callbackStoreTimeout bounds the storing of one push: WeChat waits 5 s
// for the answer.
const callbackStoreTimeout = 4 * time.Second

// CallbackHandler returns the handler of the public callback listener
// (callback.listen): POST /wechat/component/<app> for every
// wechat-component app, on every replica. A push is authenticated
// (msg_signature), decrypted and parsed with internal/wxcrypt; what it
// carries — a component_verify_ticket, an authorization code, an
// unauthorization — is stored in the secrets bucket (sealed,
// revision-checked, replicated) before the answer "success". Bad input
// gets a 4xx and stores nothing; a store that fails gets a 503, so
// WeChat pushes again.
func (r *Refresher) CallbackHandler() http.Handler {
	return http.HandlerFunc(r.serveCallback)
}

func (r *Refresher) serveCallback(w http.ResponseWriter, req *http.Request) {
	name, ok := strings.CutPrefix(req.URL.Path, CallbackPathPrefix)
	if !ok || !contract.ValidAppName(name) {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	c := r.componentOf(name)
	if c == nil {
		http.Error(w, "not found: no wechat-component of that name", http.StatusNotFound)
		return
	}
	select {
	case <-r.ready:
	default:
		// The secrets bucket is not provisioned yet.
		http.Error(w, "starting; push again", http.StatusServiceUnavailable)
		return
	}
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed: WeChat POSTs pushes", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, wxcrypt.MaxBodySize))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			r.callbackResult(name, "too_large")
			http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "cannot read the request body", http.StatusBadRequest)
		return
	}
	q := req.URL.Query()
	p, err := c.crypter.OpenComponentPush(q.Get("msg_signature"), q.Get("timestamp"), q.Get("nonce"), body)
	if err != nil {
		status, class := http.StatusBadRequest, "malformed"
		switch {
		case errors.Is(err, wxcrypt.ErrTooLarge):
			status, class = http.StatusRequestEntityTooLarge, "too_large"
		case errors.Is(err, wxcrypt.ErrBadSignature):
			status, class = http.StatusForbidden, "bad_signature"
		case errors.Is(err, wxcrypt.ErrBadPadding):
			class = "bad_padding"
		case errors.Is(err, wxcrypt.ErrAppIDMismatch):
			status, class = http.StatusForbidden, "appid_mismatch"
		}
		r.callbackResult(name, class)
		// wxcrypt's errors name what is wrong, never a secret.
		r.log.Warn("callback push refused", "app", name, "class", class, "status", status, "err", err,
			"remote", req.RemoteAddr)
		http.Error(w, class+": "+err.Error(), status)
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), callbackStoreTimeout)
	defer cancel()
	switch p.InfoType {
	case wxcrypt.InfoVerifyTicket:
		wrote, err := r.storeVerifyTicket(ctx, c, p)
		if err != nil {
			r.callbackFailed(w, name, p, err)
			return
		}
		if wrote {
			r.ticketArrived(c, p.CreateTime)
			r.log.Info("component_verify_ticket stored", "app", name, "create_time", p.CreateTime,
				"ticket", sealedFingerprint(p.ComponentVerifyTicket))
		} else {
			r.log.Info("component_verify_ticket not stored: the stored one is as new or newer (a replay or a late push)",
				"app", name, "create_time", p.CreateTime)
		}
	case wxcrypt.InfoAuthorized, wxcrypt.InfoUpdateAuthorized:
		if err := r.storeAuthCode(ctx, c, p); err != nil {
			r.callbackFailed(w, name, p, err)
			return
		}
		c.addCode(p.AuthorizerAppID)
		r.log.Info("authorization code stored; redeeming it", "app", name, "info_type", string(p.InfoType),
			"authorizer_appid", p.AuthorizerAppID)
		r.Tick()
	case wxcrypt.InfoUnauthorized:
		if err := r.storeTombstone(ctx, c, p); err != nil {
			r.callbackFailed(w, name, p, err)
			return
		}
		r.log.Info("unauthorization stored", "app", name, "authorizer_appid", p.AuthorizerAppID)
		// The leader applies it (followSecrets, on every replica).
	default:
		r.log.Info("component push of an InfoType tokenkeeper does not act on; answered success", "app", name,
			"info_type", sanitize(string(p.InfoType), 64))
	}
	r.callbackResult(name, "success")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "success")
}

// callbackFailed answers a push whose content could not be stored: no
// success, so WeChat pushes again.
func (r *Refresher) callbackFailed(w http.ResponseWriter, name string, p *wxcrypt.ComponentPush, err error) {
	r.callbackResult(name, "not_stored")
	r.log.Error("a component push could not be stored; not answering success so that WeChat pushes again",
		"app", name, "info_type", string(p.InfoType), "err", err)
	http.Error(w, "not stored; push again", http.StatusServiceUnavailable)
}

// callbackResult counts a push by its answer: success, or why not
// (too_large, bad_signature, bad_padding, appid_mismatch, malformed,
// not_stored), for an Observer that has CallbackPush (Metrics does).
func (r *Refresher) callbackResult(name, result string) {
	if o, ok := r.obs.(interface{ CallbackPush(app, result string) }); ok {
		o.CallbackPush(name, result)
	}
}
