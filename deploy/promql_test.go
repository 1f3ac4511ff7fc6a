package deploy_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// promqlRefs is what a PromQL expression refers to: metric names, the
// label names of each selector's matchers, and the label names of
// by/without/on/ignoring/group_left/group_right lists.
type promqlRefs struct {
	Metrics        []string
	SelectorLabels map[string][]string // metric -> labels of its matchers
	GroupLabels    []string
}

// PromQL words that are not metric names.
var (
	aggregations = set("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
		"bottomk", "topk", "quantile", "limitk", "limit_ratio")
	keywords = set("and", "or", "unless", "bool", "offset", "atan2", "inf", "nan")
	grouping = set("by", "without", "on", "ignoring", "group_left", "group_right")
)

func set(words ...string) map[string]bool {
	m := map[string]bool{}
	for _, w := range words {
		m[w] = true
	}
	return m
}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isIdent(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') }

// parsePromQL returns the references of expr. It is a lexer, not a
// parser: it knows strings, numbers and durations, ranges, matchers,
// grouping lists, functions (a name followed by "("), aggregations and
// keywords; every other name is a metric name. Grafana's $variables are
// skipped. It fails on a selector without a metric name (it could not be
// checked) and on unbalanced brackets or strings.
func parsePromQL(expr string) (promqlRefs, error) {
	r := promqlRefs{SelectorLabels: map[string][]string{}}
	i, n := 0, len(expr)
	skipSpace := func() {
		for i < n && strings.ContainsRune(" \t\r\n", rune(expr[i])) {
			i++
		}
	}
	skipString := func() error {
		q := expr[i]
		for i++; i < n; i++ {
			if expr[i] == '\\' && q != '`' {
				i++
				continue
			}
			if expr[i] == q {
				i++
				return nil
			}
		}
		return fmt.Errorf("unterminated string in %q", expr)
	}
	ident := func() string {
		s := i
		for i < n && isIdent(expr[i]) {
			i++
		}
		return expr[s:i]
	}
	// labelList reads "(a, b)" at i into dst.
	labelList := func() ([]string, error) {
		var out []string
		i++ // (
		for {
			skipSpace()
			if i >= n {
				return nil, fmt.Errorf("unterminated label list in %q", expr)
			}
			switch c := expr[i]; {
			case c == ')':
				i++
				return out, nil
			case c == ',':
				i++
			case isIdentStart(c):
				out = append(out, ident())
			default:
				return nil, fmt.Errorf("unexpected %q in a label list of %q", c, expr)
			}
		}
	}
	last := "" // the metric name just read, for its matchers
	for i < n {
		c := expr[i]
		switch {
		case strings.ContainsRune(" \t\r\n", rune(c)):
			i++
			continue
		case c == '"' || c == '\'' || c == '`':
			if err := skipString(); err != nil {
				return r, err
			}
		case c == '#':
			for i < n && expr[i] != '\n' {
				i++
			}
		case c >= '0' && c <= '9' || (c == '.' && i+1 < n && expr[i+1] >= '0' && expr[i+1] <= '9'):
			for i < n && (isIdent(expr[i]) || expr[i] == '.') {
				i++ // number or duration: 1600, 0.95, 15m, 1e3
			}
		case c == '$':
			i++
			if i < n && expr[i] == '{' {
				for i < n && expr[i] != '}' {
					i++
				}
				i++
			} else {
				ident()
			}
		case c == '[':
			j := strings.IndexByte(expr[i:], ']')
			if j < 0 {
				return r, fmt.Errorf("unterminated range in %q", expr)
			}
			i += j + 1
		case c == '{':
			if last == "" {
				return r, fmt.Errorf("a selector without a metric name in %q: name the metric so that it can be checked", expr)
			}
			i++
			for {
				skipSpace()
				if i >= n {
					return r, fmt.Errorf("unterminated matchers in %q", expr)
				}
				if expr[i] == '}' {
					i++
					break
				}
				switch d := expr[i]; {
				case d == ',' || d == '=' || d == '!' || d == '~':
					i++
				case d == '"' || d == '\'' || d == '`':
					if err := skipString(); err != nil {
						return r, err
					}
				case isIdentStart(d):
					r.SelectorLabels[last] = append(r.SelectorLabels[last], ident())
				default:
					return r, fmt.Errorf("unexpected %q in matchers of %q", d, expr)
				}
			}
		case isIdentStart(c):
			word := ident()
			j := i
			for j < n && strings.ContainsRune(" \t\r\n", rune(expr[j])) {
				j++
			}
			next := byte(0)
			if j < n {
				next = expr[j]
			}
			switch {
			case grouping[strings.ToLower(word)]:
				if next == '(' {
					i = j
					labels, err := labelList()
					if err != nil {
						return r, err
					}
					r.GroupLabels = append(r.GroupLabels, labels...)
				}
			case keywords[strings.ToLower(word)], aggregations[strings.ToLower(word)], next == '(':
				// keyword, aggregation or function
			default:
				r.Metrics = append(r.Metrics, word)
				last = word
				continue
			}
		default:
			i++
		}
		last = ""
	}
	return r, nil
}

// TestParsePromQL: the lexer finds the metric names and labels of the
// kinds of expressions the rules and the dashboard use, and refuses what
// it cannot check.
func TestParsePromQL(t *testing.T) {
	for _, tc := range []struct {
		expr    string
		metrics []string
		sel     map[string][]string
		group   []string
	}{
		{`max by (app) (tokenkeeper_token_expiry_seconds) < 1200`, []string{"tokenkeeper_token_expiry_seconds"}, map[string][]string{}, []string{"app"}},
		{`absent(tokenkeeper_leader)`, []string{"tokenkeeper_leader"}, map[string][]string{}, nil},
		{`max by (app) (tokenkeeper_quota_used{app=~"$app"} * on (job, instance) group_left () (tokenkeeper_leader == 1)) >= 1600`,
			[]string{"tokenkeeper_quota_used", "tokenkeeper_leader"}, map[string][]string{"tokenkeeper_quota_used": {"app"}}, []string{"app", "job", "instance"}},
		{`sum by (app) (increase(x_total{alert="a,b}"}[15m])) > 0 or sum by (app) (x_total{alert='q'} unless x_total offset 15m)`,
			[]string{"x_total", "x_total", "x_total"}, map[string][]string{"x_total": {"alert", "alert"}}, []string{"app", "app"}},
		{`histogram_quantile(0.95, sum by (app, le) (rate(h_bucket[$__rate_interval]))) > 5`, []string{"h_bucket"}, map[string][]string{}, []string{"app", "le"}},
		{`sum(increase(a_total{app=~"$app|"}[24h])) or vector(0)`, []string{"a_total"}, map[string][]string{"a_total": {"app"}}, nil},
		{"sum without(instance)(typo_metric)\n# a comment naming not_a_metric", []string{"typo_metric"}, map[string][]string{}, []string{"instance"}},
	} {
		r, err := parsePromQL(tc.expr)
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		if !reflect.DeepEqual(r.Metrics, tc.metrics) || !reflect.DeepEqual(r.SelectorLabels, tc.sel) || !reflect.DeepEqual(r.GroupLabels, tc.group) {
			t.Errorf("%s:\n got %v %v %v\nwant %v %v %v", tc.expr, r.Metrics, r.SelectorLabels, r.GroupLabels, tc.metrics, tc.sel, tc.group)
		}
	}
	for _, bad := range []string{`{__name__="tokenkeeper_leader"}`, `sum(x{app="a}`, `rate(x[5m)`, `x{app="a"`} {
		if _, err := parsePromQL(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}
