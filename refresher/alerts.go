package refresher

import (
	"net/netip"
	"strings"
)

// AlertTokenNotStored is the alert of a token fetched from upstream that
// could not be written to the bucket.
const AlertTokenNotStored = "token_not_stored"

// AlertInvalidRecord is the alert of a stored record that does not pass
// validation (it is treated as missing and replaced).
const AlertInvalidRecord = "invalid_record"

// AlertBucketLost is the alert of a bucket found gone or created anew
// (re-provisioned; app "" in metrics).
const AlertBucketLost = "bucket_lost"

// alertFor names the operator action an upstream errcode asks for.
func alertFor(code int) string {
	switch code {
	case 40164, 60020:
		return "ip_not_whitelisted"
	case 40001, 40125, 40091, 10014:
		return "secret_wrong_or_rotated"
	case 89503:
		return "risk_control"
	case 45009:
		return "daily_quota_exhausted"
	case 40013:
		return "invalid_appid"
	case 61005, 61006:
		return AlertVerifyTicket
	case 61023:
		return AlertNeedsReauthorization
	}
	return ""
}

// alertMessage is the distinct log message of an alert-worthy errcode,
// saying what the operator has to do. ip is the address the upstream
// reported (whitelistIP), named in the message when known.
func alertMessage(code int, ip string) string {
	switch code {
	case 40164, 60020:
		who, where := "this server's IP", "the WeChat console (IP whitelist)"
		if code == 60020 {
			where = "the WeCom admin console (the app's trusted IPs)"
		}
		if ip != "" {
			who = "this server's egress IP " + ip
		}
		return "ALERT ip_not_whitelisted: " + who + " is not on the app's IP allow list; add it in " + where + " (retrying politely until then)"
	case 40001, 40125, 40091, 10014:
		return "ALERT secret_wrong_or_rotated: WeChat refuses the AppSecret; put the current secret in the config and send SIGHUP"
	case 89503:
		return "ALERT risk_control: WeChat's risk control holds calls from this IP until an administrator confirms it in the WeChat console"
	case 45009:
		return "ALERT daily_quota_exhausted: the day's token quota is used up; no fetch until midnight UTC+8 (or reset the quota in the console)"
	case 40013:
		return "ALERT invalid_appid: WeChat does not know this appid; fix apps[].appid"
	case 61005, 61006:
		return "ALERT " + AlertVerifyTicket + ": WeChat refuses the stored component_verify_ticket (expired or invalid); the current component token is served on and the next push (every 10 minutes) triggers a fetch"
	}
	return ""
}

// whitelistIP returns the caller's IP that the upstream names in the errmsg
// of an IP allow-list refusal, in canonical form, or "" when code is not
// such a refusal or the message names no parseable address. WeChat's
// 40164 reads "invalid ip 1.2.3.4 ipv6 ::ffff:1.2.3.4, not in whitelist
// rid: …" and WeCom's 60020 "not allow to access from your ip, hint: […],
// from ip: 1.2.3.4, more info at …". Only a parsed address is returned,
// never text of the message, so a hostile errmsg cannot inject anything.
func whitelistIP(code int, msg string) string {
	var markers []string
	switch code {
	case 40164:
		markers = []string{"invalid ip ", " ipv6 "}
	case 60020:
		markers = []string{"from ip: "}
	default:
		return ""
	}
	for _, m := range markers {
		i := strings.Index(msg, m)
		if i < 0 {
			continue
		}
		field := msg[i+len(m):]
		if j := strings.IndexAny(field, " ,;\t\r\n"); j >= 0 {
			field = field[:j]
		}
		if len(field) > 64 { // longer than any textual address
			continue
		}
		addr, err := netip.ParseAddr(field)
		if err != nil || addr.Zone() != "" || addr.IsUnspecified() {
			continue
		}
		return addr.Unmap().String()
	}
	return ""
}
