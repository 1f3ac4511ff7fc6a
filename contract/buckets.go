package contract

import "time"

// KVStream is the JetStream stream behind KV bucket: KV_<bucket>.
func KVStream(bucket string) string { return "KV_" + bucket }

// LeaseBucket names the lease bucket of a token bucket: <bucket>_lease.
func LeaseBucket(bucket string) string { return bucket + "_lease" }

// LeaseKey is the one key of the lease bucket.
const LeaseKey = "leader"

// LeaseRecord is the value of LeaseKey in the lease bucket: which replica
// leads, since when, and when it last renewed.
type LeaseRecord struct {
	ID         string    `json:"id"`
	AcquiredAt time.Time `json:"acquired_at"`
	RenewedAt  time.Time `json:"renewed_at"`
}

// StateBucket names the bucket that keeps each app's operational state
// (upstream calls today, last error) so that it survives restarts and
// failover — the daily quota is counted across replicas: <bucket>_state.
func StateBucket(bucket string) string { return bucket + "_state" }

// AppState is the value of key <app> in the state bucket. It never holds
// a token or a secret.
type AppState struct {
	App string `json:"app"`
	// Day is WeChat's day (China Standard Time) of the counters, yyyymmdd.
	Day int `json:"day"`
	// Calls counts upstream token calls on Day (the daily quota).
	Calls int `json:"calls"`
	// Forced counts stable_token force_refresh calls on Day.
	Forced      int       `json:"forced,omitempty"`
	Quota       int       `json:"quota"`
	Failures    int       `json:"failures,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrcode int       `json:"last_errcode,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	Replica     string    `json:"replica"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// SecretsBucket names the bucket of sealed refresh tokens, verify tickets
// and pending authorization codes (v2): <bucket>_secrets. Service users
// never read it.
func SecretsBucket(bucket string) string { return bucket + "_secrets" }

// AuditStream is the stream every upstream call is appended to (v2), on
// AuditSubject(key).
const AuditStream = "tokenkeeper_audit"

// AuditPrefix prefixes the audit subject: token.audit.<key> (v2).
const AuditPrefix = "token.audit."

// AuditSubject is the subject of the audit entries of key (v2).
func AuditSubject(key string) string { return AuditPrefix + key }
