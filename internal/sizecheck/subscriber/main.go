// Command subscriber is the minimal service of package sizecheck: it
// follows one app's token with subscriber.NewSource and prints the
// token's fingerprint.
//
//	NATS_URL=nats://127.0.0.1:4222 subscriber mp-main
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: subscriber APP (NATS URL in $NATS_URL)")
		os.Exit(2)
	}
	nc, err := nats.Connect(os.Getenv("NATS_URL"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, err := subscriber.NewSource(ctx, nc, os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer src.Close()
	tok, err := src.Token()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(tok.App, tok.Revision, contract.Fingerprint(tok.AccessToken))
}
