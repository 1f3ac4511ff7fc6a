// Package gateway is tokenkeeper's HTTP gateway, for services that cannot
// take a NATS client (PHP, shell jobs): it reads records from the tokens
// bucket and forwards refresh and JS-SDK signing requests over NATS, like
// any other service, so any refresher replica (leader or not) can run it.
//
//	GET  /v1/tokens/{key}           the record as stored (v1 token or v2 ticket record)
//	POST /v1/tokens/{key}/refresh   {"stale_revision":N} -> the token.refresh reply
//	POST /v1/sign/{app}             {"url":"https://…"}  -> the token.sign reply (JS-SDK config)
//	POST /v1/sign/{component}.{authorizer_appid}  the same, as an authorizer of an Open Platform component
//
// Every request carries "Authorization: Bearer <token>". Clients are
// configured by name, the SHA-256 of their token (compared in constant
// time; the token itself is never configured), the key patterns they may
// read, and a token-bucket rate limit. Errors are JSON
// {"error":{"code","message"}} with the HTTP status as code: 400 bad body
// or key, 401 no or unknown token (with WWW-Authenticate), 403 key not
// allowed, 404 no such key or endpoint, 405, 408 body too slow, 413 body
// too big, 429 rate limited (with Retry-After), and 502/503/504 for what
// NATS or the refresher answered.
//
// Key patterns: a key's dot-separated segments, where a whole segment may
// be "*". A "*" as the last segment matches the rest of the key (one or
// more segments): "*" is every key, "mp-main.*" every key below mp-main
// (mp-main.jsapi) but not mp-main itself. A "*" elsewhere matches one
// segment: "*.jsapi" is every app's jsapi ticket. Signing with ticket T
// (default jsapi) for {app} needs read access to the key {app}.T, the
// ticket that signs; for {component}.{authorizer_appid}, to
// {component}.{authorizer_appid}.T: "comp.*.jsapi" lets a client sign for
// every authorizer of component comp without reading their tokens. A
// ticket key or a key of three segments in /v1/sign/ is a 400.
//
// Every request is logged (log/slog) with the client's name, the key,
// the status and the revision; never a bearer token, an access token or
// a ticket.
package gateway
