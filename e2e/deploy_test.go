package e2e_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.yaml.in/yaml/v3"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// composeService is the part of a docker-compose.yml service this test
// reads.
type composeService struct {
	Environment map[string]string `yaml:"environment"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Ports       []string          `yaml:"ports"`
}

// composeFile is the part of docker-compose.yml this test reads.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
}

// readDotEnv reads a docker-compose .env file: KEY=VALUE lines, comments.
func readDotEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vars := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: line %q is not KEY=VALUE", path, line)
		}
		vars[k] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return vars
}

// composeVarRE matches ${NAME}, ${NAME:?message}, ${NAME:-default}.
var composeVarRE = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}`)

// interpolate does what docker compose does with ${NAME} in its file; a
// variable not in vars fails t.
func interpolate(t *testing.T, text string, vars map[string]string) string {
	t.Helper()
	return composeVarRE.ReplaceAllStringFunc(text, func(m string) string {
		name := composeVarRE.FindStringSubmatch(m)[1]
		v, ok := vars[name]
		if !ok {
			t.Fatalf("docker-compose.yml uses ${%s}, which .env does not set", name)
		}
		return v
	})
}

// withUser puts user:password into every URL of a comma-separated list.
func withUser(urls, user, password string) string {
	parts := strings.Split(urls, ",")
	for i, u := range parts {
		parts[i] = strings.Replace(u, "nats://", "nats://"+user+":"+password+"@", 1)
	}
	return strings.Join(parts, ",")
}

// buildCommands builds the packages (relative to the module root) into a
// temporary directory and returns it.
func buildCommands(t *testing.T, pkgs ...string) string {
	t.Helper()
	dir := t.TempDir()
	args := []string{"build", "-o", dir + string(os.PathSeparator)}
	for _, p := range pkgs {
		args = append(args, "../"+p)
	}
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("go build %v: %v\n%s", pkgs, err, out)
	}
	return dir
}

// runCommand runs a binary with extra environment, bounded in time, and
// returns its exit code and combined output.
func runCommand(t *testing.T, env []string, bin string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("%s: %v", bin, err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

// replaceArgs returns args with each occurrence of a key of repl replaced.
func replaceArgs(args []string, repl map[string]string) []string {
	out := slices.Clone(args)
	for i, a := range out {
		if r, ok := repl[a]; ok {
			out[i] = r
		}
	}
	return out
}

// TestDeployConfigs runs what docker-compose.yml starts, from the very
// files it uses, on an in-process cluster: deploy/nats.conf for the three
// NATS nodes, deploy/refresher.yaml for two refresher processes, the
// example service and tokenctl with their compose arguments, the emulator
// with the apps and secrets of docker-compose.yml, and the passwords the
// way compose passes them from .env (with random values in place of the
// placeholders, so nothing can rely on those). It proves the deployment
// is closed: only loopback ports on the host, each container holds only
// its own password, nobody connects anonymously and no route joins
// without the route password, and the service user writes nothing and
// reads neither the lease nor the state — while the refresher user runs
// the refresher, the service user the example service, the operator user
// tokenctl status.
func TestDeployConfigs(t *testing.T) {
	// .env: the placeholders, replaced by random passwords.
	dotEnv := readDotEnv(t, "../.env")
	roles := map[string]string{ // .env variable -> what it is the password of
		"TOKENKEEPER_REFRESHER_PASSWORD": "refresher",
		"TOKENKEEPER_SERVICE_PASSWORD":   "service",
		"TOKENKEEPER_OPERATOR_PASSWORD":  "operator",
		"TOKENKEEPER_ROUTE_PASSWORD":     "route",
	}
	pw := map[string]string{} // role -> random password
	vars := map[string]string{}
	for k, v := range dotEnv {
		role, ok := roles[k]
		if !ok {
			t.Errorf(".env sets %s, which this test does not know", k)
			continue
		}
		if !strings.Contains(v, "placeholder") {
			t.Errorf(".env: %s does not look like a placeholder; real passwords do not belong in the repository", k)
		}
		b := make([]byte, 12)
		_, _ = rand.Read(b)
		pw[role] = role + "-" + hex.EncodeToString(b)
		vars[k] = pw[role]
	}
	if len(pw) != len(roles) {
		t.Fatalf(".env sets %d of the %d passwords", len(pw), len(roles))
	}

	raw, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var compose composeFile
	if err := yaml.Unmarshal([]byte(interpolate(t, string(raw), vars)), &compose); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	svc := func(name string) composeService {
		t.Helper()
		s, ok := compose.Services[name]
		if !ok {
			t.Fatalf("docker-compose.yml has no service %s", name)
		}
		return s
	}

	// The host sees NATS and the leader's HTTP endpoints, on loopback only.
	published := map[string][]string{}
	for name, s := range compose.Services {
		if len(s.Ports) > 0 {
			published[name] = s.Ports
		}
	}
	if want := map[string][]string{"nats-1": {"127.0.0.1:4222:4222"}, "refresher-1": {"127.0.0.1:8080:8080"}}; fmt.Sprint(published) != fmt.Sprint(want) {
		t.Errorf("docker-compose.yml publishes %v, want %v", published, want)
	}
	// Each container holds the passwords of its own user only.
	holds := func(s composeService) []string {
		var got []string
		for role, p := range pw {
			for _, v := range s.Environment {
				if strings.Contains(v, p) {
					got = append(got, role)
					break
				}
			}
		}
		sort.Strings(got)
		return got
	}
	for name, want := range map[string][]string{
		"nats-1": {"operator", "refresher", "route", "service"}, "nats-2": {"operator", "refresher", "route", "service"},
		"nats-3": {"operator", "refresher", "route", "service"}, "wechatsim": nil,
		"refresher-1": {"refresher"}, "refresher-2": {"refresher"}, "example-service": {"service"}, "tokenctl": {"operator"},
	} {
		if got := holds(svc(name)); !slices.Equal(got, want) {
			t.Errorf("docker-compose.yml: %s gets the passwords of %v, want %v", name, got, want)
		}
	}

	// Three nodes from deploy/nats.conf with their compose environment.
	c := testutil.NewClusterFrom(t, 3, func(i int) *server.Options {
		name := fmt.Sprintf("nats-%d", i+1)
		for k, v := range svc(name).Environment {
			t.Setenv(k, v)
		}
		o, err := server.ProcessConfigFile("../deploy/nats.conf")
		if err != nil {
			t.Fatalf("deploy/nats.conf: %v", err)
		}
		if !o.JetStream || o.Cluster.Name != "tokenkeeper" || len(o.Routes) != 3 || o.ServerName != name {
			t.Fatalf("deploy/nats.conf: jetstream %v, cluster %q, %d routes, name %q", o.JetStream, o.Cluster.Name, len(o.Routes), o.ServerName)
		}
		if o.HTTPHost != "127.0.0.1" {
			t.Errorf("deploy/nats.conf: monitoring on %q, want 127.0.0.1 (inside the container)", o.HTTPHost)
		}
		if o.NoAuthUser != "" || len(o.Users) != 3 || len(o.Nkeys) != 0 {
			t.Fatalf("deploy/nats.conf: no_auth_user %q, %d users, %d nkeys; want the three users only", o.NoAuthUser, len(o.Users), len(o.Nkeys))
		}
		for _, u := range o.Users {
			if u.Password != pw[u.Username] {
				t.Errorf("deploy/nats.conf: user %s does not take its password from the environment", u.Username)
			}
			testutil.ComparePermissions(t, "deploy/nats.conf user "+u.Username, u.Permissions,
				natsconf.RolePermissions(natsconf.Role(u.Username), contract.DefaultBucket, u.Username))
		}
		if o.Cluster.Username != "route" || o.Cluster.Password != pw["route"] {
			t.Errorf("deploy/nats.conf: routes authenticate as %q with the route password: %v", o.Cluster.Username, o.Cluster.Password == pw["route"])
		}
		for _, r := range o.Routes {
			if p, _ := r.User.Password(); r.User == nil || r.User.Username() != "route" || p != pw["route"] {
				t.Errorf("deploy/nats.conf: route %s does not carry the route password", r.Host)
			}
		}
		return o
	})

	// Nobody gets in anonymously or with a wrong password; no route joins
	// without the route password.
	for i := range c.N() {
		if nc, err := nats.Connect(c.URL(i)); err == nil {
			nc.Close()
			t.Errorf("node %d: an anonymous connection was accepted", i)
		} else if !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("node %d: anonymous connection: %v, want an authorization error", i, err)
		}
	}
	if nc, err := nats.Connect(c.URL(0), nats.UserInfo("refresher", pw["service"])); err == nil {
		nc.Close()
		t.Error("user refresher was accepted with the service's password")
	}
	routeIntrusion(t, c.Server(0).ClusterAddr().String(), c.Name())

	// The emulator with the compose file's apps and secrets.
	sim, hs := wechatsim.NewServer(wechatsim.Options{})
	t.Cleanup(hs.Close)
	for _, pair := range strings.Split(svc("wechatsim").Environment["WECHATSIM_APPS"], ",") {
		id, secret, _ := strings.Cut(pair, ":")
		sim.AddApp(id, secret)
	}

	// deploy/refresher.yaml with the test's addresses, the refresher's
	// compose environment, two processes.
	const composeURLs, composeSim = "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222", "http://wechatsim:9100"
	text, err := os.ReadFile("../deploy/refresher.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfgText := strings.NewReplacer(composeURLs, c.URLs(), composeSim, hs.URL, "0.0.0.0:8080", "127.0.0.1:0").Replace(string(text))
	path := filepath.Join(t.TempDir(), "refresher.yaml")
	if err := os.WriteFile(path, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	for k, v := range svc("refresher-1").Environment {
		t.Setenv(k, v)
	}
	cfg, err := refresher.LoadConfig(path)
	if err != nil {
		t.Fatalf("deploy/refresher.yaml: %v", err)
	}
	if cfg.Replicas != 3 || len(cfg.Apps) != 2 || cfg.NATS.User != "refresher" {
		t.Fatalf("deploy/refresher.yaml: replicas %d, %d apps, user %q", cfg.Replicas, len(cfg.Apps), cfg.NATS.User)
	}
	procs := []*proc{startProc(t, path, "refresher-1"), startProc(t, path, "refresher-2")}

	// The operator's view (tokenctl's permissions): tokens stored and
	// valid upstream, a leader.
	e := harness.New(t, harness.Options{URL: withUser(c.URLs(), "operator", pw["operator"])})
	for _, a := range cfg.Apps {
		rec, _ := e.WaitRecord(20*time.Second, a.Name, func(contract.Record, uint64) bool { return true })
		if err := sim.Check(rec.AccessToken); err != nil {
			t.Errorf("%s: stored token rejected by the emulator: %v", a.Name, err)
		}
	}
	testutil.WaitFor(t, 10*time.Second, func() bool { return leaseHolder(t, e.JS) != "" }, "no leader")
	opEvents, err := e.NC.SubscribeSync(contract.UpdatedPrefix + ">")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.NC.Flush(); err != nil {
		t.Fatal(err)
	}

	// The service user: reads the token and asks for a refresh.
	sErrs := make(asyncErrors, 64)
	snc, sjs := testutil.Connect(t, c.URLs(), nats.UserInfo("service", pw["service"]),
		nats.CustomInboxPrefix(contract.ServiceInboxPrefix("service")), nats.ErrorHandler(sErrs.handler))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tokens, err := sjs.KeyValue(ctx, contract.DefaultBucket)
	if err != nil {
		t.Fatalf("service: bind %s: %v", contract.DefaultBucket, err)
	}
	entry, err := tokens.Get(ctx, "mp-main")
	if err != nil {
		t.Fatalf("service: read mp-main: %v", err)
	}
	m, err := snc.Request(contract.RefreshSubject("mp-main"), nil, 5*time.Second)
	if err != nil {
		t.Fatalf("service: token.refresh on the compose deployment: %v", err)
	}
	var rep contract.RefreshReply
	if err := json.Unmarshal(m.Data, &rep); err != nil || rep.AccessToken == "" {
		t.Fatalf("service: bad refresh reply %q", m.Data)
	}

	// What the service must not do: write the tokens, read the lease or
	// the state (through KV or by listening to their writes), forge an
	// event, listen on other inboxes.
	denied := func(what string, call func(ctx context.Context) error) {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		if err := call(cctx); err == nil {
			t.Fatalf("service: %s was allowed", what)
		}
		sErrs.expectViolation(t, what)
	}
	denied(`Publish to "$KV.tokens.mp-main"`, func(ctx context.Context) error {
		_, err := tokens.Put(ctx, "mp-main", []byte(`{"app":"mp-main","access_token":"FORGED"}`))
		return err
	})
	denied(`Publish to "$KV.tokens.mp-main"`, func(ctx context.Context) error {
		_, err := tokens.Update(ctx, "mp-main", []byte(`{"app":"mp-main","access_token":"FORGED"}`), entry.Revision())
		return err
	})
	denied(`Publish to "$JS.API.STREAM.DELETE.KV_tokens"`, func(ctx context.Context) error {
		return sjs.DeleteKeyValue(ctx, contract.DefaultBucket)
	})
	for _, b := range []string{contract.LeaseBucket(contract.DefaultBucket), contract.StateBucket(contract.DefaultBucket)} {
		denied(`Publish to "$JS.API.STREAM.INFO.KV_`+b+`"`, func(ctx context.Context) error {
			_, err := sjs.KeyValue(ctx, b)
			return err
		})
		denied(`Publish to "$JS.API.DIRECT.GET.KV_`+b+`.`, func(ctx context.Context) error {
			_, err := snc.RequestWithContext(ctx, "$JS.API.DIRECT.GET.KV_"+b+".$KV."+b+".mp-main", nil)
			return err
		})
		if _, err := snc.SubscribeSync("$KV." + b + ".>"); err != nil {
			t.Fatal(err)
		}
		sErrs.expectViolation(t, `Subscription to "$KV.`+b+`.>"`)
	}
	if err := snc.Publish(contract.UpdatedSubject("mp-main"), []byte(`{"app":"mp-main","forged":true}`)); err != nil {
		t.Fatal(err)
	}
	sErrs.expectViolation(t, `Publish to "token.updated.mp-main"`)
	for {
		ev, err := opEvents.NextMsg(200 * time.Millisecond)
		if err != nil {
			break
		}
		if strings.Contains(string(ev.Data), "forged") {
			t.Fatalf("a forged event from the service was delivered: %s", ev.Data)
		}
	}
	if _, err := snc.SubscribeSync("_INBOX.>"); err != nil {
		t.Fatal(err)
	}
	sErrs.expectViolation(t, `Subscription to "_INBOX.>"`)
	if after, err := tokens.Get(ctx, "mp-main"); err != nil || after.Revision() != rep.Revision {
		t.Errorf("service: after the refused writes mp-main is at %v (%v), want the refresh's revision %d", after, err, rep.Revision)
	}

	// The example service and tokenctl with their compose arguments and
	// environment.
	bin := buildCommands(t, "examples/service", "cmd/tokenctl")
	env := func(name string) []string {
		var kv []string
		for k, v := range svc(name).Environment {
			kv = append(kv, k+"="+strings.ReplaceAll(v, composeURLs, c.URLs()))
		}
		return kv
	}
	ep := svc("example-service").Entrypoint
	args := replaceArgs(ep[1:], map[string]string{composeURLs: c.URLs(), composeSim: hs.URL})
	code, out := runCommand(t, env("example-service"), filepath.Join(bin, "service"), append(args, "--count", "2", "--interval", "50ms")...)
	if code != 0 || strings.Count(out, "business call ok") != 2 || strings.Contains(out, "ermission") {
		t.Errorf("example service as user service: exit %d:\n%s", code, out)
	}
	ep = svc("tokenctl").Entrypoint
	code, out = runCommand(t, env("tokenctl"), filepath.Join(bin, "tokenctl"), append(ep[1:], "status")...)
	if code != 0 || !strings.Contains(out, "leader: refresher-") {
		t.Errorf("tokenctl status as user operator: exit %d:\n%s", code, out)
	}

	// The refreshers met no permission problem.
	for _, p := range procs {
		if out := p.out.String(); strings.Contains(out, "ermission") {
			t.Errorf("refresher %s logged a permissions problem:\n%s", p.id, out)
		}
	}
}

// routeIntrusion connects to a cluster port as a route of cluster, without
// credentials, and expects the server to refuse it.
func routeIntrusion(t *testing.T, addr, cluster string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial cluster port %s: %v", addr, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(conn)
	info, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(info, "INFO ") {
		t.Fatalf("cluster port %s: no INFO (%q, %v)", addr, info, err)
	}
	if _, err := fmt.Fprintf(conn, "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"intruder\",\"cluster\":%q,\"headers\":true}\r\nPING\r\n", cluster); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		line, err := r.ReadString('\n')
		if line != "" {
			got = append(got, strings.TrimSpace(line))
		}
		if strings.Contains(line, "Authorization Violation") {
			return
		}
		if err != nil || strings.HasPrefix(line, "PONG") {
			t.Fatalf("a route without the route password was not refused: %q (%v)", got, err)
		}
	}
}
