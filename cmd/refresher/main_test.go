package main

import (
	"context"
	"encoding/json"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

// TestDemo runs the README's first command (on a free port instead of
// 4222) and reads the tokens the way an outside client would: a plain
// nats.go connection to the embedded server, KV bucket tokens, key
// demo-mp; then watches it being refreshed.
func TestDemo(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"--demo-listen", addr}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("demo: %v", err)
		}
	}()

	var nc *nats.Conn
	testutil.WaitFor(t, 10*time.Second, func() bool {
		nc, err = nats.Connect("nats://" + addr)
		return err == nil
	}, "the demo's NATS server did not come up on %s", addr)
	defer nc.Close()
	js, _ := jetstream.New(nc)
	var rec contract.Record
	for _, app := range []string{"demo-mp", "demo-mini"} {
		testutil.WaitFor(t, 10*time.Second, func() bool {
			kv, err := js.KeyValue(context.Background(), "tokens")
			if err != nil {
				return false
			}
			e, err := kv.Get(context.Background(), app)
			if err != nil {
				return false
			}
			return json.Unmarshal(e.Value(), &rec) == nil && rec.AccessToken != ""
		}, "no token for %s in tokens", app)
		if life := rec.ExpiresAt.Sub(rec.FetchedAt); life != 30*time.Second {
			t.Errorf("%s: lifetime %v, want the demo's 30s", app, life)
		}
	}
	// The other kinds, demo-mp's jsapi ticket, the component's token and
	// its authorizers'.
	for _, key := range []string{"demo-wecom", "demo-feishu", "demo-mp.jsapi", "demo-wecom.jsapi", "demo-wecom.agent_config",
		"demo-comp", "demo-comp.wxdemoauthz00001", "demo-comp.wxdemoauthz00003",
		"demo-comp.wxdemoauthz00001.jsapi", "demo-comp.wxdemoauthz00003.jsapi"} {
		testutil.WaitFor(t, 10*time.Second, func() bool {
			kv, err := js.KeyValue(context.Background(), "tokens")
			if err != nil {
				return false
			}
			_, err = kv.Get(context.Background(), key)
			return err == nil
		}, "no record under %s", key)
	}
	// The demo's sign service signs with that ticket.
	body, _ := json.Marshal(contract.SignRequest{URL: "https://demo.example/page"})
	msg, err := nc.Request(contract.SignSubject("demo-mp"), body, 5*time.Second)
	if err != nil {
		t.Fatalf("token.sign.demo-mp: %v", err)
	}
	var sig contract.SignReply
	if json.Unmarshal(msg.Data, &sig) != nil || sig.Signature == "" || sig.AppID != "wxdemo0000000001" {
		t.Errorf("token.sign.demo-mp: %s", msg.Data)
	}
	// And as an authorizer of the component: appId the authorizer's,
	// signed with the authorizer's ticket as stored (which may rotate
	// meanwhile: then sign again).
	const authz = "wxdemoauthz00001"
	testutil.WaitFor(t, 20*time.Second, func() bool {
		before, ok := storedTicket(t, js, "demo-comp."+authz+".jsapi")
		msg, err := nc.Request(contract.SignSubject("demo-comp."+authz), body, 5*time.Second)
		if err != nil || !ok || msg.Header.Get(contract.ErrorCodeHeader) != "" {
			t.Logf("token.sign.demo-comp.%s: %v %q", authz, err, msg.Header.Get(contract.ErrorHeader))
			return false
		}
		after, _ := storedTicket(t, js, "demo-comp."+authz+".jsapi")
		var sig contract.SignReply
		if json.Unmarshal(msg.Data, &sig) != nil || sig.AppID != authz {
			t.Fatalf("token.sign.demo-comp.%s: %s, want appId %s", authz, msg.Data, authz)
		}
		if before != after {
			return false // rotated while signing: try again
		}
		if want := contract.JSSDKSignature(before, sig.NonceStr, sig.Timestamp, "https://demo.example/page"); sig.Signature != want {
			t.Fatalf("token.sign.demo-comp.%s: signature %s is not over the authorizer's stored ticket", authz, sig.Signature)
		}
		return true
	}, "no signature as demo-comp.%s", authz)
	// demo-mp is refreshed after about 20 s (2/3 of 30 s).
	sub, err := nc.SubscribeSync(contract.UpdatedSubject("demo-mp"))
	if err != nil {
		t.Fatal(err)
	}
	// The startup write's event may still be on its way (the record is
	// visible before its event is published): skip it.
	var ev contract.Event
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("no refresh event within 30s: %v", err)
		}
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatalf("event %s: %v", m.Data, err)
		}
		if ev.Source == contract.SourceStartup {
			continue
		}
		if ev.Source != contract.SourceScheduled {
			t.Fatalf("event %s, want source scheduled", m.Data)
		}
		break
	}
	t.Logf("demo refreshed demo-mp at revision %d", ev.Revision)
}

// storedTicket reads the ticket stored under key.
func storedTicket(t *testing.T, js jetstream.JetStream, key string) (string, bool) {
	t.Helper()
	kv, err := js.KeyValue(context.Background(), "tokens")
	if err != nil {
		return "", false
	}
	e, err := kv.Get(context.Background(), key)
	if err != nil {
		return "", false
	}
	var rec contract.TicketRecord
	return rec.Ticket, json.Unmarshal(e.Value(), &rec) == nil && rec.Ticket != ""
}
