// Package deploy_test checks the monitoring files of deploy/: the
// Prometheus alerting rules (prometheus/alerts.yml) and the Grafana
// dashboard (grafana/tokenkeeper.json) name only metrics and labels that a
// running refresher exports, and are well formed.
package deploy_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/harness"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

const (
	rulesFile     = "prometheus/alerts.yml"
	rulesTestFile = "prometheus/alerts_test.yml"
	dashboardFile = "grafana/tokenkeeper.json"
)

// targetLabels are the labels Prometheus adds to every scraped series.
var targetLabels = []string{"job", "instance"}

// ruleFile is a Prometheus rule file, strictly decoded: an unknown key
// (a typo such as "annotation:") fails the decode.
type ruleFile struct {
	Groups []struct {
		Name     string `yaml:"name"`
		Interval string `yaml:"interval"`
		Rules    []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// query is one PromQL expression of a file and where it is.
type query struct {
	where string
	expr  string
}

// loadRules reads and checks the structure of the rule file and returns
// its expressions.
func loadRules(t *testing.T) []query {
	t.Helper()
	f, err := os.Open(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	var rf ruleFile
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	if len(rf.Groups) == 0 {
		t.Fatalf("%s: no groups", rulesFile)
	}
	var qs []query
	groups, alerts := map[string]bool{}, map[string]bool{}
	durRE := regexp.MustCompile(`^([0-9]+(ms|s|m|h|d|w|y))+$`)
	for _, g := range rf.Groups {
		if g.Name == "" || groups[g.Name] {
			t.Errorf("%s: group name %q empty or repeated", rulesFile, g.Name)
		}
		groups[g.Name] = true
		if len(g.Rules) == 0 {
			t.Errorf("%s: group %s has no rules", rulesFile, g.Name)
		}
		for i, r := range g.Rules {
			where := rulesFile + ": " + g.Name + "[" + r.Alert + "]"
			switch {
			case r.Record != "":
				t.Errorf("%s: rule %d is a recording rule; this file holds alerts only", where, i)
			case r.Alert == "" || !regexp.MustCompile(`^Tokenkeeper[A-Za-z0-9]+$`).MatchString(r.Alert):
				t.Errorf("%s: rule %d: alert %q is not a Tokenkeeper… name", where, i, r.Alert)
			case alerts[r.Alert]:
				t.Errorf("%s: alert %s repeated", where, r.Alert)
			}
			alerts[r.Alert] = true
			if strings.TrimSpace(r.Expr) == "" {
				t.Errorf("%s: no expr", where)
			}
			if r.For != "" && !durRE.MatchString(r.For) {
				t.Errorf("%s: for %q is not a Prometheus duration", where, r.For)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: labels.severity %q, want critical or warning", where, s)
			}
			for _, a := range []string{"summary", "description"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: no annotations.%s", where, a)
				}
			}
			qs = append(qs, query{where, r.Expr})
		}
	}
	return qs
}

// dashboard is the part of a Grafana dashboard this test reads.
type dashboard struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos *struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // of a collapsed row
}

var labelValuesRE = regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$`)

// loadDashboard reads and checks the dashboard and returns its
// expressions. A template query label_values(metric, label) is returned
// as the selector metric{label=""}.
func loadDashboard(t *testing.T) []query {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.Title == "" || d.UID == "" || d.SchemaVersion == 0 {
		t.Errorf("%s: title %q, uid %q, schemaVersion %d: all needed", dashboardFile, d.Title, d.UID, d.SchemaVersion)
	}
	var qs []query
	ids := map[int]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			where := dashboardFile + ": panel " + p.Title
			if p.ID == 0 || ids[p.ID] {
				t.Errorf("%s: id %d missing or repeated", where, p.ID)
			}
			ids[p.ID] = true
			if p.GridPos == nil || p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("%s: bad gridPos %+v", where, p.GridPos)
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Title == "" || p.Datasource == nil || p.Datasource.UID != "${datasource}" {
				t.Errorf("%s: needs a title and the datasource ${datasource}", where)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no targets", where)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" || tg.RefID == "" || refs[tg.RefID] {
					t.Errorf("%s: a target without expr or with an empty or repeated refId", where)
				}
				refs[tg.RefID] = true
				qs = append(qs, query{where, tg.Expr})
			}
		}
	}
	walk(d.Panels)
	hasDS := false
	for _, v := range d.Templating.List {
		switch v.Type {
		case "datasource":
			hasDS = hasDS || v.Name == "datasource"
		case "query":
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil {
				_ = json.Unmarshal(v.Query, &q.Query) // older dashboards: a plain string
			}
			m := labelValuesRE.FindStringSubmatch(q.Query)
			if m == nil {
				t.Errorf("%s: variable %s: query %q is not label_values(metric, label)", dashboardFile, v.Name, q.Query)
				continue
			}
			qs = append(qs, query{dashboardFile + ": variable " + v.Name, m[1] + `{` + m[2] + `=""}`})
		}
	}
	if !hasDS {
		t.Errorf("%s: no datasource variable named datasource", dashboardFile)
	}
	return qs
}

// TestRulesAndDashboardStructure checks both files without a refresher,
// and runs promtool on the rules when it is installed.
func TestRulesAndDashboardStructure(t *testing.T) {
	for _, q := range append(loadRules(t), loadDashboard(t)...) {
		r, err := parsePromQL(q.expr)
		if err != nil {
			t.Errorf("%s: %v", q.where, err)
		} else if len(r.Metrics) == 0 {
			t.Errorf("%s: %q names no metric", q.where, q.expr)
		}
	}
	t.Run("promtool", func(t *testing.T) {
		pt, err := exec.LookPath("promtool")
		if err != nil {
			if os.Getenv("CI") != "" {
				t.Fatal("promtool not installed in CI (.ci/run installs the Debian package prometheus)")
			}
			t.Skip("promtool not installed (Debian: apt-get install prometheus); its checks are skipped")
		}
		for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
			cmd := exec.Command(pt, args...)
			cmd.Dir = "prometheus"
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
	})
}

// exposition maps each sample name of a /metrics text exposition to the
// label names of its samples.
func exposition(text string) map[string]map[string]bool {
	labelRE := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"`)
	out := map[string]map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		end := strings.IndexAny(line, "{ ")
		if end < 0 {
			continue
		}
		name := line[:end]
		if out[name] == nil {
			out[name] = map[string]bool{}
		}
		if line[end] == '{' {
			close := strings.LastIndexByte(line, '}')
			for _, m := range labelRE.FindAllStringSubmatch(line[end+1:close], -1) {
				out[name][m[1]] = true
			}
		}
	}
	return out
}

// scrape returns the text of /metrics as the refresher daemon serves it.
func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

// TestRulesAndDashboardMetricsExported runs a refresher against an
// embedded NATS server and the WeChat emulator, drives it through the
// events that create every series (a refresh, a passive request, a
// revision conflict, a 40164), and checks that every metric the alert
// rules and the dashboard name is on its /metrics, with every label
// their selectors and groupings use. A renamed metric or label fails it.
func TestRulesAndDashboardMetricsExported(t *testing.T) {
	queries := append(loadRules(t), loadDashboard(t)...)

	e := harness.New(t, harness.Options{Sim: wechatsim.Options{ExpiresIn: time.Hour}})
	app := e.App("mp")
	reg := prometheus.NewRegistry()
	rep := e.Start(e.Config(app), refresher.WithObserver(refresher.NewMetrics(reg)))
	srv := httptest.NewServer(refresher.NewHTTPHandler(rep.R, reg))
	defer srv.Close()
	_, rev := e.WaitRecord(10*time.Second, "mp", func(contract.Record, uint64) bool { return true })

	refresh := func(stale uint64) error {
		body, _ := json.Marshal(contract.RefreshRequest{StaleRevision: &stale})
		_, err := e.NC.Request(contract.RefreshSubject("mp"), body, 20*time.Second)
		return err
	}
	// A passive refresh whose write meets a newer revision: the upstream
	// is slowed down, and the record is rewritten while the fetch runs.
	e.Sim.SetFault(wechatsim.Fault{Latency: time.Second}) // under the client timeout (2 s)
	done := make(chan error, 1)
	go func() { done <- refresh(rev) }()
	testutil.WaitFor(t, 10*time.Second, func() bool { return e.Sim.InFlight(app.AppID) > 0 }, "the passive refresh did not reach the upstream")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := e.JS.KeyValue(ctx, contract.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	ent, err := kv.Get(ctx, "mp")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, "mp", ent.Value(), ent.Revision()); err != nil {
		t.Fatalf("rewriting the record during the fetch: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("passive refresh: %v", err)
	}
	// A 40164 with WeChat's errmsg: errors by errcode and the alert.
	e.Sim.SetFault(wechatsim.Fault{Errcode: wechatsim.CodeIPNotWhitelisted,
		Errmsg: "invalid ip 203.0.113.9 ipv6 ::ffff:203.0.113.9, not in whitelist rid: 6614f1c2-3a5e8d21-1b2c3d4e"})
	_, rev = e.WaitRecord(5*time.Second, "mp", func(contract.Record, uint64) bool { return true })
	_ = refresh(rev) // fails with the 40164
	e.Sim.SetFault(wechatsim.Fault{})

	var want []string
	for _, q := range queries {
		r, err := parsePromQL(q.expr)
		if err != nil {
			t.Fatalf("%s: %v", q.where, err)
		}
		want = append(want, r.Metrics...)
	}
	slices.Sort(want)
	want = slices.Compact(want)
	var text string
	var have map[string]map[string]bool
	if !testutil.Eventually(15*time.Second, func() bool {
		text = scrape(t, srv.URL)
		have = exposition(text)
		for _, m := range want {
			if have[m] == nil {
				return false
			}
		}
		return true
	}) {
		var missing []string
		for _, m := range want {
			if have[m] == nil {
				missing = append(missing, m)
			}
		}
		t.Fatalf("metrics named by %s or %s that the refresher does not export: %v\n/metrics:\n%s", rulesFile, dashboardFile, missing, text)
	}
	t.Logf("%d metric names checked: %v", len(want), want)

	for _, q := range queries {
		r, _ := parsePromQL(q.expr)
		known := map[string]bool{}
		for _, l := range targetLabels {
			known[l] = true
		}
		for _, m := range r.Metrics {
			for l := range have[m] {
				known[l] = true
			}
		}
		for m, labels := range r.SelectorLabels {
			for _, l := range labels {
				if !have[m][l] && !slices.Contains(targetLabels, l) {
					t.Errorf("%s: %s has no label %q (it has %v)", q.where, m, l, keys(have[m]))
				}
			}
		}
		for _, l := range r.GroupLabels {
			if !known[l] {
				t.Errorf("%s: groups by %q, which none of %v has", q.where, l, r.Metrics)
			}
		}
	}
	if strings.Contains(text, harness.Secret(app.AppID)) {
		t.Error("/metrics contains the secret")
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
