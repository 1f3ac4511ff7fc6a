package e2e_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// serverViolations collects the permissions violations a server logs.
type serverViolations struct {
	mu   sync.Mutex
	msgs []string
}

func (l *serverViolations) record(format string, v ...any) {
	if msg := strings.TrimSpace(fmt.Sprintf(format, v...)); strings.Contains(msg, "Violation") {
		l.mu.Lock()
		l.msgs = append(l.msgs, msg)
		l.mu.Unlock()
	}
}

func (l *serverViolations) Noticef(f string, v ...any) { l.record(f, v...) }
func (l *serverViolations) Warnf(f string, v ...any)   { l.record(f, v...) }
func (l *serverViolations) Fatalf(f string, v ...any)  { l.record(f, v...) }
func (l *serverViolations) Errorf(f string, v ...any)  { l.record(f, v...) }
func (l *serverViolations) Debugf(f string, v ...any)  { l.record(f, v...) }
func (l *serverViolations) Tracef(f string, v ...any)  { l.record(f, v...) }

func (l *serverViolations) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.msgs...)
}

// TestSignLeastPrivilege: the refresher runs with the refresher role's
// permissions (natsconf.RolePermissions); a service-role user, and a
// "signer" that may publish nothing but token.sign.> and read nothing
// but its own inbox, both get JS-SDK signatures that the emulator
// accepts. The signer cannot read the tokens bucket; the refresher meets
// no permissions violation.
func TestSignLeastPrivilege(t *testing.T) {
	const refresherPW, servicePW, signerPW = "refresher-pw-5a1", "service-pw-c0e", "signer-pw-77b"
	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}, NATS: []func(*server.Options){
		func(o *server.Options) {
			o.Users = []*server.User{
				{Username: "admin", Password: "admin-pw-e2e"},
				{Username: "refresher", Password: refresherPW,
					Permissions: natsconf.RolePermissions(natsconf.RoleRefresher, contract.DefaultBucket, "refresher")},
				{Username: "web", Password: servicePW,
					Permissions: natsconf.RolePermissions(natsconf.RoleService, contract.DefaultBucket, "web")},
				{Username: "signer", Password: signerPW, Permissions: &server.Permissions{
					Publish:   &server.SubjectPermission{Allow: []string{contract.SignPrefix + ">"}},
					Subscribe: &server.SubjectPermission{Allow: []string{contract.ServiceInboxPrefix("signer") + ".>"}},
				}},
			}
			o.NoAuthUser = "admin" // the harness's own connection
		},
	}})
	violations := &serverViolations{}
	e.Server.SetLogger(violations, false, false)
	withUser := func(user, pw string) string {
		return strings.Replace(e.URL, "nats://", "nats://"+user+":"+pw+"@", 1)
	}

	app := e.App("mp")
	app.Tickets = []string{contract.TicketJSAPI}
	cfg := e.Config(app)
	cfg.NATS.URL = withUser("refresher", refresherPW)
	e.Start(cfg)
	e.Start(cfg) // a follower: token.sign is served by both

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, u := range []struct{ user, pw string }{{"web", servicePW}, {"signer", signerPW}} {
		errs := make(asyncErrors, 16)
		nc, _ := testutil.Connect(t, withUser(u.user, u.pw), nats.CustomInboxPrefix(contract.ServiceInboxPrefix(u.user)),
			nats.ErrorHandler(errs.handler))
		c, err := subscriber.NewClient(nc)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 20 {
			url := "https://shop.example/item?id=" + string(rune('a'+i))
			rep, err := c.Sign(ctx, "mp", url)
			if err != nil {
				t.Fatalf("%s: Sign: %v", u.user, err)
			}
			if err := e.Sim.CheckSignature(app.AppID, url, rep.NonceStr, rep.Timestamp, rep.Signature); err != nil {
				t.Fatalf("%s: signature refused: %v", u.user, err)
			}
		}
		_ = c.Close()
		if u.user == "signer" {
			js, _ := jetstream.New(nc)
			gctx, gcancel := context.WithTimeout(ctx, 500*time.Millisecond)
			_, err := js.KeyValue(gctx, contract.DefaultBucket)
			gcancel()
			if err == nil {
				t.Fatal("signer: the tokens bucket is readable")
			}
			errs.expectViolation(t, `Publish to "$JS.API.STREAM.INFO.KV_tokens"`)
		}
	}
	var unexpected []string
	for _, v := range violations.all() {
		if !strings.Contains(v, "signer") {
			unexpected = append(unexpected, v)
		}
	}
	if len(unexpected) > 0 {
		t.Fatalf("permissions violations besides the signer's bucket read:\n%s", strings.Join(unexpected, "\n"))
	}
	if len(violations.all()) == 0 {
		t.Fatal("the violation log saw nothing, not even the signer's bucket read: is it wired to the server?")
	}
}
