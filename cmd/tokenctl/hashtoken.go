package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"unicode"
)

// maxTokenInput bounds what hash-token reads from stdin.
const maxTokenInput = 4 << 10

// hashTokenCommand is tokenctl hash-token.
var hashTokenCommand = &command{
	name:    "hash-token",
	args:    "",
	summary: "print the SHA-256 of a gateway client's bearer token read from stdin (for gateway.clients[].token_sha256)",
	help: `
Reads one bearer token from standard input (surrounding white space and
the final newline removed) and prints the lowercase hex SHA-256 that
gateway.clients[].token_sha256 of refresher.yaml takes, so that the
token itself never goes into a config file. Nothing is sent anywhere; no
NATS connection is made.

With --new it reads nothing: it makes a new random token (32 bytes from
crypto/rand, base64url), prints it once on the first line and its hash
on the second. Hand the token to the client; put the hash in the config.

With --json it prints {"token_sha256":"…"} (and "token" with --new).

Examples:
  printf '%s' "$PHP_SHOP_TOKEN" | tokenctl hash-token
  tokenctl hash-token < token.txt
  tokenctl hash-token --new`,
	nargs: 0,
	flags: func(fs *flag.FlagSet) any {
		return fs.Bool("new", false, "make a new random token and print it with its hash (reads nothing)")
	},
	run: runHashToken,
}

// runHashToken is tokenctl hash-token.
func runHashToken(_ context.Context, c *cli, _ []string, flags any) error {
	var tok string
	if *flags.(*bool) {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		tok = base64.RawURLEncoding.EncodeToString(b)
	} else {
		in, err := io.ReadAll(io.LimitReader(c.stdin, maxTokenInput+1))
		if err != nil {
			return fmt.Errorf("read the token from stdin: %w", err)
		}
		if len(in) > maxTokenInput {
			return fmt.Errorf("stdin holds more than %d bytes: not one token", maxTokenInput)
		}
		tok = strings.TrimSpace(string(in))
		switch {
		case tok == "":
			return errors.New("no token on stdin (pipe it in: printf '%s' \"$TOKEN\" | tokenctl hash-token)")
		case strings.IndexFunc(tok, unicode.IsSpace) >= 0:
			// Never echo it: it is a secret.
			return errors.New("the token on stdin contains white space; a bearer token is one word (one token per call)")
		}
	}
	sum := sha256.Sum256([]byte(tok))
	h := hex.EncodeToString(sum[:])
	newTok := *flags.(*bool)
	if c.g.json {
		out := map[string]string{"token_sha256": h}
		if newTok {
			out["token"] = tok
		}
		b, _ := json.Marshal(out)
		fmt.Fprintf(c.stdout, "%s\n", b)
		return nil
	}
	if newTok {
		fmt.Fprintf(c.stdout, "token:        %s\ntoken_sha256: %s\n", tok, h)
		return nil
	}
	fmt.Fprintln(c.stdout, h)
	return nil
}
