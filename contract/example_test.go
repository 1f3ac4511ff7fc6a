package contract_test

import (
	"encoding/json"
	"fmt"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// A client that reads the tokens bucket with a stock NATS client decodes
// the value under the app's key, validates it and logs only its
// fingerprint; when upstream rejects the token it asks token.refresh.<app>
// for a new one, naming the rejected revision.
func Example() {
	// The value under key "mp-main", read at revision 7.
	value := []byte(`{"app":"mp-main","access_token":"TOKEN","expires_at":"2030-01-02T05:04:05Z",` +
		`"fetched_at":"2030-01-02T03:04:05Z","source":"scheduled"}`)
	const key, revision = "mp-main", 7

	var rec contract.Record
	if err := json.Unmarshal(value, &rec); err != nil {
		panic(err)
	}
	if err := rec.Validate(key, contract.MaxTokenLifetime+contract.LifetimeSlack); err != nil {
		panic(err) // treat as missing: never serve it
	}
	fmt.Println("bucket:", contract.DefaultBucket, "key:", key, "token:", contract.Fingerprint(rec.AccessToken))
	fmt.Println("events on:", contract.UpdatedSubject(key))

	// A business API answered errcode 40001: the token was rejected.
	if contract.RejectedTokenCode(40001) {
		stale := uint64(revision)
		body, _ := json.Marshal(contract.RefreshRequest{StaleRevision: &stale})
		fmt.Printf("request %s %s\n", contract.RefreshSubject(key), body)
	}

	// v2 keys: the first segment is always the configured app.
	app, rest, _ := contract.ParseKey("mp-main." + contract.TicketJSAPI)
	fmt.Println("app:", app, "ticket:", rest, "sign on:", contract.SignSubject(app))
	// Output:
	// bucket: tokens key: mp-main token: f98103e9
	// events on: token.updated.mp-main
	// request token.refresh.mp-main {"stale_revision":7}
	// app: mp-main ticket: jsapi sign on: token.sign.mp-main
}
