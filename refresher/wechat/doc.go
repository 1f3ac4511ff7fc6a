// Package wechat is the upstream client for WeChat access tokens: the
// classic endpoint GET /cgi-bin/token ([KindClassic]) and the stable
// endpoint POST /cgi-bin/stable_token ([KindStable]).
//
// A [Client] makes one logical fetch per [Client.Fetch] call, retrying
// retryable failures (errcode -1, transport errors, timeouts, HTTP 5xx and
// 429, unparsable bodies) with full-jitter exponential backoff, and
// reporting configuration and policy failures (wrong secret, IP not on the
// allow list, quota gone, ...) at once as typed errors. Every errcode
// answer is an [*Error]; match it with [errors.Is] against the sentinels in
// errors.go, or with [errors.As] to read the code. [IsRetryable] tells a
// caller whether trying again later can help.
//
// The AppSecret never appears in an error, in the formatting of
// [Credentials], or in the URL of a *url.Error returned by this package:
// request URLs are redacted (secret=REDACTED) and the secret is scrubbed
// from anything the upstream echoes back (every occurrence, in raw,
// query-, path-, JSON- and HTML-escaped spelling; a very short secret
// therefore garbles messages, a real 32-character one never matches by
// chance). The package does not log; a
// caller that wants to count or log each HTTP attempt installs
// [WithAttemptHook].
package wechat
