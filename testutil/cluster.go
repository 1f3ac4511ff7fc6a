package testutil

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ClusterReadyTimeout bounds how long NewCluster, WaitReady and RestartNode
// wait for the JetStream cluster to settle.
const ClusterReadyTimeout = 30 * time.Second

// clusterSeq makes cluster names unique within the test binary.
var clusterSeq atomic.Int64

// Cluster is an in-process JetStream cluster of n nats-servers on
// 127.0.0.1. Each node has fixed client and cluster ports (free when the
// cluster was made), a unique server name and its own store directory, so
// a node can be stopped and restarted in place.
type Cluster struct {
	t       testing.TB
	name    string
	mu      sync.Mutex
	opts    []*server.Options // template per node; cloned for every start
	servers []*server.Server
}

// NewCluster starts an n-node JetStream cluster and waits until it is
// ready (see WaitReady). It is shut down in t.Cleanup.
func NewCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	return NewClusterFrom(t, n, nil)
}

// NewClusterFrom is NewCluster with each node's options starting from
// base(i) (for instance a config file loaded with server.ProcessConfigFile)
// instead of zero. The cluster still sets what makes it run in-process:
// host, ports, routes, cluster name, store directory, no signals, no log;
// a server name and the routes' credentials (cluster authorization) from
// base are kept.
func NewClusterFrom(t testing.TB, n int, base func(i int) *server.Options) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("testutil: NewCluster: n = %d, want >= 1", n)
	}
	ports := freePorts(t, 2*n)
	name := fmt.Sprintf("tk-%d", clusterSeq.Add(1))
	routes := make([]string, n)
	for i := range n {
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", ports[n+i])
	}
	c := &Cluster{t: t, name: name, opts: make([]*server.Options, n), servers: make([]*server.Server, n)}
	for i := range n {
		o := &server.Options{}
		if base != nil {
			o = base(i)
		}
		if o.ServerName == "" {
			o.ServerName = fmt.Sprintf("%s-n%d", name, i)
		}
		o.Host, o.Port = "127.0.0.1", ports[i]
		o.HTTPHost, o.HTTPPort = "", 0
		o.JetStream, o.StoreDir = true, t.TempDir()
		o.NoSigs, o.NoLog = true, true
		o.Cluster.Name, o.Cluster.Host, o.Cluster.Port = name, "127.0.0.1", ports[n+i]
		o.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		if o.Cluster.Username != "" {
			// The base config's routes authenticate: so do these.
			for _, r := range o.Routes {
				r.User = url.UserPassword(o.Cluster.Username, o.Cluster.Password)
			}
		}
		c.opts[i] = o
	}
	t.Cleanup(c.Shutdown)
	// Start every node before waiting for any: routes connect in any order.
	for i := range n {
		s, err := server.NewServer(c.opts[i].Clone())
		if err != nil {
			t.Fatalf("testutil: new cluster node %d: %v", i, err)
		}
		go s.Start()
		c.servers[i] = s
	}
	for i, s := range c.servers {
		if !s.ReadyForConnections(StartTimeout) {
			t.Fatalf("testutil: cluster node %d not ready for connections after %s", i, StartTimeout)
		}
	}
	c.WaitReady(t)
	return c
}

// freePorts returns n distinct TCP ports that were free on 127.0.0.1 a
// moment ago (all listened on at once, then closed).
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	ls := make([]net.Listener, n)
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("testutil: find a free port: %v", err)
		}
		ls[i] = l
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// N is the number of nodes.
func (c *Cluster) N() int { return len(c.opts) }

// Name is the cluster name.
func (c *Cluster) Name() string { return c.name }

// URLs returns the client URLs of all nodes, comma-separated, for
// nats.Connect (running or not: clients reconnect to whichever is up).
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.opts))
	for i := range c.opts {
		urls[i] = c.URL(i)
	}
	return strings.Join(urls, ",")
}

// URL returns the client URL of node i.
func (c *Cluster) URL(i int) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", c.opts[i].Port)
}

// Server returns node i's current server (a new one after RestartNode).
func (c *Cluster) Server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.servers[i]
}

// running returns the indexes and servers of the nodes that run.
func (c *Cluster) running() map[int]*server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[int]*server.Server, len(c.servers))
	for i, s := range c.servers {
		if s != nil && s.Running() {
			m[i] = s
		}
	}
	return m
}

// Leader returns the index of the node that is the JetStream meta leader,
// or -1 if none is.
func (c *Cluster) Leader() int {
	for i, s := range c.running() {
		if s.JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// StreamLeader returns the index of the node that leads stream in account
// ("$G" without accounts; a KV bucket's stream is "KV_<bucket>"), or -1.
func (c *Cluster) StreamLeader(account, stream string) int {
	for i, s := range c.running() {
		if s.JetStreamIsStreamLeader(account, stream) {
			return i
		}
	}
	return -1
}

// StopNode shuts node i down and waits until it has stopped. Its store
// stays for RestartNode.
func (c *Cluster) StopNode(i int) {
	s := c.Server(i)
	if s == nil {
		return
	}
	s.Shutdown()
	s.WaitForShutdown()
}

// RestartNode stops node i if it runs, starts it again with the same
// options (same name, ports and store) and waits until the cluster is
// ready again with that node current.
func (c *Cluster) RestartNode(i int) {
	c.t.Helper()
	c.StopNode(i)
	s, err := server.NewServer(c.opts[i].Clone())
	if err != nil {
		c.t.Fatalf("testutil: restart cluster node %d: %v", i, err)
	}
	go s.Start()
	c.mu.Lock()
	c.servers[i] = s
	c.mu.Unlock()
	if !s.ReadyForConnections(StartTimeout) {
		c.t.Fatalf("testutil: restarted cluster node %d not ready for connections after %s", i, StartTimeout)
	}
	c.WaitReady(c.t)
}

// WaitReady waits until the running nodes form a ready JetStream cluster:
// exactly one of them is meta leader, the leader sees every running node as
// an online peer, and every running node is current with the meta group.
// It fails t after ClusterReadyTimeout.
func (c *Cluster) WaitReady(t testing.TB) {
	t.Helper()
	var state string
	ok := Eventually(ClusterReadyTimeout, func() bool {
		run := c.running()
		leaders, current := 0, 0
		var peers int
		for _, s := range run {
			if s.JetStreamIsLeader() {
				leaders++
				peers = len(s.JetStreamClusterPeers())
			}
			if s.JetStreamIsCurrent() {
				current++
			}
		}
		state = fmt.Sprintf("%d running, %d leaders, leader sees %d peers, %d current", len(run), leaders, peers, current)
		return len(run) > 0 && leaders == 1 && peers == len(run) && current == len(run)
	})
	if !ok {
		t.Fatalf("testutil: cluster %s not ready after %s: %s", c.name, ClusterReadyTimeout, state)
	}
}

// Shutdown stops every node (in parallel) and waits until they have
// stopped. It is safe to call more than once.
func (c *Cluster) Shutdown() {
	c.mu.Lock()
	servers := append([]*server.Server(nil), c.servers...)
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range servers {
		if s == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Shutdown()
			s.WaitForShutdown()
		}()
	}
	wg.Wait()
}
