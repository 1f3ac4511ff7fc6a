package wechat

import (
	"encoding/json"
	"errors"
	"html"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxMsg bounds the errmsg kept in an *Error, in bytes.
const maxMsg = 256

// scrubber removes one secret, in every spelling a server or a library may
// produce (raw, query- and path-escaped, JSON- and HTML-escaped), from
// text.
type scrubber struct{ forms []string }

func newScrubber(secret string) scrubber {
	if secret == "" {
		return scrubber{}
	}
	j, _ := json.Marshal(secret)
	candidates := []string{
		secret,
		url.QueryEscape(secret),
		url.PathEscape(secret),
		strings.Trim(string(j), `"`),
		html.EscapeString(secret),
	}
	var s scrubber
	for _, c := range candidates {
		if c == "" {
			continue
		}
		dup := false
		for _, f := range s.forms {
			dup = dup || f == c
		}
		if !dup {
			s.forms = append(s.forms, c)
		}
	}
	// Longest first, so that no spelling is half-replaced through a
	// shorter one it contains.
	slices.SortStableFunc(s.forms, func(a, b string) int { return len(b) - len(a) })
	return s
}

func (s scrubber) contains(text string) bool {
	for _, f := range s.forms {
		if strings.Contains(text, f) {
			return true
		}
	}
	return false
}

func (s scrubber) scrub(text string) string {
	for _, f := range s.forms {
		text = strings.ReplaceAll(text, f, redacted)
	}
	return text
}

// cleanMsg makes an upstream errmsg safe to put in an error: the secret
// scrubbed, control characters replaced, the length bounded.
func (s scrubber) cleanMsg(msg string) string {
	// Scrub before cutting: a cut through the secret would leave a prefix
	// of it that no later scrub recognises.
	msg = s.scrub(msg)
	msg = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return ' '
		}
		return r
	}, msg)
	if len(msg) > maxMsg {
		cut := maxMsg
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut] + "…"
	}
	return s.scrub(msg)
}

// redactURL returns raw with the value of every secret query parameter
// and any password replaced, and the secret scrubbed from what is left.
func (s scrubber) redactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		parts := strings.Split(u.RawQuery, "&")
		for i, p := range parts {
			k, _, _ := strings.Cut(p, "=")
			if key, err := url.QueryUnescape(k); err == nil && key == "secret" {
				parts[i] = k + "=" + redacted
			}
		}
		u.RawQuery = strings.Join(parts, "&")
		raw = u.Redacted()
	}
	return s.scrub(raw)
}

// isTimeout reports whether any error in err's tree says Timeout() true.
func isTimeout(err error) bool {
	switch e := err.(type) {
	case nil:
		return false
	case interface{ Timeout() bool }:
		if e.Timeout() {
			return true
		}
	}
	switch e := err.(type) {
	case interface{ Unwrap() error }:
		return isTimeout(e.Unwrap())
	case interface{ Unwrap() []error }:
		for _, x := range e.Unwrap() {
			if isTimeout(x) {
				return true
			}
		}
	}
	return false
}

// sanitizedError stands in for an error whose text contained the secret.
// It keeps the text scrubbed and whether any error in the original's tree
// was a timeout, and does not unwrap to the original.
type sanitizedError struct {
	msg     string
	timeout bool
}

func (e *sanitizedError) Error() string   { return e.msg }
func (e *sanitizedError) Timeout() bool   { return e.timeout }
func (e *sanitizedError) Temporary() bool { return e.timeout }

// sanitize returns err itself if its text is free of the secret, or a
// sanitizedError otherwise.
func (s scrubber) sanitize(err error) error {
	if err == nil || !s.contains(err.Error()) {
		return err
	}
	return &sanitizedError{msg: s.scrub(err.Error()), timeout: isTimeout(err)}
}

// transportError turns an error of http.Client.Do (always a *url.Error)
// into a *url.Error whose URL is redacted and whose Err does not print the
// secret. Err is kept when it is clean, so errors.Is/As (timeouts,
// *net.OpError, context errors) keep working.
func (s scrubber) transportError(method, redactedURL string, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		u := redactedURL
		if ue.URL != "" {
			u = s.redactURL(ue.URL)
		}
		return &url.Error{Op: ue.Op, URL: u, Err: s.sanitize(ue.Err)}
	}
	return &url.Error{Op: method, URL: redactedURL, Err: s.sanitize(err)}
}

// bodyError is a failure while reading the response body. It forwards
// Timeout so that the *url.Error around it reports timeouts.
type bodyError struct{ err error }

func (e *bodyError) Error() string   { return "reading response body: " + e.err.Error() }
func (e *bodyError) Unwrap() error   { return e.err }
func (e *bodyError) Timeout() bool   { return isTimeout(e.err) }
func (e *bodyError) Temporary() bool { return e.Timeout() }

// noRedirects returns a shallow copy of hc that never follows redirects.
func noRedirects(hc *http.Client) *http.Client {
	c := *hc
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &c
}
