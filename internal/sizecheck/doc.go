// Package sizecheck measures what following a token costs a service's
// binary: two minimal programs that do the same thing — connect to NATS,
// wait for the token of one app, print its fingerprint — one with
// subscriber (./subscriber), one with plain nats.go and jetstream
// (./plain). TestBinarySize builds both, stripped and not, and fails if
// the subscriber's is more than MaxRatio times the plain one's; the
// numbers are in docs/benchmarks.md, "Binary size of a service":
//
//	go test ./internal/sizecheck -run BinarySize -v
package sizecheck

// MaxRatio is the largest size of the subscriber program allowed, as a
// multiple of the plain nats.go program's.
const MaxRatio = 1.05
