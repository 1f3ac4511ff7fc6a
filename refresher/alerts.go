package refresher

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
	case 40164:
		return "ip_not_whitelisted"
	case 40001, 40125:
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
// saying what the operator has to do.
func alertMessage(code int) string {
	switch code {
	case 40164:
		return "ALERT ip_not_whitelisted: this server's IP is not on the app's IP allow list; add it in the WeChat console (retrying politely until then)"
	case 40001, 40125:
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
