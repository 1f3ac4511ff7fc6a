// Command plain is the reference of package sizecheck: what the minimal
// subscriber program does, with nats.go's jetstream KV watcher and the
// standard library only — it watches the app's key in bucket "tokens",
// decodes the first record and prints the token's fingerprint.
//
//	NATS_URL=nats://127.0.0.1:4222 plain mp-main
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: plain APP (NATS URL in $NATS_URL)")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(app string) error {
	nc, err := nats.Connect(os.Getenv("NATS_URL"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, "tokens")
	if err != nil {
		return err
	}
	w, err := kv.Watch(ctx, app)
	if err != nil {
		return err
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e := <-w.Updates():
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var rec struct {
				App         string    `json:"app"`
				AccessToken string    `json:"access_token"`
				ExpiresAt   time.Time `json:"expires_at"`
			}
			if err := json.Unmarshal(e.Value(), &rec); err != nil {
				return err
			}
			s := sha256.Sum256([]byte(rec.AccessToken))
			fmt.Println(rec.App, e.Revision(), hex.EncodeToString(s[:4]))
			return nil
		}
	}
}
