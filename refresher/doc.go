// Package refresher keeps each configured app's access token fresh in a
// JetStream KV bucket: it fetches from the upstream (WeChat) before expiry,
// writes revision-checked records, publishes token.updated.<app> events,
// serves passive refresh requests on token.refresh.<app>, and elects one
// fetching leader among its replicas through a lease in KV.
//
// The wire contract is in docs/protocol.md; the guarantees and their
// limits in docs/guarantees.md.
package refresher
