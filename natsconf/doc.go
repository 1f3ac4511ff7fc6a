// Package natsconf connects to NATS and prepares what tokenkeeper needs
// there: connection options (URLs, creds, nkey, user/password, TLS) and
// Connect, the embedded nats-server the refresher may run (StartEmbedded,
// started only on explicit request), the users and permissions of its
// roles, and bucket provisioning (EnsureBucket).
//
// It links nats-server; services do not import it. The wire contract —
// bucket, keys, subjects, records — lives in package contract.
package natsconf
