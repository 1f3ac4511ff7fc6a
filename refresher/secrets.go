package refresher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/seal"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
)

// The secrets bucket <bucket>_secrets (v2) keeps what a component must
// never lose and no service may read: verify tickets, pending
// authorization codes and authorizer refresh tokens. Every value is
// sealed (internal/seal: AES-256-GCM under the secrets key, the KV key as
// additional data), every write is revision-checked, the bucket keeps
// secretsHistory revisions per key, and nothing is ever deleted or
// blanked on a failure. Keys:
//
//	<component>.verify_ticket             verifyTicket
//	<component>.code.<authorizer_appid>   authCode (until redeemed)
//	<component>.authorizer.<authorizer_appid>  authorizerSecret
//
// The bucket exists only when a wechat-component is configured: a v1
// deployment's NATS permissions need no change.

// secretsHistory is the history kept per key of the secrets bucket.
const secretsHistory = 10

// Key segments of the secrets bucket.
const (
	secretVerifyTicket = "verify_ticket"
	secretCode         = "code"
	secretAuthorizer   = "authorizer"
)

// verifyTicketKey is the secrets key of a component's verify ticket.
func verifyTicketKey(component string) string { return component + "." + secretVerifyTicket }

// codeKey is the secrets key of an authorizer's pending authorization code.
func codeKey(component, authorizer string) string {
	return component + "." + secretCode + "." + authorizer
}

// authorizerSecretKey is the secrets key of an authorizer's refresh token.
func authorizerSecretKey(component, authorizer string) string {
	return component + "." + secretAuthorizer + "." + authorizer
}

// verifyTicket is the sealed value of <component>.verify_ticket.
type verifyTicket struct {
	ComponentAppID string    `json:"component_appid"`
	Ticket         string    `json:"ticket"`
	CreateTime     int64     `json:"create_time"` // the push's CreateTime (Unix s)
	ReceivedAt     time.Time `json:"received_at"`
	Replica        string    `json:"replica"`
}

// authCode is the sealed value of <component>.code.<authorizer>.
type authCode struct {
	AuthorizerAppID string    `json:"authorizer_appid"`
	Code            string    `json:"code"`
	InfoType        string    `json:"info_type"`
	CreateTime      int64     `json:"create_time"`
	ExpiresAt       time.Time `json:"expires_at,omitzero"`
	ReceivedAt      time.Time `json:"received_at"`
}

// States of an authorizer in its secrets record.
const (
	authorizerAuthorized   = "authorized"
	authorizerUnauthorized = "unauthorized"
)

// authorizerSecret is the sealed value of <component>.authorizer.<appid>:
// the refresh token, and whether the merchant still authorizes the
// component. An unauthorized record is the tombstone: it keeps the last
// refresh token (and history keeps the ones before).
type authorizerSecret struct {
	AuthorizerAppID string    `json:"authorizer_appid"`
	RefreshToken    string    `json:"refresh_token"`
	State           string    `json:"state"`
	UpdatedAt       time.Time `json:"updated_at"`
	Source          string    `json:"source"` // authorized, refresh, import, reconcile, unauthorized
	// Why and When describe an unauthorization (the tombstone).
	Why        string `json:"why,omitempty"`
	CreateTime int64  `json:"create_time,omitempty"` // of the push that set the state
}

// secretStore is the secrets bucket with its keyring.
type secretStore struct {
	kv   *bucketKV
	ring *seal.Keyring
}

// secretsBucketConfig is the secrets bucket's config.
func (r *Refresher) secretsBucketConfig() natsconf.BucketConfig {
	return natsconf.BucketConfig{
		Name: contract.SecretsBucket(r.cfg.Bucket), Replicas: r.cfg.Replicas, History: secretsHistory,
		Description: "tokenkeeper sealed secrets: verify tickets, authorization codes, refresh tokens",
	}
}

// errNoSecret is get's answer for a key that holds nothing.
var errNoSecret = errors.New("no secret stored")

// get opens the value under key into v and returns its revision; a key
// that holds nothing (never written, deleted or purged) is errNoSecret
// with revision 0. A value that does not open (wrong key, tampered) is an
// error naming the key, never the value.
func (s *secretStore) get(ctx context.Context, key string, v any) (uint64, error) {
	if s == nil {
		return 0, errNoSecrets
	}
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, errNoSecret
	}
	if err != nil {
		return 0, fmt.Errorf("secrets %s: %w", key, err)
	}
	return e.Revision(), s.open(key, e.Value(), v)
}

// open opens one sealed value read under key.
func (s *secretStore) open(key string, sealed []byte, v any) error {
	plain, err := s.ring.Open(key, sealed)
	if err != nil {
		return fmt.Errorf("secrets %s: %w", key, err)
	}
	if err := json.Unmarshal(plain, v); err != nil {
		return fmt.Errorf("secrets %s: the opened value is not JSON of its kind", key)
	}
	return nil
}

// put seals v under key over revision rev (0: create) and returns the new
// revision. A revision conflict is jetstream's error (match
// jetstream.ErrKeyExists): the caller re-reads and decides again.
func (s *secretStore) put(ctx context.Context, key string, v any, rev uint64) (uint64, error) {
	if s == nil {
		return 0, errNoSecrets
	}
	plain, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	sealed, err := s.ring.Seal(key, plain)
	if err != nil {
		return 0, fmt.Errorf("secrets %s: %w", key, err)
	}
	if rev == 0 {
		return s.kv.Create(ctx, key, sealed)
	}
	return s.kv.Update(ctx, key, sealed, rev)
}

// conflict reports whether err is a revision conflict of put.
func conflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

// each calls fn with every value stored under keys matching filter (one
// ordered consumer; deleted keys skipped), in no particular order.
func (s *secretStore) each(ctx context.Context, filter string, fn func(key string, rev uint64, sealed []byte)) error {
	if s == nil {
		return errNoSecrets
	}
	return eachEntry(ctx, s.kv, filter, 60*time.Second, func(e jetstream.KeyValueEntry) {
		fn(e.Key(), e.Revision(), e.Value())
	})
}

// provisionSecrets provisions the secrets bucket when a component is
// configured.
func (r *Refresher) provisionSecrets(ctx context.Context) error {
	if !r.cfg.hasComponents() {
		return nil
	}
	b, err := newBucketKV(ctx, r.js, r.secretsBucketConfig(), r.log)
	if err != nil {
		return fmt.Errorf("refresher: secrets bucket: %w", err)
	}
	b.onReplaced = func() { r.obs.Alert("", AlertBucketLost) }
	r.secrets = &secretStore{kv: b, ring: r.cfg.keyring}
	return nil
}
