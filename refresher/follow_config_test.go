package refresher_test

import (
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/natsconf"
	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// TestFollowConfig: mode follow needs follow.domain and a way to reach
// production, refuses secrets (and never reads them), and a follow:
// section or an unknown mode is refused outside it; every problem names
// its key.
func TestFollowConfig(t *testing.T) {
	t.Setenv("FOLLOW_SECRET", "must-not-be-read")
	t.Setenv("LEAF_PW", "x")
	base := `
nats: {url: "nats://127.0.0.1:4222"}
`
	cases := []struct {
		name, yaml string
		want       []string // empty: valid
	}{
		{"valid, no apps", base + "mode: follow\nfollow: {domain: prod}\n", nil},
		{"valid, app names from production's config", base + "mode: follow\nfollow: {domain: prod, max_lag: 10s}\napps:\n  - {name: mp-main, kind: wechat, appid: wx1}\n", nil},
		{"valid embedded", `
mode: follow
follow: {domain: prod}
nats:
  embedded:
    jetstream_domain: staging
    leafnodes: {remotes: [{url: "nats-leaf://prod:7422,nats-leaf://prod-2:7422", user: staging, password_env: LEAF_PW}]}
`, nil},
		{"no domain", base + "mode: follow\n", []string{"follow.domain: required in mode follow"}},
		{"secrets refused", base + "mode: follow\nfollow: {domain: prod}\napps:\n  - {name: a, secret_env: FOLLOW_SECRET}\n  - {name: b, secret_file: /etc/secret}\n  - {name: a}\n",
			[]string{"apps[0] (a).secret_env: mode follow holds no secrets", "apps[1] (b).secret_file: mode follow holds no secrets", "apps[2] (a).name: duplicate of apps[0]"}},
		{"embedded without remote, own domain", "mode: follow\nfollow: {domain: staging}\nnats:\n  embedded: {jetstream_domain: staging}\n",
			[]string{"follow.domain: \"staging\" is this server's own domain", "nats.embedded.leafnodes.remotes: mode follow with the embedded server needs a remote"}},
		{"bad domain, negative lag", base + "mode: follow\nfollow: {domain: prod.eu, max_lag: -1s}\n", []string{"follow.domain: \"prod.eu\" is not a JetStream domain", "follow.max_lag: -1s is negative"}},
		{"follow section in lead mode", base + "follow: {domain: prod}\napps: [{name: a, appid: wx1, secret_env: FOLLOW_SECRET}]\n", []string{"follow: only used with mode: follow"}},
		{"unknown mode", base + "mode: mirror\n", []string{`mode: "mirror" is not lead or follow`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := refresher.ParseConfig([]byte(c.yaml))
			if len(c.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				for _, a := range cfg.Apps {
					if a.Secret() != "" {
						t.Errorf("a follower read a secret for %s", a.Name)
					}
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if n := len(natsconf.Problems(err)); n != len(c.want) {
				t.Errorf("%d problems, want %d: %v", n, len(c.want), err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), "must-not-be-read") {
				t.Error("the error shows a secret")
			}
		})
	}
}
