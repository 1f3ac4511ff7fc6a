package refresher

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestWhitelistIP: the IP named by WeChat's 40164 and WeCom's 60020
// errmsgs (shapes as reported in public SDK issue trackers), IPv4 and
// IPv6, and no IP for masked, missing or hostile text.
func TestWhitelistIP(t *testing.T) {
	for _, tc := range []struct {
		name string
		code int
		msg  string
		want string
	}{
		{"wechat rid", 40164, "invalid ip 120.244.112.8 ipv6 ::ffff:120.244.112.8, not in whitelist rid: 5fa26c60-1a0ebdd5-32fd1cd0", "120.244.112.8"},
		{"wechat hint", 40164, "invalid ip 101.45.43.100 ipv6 ::ffff:101.45.43.100, not in whitelist hint: [jotvMa01143580]", "101.45.43.100"},
		{"wechat ipv6 source", 40164, "invalid ip 2408:8207:1234:5678::1 ipv6 2408:8207:1234:5678::1, not in whitelist rid: 6614f1c2-3a5e8d21-1b2c3d4e", "2408:8207:1234:5678::1"},
		{"wechat ipv6 only", 40164, "invalid ip  ipv6 240e:3b7:abcd::2, not in whitelist rid: 66a0-1", "240e:3b7:abcd::2"},
		{"wechat mapped only", 40164, "invalid ip ipv6 ::ffff:203.0.113.7, not in whitelist", "203.0.113.7"},
		{"wechat no ip", 40164, "invalid ip, not in whitelist", ""},
		{"wechat empty", 40164, "", ""},
		{"wecom", 60020, "not allow to access from your ip, hint: [1680743372339601936772701], from ip: 139.227.20.128, more info at https://open.work.weixin.qq.com/devtool/query?e=60020", "139.227.20.128"},
		{"wecom masked", 60020, "not allow to access from your ip, hint: [16557994246266], from ip: 101.43.**, more info at https://open.work.weixin.qq.com/devtool/query?e=60020", ""},
		{"wecom placeholder", 60020, "not allow to access from your ip, hint: [1706848717432011565347844], from ip: x.x.x.x, more info at", ""},
		{"wecom end of message", 60020, "not allow to access from your ip, from ip: 198.51.100.23", "198.51.100.23"},
		{"wecom ipv6", 60020, "not allow to access from your ip, hint: [1], from ip: 2001:db8::7, more info at", "2001:db8::7"},
		{"other code", 40001, "invalid ip 120.244.112.8 ipv6 ::ffff:120.244.112.8, not in whitelist", ""},
		{"zone refused", 40164, "invalid ip fe80::1%eth0 ipv6 fe80::1%eth0, not in whitelist", ""},
		{"unspecified refused", 40164, "invalid ip 0.0.0.0 ipv6 ::, not in whitelist", ""},
		{"injection", 40164, "invalid ip 1.2.3.4\nlevel=ERROR msg=forged ipv6 x, not in whitelist", "1.2.3.4"},
		{"ansi", 60020, "from ip: \x1b[31m1.2.3.4\x1b[0m, more", ""},
		{"invalid utf8", 40164, "invalid ip \xff\xfe1.2.3.4 ipv6 \xff, not in whitelist", ""},
		{"huge token", 40164, "invalid ip " + strings.Repeat("1", 10000) + " ipv6 " + strings.Repeat(":", 10000), ""},
		{"octal-looking", 40164, "invalid ip 010.001.002.003 ipv6 x, not", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := whitelistIP(tc.code, tc.msg); got != tc.want {
				t.Errorf("whitelistIP(%d, %q) = %q, want %q", tc.code, tc.msg, got, tc.want)
			}
		})
	}
}

// TestAlertMessageNamesIP: the ALERT line of 40164 and 60020 names the
// reported IP when there is one and reads sensibly without.
func TestAlertMessageNamesIP(t *testing.T) {
	for _, code := range []int{40164, 60020} {
		if alertFor(code) != "ip_not_whitelisted" {
			t.Errorf("alertFor(%d) = %q", code, alertFor(code))
		}
		with := alertMessage(code, "203.0.113.7")
		if !strings.Contains(with, "egress IP 203.0.113.7 is not on the app's IP allow list") {
			t.Errorf("alertMessage(%d, ip) = %q: the IP is not named", code, with)
		}
		without := alertMessage(code, "")
		if !strings.HasPrefix(without, "ALERT ip_not_whitelisted: this server's IP is not") {
			t.Errorf("alertMessage(%d, \"\") = %q", code, without)
		}
	}
	if m := alertMessage(60020, ""); !strings.Contains(m, "WeCom") {
		t.Errorf("60020's message does not point to the WeCom console: %q", m)
	}
}

// FuzzWhitelistIP: any errmsg gives "" or a valid address that occurs
// in the message, never a panic.
func FuzzWhitelistIP(f *testing.F) {
	f.Add(40164, "invalid ip 120.244.112.8 ipv6 ::ffff:120.244.112.8, not in whitelist rid: 5fa26c60-1a0ebdd5-32fd1cd0")
	f.Add(60020, "not allow to access from your ip, hint: [1], from ip: 139.227.20.128, more info at")
	f.Fuzz(func(t *testing.T, code int, msg string) {
		ip := whitelistIP(code, msg)
		if ip == "" {
			return
		}
		if !utf8.ValidString(ip) || len(ip) > 64 || strings.ContainsAny(ip, " \n\r\t,;") {
			t.Fatalf("whitelistIP gave %q", ip)
		}
	})
}
