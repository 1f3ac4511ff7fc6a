// Package follow keeps a process current with keys of a JetStream KV
// bucket. It is the one follow loop of tokenkeeper: the subscriber's
// Source, the refresher (its view of the tokens bucket and of the lease
// key) and tokenctl watch all use it.
//
// A KV watcher rides on an ordered consumer that nats.go recreates only
// after missed heartbeats: after a server restart, or when the cluster
// node holding the consumer goes away, a watcher can be silent for ~20 s
// with no error (nats.go#1094, #1729, nats-server#5679). A Follower
// therefore
//
//   - builds every watch with a timeout (Config.Timeout): a creation that
//     hangs is abandoned and retried; it never hangs the loop, the poll or
//     Stop;
//   - resumes every new watch after the last revision its watches
//     delivered (ResumeFromRevision(last+1)): nothing is skipped, and
//     nothing is handed over twice;
//   - rebuilds the watch at once when the connection reconnects (it
//     listens with nc.StatusChanged and adds no handler to the
//     connection), when the poll found a revision the watch missed, and
//     when the bucket was replaced; with backoff when the watch ends or
//     cannot be built;
//   - polls as a safety net, if Config.PollInterval is set: every interval
//     (and at once after a reconnect or a failed build) it reads each
//     followed key directly, hands over a revision newer than the last one
//     handed over, and has the watch rebuilt; following all keys, it
//     compares the stream's last sequence with the watch's instead;
//   - hands over deletes and purges (KeyValueDelete, KeyValuePurge) as
//     entries, and reports a bucket created anew, whose revisions start
//     over, with a Reset event;
//   - stops promptly: Stop cancels the requests in flight instead of
//     waiting for a server that may be gone.
//
// It follows one key, several keys over one consumer (WatchFiltered), or
// every key of the bucket (Config.Keys empty).
//
// Events arrive on one channel (Events), from one Follower in order: the
// entries of a key in revision order, each revision at most once, whether
// the watch or the poll found it. The Follower waits for its reader: a
// reader that stops reading holds it up (nothing is dropped) until Stop.
//
// The staleness this buys is measured in this package's tests
// (TestStalenessAfterServerRestart, TestStalenessAfterConsumerNodeLoss):
// an update written after the fault reaches the follower within the poll
// interval plus about a second, instead of ~20 s.
package follow
