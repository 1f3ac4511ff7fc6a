package refresher_test

import (
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// TestAlertNamesWhitelistIP: a 40164 whose errmsg names the caller's IP
// (as WeChat's does) gives an ALERT line that names it, in the message
// and in the field ip, so the operator knows what to whitelist.
func TestAlertNamesWhitelistIP(t *testing.T) {
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	e.Sim.SetFault(wechatsim.Fault{Errcode: 40164,
		Errmsg: "invalid ip 203.0.113.9 ipv6 ::ffff:203.0.113.9, not in whitelist rid: 6614f1c2-3a5e8d21-1b2c3d4e"})
	e.Start(e.Config(app))
	testutil.WaitFor(t, 10*time.Second, func() bool { return e.Logs.Contains("ALERT ip_not_whitelisted") },
		"no ALERT line for 40164")
	var line string
	for _, l := range strings.Split(e.Logs.String(), "\n") {
		if strings.Contains(l, "ALERT ip_not_whitelisted") {
			line = l
			break
		}
	}
	for _, want := range []string{"egress IP 203.0.113.9 is not on the app's IP allow list", " ip=203.0.113.9", "errcode=40164", "app=mp"} {
		if !strings.Contains(line, want) {
			t.Errorf("the ALERT line lacks %q:\n%s", want, line)
		}
	}
	if strings.Contains(e.Logs.String(), harness.Secret(app.AppID)) {
		t.Error("the logs contain the secret")
	}
}
