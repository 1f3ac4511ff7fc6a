package natsconf

import (
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// LeafNodeOptions is the nats.embedded.leafnodes: section. A production
// server sets Listen (and has a user of role leaf for each follower
// environment); a follower's server sets Remotes. Both need
// nats.embedded.jetstream_domain, each server its own.
type LeafNodeOptions struct {
	// Listen is the host:port where follower servers connect as
	// leafnodes (conventionally port 7422). They authenticate as a user
	// of nats.embedded.users with role leaf, which Listen requires.
	Listen string `yaml:"listen"`
	// Remotes are the servers this one connects to as a leafnode:
	// production, for a follower environment.
	Remotes []LeafRemote `yaml:"remotes"`
}

// LeafRemote is one entry of nats.embedded.leafnodes.remotes: the
// leafnode address of production and the user (of role leaf there) to
// authenticate as. Exactly one of PasswordEnv and PasswordFile is set.
type LeafRemote struct {
	// URL is the remote's leafnode address, nats-leaf://host:7422, or a
	// comma-separated list of the
	// addresses of a cluster's nodes. Only these are dialled: the
	// addresses the remote advertises (often internal ones, or ones that
	// bypass a proxy or load balancer in between) are ignored.
	// Credentials do not belong in it: use User and PasswordEnv or
	// PasswordFile.
	URL string `yaml:"url"`
	// User is the user name on the remote, of role leaf there.
	User string `yaml:"user"`
	// PasswordEnv names the environment variable holding its password.
	PasswordEnv string `yaml:"password_env"`
	// PasswordFile is a file holding its password (surrounding white
	// space is ignored).
	PasswordFile string `yaml:"password_file"`
}

// domainRE is what a JetStream domain may be: one subject token.
var domainRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidDomain reports whether d can be a JetStream domain here: 1-64 of
// A-Z a-z 0-9 _ - (one subject token, as it becomes part of
// $JS.<domain>.API).
func ValidDomain(d string) bool { return domainRE.MatchString(d) }

// DomainAPIPrefix is the API prefix under which the JetStream of domain
// is reached from servers of another domain: $JS.<domain>.API.
func DomainAPIPrefix(domain string) string { return "$JS." + domain + ".API" }

// validateLeafNodes checks jetstream_domain and the leafnodes section,
// and how they combine with the users.
func (o EmbeddedOptions) validateLeafNodes(add, addFile func(key, format string, args ...any), files bool) {
	ln := o.LeafNodes
	leafUsers := 0
	for _, u := range o.Users {
		if u.Role == RoleLeaf {
			leafUsers++
		}
	}
	if o.JetStreamDomain != "" && !ValidDomain(o.JetStreamDomain) {
		add("nats.embedded.jetstream_domain", "%q is not a valid domain (1-64 of A-Z a-z 0-9 _ -)", o.JetStreamDomain)
	}
	if (ln.Listen != "" || len(ln.Remotes) > 0) && o.JetStreamDomain == "" {
		add("nats.embedded.jetstream_domain", "required with nats.embedded.leafnodes: servers joined by leafnodes each need their own JetStream domain (production e.g. prod, staging e.g. staging)")
	}
	if ln.Listen != "" {
		if _, _, err := splitListen(ln.Listen); err != nil {
			add("nats.embedded.leafnodes.listen", "%v", err)
		}
		if leafUsers == 0 {
			add("nats.embedded.leafnodes.listen", "needs a user of role leaf in nats.embedded.users for the follower servers to connect as (any other user connecting there would get its own role's rights across the link)")
		}
	}
	if leafUsers > 0 && ln.Listen == "" {
		for i, u := range o.Users {
			if u.Role == RoleLeaf {
				add(fmt.Sprintf("nats.embedded.users[%d].role", i), "leaf needs nats.embedded.leafnodes.listen: follower servers connect to the leafnode listener")
			}
		}
	}
	for i, r := range ln.Remotes {
		key := fmt.Sprintf("nats.embedded.leafnodes.remotes[%d]", i)
		for j, raw := range strings.Split(r.URL, ",") {
			if msg := checkLeafURL(strings.TrimSpace(raw)); msg != "" {
				if strings.Contains(r.URL, ",") {
					msg = fmt.Sprintf("entry %d: %s", j+1, msg)
				}
				add(key+".url", "%s", msg)
			}
		}
		if r.User == "" {
			add(key+".user", "required: the user of role leaf on the remote server")
		}
		switch {
		case r.PasswordEnv != "" && r.PasswordFile != "":
			add(key+".password_file", "cannot be combined with password_env; choose one")
		case r.PasswordEnv == "" && r.PasswordFile == "":
			add(key, "needs password_env or password_file")
		case r.PasswordEnv != "":
			if files && os.Getenv(r.PasswordEnv) == "" {
				addFile(key+".password_env", "environment variable %s is not set or empty", r.PasswordEnv)
			}
		case files:
			if data, msg := readFile(r.PasswordFile); msg != "" {
				addFile(key+".password_file", "%s", msg)
			} else {
				if strings.TrimSpace(string(data)) == "" {
					addFile(key+".password_file", "%s is empty", r.PasswordFile)
				}
				wipe(data)
			}
		}
	}
}

// checkLeafURL returns what is wrong with a leafnode remote URL, or "".
// It never echoes the URL.
func checkLeafURL(s string) string {
	if s == "" {
		return "required: the remote's leafnode address, e.g. nats-leaf://prod.example:7422"
	}
	u, err := url.Parse(s)
	if err != nil || !strings.Contains(s, "://") {
		return "not a URL like nats-leaf://host:7422"
	}
	switch u.Scheme {
	case "nats-leaf", "nats":
	default:
		return fmt.Sprintf("scheme %q is not supported (nats-leaf, nats; the embedded server has no leafnode TLS: for TLS run nats-server, see examples/follow)", u.Scheme)
	}
	if u.User != nil {
		return "must not carry credentials: set user and password_env (or password_file)"
	}
	if u.Hostname() == "" {
		return "no host"
	}
	return ""
}

// serverOptions turns the section into the server's leafnode options,
// reading the remotes' passwords. The options must have been validated.
func (ln LeafNodeOptions) serverOptions() (server.LeafNodeOpts, error) {
	var lo server.LeafNodeOpts
	if ln.Listen != "" {
		host, port, _ := splitListen(ln.Listen)
		lo.Host, lo.Port = host, port
	}
	for i, r := range ln.Remotes {
		pw := os.Getenv(r.PasswordEnv)
		if r.PasswordFile != "" {
			data, err := os.ReadFile(r.PasswordFile)
			if err != nil {
				return lo, optErr(fmt.Sprintf("nats.embedded.leafnodes.remotes[%d].password_file", i), fmt.Sprintf("cannot read %s: %v", r.PasswordFile, err))
			}
			pw = strings.TrimSpace(string(data))
			wipe(data)
		}
		remote := &server.RemoteLeafOpts{IgnoreDiscoveredServers: true}
		for _, raw := range strings.Split(r.URL, ",") {
			u, err := url.Parse(strings.TrimSpace(raw))
			if err != nil {
				return lo, optErr(fmt.Sprintf("nats.embedded.leafnodes.remotes[%d].url", i), "not a URL")
			}
			u.User = url.UserPassword(r.User, pw)
			remote.URLs = append(remote.URLs, u)
		}
		lo.Remotes = append(lo.Remotes, remote)
	}
	return lo, nil
}

// LeafPermissions returns the permissions of a user of role leaf on the
// production server whose JetStream domain is domain, for the bucket
// bucket: what a follower server connected as user may send over the
// leafnode link and receive from it. For a leafnode connection,
// publish is what the follower may send into production and subscribe
// is what production may send to it.
//
// Into production: the mirror's consumer create request
// ($JS.<domain>.API.CONSUMER.CREATE.KV_<bucket>, nothing else of the
// JetStream API: no stream info, no delete, no purge, no direct get),
// its flow-control replies ($JS.FC.KV_<bucket>.>), and token.refresh.>
// requests. Out of production: the mirror's API replies ($JSC.R.>) and
// deliveries ($JS.M.>), token.updated.> events, and replies to inboxes
// under contract.ServiceInboxPrefix(user), the inbox prefix every
// follower service that sends token.refresh must use. Writes to any
// bucket ($KV.>, also through the domain's API prefix) and events are
// denied explicitly.
func LeafPermissions(bucket, user, domain string) *server.Permissions {
	stream := contract.KVStream(bucket)
	api := DomainAPIPrefix(domain)
	return &server.Permissions{
		Publish: &server.SubjectPermission{
			Allow: []string{
				api + ".CONSUMER.CREATE." + stream,
				"$JS.FC." + stream + ".>",
				contract.RefreshPrefix + ">",
				contract.SignPrefix + ">",
			},
			Deny: []string{"$KV.>", api + ".$KV.>", contract.UpdatedPrefix + ">", contract.AuditPrefix + ">"},
		},
		Subscribe: &server.SubjectPermission{
			Allow: []string{
				"$JSC.R.>",
				"$JS.M.>",
				contract.UpdatedPrefix + ">",
				contract.ServiceInboxPrefix(user) + ".>",
			},
		},
	}
}
