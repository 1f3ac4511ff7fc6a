package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// now is the clock of time-to-expiry computations.
var now = time.Now

// newTable returns a tabwriter for aligned columns, two spaces apart.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// fmtTime writes t as RFC 3339 UTC to the second, "-" when unset.
func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// ttl is the time left until t, to the second.
func ttl(t time.Time) time.Duration {
	return t.Sub(now()).Round(time.Second)
}

// fmtTTL writes a time to expiry; a token that has expired shows the
// negative duration and EXPIRED.
func fmtTTL(expires time.Time) string {
	if expires.IsZero() {
		return "-"
	}
	d := ttl(expires)
	if d <= 0 {
		return d.String() + " EXPIRED"
	}
	return d.String()
}

// fingerprint identifies a token without revealing it: the first 8 hex
// digits of its SHA-256, as in the refresher's logs.
func fingerprint(token string) string {
	if token == "" {
		return "-"
	}
	return contract.Fingerprint(token)
}

// storedRecord is a record of the bucket as tokenctl reads it: an app's
// token record (v1), an authorizer's token record
// <component>.<authorizer> (v2: key and authorizer_appid set) or a ticket
// record <app>.<ticket>, <component>.<authorizer>.<ticket> (v2: key,
// ticket_type and ticket set, no access_token).
type storedRecord struct {
	contract.Record
	Key        string `json:"key,omitempty"`
	TicketType string `json:"ticket_type,omitempty"`
	Ticket     string `json:"ticket,omitempty"`
}

// secret returns the credential the record holds: the access token or
// the ticket.
func (r storedRecord) secret() string {
	if r.Ticket != "" {
		return r.Ticket
	}
	return r.AccessToken
}

// parseRecord decodes a stored record of key.
func parseRecord(key string, rev uint64, raw []byte) (storedRecord, error) {
	var rec storedRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return rec, fmt.Errorf("the record of %s at revision %d is not valid JSON: %v", key, rev, err)
	}
	return rec, nil
}

// recordJSON returns the stored JSON object with "revision" added, every
// field kept (fields the contract adds later included).
func recordJSON(raw []byte, rev uint64) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	m["revision"] = json.RawMessage(strconv.FormatUint(rev, 10))
	return json.Marshal(m)
}

// printRecord writes a record for the operator: every field, the time to
// expiry, the token's (or ticket's) fingerprint, and the token (ticket)
// itself. With asJSON it
// writes the record's JSON plus "revision" on one line.
func printRecord(w io.Writer, raw []byte, rec storedRecord, rev uint64, asJSON bool) error {
	if asJSON {
		b, err := recordJSON(raw, rev)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	tw := newTable(w)
	fmt.Fprintf(tw, "app:\t%s\n", rec.App)
	if rec.Key != "" {
		fmt.Fprintf(tw, "key:\t%s\n", rec.Key)
	}
	if rec.TicketType != "" {
		fmt.Fprintf(tw, "ticket_type:\t%s\n", rec.TicketType)
	}
	if rec.AppID != "" {
		fmt.Fprintf(tw, "appid:\t%s\n", rec.AppID)
	}
	if rec.AuthorizerAppID != "" {
		fmt.Fprintf(tw, "authorizer_appid:\t%s\n", rec.AuthorizerAppID)
	}
	fmt.Fprintf(tw, "revision:\t%d\n", rev)
	fmt.Fprintf(tw, "source:\t%s\n", rec.Source)
	fmt.Fprintf(tw, "fetched_at:\t%s\n", fmtTime(rec.FetchedAt))
	fmt.Fprintf(tw, "expires_at:\t%s\n", fmtTime(rec.ExpiresAt))
	fmt.Fprintf(tw, "expires_in:\t%s\n", fmtTTL(rec.ExpiresAt))
	fmt.Fprintf(tw, "fingerprint:\t%s\n", fingerprint(rec.secret()))
	if rec.Ticket != "" {
		fmt.Fprintf(tw, "ticket:\t%s\n", rec.Ticket)
	} else {
		fmt.Fprintf(tw, "access_token:\t%s\n", rec.AccessToken)
	}
	return tw.Flush()
}
