package testutil

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Consumers returns the consumers of stream whose filter is filter (every
// consumer when filter is ""), each with the name of the server that leads
// it ("" on a single server).
func Consumers(t testing.TB, js jetstream.JetStream, stream, filter string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	l := st.ListConsumers(ctx)
	for ci := range l.Info() {
		if filter != "" && ci.Config.FilterSubject != filter {
			continue
		}
		out[ci.Name] = ""
		if ci.Cluster != nil {
			out[ci.Name] = ci.Cluster.Leader
		}
	}
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// NewConsumerNode waits for a consumer of stream (with filter, as
// Consumers) that is not in before to have a leader, and returns the
// index of that node in c.
func NewConsumerNode(t testing.TB, c *Cluster, js jetstream.JetStream, stream, filter string, before map[string]string) int {
	t.Helper()
	var leader string
	WaitFor(t, 10*time.Second, func() bool {
		for name, l := range Consumers(t, js, stream, filter) {
			if _, old := before[name]; !old && l != "" {
				leader = l
				return true
			}
		}
		return false
	}, "no new consumer with a leader on %s", stream)
	for i := range c.N() {
		if c.Server(i).Name() == leader {
			return i
		}
	}
	t.Fatalf("consumer leader %q is no node of the cluster", leader)
	return -1
}
