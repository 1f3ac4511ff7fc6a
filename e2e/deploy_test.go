package e2e_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"

	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// composeFile is the part of docker-compose.yml this test reads.
type composeFile struct {
	Services map[string]struct {
		Environment map[string]string `yaml:"environment"`
		Entrypoint  []string          `yaml:"entrypoint"`
	} `yaml:"services"`
}

// TestDeployConfigs runs what docker-compose.yml starts, from the very
// files it mounts, on an in-process cluster: deploy/nats.conf for the
// three NATS nodes, deploy/refresher.yaml for two refresher processes,
// and the emulator with the apps and secrets of docker-compose.yml.
func TestDeployConfigs(t *testing.T) {
	raw, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var compose composeFile
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for _, name := range []string{"nats-1", "nats-2", "nats-3", "wechatsim", "refresher-1", "refresher-2", "example-service"} {
		if _, ok := compose.Services[name]; !ok {
			t.Errorf("docker-compose.yml has no service %s", name)
		}
	}

	// Three nodes from deploy/nats.conf.
	c := testutil.NewClusterFrom(t, 3, func(i int) *server.Options {
		t.Setenv("SERVER_NAME", fmt.Sprintf("nats-%d", i+1))
		o, err := server.ProcessConfigFile("../deploy/nats.conf")
		if err != nil {
			t.Fatalf("deploy/nats.conf: %v", err)
		}
		if !o.JetStream || o.Cluster.Name != "tokenkeeper" || len(o.Routes) != 3 || o.ServerName != fmt.Sprintf("nats-%d", i+1) {
			t.Fatalf("deploy/nats.conf: jetstream %v, cluster %q, %d routes, name %q", o.JetStream, o.Cluster.Name, len(o.Routes), o.ServerName)
		}
		return o
	})

	// The emulator with the compose file's apps and secrets.
	sim, hs := wechatsim.NewServer(wechatsim.Options{})
	t.Cleanup(hs.Close)
	for _, pair := range strings.Split(compose.Services["wechatsim"].Environment["WECHATSIM_APPS"], ",") {
		id, secret, _ := strings.Cut(pair, ":")
		sim.AddApp(id, secret)
	}

	// deploy/refresher.yaml with the test's addresses.
	text, err := os.ReadFile("../deploy/refresher.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfgText := strings.NewReplacer(
		"nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222", c.URLs(),
		"http://wechatsim:9100", hs.URL,
		"0.0.0.0:8080", "127.0.0.1:0",
	).Replace(string(text))
	path := filepath.Join(t.TempDir(), "refresher.yaml")
	if err := os.WriteFile(path, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	env := compose.Services["refresher-1"].Environment
	for k, v := range env {
		if strings.HasSuffix(k, "_SECRET") {
			t.Setenv(k, v)
		}
	}
	cfg, err := refresher.LoadConfig(path)
	if err != nil {
		t.Fatalf("deploy/refresher.yaml: %v", err)
	}
	if cfg.Replicas != 3 || len(cfg.Apps) != 2 {
		t.Fatalf("deploy/refresher.yaml: replicas %d, %d apps", cfg.Replicas, len(cfg.Apps))
	}

	startProc(t, path, "refresher-1")
	startProc(t, path, "refresher-2")
	e := harness.New(t, harness.Options{URL: c.URLs()})
	for _, a := range cfg.Apps {
		rec, _ := e.WaitRecord(20*time.Second, a.Name, func(natsconf.Record, uint64) bool { return true })
		if err := sim.Check(rec.AccessToken); err != nil {
			t.Errorf("%s: stored token rejected by the emulator: %v", a.Name, err)
		}
	}
	m, err := e.NC.Request(natsconf.RefreshSubject("mp-main"), nil, 5*time.Second)
	if err != nil {
		t.Fatalf("token.refresh on the compose deployment: %v", err)
	}
	var rep natsconf.RefreshReply
	if err := json.Unmarshal(m.Data, &rep); err != nil || rep.AccessToken == "" {
		t.Fatalf("bad reply %q", m.Data)
	}
	if leaseHolder(t, e.JS) == "" {
		t.Fatal("no leader")
	}
}
