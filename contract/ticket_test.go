package contract_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

func TestTicketRecordWireNames(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	b, err := json.Marshal(contract.TicketRecord{App: "mp", Key: "mp.jsapi", TicketType: "jsapi", Ticket: "T",
		FetchedAt: now, ExpiresAt: now.Add(2 * time.Hour), Source: contract.SourceScheduled})
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"app":"mp","key":"mp.jsapi","ticket_type":"jsapi","ticket":"T",` +
		`"expires_at":"2025-03-01T14:00:00Z","fetched_at":"2025-03-01T12:00:00Z","source":"scheduled"}`
	if string(b) != want {
		t.Fatalf("record = %s\nwant     %s", b, want)
	}
	b, _ = json.Marshal(contract.Event{App: "mp", Key: "mp.jsapi", Revision: 3})
	if !strings.Contains(string(b), `"key":"mp.jsapi"`) {
		t.Fatalf("event %s lacks key", b)
	}
	b, _ = json.Marshal(contract.Event{App: "mp", Revision: 3})
	if strings.Contains(string(b), `"key"`) {
		t.Fatalf("an event without a key still says one: %s", b)
	}
}

func TestTicketRecordValidate(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	maxLife := contract.MaxTokenLifetime + contract.LifetimeSlack
	const secret = "TICKET-SECRET-VALUE"
	good := contract.TicketRecord{App: "mp", Key: "mp.jsapi", TicketType: "jsapi", Ticket: secret,
		FetchedAt: now, ExpiresAt: now.Add(7200 * time.Second), Source: "startup"}
	if err := good.Validate("mp.jsapi", maxLife); err != nil {
		t.Fatalf("a good record: %v", err)
	}
	comp := good
	comp.Key, comp.App = "comp.wxauth1.jsapi", "comp"
	if err := comp.Validate("comp.wxauth1.jsapi", maxLife); err != nil {
		t.Fatalf("an authorizer's ticket: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*contract.TicketRecord)
		key  string
		want string
	}{
		{"empty ticket", func(r *contract.TicketRecord) { r.Ticket = "" }, "mp.jsapi", "empty ticket"},
		{"oversized", func(r *contract.TicketRecord) { r.Ticket = strings.Repeat("x", contract.MaxTokenSize+1) }, "mp.jsapi", "over the limit"},
		{"other key", nil, "mp.wx_card", `key "mp.jsapi" is not the key "mp.wx_card"`},
		{"other app", func(r *contract.TicketRecord) { r.App = "mq" }, "mp.jsapi", `app "mq" is not the key's app "mp"`},
		{"other type", func(r *contract.TicketRecord) { r.TicketType = "wx_card" }, "mp.jsapi", `ticket_type "wx_card" does not match`},
		{"unknown type", func(r *contract.TicketRecord) { r.TicketType, r.Key = "foo", "mp.foo" }, "mp.foo", `ticket_type "foo" does not match`},
		{"v1 key", func(r *contract.TicketRecord) { r.Key = "mp" }, "mp", `"mp" is not a ticket key`},
		{"backwards", func(r *contract.TicketRecord) { r.ExpiresAt = now.Add(-time.Second) }, "mp.jsapi", "before fetched_at"},
		{"too long", func(r *contract.TicketRecord) { r.ExpiresAt = now.Add(maxLife + time.Second) }, "mp.jsapi", "over the limit"},
		{"no times", func(r *contract.TicketRecord) { r.FetchedAt = time.Time{} }, "mp.jsapi", "missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := good
			if tc.edit != nil {
				tc.edit(&r)
			}
			err := r.Validate(tc.key, maxLife)
			if !errors.Is(err, contract.ErrInvalidTicketRecord) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want ErrInvalidTicketRecord saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatal("the error contains the ticket")
			}
		})
	}
}
