// Package natsconf connects to NATS and prepares what tokenkeeper needs
// there: connection options (URLs, creds, nkey, user/password, TLS) and
// Connect, the embedded nats-server the refresher may run (StartEmbedded,
// started only on explicit request), the users and permissions of its
// roles, and bucket provisioning (EnsureBucket). For follower
// environments (staging, a second region) the embedded server takes a
// JetStream domain and leafnode settings, role leaf (LeafPermissions) is
// what a follower server connects to production as, and EnsureMirror
// makes a follower's bucket a read-only mirror of production's.
//
// Options is the nats: section of the refresher's YAML and tokenctl's
// flags. Options.Validate reports every problem at once, each naming its
// key; it is ValidateKeys (the values and how they combine, with no I/O)
// plus ValidateFiles (the creds, nkey, TLS and password files and
// variables the keys name). Connect needs a URL; it validates first, then
// dials, and keeps trying while no server can be reached, until its ctx
// ends. Only ConnectEmbedded (the refresher's choice when its nats.url is
// empty) and StartEmbedded start a server. EnsureBucket is idempotent:
// every replica calls it at startup.
//
// It links nats-server; services do not import it. The wire contract —
// bucket, keys, subjects, records — lives in package contract.
package natsconf
