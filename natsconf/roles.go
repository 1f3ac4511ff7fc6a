package natsconf

import (
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// Role is one of the least-privilege roles of tokenkeeper's NATS users,
// the same as those of examples/nats-server.conf and deploy/nats.conf.
type Role string

// The roles.
const (
	// RoleRefresher owns the buckets (tokens, tokens_lease, tokens_state,
	// and tokens_secrets with a wechat-component), publishes
	// token.updated.<key> and serves token.refresh.<key>,
	// token.sign.<app> and (with a component) token.admin.>; its HTTP
	// gateway requests token.refresh.<key> and token.sign.<key>.
	RoleRefresher Role = "refresher"
	// RoleService reads and watches the tokens bucket, requests
	// token.refresh.<key> and token.sign.<app>, receives
	// token.updated.<key>, and writes nothing; token.admin.> is denied.
	// Its replies arrive under its private inbox prefix
	// contract.ServiceInboxPrefix(user).
	RoleService Role = "service"
	// RoleOperator is tokenctl's: what a service may, plus reading the
	// lease and the state buckets (tokenctl status) and the audit trail,
	// and the operator requests token.admin.> (tokenctl authorizers,
	// answered by the refresher). It writes nothing itself and, like a
	// service, never reads the secrets bucket.
	RoleOperator Role = "operator"
	// RoleLeaf is the user a follower environment's server (staging, a
	// second region) connects to production's leafnode listener with:
	// its bucket mirrors production's, its services' token.refresh
	// requests reach production's refresher, and it writes nothing in
	// production. See LeafPermissions.
	RoleLeaf Role = "leaf"
)

// Roles lists the roles, in the order of the documentation.
var Roles = []Role{RoleRefresher, RoleService, RoleOperator, RoleLeaf}

// roleNames is what an error says a role may be.
const roleNames = "refresher, service, operator or leaf"

// userNameRE is what a user name of nats.embedded.users may be: one
// subject token, as it becomes part of the service inbox prefix.
var userNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// RolePermissions returns the permissions of role for the buckets of
// bucket (bucket, bucket_lease, bucket_state) and the user named user
// (the service role's inbox is private to the user). It returns nil for
// an unknown role, and for RoleLeaf, whose permissions also name the
// JetStream domain (LeafPermissions).
func RolePermissions(role Role, bucket, user string) *server.Permissions {
	lease, state, secrets := contract.LeaseBucket(bucket), contract.StateBucket(bucket), contract.SecretsBucket(bucket)
	// What reading and watching one bucket takes.
	read := func(b string) []string {
		return []string{
			"$JS.API.STREAM.INFO.KV_" + b,
			"$JS.API.DIRECT.GET.KV_" + b + ".>",
			"$JS.API.CONSUMER.CREATE.KV_" + b + ".>",
			"$JS.API.CONSUMER.DELETE.KV_" + b + ".>",
			"$JS.FC.KV_" + b + ".>",
		}
	}
	// Writing nothing: implied by the allow lists, spelled out so that
	// nobody widens them into writing tokens or forging events.
	// Never the secrets bucket (sealed refresh tokens, verify tickets):
	// spelled out for the same reason.
	readOnly := &server.SubjectPermission{Deny: []string{"$KV.>", contract.UpdatedPrefix + ">", contract.AuditPrefix + ">",
		"$JS.API.STREAM.INFO.KV_" + secrets,
		"$JS.API.DIRECT.GET.KV_" + secrets + ".>",
		"$JS.API.CONSUMER.CREATE.KV_" + secrets + ".>",
	}}
	// The audit trail: the refresher appends, operators read.
	audit := contract.AuditStream
	readAudit := []string{
		"$JS.API.STREAM.INFO." + audit,
		"$JS.API.CONSUMER.CREATE." + audit + ".>",
		"$JS.API.CONSUMER.DELETE." + audit + ".>",
		"$JS.API.CONSUMER.MSG.NEXT." + audit + ".>",
		"$JS.FC." + audit + ".>",
	}

	switch role {
	case RoleRefresher:
		pub := []string{"$JS.API.INFO"}
		// The secrets bucket exists only with a wechat-component.
		for _, b := range []string{bucket, lease, state, secrets} {
			pub = append(pub,
				"$JS.API.STREAM.CREATE.KV_"+b,
				"$JS.API.STREAM.UPDATE.KV_"+b)
			pub = append(pub, read(b)...)
			pub = append(pub, "$KV."+b+".>")
		}
		// The events; the requests the HTTP gateway (gateway: section,
		// run by any replica) forwards; the audit trail.
		pub = append(pub, contract.UpdatedPrefix+">", contract.RefreshPrefix+">", contract.SignPrefix+">",
			"$JS.API.STREAM.CREATE."+audit, "$JS.API.STREAM.UPDATE."+audit, "$JS.API.STREAM.INFO."+audit,
			contract.AuditPrefix+">")
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: pub},
			// token.admin.>: the operator requests (tokenctl authorizers),
			// served by the leader with a wechat-component.
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>", contract.RefreshPrefix + ">", contract.SignPrefix + ">", contract.AdminPrefix + ">", "$SRV.>"}},
			Response: &server.ResponsePermission{
				MaxMsgs: server.DEFAULT_ALLOW_RESPONSE_MAX_MSGS,
				Expires: server.DEFAULT_ALLOW_RESPONSE_EXPIRATION,
			},
		}
	case RoleService:
		readOnly.Allow = append(read(bucket), contract.RefreshPrefix+">", contract.SignPrefix+">", "$SRV.>")
		// Never the operator requests (they export refresh tokens).
		readOnly.Deny = append(readOnly.Deny, contract.AdminPrefix+">")
		return &server.Permissions{
			Publish:   readOnly,
			Subscribe: &server.SubjectPermission{Allow: []string{contract.ServiceInboxPrefix(user) + ".>", contract.UpdatedPrefix + ">"}},
		}
	case RoleOperator:
		// tokenctl status reads the lease and lists the state bucket.
		// tokenctl has no inbox prefix option: it uses "_INBOX.", like
		// the refresher, whose replies it may read anyway.
		// tokenctl authorizers asks the leader on token.admin.>.
		readOnly.Allow = append(append(append(append(read(bucket), read(lease)...), read(state)...), readAudit...), contract.RefreshPrefix+">", contract.SignPrefix+">", contract.AdminPrefix+">", "$SRV.>")
		return &server.Permissions{
			Publish:   readOnly,
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>", contract.UpdatedPrefix + ">"}},
		}
	}
	return nil
}

// EmbeddedUser is one entry of nats.embedded.users: who may connect to the
// embedded server, how it authenticates, and its role. Exactly one of
// PasswordEnv, PasswordFile and NKey is set.
type EmbeddedUser struct {
	// User is the user name ([A-Za-z0-9_-]{1,64}). With NKey it only names
	// the user in logs and in the service inbox prefix.
	User string `yaml:"user"`
	// Role is refresher, service, operator or leaf.
	Role Role `yaml:"role"`
	// PasswordEnv names the environment variable holding the password
	// (or its bcrypt hash, "$2a$…", so the clear text stays off this host).
	PasswordEnv string `yaml:"password_env"`
	// PasswordFile is a file holding the password or its bcrypt hash
	// (surrounding white space is ignored), such as a mounted secret.
	PasswordFile string `yaml:"password_file"`
	// NKey is the user's public nkey ("U…"); the client signs with the
	// seed, which this host never sees.
	NKey string `yaml:"nkey"`
}

// validateUsers checks nats.embedded.users and allow_anonymous; it reads
// the password variables and files (reporting through addFile) only if
// files.
func (o EmbeddedOptions) validateUsers(add, addFile func(key, format string, args ...any), files bool) {
	if o.AllowAnonymous && len(o.Users) > 0 {
		add("nats.embedded.allow_anonymous", "cannot be combined with nats.embedded.users: with users nobody connects anonymously")
	}
	names := map[string]int{}
	nkeysSeen := map[string]int{}
	for i, u := range o.Users {
		key := fmt.Sprintf("nats.embedded.users[%d]", i)
		switch {
		case u.User == "":
			add(key+".user", "required")
		case !userNameRE.MatchString(u.User):
			add(key+".user", "%q is not a valid user name (1-64 of A-Z a-z 0-9 _ -)", u.User)
		default:
			if j, dup := names[u.User]; dup {
				add(key+".user", "%q is already users[%d]", u.User, j)
			} else {
				names[u.User] = i
			}
		}
		switch u.Role {
		case RoleRefresher, RoleService, RoleOperator, RoleLeaf:
		case "":
			add(key+".role", "required: "+roleNames)
		default:
			add(key+".role", "%q is not a role: "+roleNames, string(u.Role))
		}
		var set []string
		for _, kv := range []struct{ k, v string }{{"password_env", u.PasswordEnv}, {"password_file", u.PasswordFile}, {"nkey", u.NKey}} {
			if kv.v != "" {
				set = append(set, kv.k)
			}
		}
		switch {
		case len(set) == 0:
			add(key, "needs one of password_env, password_file or nkey")
		case len(set) > 1:
			add(key+"."+set[1], "cannot be combined with %s; choose one", set[0])
		case u.PasswordEnv != "":
			if files && os.Getenv(u.PasswordEnv) == "" {
				addFile(key+".password_env", "environment variable %s is not set or empty", u.PasswordEnv)
			}
		case u.PasswordFile != "":
			if !files {
				break
			}
			if data, msg := readFile(u.PasswordFile); msg != "" {
				addFile(key+".password_file", "%s", msg)
			} else {
				if len(strings.TrimSpace(string(data))) == 0 {
					addFile(key+".password_file", "%s is empty", u.PasswordFile)
				}
				wipe(data)
			}
		case u.NKey != "":
			switch {
			case strings.HasPrefix(u.NKey, "S"):
				// Never echo it: it may be a seed.
				add(key+".nkey", "is a seed (a private key): give the public user key (starting with U); keep the seed with the client")
			case !nkeys.IsValidPublicUserKey(u.NKey):
				add(key+".nkey", "is not a public user nkey (starting with U)")
			default:
				if j, dup := nkeysSeen[u.NKey]; dup {
					add(key+".nkey", "is already the nkey of users[%d]", j)
				} else {
					nkeysSeen[u.NKey] = i
				}
			}
		}
	}
}

// serverUsers turns nats.embedded.users into the server's users, reading
// the passwords. The options must have been validated.
func (o EmbeddedOptions) serverUsers() ([]*server.User, []*server.NkeyUser, error) {
	var users []*server.User
	var nkeyUsers []*server.NkeyUser
	for i, u := range o.Users {
		perms := RolePermissions(u.Role, o.bucket(), u.User)
		if u.Role == RoleLeaf {
			perms = LeafPermissions(o.bucket(), u.User, o.JetStreamDomain)
		}
		switch {
		case u.NKey != "":
			nkeyUsers = append(nkeyUsers, &server.NkeyUser{Nkey: u.NKey, Permissions: perms})
		case u.PasswordEnv != "":
			users = append(users, &server.User{Username: u.User, Password: os.Getenv(u.PasswordEnv), Permissions: perms})
		default:
			data, err := os.ReadFile(u.PasswordFile)
			if err != nil {
				return nil, nil, optErr(fmt.Sprintf("nats.embedded.users[%d].password_file", i), fmt.Sprintf("cannot read %s: %v", u.PasswordFile, err))
			}
			pw := strings.TrimSpace(string(data))
			wipe(data)
			users = append(users, &server.User{Username: u.User, Password: pw, Permissions: perms})
		}
	}
	return users, nkeyUsers, nil
}
