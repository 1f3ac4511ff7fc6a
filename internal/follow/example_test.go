package follow_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/internal/follow"
)

// Follow two keys of a bucket over one consumer, with a poll every 5s as
// the safety net under the watch. An embedded nats-server stands in for
// the cluster.
func Example() {
	dir, err := os.MkdirTemp("", "follow-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true})
	if err != nil {
		panic(err)
	}
	go srv.Start()
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	if !srv.ReadyForConnections(10 * time.Second) {
		panic("nats-server not ready")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "tokens"})
	if err != nil {
		panic(err)
	}
	_, _ = kv.PutString(ctx, "mp-main", "token-1")

	f, err := follow.Start(nc, follow.Config{
		Open: func(ctx context.Context) (jetstream.KeyValue, error) { return js.KeyValue(ctx, "tokens") },
		Keys: []string{"mp-main", "mp-other"},
		// The safety net: a stalled watch lags by at most this much.
		PollInterval: 5 * time.Second,
	})
	if err != nil {
		panic(err)
	}
	defer f.Stop()

	wrote := false
	for ev := range f.Events() {
		switch ev.Kind {
		case follow.Entry:
			e := ev.Entry
			fmt.Printf("%s %s revision %d %q\n", e.Key(), e.Operation(), e.Revision(), e.Value())
			if e.Operation() == jetstream.KeyValueDelete {
				return
			}
		case follow.Current:
			// Everything stored has arrived: now some updates.
			if !wrote {
				wrote = true
				_, _ = kv.PutString(ctx, "mp-other", "token-2")
				_, _ = kv.PutString(ctx, "unfollowed", "x")
				_ = kv.Delete(ctx, "mp-main")
			}
		case follow.Reset:
			fmt.Println("the bucket was created anew")
		case follow.Problem:
			// The Follower is already rebuilding its watch: for logs.
		}
	}
	// Output:
	// mp-main KeyValuePutOp revision 1 "token-1"
	// mp-other KeyValuePutOp revision 2 "token-2"
	// mp-main KeyValueDeleteOp revision 4 ""
}
