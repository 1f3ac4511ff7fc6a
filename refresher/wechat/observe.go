package wechat

import (
	"context"
	"net/url"
	"regexp"
	"time"
)

// Attempt describes one HTTP attempt of an upstream call, as an attempt
// observer sees it (the refresher's audit records one per attempt).
type Attempt struct {
	// Number counts the call's attempts from 1.
	Number int
	// Path is the endpoint's path, never its query (which may carry a
	// secret or a token).
	Path string
	// Start is when the attempt was sent; Duration how long it took.
	Start    time.Time
	Duration time.Duration
	// Err is the attempt's failure (nil: it succeeded). Its text never
	// contains the secret.
	Err error
}

type observerKey struct{}

// WithAttemptObserver returns a ctx under which every attempt of a call
// of this package's clients (Fetch, FetchGated, FetchTicket,
// FetchTicketOf, Run) that was sent is reported to f, synchronously,
// after it ends. An attempt a Gate refused was not sent and is not
// reported.
func WithAttemptObserver(ctx context.Context, f func(Attempt)) context.Context {
	return context.WithValue(ctx, observerKey{}, f)
}

// urlPath returns the path of a request URL ("" if it does not parse).
func urlPath(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Path
}

var ridRE = regexp.MustCompile(`\brid: ?([0-9A-Za-z-]{1,64})`)

// RID returns the request id WeChat appends to an errmsg ("… rid:
// 6123abcd-…"), or "".
func RID(errmsg string) string {
	if m := ridRE.FindStringSubmatch(errmsg); m != nil {
		return m[1]
	}
	return ""
}
