// Package refresher keeps each configured app's access token fresh in a
// JetStream KV bucket: it fetches from the upstream (WeChat) before expiry,
// writes revision-checked records, publishes token.updated.<app> events,
// serves passive refresh requests on token.refresh.<app>, and elects one
// fetching leader among its replicas through a lease in KV.
//
// A program loads a Config (LoadConfig reads the YAML file and the
// secrets it names; a Config built in code carries its secrets with
// AppConfig.WithSecret or reads them with Config.ResolveSecrets),
// connects to NATS (package natsconf), and runs a Refresher:
//
//	cfg, err := refresher.LoadConfig("tokenkeeper.yaml")
//	conn, err := natsconf.Connect(ctx, cfg.NATS) // ConnectEmbedded if cfg.NATS.URL is empty
//	r, err := refresher.New(cfg, conn.NC, refresher.WithLogger(log))
//	err = r.Run(ctx) // until ctx ends
//
// New does no I/O; Run provisions the buckets, loads the stored records
// (a restart reuses valid tokens instead of fetching them again) and
// returns after ctx ends, once the refreshes in flight have stored what
// they fetched and the lease is released. Reload applies a changed config
// (cmd/refresher calls it on SIGHUP); Statuses, NewMetrics and
// NewHTTPHandler expose what the refresher does.
//
// Every replica follows the bucket; only the leader calls the upstream,
// and only inside its lease's trust window. A token's refresh moment is a
// pure function of the record (Policy.RefreshAt), so replicas and
// restarts agree on it. A failed refresh keeps the stored token and the
// next attempt waits a jittered, doubling pause (Policy.RetryMin,
// Policy.PermanentRetryMin); errcodes an operator must act on are logged
// as ALERT lines.
//
// The wire contract is in docs/protocol.md and package contract; the
// guarantees and their limits in docs/guarantees.md.
package refresher
