// Package node holds the Node.js example of docs/protocol.md ("Using
// tokenkeeper from another language"): token.mjs reads an app's token from
// the KV bucket and requests a refresh with the stock NATS clients
// (@nats-io/transport-node, @nats-io/kv), with no tokenkeeper code.
//
// node_test.go runs it against a real refresher, the WeChat emulator and
// an embedded NATS server, connected as a user that holds only the
// permissions docs/protocol.md lists for a reading service. It needs
// node (18 or newer) and npm on PATH, and runs "npm ci" (registry access)
// when node_modules is missing or older than package-lock.json.
package node
