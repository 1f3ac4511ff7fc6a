// Package contract is the tokenkeeper wire contract of docs/protocol.md
// in Go: the names of the buckets, keys and subjects, the JSON records,
// events, requests, replies and error codes that travel over NATS, the
// lease and state records of the refresher's own buckets, the upstream
// errcodes that mean "this token was rejected", and the one fingerprint
// under which a token may appear in logs.
//
// It imports only the standard library, so that every side of the
// contract — the refresher, the subscriber that services import, tokenctl,
// tests and tools — shares these names without linking NATS, a server,
// metrics or configuration code. A service in another language reads
// docs/protocol.md; this package says the same thing in Go.
//
// The contract changes only by adding: names, fields and codes are added,
// never renamed or removed.
package contract
