package contract

import (
	"crypto/sha256"
	"encoding/hex"
)

// Fingerprint is the only form in which a token may appear in logs,
// metrics, status output or errors: the first 8 hex digits of its SHA-256
// ("" for an empty token). The refresher, the subscriber and tokenctl all
// print this one, so their lines can be correlated.
func Fingerprint(token string) string {
	if token == "" {
		return ""
	}
	s := sha256.Sum256([]byte(token))
	return hex.EncodeToString(s[:4])
}

// RejectedTokenCode reports whether an upstream business API's errcode
// says the access token it was given is invalid, not the latest, or
// expired — WeChat (and WeCom) 40001, 40014 or 42001. A call that fails so
// is retried once with a refreshed token (token.refresh.<key> with the
// rejected token's revision as stale_revision). More codes are added as
// upstream kinds arrive.
func RejectedTokenCode(code int) bool {
	return code == 40001 || code == 40014 || code == 42001
}
