package natsconf_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/tokenkeeper/tokenkeeper/natsconf"
)

// Start the embedded server (only the refresher and tests do), connect to
// it as any client would, and provision the token bucket.
func Example() {
	dir, err := os.MkdirTemp("", "natsconf-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Port 0: any free port. A loopback listener may go without users.
	srv, err := natsconf.StartEmbedded(natsconf.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: dir})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()

	conn, err := natsconf.Connect(ctx, natsconf.Options{URL: srv.ClientURL(), Name: "example"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()

	// Idempotent: every replica calls it at startup.
	kv, err := natsconf.EnsureBucket(ctx, conn.JS, natsconf.BucketConfig{Name: "tokens", History: 5})
	if err != nil {
		fmt.Println(err)
		return
	}
	st, err := kv.Status(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(st.Bucket(), st.History())
	// Output:
	// tokens 5
}

// Options are checked before any connection: every problem at once, each
// naming its YAML key. ValidateKeys reads no file and no environment
// variable; Validate (and Connect) also check what the keys name.
func ExampleOptions_ValidateKeys() {
	o := natsconf.Options{URL: "nats://a:4222,http://b:4222", User: "svc", Token: "t0ken"}
	for _, err := range natsconf.Problems(o.ValidateKeys()) {
		fmt.Println(err)
	}
	// Output:
	// nats.url: entry 2: scheme "http" is not supported (nats, tls, ws, wss)
	// nats.token: cannot be combined with nats.user; choose one way to authenticate
	// nats.password: required with nats.user (or set nats.password_env)
}
