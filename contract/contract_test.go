package contract_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

func TestRecordValidate(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	good := contract.Record{App: "mp", AccessToken: "TOKEN-SECRET-VALUE", FetchedAt: now, ExpiresAt: now.Add(7200 * time.Second)}
	maxLife := contract.MaxTokenLifetime + contract.LifetimeSlack
	if err := good.Validate("mp", maxLife); err != nil {
		t.Fatalf("a good record: %v", err)
	}
	edge := good
	edge.AccessToken = strings.Repeat("x", contract.MaxTokenSize)
	edge.ExpiresAt = now.Add(maxLife)
	if err := edge.Validate("mp", maxLife); err != nil {
		t.Fatalf("a record at the limits: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*contract.Record)
		key  string
		want string
	}{
		{"empty token", func(r *contract.Record) { r.AccessToken = "" }, "mp", "empty access_token"},
		{"token too long", func(r *contract.Record) { r.AccessToken = strings.Repeat("x", contract.MaxTokenSize+1) }, "mp", "over the limit"},
		{"wrong app", func(r *contract.Record) { r.App = "other" }, "mp", `app "other" is not the key "mp"`},
		{"expires before fetched", func(r *contract.Record) { r.ExpiresAt = now.Add(-time.Second) }, "mp", "is before fetched_at"},
		{"ten years", func(r *contract.Record) { r.ExpiresAt = now.AddDate(10, 0, 0) }, "mp", "lifetime"},
		{"no times", func(r *contract.Record) { r.FetchedAt, r.ExpiresAt = time.Time{}, time.Time{} }, "mp", "missing"},
		{"wrong key", func(*contract.Record) {}, "mp2", "is not the key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := good
			tc.edit(&rec)
			err := rec.Validate(tc.key, maxLife)
			if !errors.Is(err, contract.ErrInvalidRecord) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want ErrInvalidRecord saying %q", err, tc.want)
			}
			if rec.AccessToken != "" && strings.Contains(err.Error(), rec.AccessToken) {
				t.Fatal("the error shows the token")
			}
		})
	}
}
