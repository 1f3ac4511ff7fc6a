package contract

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// TicketRecord is the JSON value stored under a ticket key <app>.<ticket>
// (v2): App is the configured app (the key's first segment), Key the full
// key, TicketType its last segment (TicketJSAPI, TicketWXCard or
// TicketAgentConfig). Fields may be added; none are removed.
type TicketRecord struct {
	App        string    `json:"app"`
	Key        string    `json:"key"`
	TicketType string    `json:"ticket_type"`
	Ticket     string    `json:"ticket"`
	ExpiresAt  time.Time `json:"expires_at"`
	FetchedAt  time.Time `json:"fetched_at"`
	Source     string    `json:"source"`
}

// ErrInvalidTicketRecord marks a ticket record that TicketRecord.Validate
// rejects: readers treat it as missing.
var ErrInvalidTicketRecord = errors.New("invalid ticket record")

// ValidTicketType reports whether typ is a ticket type of the contract.
func ValidTicketType(typ string) bool {
	switch typ {
	case TicketJSAPI, TicketWXCard, TicketAgentConfig:
		return true
	}
	return false
}

// Validate reports what is wrong with rec read under key: an empty ticket
// or one over MaxTokenSize; a key, app or ticket_type that does not match
// key (<app>.<ticket_type>, or <component>.<authorizer>.<ticket_type>);
// an expires_at before fetched_at or more than maxLifetime after it. The
// error wraps ErrInvalidTicketRecord, names every problem and never
// contains the ticket.
func (rec TicketRecord) Validate(key string, maxLifetime time.Duration) error {
	var bad []string
	switch n := len(rec.Ticket); {
	case n == 0:
		bad = append(bad, "empty ticket")
	case n > MaxTokenSize:
		bad = append(bad, fmt.Sprintf("ticket of %d bytes is over the limit of %d", n, MaxTokenSize))
	}
	if rec.Key != key {
		bad = append(bad, fmt.Sprintf("key %s is not the key %s", quoteShort(rec.Key), quoteShort(key)))
	}
	app, rest, err := ParseKey(key)
	if err != nil || rest == "" {
		bad = append(bad, fmt.Sprintf("%s is not a ticket key", quoteShort(key)))
	} else {
		if rec.App != app {
			bad = append(bad, fmt.Sprintf("app %s is not the key's app %s", quoteShort(rec.App), quoteShort(app)))
		}
		if i := strings.LastIndexByte(rest, '.'); rec.TicketType != rest[i+1:] || !ValidTicketType(rec.TicketType) {
			bad = append(bad, fmt.Sprintf("ticket_type %s does not match the key %s", quoteShort(rec.TicketType), quoteShort(key)))
		}
	}
	if p := timesProblem(rec.FetchedAt, rec.ExpiresAt, maxLifetime); p != "" {
		bad = append(bad, p)
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrInvalidTicketRecord, strings.Join(bad, "; "))
}
